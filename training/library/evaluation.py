"""Scoring a saved causal LM on text: the numbers pretraining reports, for any checkpoint.

`evaluate_checkpoint` loads a model directory (ours or a stock `LlamaForCausalLM` / `GPT2LMHeadModel`),
packs the text into blocks exactly as pretraining packs its validation text (`packing.tokenize_and_pack`),
and scores them with pretraining's own `metrics.evaluate`: loss in nats per token, perplexity, bits per
byte. `run_harness` runs EleutherAI's lm-evaluation-harness tasks on the same directory, when installed.
`scratchformer eval` is the command on top.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .data import check_not_empty, load_text_dataset, rows_are_documents
from .errors import UserError
from .files import write_atomically
from .generation import best_device, load
from .metrics import evaluate
from .packing import collate_blocks, token_byte_lengths, tokenize_and_pack

DEFAULT_MAX_BLOCK_SIZE = 1024  # a block size read from a model's positions is capped here (run_clm's cap)
LM_EVAL_MISSING = "--tasks runs EleutherAI's lm-evaluation-harness, which is not installed here: pip install lm-eval"


@dataclass
class EvalConfig:
    """What `scratchformer eval` scores: a model directory on one text source."""

    model: str
    validation_files: list[str] | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    validation_split: str = "validation"
    text_column: str = "text"
    block_size: int | None = None
    per_device_eval_batch_size: int = 8
    max_eval_samples: int | None = None
    trust_remote_code: bool = False
    # Documents kept apart, as pretraining keeps them by default: each document scored alone.
    document_masking: bool = True


def check_eval_config(cfg: EvalConfig) -> None:
    """Fail on inconsistent settings before anything is loaded."""
    if cfg.validation_files and cfg.dataset_name:
        raise UserError("give --validation_files or --dataset_name, not both")
    for key in ("block_size", "per_device_eval_batch_size", "max_eval_samples"):
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise UserError(f"--{key} must be a positive integer, got {value}")
    if cfg.block_size is not None and cfg.block_size < 2:
        raise UserError(f"--block_size must be at least 2 (a block predicts its tokens 1..L-1), got {cfg.block_size}")


def model_positions(config: Any) -> int | None:
    """The longest sequence a model config accepts (`max_position_embeddings`, GPT-2's `n_positions`)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_block_size(model_dir: str | os.PathLike, config: Any) -> int:
    """The block size the checkpoint was pretrained with (its training_args.json), else its positions
    capped at 1024."""
    args_file = Path(model_dir) / "training_args.json"
    if args_file.is_file():
        try:
            block = json.loads(args_file.read_text(encoding="utf-8")).get("block_size")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            block = None
        if isinstance(block, int) and not isinstance(block, bool) and block >= 2:
            return block
    return min(model_positions(config) or DEFAULT_MAX_BLOCK_SIZE, DEFAULT_MAX_BLOCK_SIZE)


def describe_source(cfg: EvalConfig) -> str:
    if cfg.validation_files:
        return "files " + ", ".join(cfg.validation_files)
    if cfg.dataset_name:
        config = f" ({cfg.dataset_config_name})" if cfg.dataset_config_name else ""
        return f"split {cfg.validation_split!r} of dataset {cfg.dataset_name}{config}"
    return "the validation split of the embedded default corpus (Python's help topics, pydoc_data)"


def evaluation_blocks(cfg: EvalConfig, tokenizer: Any, block_size: int):
    """The text of `cfg` packed into `block_size`-token blocks, as pretraining packs validation text."""
    if cfg.validation_files:
        text = load_text_dataset(files=cfg.validation_files, text_column=cfg.text_column)
    elif cfg.dataset_name:
        text = load_text_dataset(dataset=cfg.dataset_name, dataset_config=cfg.dataset_config_name,
                                 split=cfg.validation_split, text_column=cfg.text_column)  # fmt: skip
    else:
        text = load_text_dataset(split="validation")
    blocks = tokenize_and_pack(text, tokenizer, block_size, rows_are_documents=rows_are_documents(cfg.validation_files),
                               document_masking=cfg.document_masking, split="validation")  # fmt: skip
    check_not_empty(blocks, "evaluation", block_size)
    if cfg.max_eval_samples is not None:
        blocks = blocks.select(range(min(cfg.max_eval_samples, len(blocks))))
    return blocks


def evaluate_checkpoint(cfg: EvalConfig, device: str | None = None) -> dict[str, Any]:
    """Loss (nats/token), perplexity, bits per byte, tokens and bytes scored of `cfg.model` on `cfg`'s
    text, computed as pretraining computes its validation figures; with what was scored."""
    check_eval_config(cfg)
    model, tokenizer = load(cfg.model, device, cfg.trust_remote_code)
    block_size = cfg.block_size or default_block_size(cfg.model, model.config)
    positions = model_positions(model.config)
    if positions is not None and block_size > positions:
        raise UserError(
            f"--block_size {block_size} is longer than the model's {positions} positions; lower --block_size"
        )
    blocks = evaluation_blocks(cfg, tokenizer, block_size)
    loader = DataLoader(blocks.with_format("torch"), batch_size=cfg.per_device_eval_batch_size,
                        collate_fn=collate_blocks)
    byte_lengths = token_byte_lengths(tokenizer).to(model.device)
    metrics = evaluate(model, loader, None, byte_lengths)
    return {
        **metrics,
        "eval_blocks": len(blocks),
        "block_size": block_size,
        "model": str(cfg.model),
        "model_class": type(model).__name__,
        "validation_data": describe_source(cfg),
    }


def require_lm_eval() -> None:
    """Raise a one-line `UserError` when lm-evaluation-harness is not importable."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(LM_EVAL_MISSING)


def parse_tasks(tasks: str) -> list[str]:
    """`"a, b"` -> ["a", "b"]; refuses an empty list."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks needs task names, comma-separated (e.g. --tasks hellaswag,arc_easy)")
    return names


def run_harness(
    model_dir: str | os.PathLike,
    tasks: Sequence[str],
    batch_size: int = 8,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, dict[str, Any]]:
    """lm-evaluation-harness `tasks` on `model_dir` through `lm_eval.simple_evaluate(model="hf")`:
    task -> {metric: value}, numbers and strings only. The tasks' own data is lm-eval's to fetch."""
    require_lm_eval()
    import lm_eval

    import scratchformer.modeling  # noqa: F401  (registers our Auto classes: no remote code in-process)

    model_args = {"pretrained": str(model_dir), "trust_remote_code": trust_remote_code}
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), batch_size=batch_size,
                                  device=device or best_device())  # fmt: skip
    results = (out or {}).get("results", {})
    return {
        task: {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        for task, metrics in results.items()
    }


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse an --output_file that cannot be written, before the evaluation runs."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"--output_file {out} is a directory; name a file (e.g. {out / 'results.json'})")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--output_file {out}: {parent} is a file, not a directory")


def write_json_atomically(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """`data` as strict JSON at `path` (a non-finite number is null), written under a temporary name
    beside it and renamed into place."""
    out = Path(path)
    check_output_file(out)
    return write_atomically(out, json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
