"""Interruptions: a run killed mid-checkpoint resumes to exactly the uninterrupted run, and Ctrl-C
stops at a step boundary, checkpoints and writes the model. (Its own file, so pytest-xdist runs
these subprocess-heavy tests beside the rest of test_pretrain.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from pretrain_runs import TINY, as_flags, logged_losses, run_config
from transformers import AutoModelForCausalLM

from scratchformer.training.library.pretraining import PretrainConfig, train
from scratchformer.training.pretrain import main

# A real crash: the subprocess SIGKILLs itself while writing its second checkpoint, after
# accelerate has written the files into the temporary directory but before it is renamed.
_KILLED_WHILE_SAVING = """
import os, signal, sys
from accelerate import Accelerator
real_save_state = Accelerator.save_state
saves = []
def save_state(self, output_dir=None, **kwargs):
    saves.append(output_dir)
    location = real_save_state(self, output_dir, **kwargs)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return location
Accelerator.save_state = save_state
from scratchformer.training.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_while_saving(cfg: PretrainConfig) -> None:
    """Run `cfg` in a subprocess that SIGKILLs itself while its second checkpoint is being written."""
    flags = as_flags(**{k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(PretrainConfig(), k)})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_SAVING, *flags], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]



@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(corpus, tokenizer_dir, tmp_path):
    # The paper preset has dropout 0.1, so this also checks the random state is restored. The small
    # file packs into a few steps an epoch, so the replayed steps cross an epoch boundary.
    common = dict(
        tokenizer=tokenizer_dir,
        train_files=[str(corpus["small"])],
        preset="paper",
        max_train_steps=10,
        save_steps=3,
        eval_steps=100,
    )
    straight = train(run_config(tmp_path / "straight", corpus, **common))

    killed_dir = tmp_path / "killed"
    cfg = run_config(killed_dir, corpus, **common)
    _kill_while_saving(cfg)
    ckpts = killed_dir / "checkpoints"
    assert (ckpts / "step-000003").is_dir() and (ckpts / ".step-000006.tmp").is_dir()
    assert not (ckpts / "step-000006").exists() and not (killed_dir / "model").exists()

    with pytest.raises(ValueError, match="--resume"):  # never silently start over on top of a run
        train(cfg)
    resumed = train(dataclasses.replace(cfg, resume="auto"))
    expected = logged_losses(tmp_path / "straight")
    assert logged_losses(killed_dir) == pytest.approx(expected, rel=1e-5)  # steps 1-3 before the kill, 4-10 after
    for key in ("train_loss", "eval_loss", "eval_bpb"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-6), key
    a = AutoModelForCausalLM.from_pretrained(straight["output_dir"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed["output_dir"]).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)
    assert not (ckpts / ".step-000006.tmp").exists()


def test_ctrl_c_stops_at_a_step_boundary_saves_and_writes_the_model(
    corpus, tokenizer_dir, tmp_path, monkeypatch, capsys
):
    real_save_state = Accelerator.save_state
    saves = []

    def save_state_then_ctrl_c(self, output_dir=None, **kwargs):
        location = real_save_state(self, output_dir, **kwargs)
        saves.append(output_dir)
        if len(saves) == 1:  # as if the user pressed Ctrl-C once, right after step 2's checkpoint
            os.kill(os.getpid(), signal.SIGINT)
        return location

    monkeypatch.setattr(Accelerator, "save_state", save_state_then_ctrl_c)
    flags = as_flags(
        tokenizer=tokenizer_dir,
        max_train_steps=50,
        save_steps=2,
        eval_steps=100,
        output_dir=tmp_path,
        train_files=str(corpus["train"]),
        validation_files=str(corpus["validation"]),
        **{k: v for k, v in TINY.items()},
    )
    assert main(flags) == 130
    assert "SIGINT" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert max(logged_losses(tmp_path)) == 3
    model_dir = tmp_path / "model"
    assert "3 of 50 (stopped early" in (model_dir / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(model_dir)


# -- what --resume checks -------------------------------------------------------------------------


def _first_run(corpus, tokenizer_dir, out) -> list[str]:
    flags = as_flags(**TINY, tokenizer=tokenizer_dir, train_files=str(corpus["train"]),
                     validation_files=str(corpus["validation"]), output_dir=str(out), max_train_steps=2,
                     num_hidden_layers=1, logging_steps=1)
    assert main(flags) == 0
    return flags


def test_a_bare_resume_continues_with_the_runs_own_flags(corpus, tokenizer_dir, tmp_path, capsys):
    """`--resume` with only --output_dir stopped with a dump of two model-config dicts: the flags of
    the run (model size, data, learning rate) now come from its checkpoint; flags given still win."""
    _first_run(corpus, tokenizer_dir, tmp_path)
    capsys.readouterr()
    assert main(["--output_dir", str(tmp_path), "--resume", "--max_train_steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "--resume: continuing with the run's own" in err and "--num_hidden_layers" in err and "--train_files" in err
    assert sorted(logged_losses(tmp_path)) == [1, 2, 3]
    config = AutoModelForCausalLM.from_pretrained(tmp_path / "model").config
    assert (config.num_hidden_layers, config.hidden_size) == (1, TINY["hidden_size"])


def test_resume_refuses_changed_data_naming_the_file(corpus, tokenizer_dir, tmp_path, capsys):
    flags = _first_run(corpus, tokenizer_dir, tmp_path)
    train_file = corpus["train"]
    original = train_file.read_text()
    try:
        train_file.write_text(original + '{"text": "one more document"}\n')
        capsys.readouterr()
        assert main([*flags, "--resume", "--max_train_steps", "3"]) == 2
        err = capsys.readouterr().err
        assert "the training data changed since the checkpoint" in err and f"{train_file.resolve()} changed" in err, err
        assert "bytes then" in err
    finally:
        train_file.write_text(original)
    # With the original data back, the same command continues.
    assert main([*flags, "--resume", "--max_train_steps", "3"]) == 0


def test_resume_warns_when_the_run_length_changes(corpus, tokenizer_dir, tmp_path, caplog):
    import logging

    flags = _first_run(corpus, tokenizer_dir, tmp_path)
    caplog.set_level(logging.WARNING)
    assert main([*flags, "--resume", "--max_train_steps", "4"]) == 0
    assert "the run now ends at step 4 (it was started for 2)" in caplog.text


def test_resume_with_another_model_names_the_differences(corpus, tokenizer_dir, tmp_path, capsys):
    flags = _first_run(corpus, tokenizer_dir, tmp_path)
    capsys.readouterr()
    assert main([*flags, "--resume", "--num_hidden_layers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "num_hidden_layers 1 in the checkpoint, 2 now" in err and "{" not in err, err


@pytest.mark.slow
def test_muon_with_wsd_and_accumulation_resumes_exactly(corpus, tokenizer_dir, tmp_path):
    """The combined optimizer's state (Muon's momentum, AdamW's moments, one state dict) goes through
    a checkpoint and back: resumed after step 3 of 6, the run ends where the uninterrupted one did,
    bit for bit; the micro-batches of each step are accumulated the same way on both sides."""
    import shutil

    cfg = run_config(tmp_path / "straight", corpus, tokenizer=tokenizer_dir, optimizer="muon",
                     lr_scheduler_type="wsd", lr_decay_fraction=0.5, gradient_accumulation_steps=2,
                     per_device_train_batch_size=4, max_train_steps=6, save_steps=3, save_total_limit=0,
                     eval_steps=100)  # fmt: skip
    straight = train(cfg)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "straight", cut)
    shutil.rmtree(cut / "checkpoints" / "step-000006")
    shutil.rmtree(cut / "model")
    resumed = train(dataclasses.replace(cfg, output_dir=str(cut), resume="auto"))
    assert logged_losses(cut) == logged_losses(tmp_path / "straight")
    assert resumed["eval_loss"] == straight["eval_loss"]
    a = AutoModelForCausalLM.from_pretrained(straight["output_dir"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed["output_dir"]).state_dict()
    for name in a:
        assert torch.equal(b[name], a[name]), name
    # The schedule the run followed (no warmup in 6 steps): the peak, then a line towards zero over
    # the last half, which the step after the last would reach.
    lrs = [r["lr"] for r in map(json.loads, (cut / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs == pytest.approx([3e-3, 3e-3, 3e-3, 3e-3, 2e-3, 1e-3])


def test_a_checkpoint_from_before_muon_resumes_as_it_was_trained(tmp_path):
    """0.3 and earlier saved no --optimizer: those runs were AdamW + cosine, mini at lr 1e-3."""
    from scratchformer.training.library.run_dir import with_flags_of_resumed_run

    step = tmp_path / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    old_flags = {k: v for k, v in dataclasses.asdict(PretrainConfig()).items()
                 if k not in ("optimizer", "lr_scheduler_type", "lr_decay_fraction")}  # fmt: skip
    old_flags.update(min_lr_ratio=0.1, learning_rate=None, size="mini")
    (step / "trainer_state.json").write_text(json.dumps({"step": 2, "flags": old_flags}))
    cfg, taken = with_flags_of_resumed_run(PretrainConfig(output_dir=str(tmp_path), resume="auto"), {"output_dir"})
    assert (cfg.optimizer, cfg.lr_scheduler_type, cfg.learning_rate) == ("adamw", "cosine", 1e-3)
    assert {"optimizer", "lr_scheduler_type", "learning_rate"} <= set(taken)
    # What the command line gives still wins.
    cfg, _ = with_flags_of_resumed_run(PretrainConfig(output_dir=str(tmp_path), resume="auto", learning_rate=5e-4),
                                       {"output_dir", "learning_rate"})  # fmt: skip
    assert cfg.learning_rate == 5e-4
    # Before 0.3 a checkpoint saved no flags at all: AdamW + cosine too, so a bare --resume takes them.
    (step / "trainer_state.json").write_text(json.dumps({"step": 2}))
    cfg, taken = with_flags_of_resumed_run(PretrainConfig(output_dir=str(tmp_path), resume="auto"), {"output_dir"})
    assert (cfg.optimizer, cfg.lr_scheduler_type) == ("adamw", "cosine") and "optimizer" in taken


def test_a_muon_checkpoint_from_before_query_key_optimizer_resumes_with_muon_on_query_and_key(
    corpus, tokenizer_dir, tmp_path
):
    """0.3's Muon moved q and k too; its checkpoints record no --query_key_optimizer. A bare --resume
    continues them that way (their optimizer state has q and k in Muon's group), and asking for
    today's default is refused naming both, instead of failing inside load_state_dict."""
    from scratchformer.training.library.run_dir import with_flags_of_resumed_run

    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=2, eval_steps=100,
                     query_key_optimizer="muon")  # fmt: skip
    train(cfg)
    state_file = tmp_path / "checkpoints" / "step-000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["run"]["query_key_optimizer"] == "muon"
    del state["flags"]["query_key_optimizer"], state["run"]["query_key_optimizer"]  # as 0.3 wrote it
    state_file.write_text(json.dumps(state))
    bare, taken = with_flags_of_resumed_run(PretrainConfig(output_dir=str(tmp_path), resume="auto"), {"output_dir"})
    assert bare.query_key_optimizer == "muon" and "query_key_optimizer" in taken
    with pytest.raises(ValueError, match="trained with --query_key_optimizer muon and this run asks for "
                                         "--query_key_optimizer adamw"):  # fmt: skip
        train(dataclasses.replace(cfg, query_key_optimizer="adamw", resume="auto", max_train_steps=3))
    train(dataclasses.replace(cfg, resume="auto", max_train_steps=3))  # loads: the groups match


def test_resume_with_another_optimizer_is_refused_naming_both(corpus, tokenizer_dir, tmp_path):
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=2, eval_steps=100)
    train(cfg)
    with pytest.raises(ValueError, match="trained with --optimizer muon and this run asks for --optimizer adamw"):
        train(dataclasses.replace(cfg, optimizer="adamw", resume="auto", max_train_steps=4))
    # The resolved peak lr is what the checkpoint records, whatever the size's default becomes.
    state = json.loads((tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["flags"]["learning_rate"] == TINY["learning_rate"] and state["run"]["optimizer"] == "muon"


def test_the_plan_is_saved_as_is_and_a_bare_resume_reads_the_resolved_lr_back(
    corpus, tokenizer_dir, tmp_path, monkeypatch
):
    """The flags go into the checkpoint as given, the run's resolved numbers beside them as its plan;
    a bare --resume reads the peak lr back from the plan, whatever a size's default has become, and
    names the checkpoint it chose, which train() then resumes without searching again."""
    from scratchformer.training.library import pretrain_config
    from scratchformer.training.library.run_dir import with_flags_of_resumed_run

    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=2, eval_steps=100,
                     learning_rate=None)  # fmt: skip
    train(cfg)
    checkpoint = tmp_path / "checkpoints" / "step-000002"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    resolved = pretrain_config.SIZES["tiny"]["learning_rate"]
    assert state["flags"] == json.loads(json.dumps(dataclasses.asdict(cfg)))  # as given: learning_rate None
    plan = state["plan"]
    assert (plan["learning_rate"], plan["max_train_steps"], plan["block_size"]) == (resolved, 2, TINY["block_size"])
    assert plan["schedule"]["max_lr"] == resolved and plan["samples_per_step"] == TINY["per_device_train_batch_size"]

    monkeypatch.setitem(pretrain_config.SIZES["tiny"], "learning_rate", resolved / 2)  # a later release's default
    bare, taken = with_flags_of_resumed_run(PretrainConfig(output_dir=str(tmp_path), resume="auto"), {"output_dir"})
    assert bare.learning_rate == resolved and "learning_rate" in taken
    assert bare.resume == str(checkpoint)


# -- a streamed corpus -----------------------------------------------------------------------------


def _shards(root) -> list[str]:
    """The default corpus's paragraphs as three .jsonl shards: more rows than one tokenizing batch."""
    from scratchformer.training.library.data import default_corpus

    paragraphs = [p for d in default_corpus("train") for p in d.split("\n\n") if p.strip()][:1500]
    paths = []
    for i in range(3):
        path = root / f"shard-{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in paragraphs[i::3]))
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_a_streamed_run_killed_mid_stream_resumes_bitwise(corpus, tokenizer_dir, tmp_path):
    """A streamed run (shuffle buffer, two micro-batches a step) SIGKILLed while writing its second
    checkpoint resumes from the first one where the stream stood, in the files, the carried tokens
    and the shuffle buffer: the same losses and bit for bit the same weights as the run that was
    never stopped. The stream's state travels in accelerate's checkpoint (StatefulDataLoader)."""
    shards = _shards(tmp_path)
    common = dict(tokenizer=tokenizer_dir, train_files=shards, streaming=True, shuffle_buffer_size=64,
                  per_device_train_batch_size=4, gradient_accumulation_steps=2, max_train_steps=8, save_steps=4,
                  eval_steps=100, save_total_limit=0)  # fmt: skip
    straight = train(run_config(tmp_path / "straight", corpus, **common))

    killed_dir = tmp_path / "killed"
    cfg = run_config(killed_dir, corpus, **common)
    _kill_while_saving(cfg)
    ckpts = killed_dir / "checkpoints"
    assert (ckpts / "step-000004").is_dir() and not (ckpts / "step-000008").exists()
    assert list((ckpts / "step-000004").glob("dl_state_dict*"))  # the stream's position, saved by accelerate

    resumed = train(dataclasses.replace(cfg, resume="auto"))
    assert logged_losses(killed_dir) == logged_losses(tmp_path / "straight")  # steps 1-4 before, 5-8 after
    assert resumed["eval_loss"] == straight["eval_loss"]
    a = AutoModelForCausalLM.from_pretrained(straight["output_dir"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed["output_dir"]).state_dict()
    for name in a:
        assert torch.equal(b[name], a[name]), name
