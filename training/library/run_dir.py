"""Everything a pretraining run writes under --output_dir, each written so that a kill at any moment
leaves what a reader opens complete:

    checkpoints/step-NNNNNN/  accelerate state for --resume, written as .step-NNNNNN.tmp and renamed;
                              old ones beyond --save_total_limit renamed away before they are deleted
    metrics.jsonl             one record per logging step and evaluation; a resumed run drops the
                              records logged after its checkpoint (and a line torn by the kill)
    model/                    the Hugging Face directory, written as .model.tmp and renamed; an
                              earlier run's model is moved aside, never deleted
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import accelerate
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from transformers import GenerationConfig

from scratchformer.tokenization import END_ID, SPECIAL_TOKENS

from .files import atomic_output, make_weights_readable, write_atomically
from .layout import RunLayout
from .mechanisms import tracker_scalars
from .model_card import render_model_card
from .model_dir import check_weights

if TYPE_CHECKING:
    from scratchformer.modeling import ScratchformerConfig

    from .pretrain_config import PretrainConfig

logger = get_logger(__name__)  # accelerate's: it knows which process speaks

CHECKPOINT_RE = re.compile(r"step-(\d+)")


ConfigT = TypeVar("ConfigT")  # a run's dataclass of flags (PretrainConfig)
STATE_FILE = "trainer_state.json"  # our own counters, beside accelerate's files in each checkpoint
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's name for an FSDP model's sharded state


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to --output_dir {out}: {e.strerror or e}") from None


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints that finished writing (renamed from their temporary name), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_RE.fullmatch(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.fullmatch(p.name).group(1)))


def checkpoint_to_resume(resume: str | None, root: Path) -> Path | None:
    if resume is None:
        if complete_checkpoints(root):
            raise ValueError(
                f"{root} already holds checkpoints of an earlier run: pass --resume to continue it, or choose "
                "another --output_dir (nothing was changed)"
            )
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        if not found:
            logger.warning(f"--resume: no complete checkpoint in {root}; starting from scratch", main_process_only=True)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE} in it)")
    return path


class _DropTiedWeightNotice(logging.Filter):
    """accelerate warns "Removed shared tensor {'lm_head.weight'} while saving" at every checkpoint of
    a model with tied embeddings: safetensors stores a shared tensor once, and `load_state` ties it
    back (a resumed run equals the uninterrupted one: tests/training/test_pretrain_resume.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def quiet_accelerate_checkpointing():
    """accelerate's save_state/load_state log a line per file at INFO, and the tied-weights notice
    above; the run logs one line per checkpoint of its own instead."""
    names = ("accelerate.checkpointing", "accelerate.accelerator", "accelerate.utils.other")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    drop = _DropTiedWeightNotice()
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
            lg.removeFilter(drop)


def save_checkpoint(accelerator: Accelerator, root: Path, state: dict, keep: int) -> Path:
    """`accelerator.save_state` into `root/step-NNNNNN`, written as `.step-NNNNNN.tmp` and renamed
    once every process has finished; then all but the newest `keep` complete checkpoints (0: all)
    are removed."""
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".{final.name}.tmp"
    if final.exists():  # this step was saved already (a resumed run ending where it resumed)
        return final
    if accelerator.is_main_process:
        for leftover in root.glob(".step-*.tmp"):  # of a run killed while saving or while removing an old one
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with quiet_accelerate_checkpointing():
            accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        write_loader_states_once(accelerator, tmp)
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint is never left to look like one
        found = complete_checkpoints(root)
        kept = f"the previous checkpoint, {found[-1]}, is kept" if found else "no earlier checkpoint exists"
        raise write_error(e, f"checkpoint {final}", kept, root) from e
    if accelerator.is_main_process:
        os.replace(tmp, final)
        logger.info(f"checkpoint saved: {final}", main_process_only=True)
        for old in complete_checkpoints(root)[: -keep if keep else 0]:
            # renamed first, so a kill part way through the removal cannot leave a half-deleted
            # directory that still carries a checkpoint's name (and its trainer_state.json)
            doomed = root / f".{old.name}.removed.tmp"
            os.replace(old, doomed)
            shutil.rmtree(doomed)
    accelerator.wait_for_everyone()
    return final


def write_loader_states_once(accelerator: Accelerator, folder: Path) -> None:
    """The data loaders' states in the checkpoint `folder`, as the main process holds them, written
    by the main process alone once every process has saved (under a temporary name, then renamed).

    accelerate's `save_state` writes the weights, the optimizer and the samplers from the main
    process only, but has *every* process `torch.save` its own loaders' states to the same files
    (`dl_state_dict.bin`, `dl_state_dict_<i>.bin`), so on a shared file system the process that
    writes last wins. Under the dispatching loader that reads a stream (the main process reads it
    for all and hands each process its share) only the main process's loader ever moves: any other
    process's state is that of a stream never read, and a resume from it starts the stream again at
    its first block. Which process finished `save_state` last depended on timing, so a run over
    several processes resumed bit for bit or on other data by chance; this write makes the main
    process's state the one kept, whatever the order."""
    if accelerator.num_processes == 1 or not accelerator.is_main_process:
        return
    for i, loader in enumerate(accelerator._dataloaders):
        if not getattr(loader, "use_stateful_dataloader", False):
            continue
        path = folder / ("dl_state_dict.bin" if i == 0 else f"dl_state_dict_{i}.bin")  # accelerate's names
        if not path.exists():
            raise RuntimeError(
                f"accelerate {accelerate.__version__} saved no {path.name} in {folder} for data loader {i}: its "
                "checkpoint layout has changed, and the data's position could not be made the main process's; "
                "install an accelerate within the range scratchformer declares"
            )
        with atomic_output(path) as partial:
            torch.save(loader.state_dict(), partial)


def write_error(e: OSError, what: str, kept: str, where: Path) -> OSError:
    """An OSError that says what was being written, whether the disk is full, and what survives."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk holding {where} is full ({e.strerror or e})"
        fix = "Free space there (or lower --save_total_limit, or use another --output_dir), then --resume"
    else:
        cause, fix = f"{e.strerror or e}", "Fix the cause, then --resume"
    return OSError(e.errno, f"could not write {what}: {cause}; the partial files were removed and {kept}. {fix}")


def with_flags_of_resumed_run(cfg: ConfigT, given: set[str]) -> tuple[ConfigT, list[str]]:
    """`--resume` with few or none of the run's flags: every field the command line does not set
    (`given`: the field names it does) is taken from the flags the checkpoint's run was started
    with, so `scratchformer pretrain --output_dir runs/x --resume` continues the run as it was.
    Returns the config and the names of the fields taken."""
    if cfg.resume is None:
        return cfg, []
    root = RunLayout(Path(cfg.output_dir)).checkpoints
    found = complete_checkpoints(root) if cfg.resume == "auto" else [Path(cfg.resume)]
    state_file = found[-1] / STATE_FILE if found else None
    if state_file is None or not state_file.is_file():
        return cfg, []  # nothing to resume from: train() says so
    state = json.loads(state_file.read_text())
    flags = flags_of_older_releases(state.get("flags") or {})
    plan = state.get("plan") or {}  # the run's numbers as resolved (0.4 and earlier wrote the lr into its flags)
    if flags.get("learning_rate") is None and plan.get("learning_rate") is not None:
        flags["learning_rate"] = plan["learning_rate"]  # the peak it trained at, whatever a size's default is now
    names = {f.name for f in dataclasses.fields(cfg)} - {"resume", "output_dir"} - given
    taken = {k: v for k, v in flags.items() if k in names and v != getattr(cfg, k)}
    # The checkpoint is chosen here, once: train() resumes from this one and does not search again.
    return dataclasses.replace(cfg, **taken, resume=str(found[-1])), sorted(taken)



def flags_of_older_releases(flags: dict) -> dict:
    """A checkpoint's flags, completed with what its release did when it predates a flag. Before
    --optimizer existed (scratchformer 0.3 and earlier; before 0.3 no flags were saved at all) every
    run was AdamW + cosine, and size mini's peak lr was 1e-3, not today's 2e-3 (newer checkpoints
    record the lr as resolved). Before --query_key_optimizer (0.4), Muon moved the query and key
    projections too. Before --document_masking (0.3 and earlier) blocks had no document boundaries."""
    old = {"document_masking": False, **flags}
    if "optimizer" not in old:
        old = {"optimizer": "adamw", "lr_scheduler_type": "cosine", **old}
        if old.get("learning_rate") is None and old.get("size") == "mini":
            old["learning_rate"] = 1e-3
    if old["optimizer"] == "muon" and "query_key_optimizer" not in old:
        old["query_key_optimizer"] = "muon"
    return old


def load_checkpoint(accelerator: Accelerator, path: Path, signature: dict) -> dict:
    sharded = (path / SHARDED_MODEL_DIR).is_dir()  # written by FSDP: one DCP directory, every process's shards
    under_fsdp = accelerator.distributed_type == DistributedType.FSDP
    if sharded != under_fsdp:
        how = "by FSDP (sharded)" if sharded else "without FSDP (one model.safetensors)"
        raise ValueError(
            f"--resume {path}: the checkpoint was written {how}, and this run is "
            f"{'' if under_fsdp else 'not '}launched with FSDP; resume it the way it was launched "
            "(FSDP: accelerate launch --config_file training/accelerate_fsdp.yaml ...)"
        )
    if not sharded:
        check_weights(path)  # a damaged model.safetensors is named, not a deserialization traceback
    state = json.loads((path / STATE_FILE).read_text())
    saved = state.get("run", {})
    if saved.get("model_config") != signature["model_config"]:
        raise ValueError(
            f"--resume {path}: the checkpoint holds a different model than the flags describe "
            f"({_differences(saved.get('model_config') or {}, signature['model_config'])}); give the run's "
            "original model flags, or none (a bare --resume takes them from the checkpoint)"
        )
    # Where the checkpoint's signature does not name it, its flags do, as completed for older releases.
    flags = flags_of_older_releases(state.get("flags") or {})
    for key in ("optimizer", "query_key_optimizer"):
        trained_with = saved.get(key) or flags.get(key)
        if key == "query_key_optimizer" and signature["optimizer"] != "muon":
            break  # AdamW moves every parameter alike
        if trained_with != signature[key]:
            raise ValueError(
                f"--resume {path}: the checkpoint was trained with --{key} {trained_with} and this run asks for "
                f"--{key} {signature[key]}; an optimizer's state cannot carry over to another. Resume with "
                f"--{key} {trained_with} (a bare --resume takes it from the checkpoint), or start a new run"
            )
    if "data" in saved and saved["data"] != signature["data"]:  # checkpoints from before 0.3 lack it
        raise ValueError(
            f"--resume {path}: the training data changed since the checkpoint "
            f"({_data_differences(saved['data'], signature['data'])}), so the run cannot continue where it "
            "stopped; resume with the original data, or start a new run in another --output_dir"
        )
    if saved.get("max_train_steps") not in (None, signature["max_train_steps"]):
        logger.warning(
            f"--resume: the run now ends at step {signature['max_train_steps']} (it was started for "
            f"{saved['max_train_steps']}): the learning-rate schedule follows the new length from here",
            main_process_only=True,
        )
    changed = [k for k in ("samples_per_step", "block_size", "seed") if saved.get(k) != signature[k]]
    if saved.get("document_masking", False) != signature.get("document_masking", False):
        changed.append("document_masking")
    if changed:
        logger.warning(
            f"--resume: {', '.join(changed)} changed since the checkpoint, so the data order will "
            "differ from the original run's",
            main_process_only=True,
        )
    with quiet_accelerate_checkpointing():
        accelerator.load_state(str(path))
    return state


def _differences(saved: dict, now: dict) -> str:
    """`num_hidden_layers 4 in the checkpoint, 2 now; ...` for the keys whose values differ."""
    keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    return "; ".join(f"{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in keys[:6])


def _data_differences(saved: list[dict], now: list[dict]) -> str:
    def name(d: dict) -> str:
        return d.get("file") or d.get("dataset") or "the embedded corpus"

    before, after = {name(d): d for d in saved}, {name(d): d for d in now}
    parts = [f"{n} is no longer given" for n in before if n not in after]
    parts += [f"{n} is new" for n in after if n not in before]
    for n in before.keys() & after.keys():
        if before[n] != after[n]:
            b, a = before[n], after[n]
            what = f"{b['bytes']} bytes then, {a['bytes']} now" if b.get("bytes") != a.get("bytes") else "its content"
            parts.append(f"{n} changed ({what})")
    return "; ".join(parts)


def log_record(accelerator: Accelerator, path: Path, record: dict, track: bool = True) -> None:
    """One JSON line appended to `path` (main process), and its numbers sent to the trackers (with
    `track`; per-head tables as one scalar per head)."""
    if track:
        accelerator.log(tracker_scalars(record), step=record["step"])
    if accelerator.is_main_process:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drops the records a killed run logged after its checkpoint, and a line torn by the kill;
    the shortened log is written beside the old one and renamed over it."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a write cut short
        if isinstance(record, dict) and record.get("step", 0) <= after_step:
            kept.append(line)
    if len(kept) != len(lines):
        write_atomically(path, "".join(line + "\n" for line in kept))


def scalars(config: dict) -> dict:
    """Tracker hyperparameters must be scalars: lists become strings, None is left out."""
    return {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in config.items() if v is not None}


def write_model_dir(
    accelerator: Accelerator, model, tokenizer, out: Path, cfg: PretrainConfig, run_config: dict, result: dict
) -> Path:
    """Write `out/model`, the directory stock transformers loads, atomically; an earlier run's
    model is moved aside (`model.replaced-<time>`), never deleted."""
    layout = RunLayout(out)
    final, tmp = layout.model, out / f".{layout.MODEL}.tmp"
    state_dict = accelerator.get_state_dict(model)  # every process: under FSDP this gathers the shards
    # A compiled model's keys carry torch.compile's wrapper prefix; the saved names must not.
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    # A gathered FSDP state dict holds tied weights as separate copies, which safetensors would store
    # twice: the tied copy (the LM head) is left for from_pretrained to tie back, as an unsharded save does.
    config = accelerator.unwrap_model(model, keep_torch_compile=False).config
    if getattr(config, "tie_word_embeddings", False):
        tied = getattr(accelerator.unwrap_model(model, keep_torch_compile=False), "_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}
    if accelerator.is_main_process:
        try:
            write_model_files(accelerator, model, tokenizer, state_dict, out, tmp, cfg, run_config, result)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            found = complete_checkpoints(layout.checkpoints)
            kept = f"the last checkpoint, {found[-1]}, is kept" if found else "no checkpoint exists"
            if final.exists():
                kept += f", and the earlier {final} is untouched"
            raise write_error(e, f"the model directory {final}", kept, out) from e
        if final.exists():
            final.rename(out / f"{layout.MODEL}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        make_weights_readable(tmp)
        os.replace(tmp, final)
        logger.info(f"model written to {final}", main_process_only=True)
    accelerator.wait_for_everyone()
    return final


def write_model_files(accelerator, model, tokenizer, state_dict, out, tmp, cfg, run_config, result) -> None:
    """Everything in the model directory, written into `tmp` (main process only)."""
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    # The model classes carry `_auto_class` and a full `auto_map`, so save_pretrained also
    # copies the remote-code files: stock transformers loads the directory on its own.
    unwrapped.generation_config = generation_config(unwrapped.config, tokenizer)
    # The fused loss was this loop's choice; whoever loads the model gets the stock behaviour
    # (training outputs carry logits), which every Hugging Face trainer can use.
    unwrapped.config.fused_lm_loss = False
    unwrapped.save_pretrained(tmp, state_dict=state_dict, max_shard_size=cfg.max_shard_size)
    tokenizer.save_pretrained(tmp)
    (tmp / "training_args.json").write_text(json.dumps(run_config, indent=2) + "\n")
    for picture in RunLayout.PICTURES:  # the model card shows them
        if (out / picture).exists():
            shutil.copy(out / picture, tmp / picture)
    (tmp / "README.md").write_text(render_model_card(unwrapped.config, cfg, run_config, result))


def generation_config(config: ScratchformerConfig, tokenizer=None) -> GenerationConfig:
    """Sampling defaults that read well from a small model: a little below temperature 1, with the
    unlikely tail cut (top-k and nucleus), as hub models ship theirs.

    The length: `max_length` is the context (max_position_embeddings), so a caller that names no
    length (a pipeline, `generate()` with defaults) stops where the model's positions end, as hub
    models bound theirs. A caller's own limit wins: `max_new_tokens` or `max_length`, as lm-eval's
    max_gen_toks passes it. No `max_new_tokens` is saved: it would win over a caller's `max_length`.

    The end: `</s>`, and the end of a chat turn (`<|end|>`) when the tokenizer has one, so that a chat
    (the pipeline's, transformers' server's) ends where the assistant's turn does."""
    eos = [config.eos_token_id] if config.eos_token_id is not None else []
    end_of_turn = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[END_ID]) if tokenizer is not None else None
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id and end_of_turn not in eos:
        eos.append(end_of_turn)
    return GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        max_length=config.max_position_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        pad_token_id=config.pad_token_id,
    )


def push_model_dir(model_dir: Path, repo_id: str, step: int) -> str:
    """Upload the model directory to the hub (creating the repository if needed); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(
        folder_path=str(model_dir), repo_id=repo_id, commit_message=f"scratchformer pretrain, step {step}"
    )
    return str(url)
