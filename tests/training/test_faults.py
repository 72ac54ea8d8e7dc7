"""Faults injected on purpose: `kill -9` at random moments (mid-checkpoint too) then `--resume`, a rank
of a two-process run that dies or hangs, a full disk while saving, and NaN losses with
`--on_nonfinite skip`. Each test really does the fault; each can fail.

(test_pretrain_resume.py already kills one run at one fixed moment inside a checkpoint write, and
test_pretrain.py stops on a NaN loss: these extend both.)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from pretrain_runs import as_flags, logged_losses, run_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.training.library.model_dir import check_weights
from scratchformer.training.library.pretraining import PretrainConfig, train
from scratchformer.training.library.run_dir import CHECKPOINT_RE, STATE_FILE, complete_checkpoints
from scratchformer.training.pretrain import main


def _flags(cfg: PretrainConfig) -> list[str]:
    return as_flags(**{k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(PretrainConfig(), k)})


# Spawns processes and runs whole trainings: `make test-fast` (-m "not slow") leaves it out.
pytestmark = pytest.mark.slow

# ------------------------------------------------------------------------------------------------
# kill -9 at random moments, many times, then --resume
# ------------------------------------------------------------------------------------------------

# The child: every optimizer step takes a few extra milliseconds, so a timer from the parent lands
# inside the run rather than after it; with SF_KILL_AT_SAVE_CALL=k it SIGKILLs itself during its k-th
# file write of accelerate's save_state, after writing a partial file (a power cut mid-checkpoint).
_CHILD = """
import os, signal, sys, time
import torch
import accelerate.checkpointing as ckpt


real_step = torch.optim.AdamW.step
def slow_step(self, *args, **kwargs):
    open(os.environ["SF_TRAINING"], "a").close()  # tells the parent this child is training
    time.sleep(0.03)
    return real_step(self, *args, **kwargs)
torch.optim.AdamW.step = slow_step

kill_at, writes = int(os.environ.get("SF_KILL_AT_SAVE_CALL", "0")), []
real_save = ckpt.save
def save(obj, f, *args, **kwargs):
    writes.append(f)
    if len(writes) == kill_at:
        with open(f, "wb") as half:
            half.write(b"\\0" * 64)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
ckpt.save = save

from scratchformer.training.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def _assert_checkpoints_sound(ckpts: Path, model: torch.nn.Module) -> list[str]:
    """Every directory that looks complete loads; nothing else can be taken for one."""
    names = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
    complete = complete_checkpoints(ckpts)
    for p in ckpts.iterdir() if ckpts.is_dir() else []:
        if CHECKPOINT_RE.fullmatch(p.name):
            assert p in complete, f"{p.name} is named like a checkpoint but is incomplete"
        else:
            assert p.name.startswith(".") and p.name.endswith(".tmp"), p.name  # only temporaries, hidden
    for p in complete:
        check_weights(p)
        missing, unexpected = model.load_state_dict(load_file(p / "model.safetensors"), strict=False)
        assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)  # tied to the embedding
        assert json.loads((p / STATE_FILE).read_text())["step"] == int(CHECKPOINT_RE.fullmatch(p.name).group(1))
    return names


def _straight_then_resumable(corpus, tokenizer_dir, tmp_path, steps: int, keep: int) -> tuple[dict, PretrainConfig]:
    """An uninterrupted run of `steps` (checkpoint every 2), and the config of the same run in
    `tmp_path/killed` that resumes automatically and keeps `keep` checkpoints."""
    common = dict(tokenizer=tokenizer_dir, preset="paper", max_train_steps=steps, save_steps=2, eval_steps=100)
    straight = train(run_config(tmp_path / "straight", corpus, **common))
    return straight, run_config(tmp_path / "killed", corpus, **common, resume="auto", save_total_limit=keep)


def test_kill_9_at_random_moments_then_resume_reaches_the_uninterrupted_loss(corpus, tokenizer_dir, tmp_path):
    straight, cfg = _straight_then_resumable(corpus, tokenizer_dir, tmp_path, steps=24, keep=3)
    run_dir = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    model = ScratchformerForCausalLM.from_pretrained(straight["output_dir"])
    rng = random.Random(1234)
    kills = []
    training = tmp_path / "training"
    env["SF_TRAINING"] = str(training)
    for attempt in range(5):
        before = complete_checkpoints(run_dir / "checkpoints")
        training.unlink(missing_ok=True)
        if attempt % 2:  # mid-checkpoint: the k-th file accelerate writes (4 files per checkpoint)
            how = f"during save write {rng.randint(2, 12)}"
            child_env = dict(env, SF_KILL_AT_SAVE_CALL=how.split()[-1])
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, *_flags(cfg)], env=child_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            _, err = proc.communicate(timeout=120)
        else:  # from outside, at a random moment after training started
            delay = rng.uniform(0.0, 0.6)
            how = f"after {delay:.2f} s of training"
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, *_flags(cfg)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            deadline = time.monotonic() + 60
            while not training.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "the child never started training"
                time.sleep(0.02)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        kills.append((how, proc.returncode))
        if before:  # the resumed child picked the newest complete checkpoint, never a temporary
            assert f"resuming from {before[-1]}" in err or proc.returncode == 0, err[-2000:]
        if proc.returncode == 0:
            break  # the timer came too late: the run finished (then nothing is left to kill)
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
        _assert_checkpoints_sound(run_dir / "checkpoints", model)
    assert sum(code == -signal.SIGKILL for _, code in kills) >= 3, kills

    resumed = train(cfg)  # the last run: to the end
    assert resumed["steps"] == 24
    assert logged_losses(run_dir) == pytest.approx(logged_losses(tmp_path / "straight"), rel=1e-5)
    for key in ("train_loss", "eval_loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), (key, kills)
    a = AutoModelForCausalLM.from_pretrained(straight["output_dir"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed["output_dir"]).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # a leftover temporary is cleared on the next save


# The child SIGKILLs itself while removing the checkpoint that --save_total_limit retires, after the
# first file of it is gone (what CI once hit by chance: a directory still named step-NNNNNN, with its
# trainer_state.json, but no weights).
_KILLED_WHILE_PRUNING = """
import os, shutil, signal, sys
real_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    weights = os.path.join(path, "model.safetensors")
    if "step-000002" in os.path.basename(path) and os.path.exists(weights):
        os.remove(weights)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *args, **kwargs)
shutil.rmtree = rmtree
from scratchformer.training.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_an_old_checkpoint_is_removed_leaves_no_broken_checkpoint(corpus, tokenizer_dir, tmp_path):
    straight, cfg = _straight_then_resumable(corpus, tokenizer_dir, tmp_path, steps=6, keep=1)
    run_dir = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_PRUNING, *_flags(cfg)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    model = ScratchformerForCausalLM.from_pretrained(straight["output_dir"])
    assert _assert_checkpoints_sound(ckpts, model) == [".step-000002.removed.tmp", "step-000004"]
    assert complete_checkpoints(ckpts) == [ckpts / "step-000004"]

    resumed = train(cfg)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000006"]  # the half-removed one is cleared too


# ------------------------------------------------------------------------------------------------
# A rank of a two-process run dies, or hangs
# ------------------------------------------------------------------------------------------------

# Put on PYTHONPATH as sitecustomize.py, so every launched process runs it first; only rank 1 acts.
_RANK_FAULT = """
import os, signal, time
if os.environ.get("RANK") == "1":
    import torch
    real_step, calls = torch.optim.AdamW.step, []
    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if os.environ["SF_RANK_FAULT"] == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(12)  # stuck (a wedged device, a dead file system), then gone
            os._exit(1)
        return real_step(self, *args, **kwargs)
    torch.optim.AdamW.step = step
"""


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_when_one_rank_dies_or_hangs_the_other_exits_with_a_message(corpus, tokenizer_dir, tmp_path, fault):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(_RANK_FAULT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(hooks), SF_RANK_FAULT=fault)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "scratchformer.training", "pretrain"]  # fmt: skip
    flags = as_flags(train_files=str(corpus["train"]), validation_files=str(corpus["validation"]),
                     tokenizer=tokenizer_dir, size="tiny", hidden_size=32, block_size=32, max_train_steps=10,
                     per_device_train_batch_size=4, report_to="none", save_steps=2, eval_steps=100,
                     output_dir=tmp_path / "out", ddp_timeout=5)  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run([*launch, *flags], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode != 0
    # Rank 0 (the survivor) names the cause and the way back, instead of hanging forever.
    assert "error: process 0 of 2 lost contact with the others" in proc.stderr, proc.stderr[-4000:]
    assert "--resume" in proc.stderr and "--ddp_timeout 5 s" in proc.stderr
    if fault == "hang":
        assert "timed out" in proc.stderr.lower()
        assert took < 60, took  # the 5 s collective timeout fired, not the 30 min default
    assert (tmp_path / "out" / "checkpoints" / "step-000002" / STATE_FILE).is_file()  # saved before the fault


# ------------------------------------------------------------------------------------------------
# The disk fills up while saving
# ------------------------------------------------------------------------------------------------


def _disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    import accelerate.checkpointing as ckpt

    real_save, writes = ckpt.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        writes.append(f)
        if "step-000004" in str(f):  # the second checkpoint: a partial file, then no space
            Path(f).write_bytes(b"\0" * 64)
            raise _disk_full(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save", save_until_the_disk_is_full)
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=8, save_steps=2, eval_steps=100)
    assert main(_flags(cfg)) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    assert "could not write checkpoint" in err and "step-000004" in err and "is full" in err, err
    assert f"the previous checkpoint, {tmp_path / 'checkpoints' / 'step-000002'}, is kept" in err
    assert "Free space" in err and "--resume" in err
    # The previous checkpoint is whole and resumable; the partial one is gone, nothing half-written remains.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    check_weights(tmp_path / "checkpoints" / "step-000002")
    assert not (tmp_path / "model").exists()

    monkeypatch.setattr(ckpt, "save", real_save)  # space freed: --resume carries on
    result = train(dataclasses.replace(cfg, resume="auto"))
    assert result["steps"] == 8 and sorted(logged_losses(tmp_path)) == list(range(1, 9))


def test_disk_full_while_writing_the_model_keeps_checkpoints_and_the_earlier_model(
    corpus, tokenizer_dir, tmp_path, monkeypatch
):
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=2, eval_steps=100)
    train(cfg)
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def save_pretrained_disk_full(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 64)
        raise _disk_full(Path(directory) / "model.safetensors")

    monkeypatch.setattr(ScratchformerForCausalLM, "save_pretrained", save_pretrained_disk_full)
    with pytest.raises(OSError, match=r"could not write the model directory .*is full") as info:
        train(dataclasses.replace(cfg, max_train_steps=4, resume="auto"))
    assert info.value.errno == errno.ENOSPC
    assert "step-000004, is kept" in str(info.value) and "is untouched" in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == earlier
    assert not (tmp_path / ".model.tmp").exists() and not list(tmp_path.glob("model.replaced-*"))
    check_weights(tmp_path / "checkpoints" / "step-000004")  # the new weights survive in the checkpoint


# ------------------------------------------------------------------------------------------------
# Non-finite loss: --on_nonfinite skip leaves the step out and says which
# ------------------------------------------------------------------------------------------------


def _nan_on_calls(monkeypatch, bad_calls: set[int]) -> None:
    real_forward, calls = ScratchformerForCausalLM.forward, []

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if out.loss is not None:  # training forwards only (evaluation computes its own loss)
            calls.append(1)
            if len(calls) in bad_calls:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ScratchformerForCausalLM, "forward", forward)


def test_skip_mode_leaves_out_non_finite_steps_and_names_them(corpus, tokenizer_dir, tmp_path, monkeypatch, caplog):
    _nan_on_calls(monkeypatch, {5, 6})
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=10, save_steps=4, eval_steps=100,
                     on_nonfinite="skip")  # fmt: skip
    with caplog.at_level("WARNING"):
        result = train(cfg)
    assert result["skipped_steps"] == [5, 6]
    assert "step 5: non-finite loss or gradient; this step's update was skipped" in caplog.text
    losses = logged_losses(tmp_path)
    assert losses[5] is None and losses[6] is None
    # Had a NaN gradient reached the weights, every later loss would be NaN too.
    assert all(v is not None and v == v for step, v in losses.items() if step not in (5, 6))
    model = AutoModelForCausalLM.from_pretrained(result["output_dir"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((tmp_path / "checkpoints" / "step-000008" / STATE_FILE).read_text())["skipped_steps"] == [5, 6]


def test_stop_mode_points_to_skip_mode(corpus, tokenizer_dir, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {3})
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=6, save_steps=2, eval_steps=100)
    with pytest.raises(FloatingPointError, match=r"nan by step 3.*step-000002, is kept.*--on_nonfinite skip"):
        train(cfg)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]


def test_resume_reads_accelerate_state_with_weights_only(corpus, tokenizer_dir, tmp_path, monkeypatch):
    """Optimizer and RNG state are pickles: accelerate 1.x reads them with torch.load(weights_only=True)
    (numpy's array reconstructors allow-listed); nothing in a checkpoint may run code on --resume."""
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=2, eval_steps=100)
    train(cfg)
    real_load, seen = torch.load, []

    def load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    train(dataclasses.replace(cfg, max_train_steps=3, resume="auto"))
    assert seen and all(w is True for w in seen), seen
