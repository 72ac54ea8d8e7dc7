"""The run directory's writers and readers, one function at a time, in process: what a checkpoint,
the log and the model directory look like after each call, the messages a user reads, and what a
killed run leaves. (The whole-run views of the same code, with kills and full disks, are in
test_faults.py and test_pretrain_resume.py; those spawn processes and train, so the mutation run
of run_dir.py uses these.)"""

from __future__ import annotations

import errno
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from safetensors import safe_open
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.tokenization import END_ID, SPECIAL_TOKENS
from scratchformer.training.library import run_dir
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.pretraining import PretrainConfig
from scratchformer.training.library.run_dir import (
    STATE_FILE,
    check_writable,
    checkpoint_to_resume,
    complete_checkpoints,
    flags_of_older_releases,
    generation_config,
    load_checkpoint,
    log_record,
    push_model_dir,
    quiet_accelerate_checkpointing,
    save_checkpoint,
    scalars,
    truncate_jsonl,
    with_flags_of_resumed_run,
    write_error,
    write_loader_states_once,
    write_model_dir,
)

LOGGER = "scratchformer.training.library.run_dir"


def said(caplog) -> list[str]:
    """The run's log lines, without the "[RANK 0] " that newer accelerate releases put first."""
    return [re.sub(r"^\[RANK \d+\] ", "", r.getMessage()) for r in caplog.records]


@pytest.fixture
def tiny_model(tiny_config):
    """`tiny_model(**overrides)`: conftest's tiny config as a causal LM, the same weights every time."""

    def make(**overrides) -> ScratchformerForCausalLM:
        torch.manual_seed(0)
        return ScratchformerForCausalLM(tiny_config(**overrides))

    return make


def make_checkpoint(step: Path, state: dict | None = None) -> Path:
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text(json.dumps(state or {"step": 0}))
    return step


# -- --output_dir and which checkpoint to resume ---------------------------------------------------


def test_check_writable_accepts_an_existing_directory_and_names_the_cause_when_it_cannot_write(tmp_path):
    check_writable(tmp_path)  # exists already: fine, and the probe is gone
    check_writable(tmp_path / "a" / "b")  # parents are made
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError) as caught:
        check_writable(blocker / "run")
    # The cause in words, not Python's "[Errno 20] ..." with the path a second time.
    assert str(caught.value) == f"cannot write to --output_dir {blocker / 'run'}: Not a directory"


def test_complete_checkpoints_are_the_renamed_ones_in_step_order(tmp_path):
    root = tmp_path / "checkpoints"
    assert complete_checkpoints(root) == []  # no directory yet
    nine, ten = make_checkpoint(root / "step-9"), make_checkpoint(root / "step-10")
    (root / "step-11").mkdir()  # no trainer_state.json: accelerate's files only, never finished
    make_checkpoint(root / ".step-12.tmp")  # still being written when the run was killed
    make_checkpoint(root / "notes")
    assert complete_checkpoints(root) == [nine, ten]  # by step number, not by name (step-10 < step-9)


def test_which_checkpoint_a_run_resumes(tmp_path, caplog):
    Accelerator(cpu=True)  # accelerate's logger asks which process speaks
    root = tmp_path / "checkpoints"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert checkpoint_to_resume(None, root) is None
    assert checkpoint_to_resume("auto", root) is None
    assert said(caplog) == [
        f"--resume: no complete checkpoint in {root}; starting from scratch"
    ]
    caplog.clear()
    make_checkpoint(root / "step-000002")
    last = make_checkpoint(root / "step-000004")
    assert checkpoint_to_resume("auto", root) == last and not caplog.records
    assert checkpoint_to_resume(str(root / "step-000002"), root) == root / "step-000002"
    with pytest.raises(ValueError, match="already holds checkpoints of an earlier run: pass --resume"):
        checkpoint_to_resume(None, root)
    (root / "step-000006").mkdir()
    with pytest.raises(FileNotFoundError, match=r"step-000006: not a complete checkpoint \(no trainer_state.json"):
        checkpoint_to_resume(str(root / "step-000006"), root)


def test_accelerates_checkpoint_chatter_is_quieted_and_restored(caplog):
    caplog.set_level(logging.INFO)
    chatty = logging.getLogger("accelerate.checkpointing")
    before = chatty.level
    with quiet_accelerate_checkpointing():
        chatty.info("Model weights saved in /x/model.safetensors")
        chatty.warning("Removed shared tensor {'lm_head.weight'} while saving.")
        chatty.warning("a warning of its own")
    chatty.info("after the checkpoint")
    assert [r.getMessage() for r in caplog.records] == ["a warning of its own", "after the checkpoint"]
    assert chatty.level == before and not chatty.filters


# -- checkpoints -----------------------------------------------------------------------------------


def test_save_checkpoint_renames_when_done_keeps_the_newest_and_clears_leftovers(tmp_path, tiny_model):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_model())
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / ".step-000000.tmp").mkdir()  # a save killed part way
    (root / ".step-000000.tmp" / "model.safetensors").write_text("partial")
    (root / ".step-999999.tmp").write_text("")  # a leftover that cannot be removed as a tree
    first = save_checkpoint(accelerator, root, {"step": 1}, keep=2)
    assert first == root / "step-000001"
    assert json.loads((first / STATE_FILE).read_text()) == {"step": 1}
    with safe_open(str(first / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), model.model.embed_tokens.weight)
    assert not (root / ".step-000000.tmp").exists()  # removed; the one that is not a tree did not stop the save
    for step in (2, 3):
        assert save_checkpoint(accelerator, root, {"step": step}, keep=2) == root / f"step-{step:06d}"
    # Beyond --save_total_limit 2 the oldest is gone, with no half-removed directory left behind.
    assert sorted(p.name for p in root.iterdir()) == [".step-999999.tmp", "step-000002", "step-000003"]
    # A resumed run that ends where it resumed saves nothing twice.
    assert save_checkpoint(accelerator, root, {"step": 3, "other": 1}, keep=2) == root / "step-000003"
    assert json.loads((root / "step-000003" / STATE_FILE).read_text()) == {"step": 3}
    save_checkpoint(accelerator, root, {"step": 4}, keep=0)  # 0 keeps every checkpoint
    assert [p.name for p in complete_checkpoints(root)] == ["step-000002", "step-000003", "step-000004"]


class _Loader:
    """A data loader as accelerate's save_state sees it: stateful or not."""

    def __init__(self, state: dict | None):
        self.state = state
        if state is not None:
            self.use_stateful_dataloader = True

    def state_dict(self) -> dict:
        return self.state


def test_the_main_process_writes_the_loader_states_of_a_multi_process_checkpoint(tmp_path):
    """accelerate has every process save its own loaders' states to the same files; the main process's
    are rewritten over them, under accelerate's names (the first loader's file has no number)."""
    loaders = [_Loader({"read": 5}), _Loader(None), _Loader({"read": 7})]
    for name in ("dl_state_dict.bin", "dl_state_dict_2.bin"):
        torch.save({"read": 0}, tmp_path / name)  # what another process wrote last

    def states() -> list:
        return [torch.load(tmp_path / n) for n in ("dl_state_dict.bin", "dl_state_dict_2.bin")]

    one_process = SimpleNamespace(num_processes=1, is_main_process=True, _dataloaders=loaders)
    write_loader_states_once(one_process, tmp_path)  # nothing to correct: accelerate's files stay
    assert states() == [{"read": 0}, {"read": 0}]
    other_rank = SimpleNamespace(num_processes=2, is_main_process=False, _dataloaders=loaders)
    write_loader_states_once(other_rank, tmp_path)
    assert states() == [{"read": 0}, {"read": 0}]
    main_rank = SimpleNamespace(num_processes=2, is_main_process=True, _dataloaders=loaders)
    write_loader_states_once(main_rank, tmp_path)
    assert states() == [{"read": 5}, {"read": 7}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl_state_dict.bin", "dl_state_dict_2.bin"]
    (tmp_path / "dl_state_dict_2.bin").unlink()  # a layout this accelerate does not write
    with pytest.raises(RuntimeError, match="saved no dl_state_dict_2.bin .* for data loader 2: its checkpoint layout"):
        write_loader_states_once(main_rank, tmp_path)


def test_write_errors_say_what_was_written_whether_the_disk_is_full_and_what_is_kept():
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    full = write_error(disk_full, "checkpoint c/step-000004", "c/step-000002 is kept", Path("runs/x"))
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert full.strerror == (
        "could not write checkpoint c/step-000004: the disk holding runs/x is full (No space left on device); the "
        "partial files were removed and c/step-000002 is kept. Free space there (or lower --save_total_limit, or use "
        "another --output_dir), then --resume"
    )
    other = write_error(OSError(errno.EACCES, "Permission denied"), "the model directory m", "no checkpoint exists",
                        Path("runs/x"))  # fmt: skip
    assert other.errno == errno.EACCES and other.strerror == (
        "could not write the model directory m: Permission denied; the partial files were removed and no "
        "checkpoint exists. Fix the cause, then --resume"
    )


# -- resuming --------------------------------------------------------------------------------------


def test_a_resume_with_nothing_to_resume_from_keeps_the_command_lines_flags(tmp_path):
    cfg = PretrainConfig(output_dir=str(tmp_path), resume="auto", learning_rate=1e-4)
    assert with_flags_of_resumed_run(cfg, {"output_dir"}) == (cfg, [])  # no checkpoints yet
    named = PretrainConfig(output_dir=str(tmp_path), resume=str(tmp_path / "step-000009"))
    assert with_flags_of_resumed_run(named, {"output_dir"}) == (named, [])  # train() names the missing one
    fresh = PretrainConfig(output_dir=str(tmp_path))
    assert with_flags_of_resumed_run(fresh, {"output_dir"}) == (fresh, [])


def test_the_flags_of_older_releases_are_completed_as_those_releases_ran():
    assert flags_of_older_releases({}) == dict(document_masking=False, optimizer="adamw", lr_scheduler_type="cosine")
    assert flags_of_older_releases({"size": "mini"})["learning_rate"] == 1e-3  # mini's peak before 0.4
    assert flags_of_older_releases({"size": "mini", "learning_rate": 5e-4})["learning_rate"] == 5e-4
    assert "learning_rate" not in flags_of_older_releases({"size": "small"})  # its size's default then and now
    assert flags_of_older_releases({"optimizer": "muon"})["query_key_optimizer"] == "muon"
    newer = {"optimizer": "muon", "query_key_optimizer": "adamw", "document_masking": True, "learning_rate": None}
    assert flags_of_older_releases(newer) == newer


@pytest.fixture
def saved_run(tmp_path, tiny_model):
    """A checkpoint of a tiny model (AdamW), with the run signature it was saved under."""
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_model())
    signature = {"model_config": {"hidden_size": 32}, "optimizer": "adamw", "query_key_optimizer": None,
                 "samples_per_step": 8, "block_size": 32, "seed": 0, "document_masking": False,
                 "max_train_steps": 10, "data": [{"file": "train.jsonl", "bytes": 100}]}  # fmt: skip
    path = save_checkpoint(accelerator, tmp_path, {"step": 2, "run": signature, "flags": {"optimizer": "adamw"}}, 0)
    return accelerator, model, path, signature


def test_a_checkpoint_loads_back_and_the_changes_a_resume_allows_are_named(saved_run, caplog):
    accelerator, model, path, signature = saved_run
    caplog.set_level(logging.WARNING, logger=LOGGER)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert load_checkpoint(accelerator, path, signature)["step"] == 2
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert not caplog.records  # nothing changed, nothing said
    load_checkpoint(accelerator, path, {**signature, "seed": 1, "document_masking": True})
    assert said(caplog) == [
        "--resume: seed, document_masking changed since the checkpoint, so the data order will differ from the "
        "original run's"
    ]


def test_a_checkpoint_from_before_document_masking_resumes_without_a_warning(saved_run, caplog):
    accelerator, _, path, signature = saved_run
    state = json.loads((path / STATE_FILE).read_text())
    del state["run"]["document_masking"]  # as 0.3 wrote it: no boundaries, as a run without the flag
    (path / STATE_FILE).write_text(json.dumps(state))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    load_checkpoint(accelerator, path, signature)
    assert not caplog.records


def test_a_damaged_checkpoint_is_named_before_accelerate_reads_it(saved_run):
    accelerator, _, path, signature = saved_run
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    with pytest.raises(UserError, match="model.safetensors"):
        load_checkpoint(accelerator, path, signature)


# -- the log ---------------------------------------------------------------------------------------


class _Tracker(GeneralTracker):
    """A tracker as `--report_to` plugs one in, keeping what it is sent."""

    name = "kept"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self):
        super().__init__()
        self.sent = []

    @property
    def tracker(self):
        return self.sent

    def store_init_configuration(self, values: dict) -> None:
        pass

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.sent.append((values, step))


def test_a_log_record_is_one_json_line_and_its_numbers_go_to_the_trackers(tmp_path):
    tracker = _Tracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("run")
    log = tmp_path / "metrics.jsonl"
    log_record(accelerator, log, {"step": 3, "loss": 1.5})
    log_record(accelerator, log, {"step": 3, "attention": [[0.5]]}, track=False)  # the snapshot: the file only
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"step": 3, "loss": 1.5}, {"step": 3, "attention": [[0.5]]}
    ]
    assert tracker.sent == [({"loss": 1.5}, 3)]


def test_resume_drops_log_records_past_the_checkpoint_and_a_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 5.0 - s} for s in range(1, 6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + "[3]\n" + '{"step": 6, "lo')  # killed mid-line
    truncate_jsonl(log, after_step=3)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # written aside, then renamed
    inode = log.stat().st_ino
    truncate_jsonl(log, after_step=3)  # nothing to drop: the file is left as it is, not rewritten
    assert log.stat().st_ino == inode
    truncate_jsonl(tmp_path / "snapshots.jsonl", after_step=3)  # a run that logged none
    assert not (tmp_path / "snapshots.jsonl").exists()


def test_tracker_hyperparameters_are_scalars():
    assert scalars({"train_files": ["a.txt", "b.txt"], "tokenizer": None, "seed": 0, "size": "mini"}) == {
        "train_files": "a.txt, b.txt", "seed": 0, "size": "mini"
    }


# -- the model directory ---------------------------------------------------------------------------


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_the_model_directory_is_what_stock_transformers_loads_and_an_earlier_one_is_kept(
    tmp_path, tokenizer, monkeypatch, tiny_model
):
    monkeypatch.setattr(run_dir, "render_model_card", lambda *a: "the card\n")  # its content: test_pretrain.py
    accelerator = Accelerator(cpu=True)
    model = tiny_model(vocab_size=len(tokenizer), fused_lm_loss=True)
    cfg = PretrainConfig(output_dir=str(tmp_path))
    # A --torch_compile run hands over the compiled wrapper: its keys and attributes are the model's.
    final = write_model_dir(accelerator, torch.compile(model), tokenizer, tmp_path, cfg, {"seed": 0}, {})
    assert final == tmp_path / "model"
    loaded = ScratchformerForCausalLM.from_pretrained(final)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: stored once
    assert loaded.config.fused_lm_loss is False  # whoever loads it gets logits, as every trainer expects
    saved = GenerationConfig.from_pretrained(final)
    end = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[END_ID])
    assert (saved.temperature, saved.eos_token_id) == (0.8, [model.config.eos_token_id, end])
    assert json.loads((final / "training_args.json").read_text()) == {"seed": 0}
    assert (final / "README.md").read_text() == "the card\n"
    # A second run into the same --output_dir moves the first model aside.
    write_model_dir(accelerator, model, tokenizer, tmp_path, cfg, {"seed": 1}, {})
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("model.replaced-")]
    assert len(aside) == 1 and json.loads((aside[0] / "training_args.json").read_text()) == {"seed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", aside[0].name])


def test_tied_weights_gathered_as_separate_copies_are_stored_once(tmp_path, tokenizer, monkeypatch, tiny_model):
    """Under FSDP, `get_state_dict` gathers the shards into new tensors, the tied LM head a copy of the
    embedding, which save_pretrained would store twice (the real two-process run: test_pretrain_fsdp.py)."""
    monkeypatch.setattr(run_dir, "render_model_card", lambda *a: "the card\n")
    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(accelerator, "get_state_dict", lambda m: {k: v.clone() for k, v in m.state_dict().items()})
    model = tiny_model(vocab_size=len(tokenizer))
    final = write_model_dir(accelerator, model, tokenizer, tmp_path, PretrainConfig(output_dir=str(tmp_path)), {}, {})
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    loaded = ScratchformerForCausalLM.from_pretrained(final)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)  # tied back on loading
    untied = tiny_model(vocab_size=len(tokenizer), tie_word_embeddings=False)
    final = write_model_dir(accelerator, untied, tokenizer, tmp_path, PretrainConfig(output_dir=str(tmp_path)), {}, {})
    assert torch.equal(ScratchformerForCausalLM.from_pretrained(final).lm_head.weight, untied.lm_head.weight)


def test_a_full_disk_while_writing_the_model_leaves_the_earlier_one_and_says_so(
    tmp_path, tokenizer, monkeypatch, tiny_model
):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")  # before anything was written

    monkeypatch.setattr(run_dir, "write_model_files", disk_full)
    accelerator = Accelerator(cpu=True)
    cfg = PretrainConfig(output_dir=str(tmp_path))
    with pytest.raises(OSError) as caught:
        write_model_dir(accelerator, tiny_model(), tokenizer, tmp_path, cfg, {}, {})
    assert caught.value.strerror == (
        f"could not write the model directory {tmp_path / 'model'}: the disk holding {tmp_path} is full (No space left "
        "on device); the partial files were removed and no checkpoint exists. Free space there (or lower "
        "--save_total_limit, or use another --output_dir), then --resume"
    )
    assert list(tmp_path.iterdir()) == []


def _tokenizer_without_end_of_turn() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    vocabulary = models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocabulary), unk_token="<unk>")


def test_generation_ends_at_eos_and_at_the_end_of_a_chat_turn(tokenizer, tiny_model):
    config = tiny_model().config
    end = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[END_ID])
    eos = config.eos_token_id
    assert generation_config(config).eos_token_id == eos  # one end: the id itself, as hub models save it
    assert generation_config(config, tokenizer).eos_token_id == [eos, end]
    assert generation_config(config, _tokenizer_without_end_of_turn()).eos_token_id == eos  # not its unk id
    config.eos_token_id = None
    assert generation_config(config, tokenizer).eos_token_id == end
    assert generation_config(config).eos_token_id is None
    sampling = generation_config(config)
    assert (sampling.do_sample, sampling.top_k, sampling.top_p, sampling.max_length) == (
        True, 50, 0.95, config.max_position_embeddings
    )


def test_push_to_hub_uploads_the_model_directory(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id, commit_message))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = push_model_dir(tmp_path, "me/tiny", step=7)
    assert url == "https://huggingface.co/me/tiny"
    assert calls == [
        ("create", "me/tiny", True),
        ("upload", str(tmp_path), "me/tiny", "scratchformer pretrain, step 7"),
    ]
