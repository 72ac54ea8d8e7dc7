"""`scratchformer pretrain`: text in, a Hugging Face model directory out; one CPU or many GPUs.

    scratchformer pretrain --output_dir runs/mini                      # default corpus, default sizes
    scratchformer pretrain --train_files a.txt --validation_files b.txt --size small --max_train_steps 2000
    scratchformer pretrain --output_dir runs/mini --resume             # continue the newest checkpoint

The same module under `accelerate launch` (data parallel; the flags after `pretrain` are the same):

    accelerate launch --multi_gpu --num_processes 4 -m scratchformer.training pretrain --mixed_precision bf16 ...
    accelerate launch --config_file training/accelerate_fsdp.yaml --num_processes 8 -m scratchformer.training pretrain
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m scratchformer.training pretrain ...

(The last is several CPU processes joined by gloo: accelerate's own `--cpu` flag starts only one.)
Several machines: add `--num_machines N --machine_rank R --main_process_ip HOST` on each, with
`--output_dir` on a file system they share.

`train(cfg)` reads like nanoGPT's loop: accelerator, tokenizer, data, model, optimizer, `prepare`,
loop, save. accelerate owns devices, DDP/FSDP, mixed precision and gradient accumulation; this file
owns only what a pretraining run decides. What lands in `--output_dir`:

    model/                   the artifact: config.json (with auto_map), model.safetensors, tokenizer,
                             generation_config.json, the remote-code .py files, README.md, training_args.json
    tokenizer/               the tokenizer trained for this run (unless --tokenizer was given)
    checkpoints/step-NNNNNN/ accelerate state for --resume (the last --save_total_limit kept)
    metrics.jsonl            one JSON line per logging step and per evaluation
    loss_curve.png           train and validation loss against steps
    logs/                    tracker output (tensorboard, wandb)

Every directory a reader might open (a checkpoint, model/) is written under a temporary name and
renamed once complete, so a crash or a kill at any moment leaves the last complete one usable.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig, HfArgumentParser, PreTrainedTokenizerBase

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.training.checkpoint_io import check_weights, load_tokenizer_dir
from scratchformer.training.data import BUILDERS, load_text_dataset
from scratchformer.training.model_card import render_model_card
from scratchformer.training.optim import lr_at, param_groups
from scratchformer.training.packing import token_byte_lengths, tokenize_and_pack

logger = get_logger(__name__)

# Named model sizes; any explicit size flag overrides its entry. "tiny" is for tests and smoke
# runs, "mini" is nanoGPT's CPU Shakespeare recipe (minutes on a laptop), "small" its GPU recipe,
# "base" GPT-2 small's shape.
SIZES: dict[str, dict] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, block_size=128, learning_rate=2e-3),
    "mini": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, block_size=256, learning_rate=1e-3),
    "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, block_size=256, learning_rate=1e-3),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, block_size=1024, learning_rate=6e-4),
}

CHECKPOINT_RE = re.compile(r"step-(\d+)")
STATE_FILE = "trainer_state.json"  # our own counters, beside accelerate's files in each checkpoint
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"
EXIT_LOST_PROCESS = 3  # another process of a multi-process run died or hung


@dataclass
class PretrainConfig:
    """Every flag of `scratchformer pretrain`; `None` means "derived" (see each help)."""

    # -- data --
    train_files: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Local training files, all of one type: {', '.join(sorted(BUILDERS))}. .txt files "
            "are running text (read by line, joined back exactly); other rows are documents, "
            "framed as <s> text </s>. With no data flag: the embedded default corpus."
        },
    )
    validation_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local validation files. Default: the dataset's validation split, or a held-out part of "
            "the training text."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hugging Face hub dataset (needs network) or a local dataset folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split: str = field(
        default="validation", metadata={"help": "Split of --dataset_name used for validation, when it has one."}
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training rows held out for validation when none is given: random "
            "documents (seeded by --seed), or the last lines of .txt files (nanoGPT's split)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the corpus lazily (no cache, flat memory) for corpora larger than disk or RAM. "
            "Needs --max_train_steps."
        },
    )
    streaming_holdout_documents: int = field(
        default=1000, metadata={"help": "With --streaming and no validation split: hold out this many leading rows."}
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "With --streaming: blocks in the shuffle buffer."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many validation blocks (unset: all)."}
    )

    # -- tokenizer --
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "A tokenizer directory or hub name. Default: train a byte-level BPE on the training "
            "text into OUTPUT_DIR/tokenizer first."
        },
    )
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size when training the tokenizer."})

    # -- model --
    preset: Literal["paper", "gpt2", "llama"] = field(
        default="llama", metadata={"help": "Architecture family: the 2017 paper, GPT-2 or Llama."}
    )
    size: Literal["tiny", "mini", "small", "base"] = field(
        default="mini",
        metadata={
            "help": "Model size: "
            + "; ".join(
                f"{k}={v['num_hidden_layers']}x{v['hidden_size']}, {v['num_attention_heads']} heads, context "
                f"{v['block_size']}, lr {v['learning_rate']}"
                for k, v in SIZES.items()
            )
            + ". Size flags override it."
        },
    )
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Layers (unset: from --size)."})
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (unset: from --size)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Query heads (unset: from --size)."})
    num_key_value_heads: int | None = field(
        default=None, metadata={"help": "Key/value heads; fewer than the query heads is grouped-query attention."}
    )
    intermediate_size: int | None = field(
        default=None, metadata={"help": "Feed-forward width (unset: from the MLP type)."}
    )
    block_size: int | None = field(default=None, metadata={"help": "Training context in tokens (unset: from --size)."})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Longest sequence the model accepts (unset: --block_size)."}
    )
    position_embedding: Literal["sinusoidal", "learned", "rope"] | None = field(
        default=None, metadata={"help": "Where positions come from (unset: the preset's)."}
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on embeddings, residual branches and attention (unset: the preset's)."},
    )

    # -- optimization --
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    total_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Blocks per optimizer step over all processes; sets --gradient_accumulation_steps to "
            "total / (per-device batch x processes), which must divide exactly."
        },
    )
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate (unset: from --size)."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "The cosine ends at learning_rate x this."})
    num_warmup_steps: int | None = field(
        default=None, metadata={"help": "Linear warmup steps (unset: 5%% of the training steps)."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on matrices only."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training blocks."})
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps; overrides --num_train_epochs."}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Autocast precision (unset: accelerate's config, else no)."}
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (inductor)."})
    fused_lm_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the LM head and the loss together, chunk by chunk, so the full logits never exist "
            "(faster, less memory). A choice of this loop: the saved model's config keeps it off."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, ~30%% slower."}
    )
    seed: int = field(default=42, metadata={"help": "Seeds weights, data order and dropout."})
    on_nonfinite: Literal["stop", "skip"] = field(
        default="stop",
        metadata={
            "help": "A NaN/inf training loss: `stop` the run (the last good checkpoint is kept), or `skip` that "
            "optimizer step's update and go on (costs one host sync per micro-batch)."
        },
    )
    ddp_timeout: int = field(
        default=1800,
        metadata={
            "help": "Seconds a process waits for the others in a collective operation before failing (several "
            "processes only): a process that died then stops the run instead of hanging it forever."
        },
    )

    # -- output --
    output_dir: str = field(default="runs/pretrain", metadata={"help": "Where the run writes everything."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr, tokens/s every this many steps."})
    eval_steps: int = field(default=200, metadata={"help": "Evaluate every this many steps (and at the end)."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every this many steps (and at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep this many newest checkpoints (0: keep all)."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a checkpoint: a step-N directory, or `auto` (also plain --resume) for "
            "the newest complete one in OUTPUT_DIR/checkpoints.",
            "nargs": "?",
            "const": "auto",
            "aliases": ["--resume_from_checkpoint"],
        },
    )
    report_to: str = field(
        default="auto",
        metadata={
            "help": "Trackers, comma-separated (tensorboard, wandb, ...), `none`, or `auto`: tensorboard "
            "when installed."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Upload the final model directory to this hub repository (needs a login)."}
    )
    max_shard_size: str = field(default="2GB", metadata={"help": "Split model.safetensors into shards of this size."})

    def __post_init__(self) -> None:
        for key in ("train_files", "validation_files"):  # train(PretrainConfig(train_files="a.txt")) reads well too
            if isinstance(getattr(self, key), (str, os.PathLike)):
                setattr(self, key, [str(getattr(self, key))])


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(cfg: PretrainConfig) -> dict:
    """Pretrain a model as `cfg` says; return the final metrics and where the model was written."""
    started = time.perf_counter()
    _check_config(cfg)
    out, sizes = Path(cfg.output_dir), model_sizes(cfg)
    _check_writable(out)
    ckpt_root, metrics_path = out / "checkpoints", out / "metrics.jsonl"

    # -- accelerator: devices, processes, precision, accumulation --
    # accelerate keeps precision and the compile backend in a process-wide singleton that a later
    # Accelerator() inherits: a second run in one process (a notebook, tests) would silently keep the
    # first one's --mixed_precision and --torch_compile, or refuse its own. Each run starts from its
    # flags (the process group, in PartialState, is kept), as transformers' TrainingArguments does.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=_trackers(cfg.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dynamo_backend="inductor" if cfg.torch_compile else None,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
    )
    resume_dir = _resume_dir(cfg.resume, ckpt_root)  # after the Accelerator: it may log
    accum = accelerator.gradient_accumulation_steps = _accumulation_steps(cfg, accelerator.num_processes)
    samples_per_step = cfg.per_device_train_batch_size * accelerator.num_processes * accum
    block_size, learning_rate = sizes["block_size"], sizes["learning_rate"]
    tokens_per_step = samples_per_step * block_size
    set_seed(cfg.seed)

    # -- tokenizer and data --
    tokenizer = _tokenizer(cfg, accelerator, out, resuming=resume_dir is not None)
    train_loader, val_loader, steps_per_epoch, data_description = _data(cfg, accelerator, tokenizer, samples_per_step)
    max_steps = cfg.max_train_steps or max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    warmup = cfg.num_warmup_steps if cfg.num_warmup_steps is not None else round(0.05 * max_steps)

    # -- model and optimizer --
    model = ScratchformerForCausalLM(build_model_config(cfg, tokenizer))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2)
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    byte_lengths = token_byte_lengths(tokenizer).to(accelerator.device)

    # -- where we start: fresh, or exactly where a checkpoint left off --
    signature = {
        "model_config": model_config_dict(accelerator.unwrap_model(model)),
        "samples_per_step": samples_per_step,
        "block_size": block_size,
        "seed": cfg.seed,
    }
    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "micro_total": 0, "train_seconds": 0.0, "eval": None}
    if resume_dir is not None:
        state = _load_checkpoint(accelerator, resume_dir, signature)
        logger.info(f"resuming from {resume_dir} at step {state['step']}", main_process_only=True)
    if accelerator.is_main_process:
        _truncate_jsonl(metrics_path, after_step=state["step"])  # a killed run may have logged past its checkpoint
    run_config = {
        **dataclasses.asdict(cfg),
        **sizes,
        **data_description,
        "gradient_accumulation_steps": accum,
        "num_processes": accelerator.num_processes,
        "max_train_steps": max_steps,
        "num_warmup_steps": warmup,
        "mixed_precision": accelerator.mixed_precision,
    }
    accelerator.init_trackers("scratchformer-pretrain", config=_scalars(run_config))
    logger.info(
        f"{n_params / 1e6:.2f}M parameters; {max_steps} steps of {samples_per_step} blocks x {block_size} tokens; "
        f"{accelerator.num_processes} process(es), accumulation {accum}, mixed precision {accelerator.mixed_precision}",
        main_process_only=True,
    )

    # -- the loop --
    step, epoch, micro_in_epoch, micro_total = (state[k] for k in ("step", "epoch", "micro_in_epoch", "micro_total"))
    # A run resumed at its very end (killed while writing model/) reports the checkpoint's loss.
    last_eval, last_loss, grad_norm, stopping = state["eval"], state.get("train_loss"), None, False
    skipped, bad_window = state.get("skipped_steps", []), False  # --on_nonfinite skip: steps left out
    meter = _LossMeter(accelerator, step, tokens_per_step)
    bar = tqdm(
        total=max_steps,
        initial=step,
        desc="pretrain",
        unit="step",
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    with _StopOnSignal() as stop:
        while step < max_steps and not stopping:
            train_loader.set_epoch(epoch)  # the epoch seeds the order: the same on every process and every resume
            batches = accelerator.skip_first_batches(train_loader, micro_in_epoch) if micro_in_epoch else train_loader
            finished_epoch = True
            for batch in batches:
                # Dropout masks drawn from (seed, micro-batch, rank) alone: a resumed run draws what the
                # uninterrupted one did, whatever else touched the generator meanwhile.
                torch.manual_seed(hash((cfg.seed, micro_total, accelerator.process_index)) & (2**63 - 1))
                lr = lr_at(
                    step,
                    max_lr=learning_rate,
                    warmup_steps=warmup,
                    total_steps=max_steps,
                    min_lr=learning_rate * cfg.min_lr_ratio,
                )
                with accelerator.accumulate(model):
                    ids_BL = batch["input_ids"]
                    loss = model(input_ids=ids_BL, labels=ids_BL, use_cache=False).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    finite = True
                    if cfg.on_nonfinite == "skip":
                        finite = _all_finite(accelerator, loss, grad_norm if accelerator.sync_gradients else None)
                        bad_window = bad_window or not finite
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    if bad_window and accelerator.sync_gradients:
                        optimizer.zero_grad(set_to_none=True)  # the update is skipped: nothing reaches the weights
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if finite:
                    meter.add(loss)
                micro_in_epoch, micro_total = micro_in_epoch + 1, micro_total + 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                if bad_window:
                    skipped.append(step)
                    bad_window = False
                    logger.warning(
                        f"step {step}: non-finite loss or gradient; this step's update was skipped "
                        f"(--on_nonfinite skip; {len(skipped)} skipped so far)",
                        main_process_only=True,
                    )
                final = step >= max_steps
                if accelerator.num_processes == 1:
                    stopping = stop.requested  # checked every step: there is no other process to agree with

                if final or stopping or any(step % n == 0 for n in (cfg.logging_steps, cfg.eval_steps, cfg.save_steps)):
                    last_loss, stop_anywhere, tokens_per_s = meter.read(step, stop.requested)
                    stopping = stopping or stop_anywhere
                    if not math.isfinite(last_loss) and cfg.on_nonfinite == "stop":
                        raise FloatingPointError(_non_finite_message(last_loss, step, ckpt_root))
                    record = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4) if steps_per_epoch else epoch,
                        "loss": round(last_loss, 6) if math.isfinite(last_loss) else None,
                        "lr": lr,
                        "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                        "tokens_seen": step * tokens_per_step,
                        "tokens_per_s": round(tokens_per_s, 1),
                    }
                    _log(accelerator, metrics_path, record)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                if final or stopping or step % cfg.eval_steps == 0:
                    last_eval = evaluate(model, val_loader, accelerator, byte_lengths)
                    _log(accelerator, metrics_path, {"step": step, **last_eval})
                    bar.write(
                        f"step {step}: validation loss {last_eval['eval_loss']:.4f}, perplexity "
                        f"{last_eval['eval_ppl']:.2f}, {last_eval['eval_bpb']:.4f} bits per byte"
                    )
                    meter.restart_clock()  # tokens/s measures training, not evaluation
                if final or stopping or step % cfg.save_steps == 0:
                    state = {
                        "step": step,
                        "epoch": epoch,
                        "micro_in_epoch": micro_in_epoch,
                        "micro_total": micro_total,
                        "eval": last_eval,
                        "run": signature,
                        "train_seconds": state["train_seconds"] + time.perf_counter() - started,
                        "skipped_steps": skipped,
                        "train_loss": last_loss,
                    }
                    save_checkpoint(accelerator, ckpt_root, state, keep=cfg.save_total_limit)
                    started = time.perf_counter()  # train_seconds now holds everything up to here
                    meter.restart_clock()  # nor saving
                if final or stopping:
                    finished_epoch = False
                    break
            if finished_epoch:
                epoch, micro_in_epoch = epoch + 1, 0
    bar.close()
    if stopping:
        logger.warning(f"stopped by a signal at step {step}; continue with --resume", main_process_only=True)

    # -- the artifact --
    result = {
        "output_dir": str(out / "model"),
        "run_dir": str(out),
        "steps": step,
        "max_train_steps": max_steps,
        "tokens_seen": step * tokens_per_step,
        "train_loss": last_loss,
        **(last_eval or {}),
        "parameters": n_params,
        "train_seconds": round(state["train_seconds"] + time.perf_counter() - started, 2),
        "interrupted": stopping,
        "skipped_steps": skipped,
    }
    if accelerator.is_main_process:
        result["has_loss_curve"] = _plot_curves(metrics_path, out / "loss_curve.png")
    write_model_dir(accelerator, model, tokenizer, out, cfg, run_config, result)
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub_url"] = push_model_dir(out / "model", cfg.push_to_hub, step)
    accelerator.end_training()
    return result


class _LossMeter:
    """The training loss summed on the device between logging steps, read (with the stop flags of
    every process) in one reduce: the loop's only host sync outside evaluation and saving."""

    def __init__(self, accelerator: Accelerator, step: int, tokens_per_step: int) -> None:
        self.accelerator, self.tokens_per_step = accelerator, tokens_per_step
        self.loss_sum = torch.zeros((), device=accelerator.device)
        self.count, self.step, self.clock = 0, step, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()  # no .item(): the device runs ahead of the host
        self.count += 1

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def read(self, step: int, stop_requested: bool) -> tuple[float, bool, float]:
        """(mean micro-batch loss over every process, whether any process was asked to stop, tokens/s)."""
        flag = torch.tensor(float(stop_requested), device=self.accelerator.device)
        loss_sum, stops = self.accelerator.reduce(torch.stack([self.loss_sum, flag]), reduction="sum").tolist()
        now = time.perf_counter()
        tokens_per_s = (step - self.step) * self.tokens_per_step / (now - self.clock)
        # nan when every micro-batch since the last read was skipped (--on_nonfinite skip)
        loss = loss_sum / (self.count * self.accelerator.num_processes) if self.count else math.nan
        self.loss_sum.zero_()
        self.count, self.step, self.clock = 0, step, now
        return loss, stops > 0, tokens_per_s


def evaluate(model, loader: DataLoader, accelerator: Accelerator, byte_lengths: torch.Tensor) -> dict:
    """Validation loss (nats per token), perplexity and bits per byte over every block of `loader`.

    Bits per byte divides the summed loss by the UTF-8 bytes the predicted tokens spell, so it
    measures the model and tokenizer together and compares across vocabularies; per-token loss
    does not (a bigger vocabulary predicts fewer, harder tokens).
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # nats, tokens, bytes
    with torch.no_grad():
        for batch in loader:
            ids_BL = batch["input_ids"]
            logits_BLV = model(input_ids=ids_BL, use_cache=False).logits
            # position t predicts token t+1
            nll_BL = F.cross_entropy(logits_BLV[:, :-1].float().transpose(1, 2), ids_BL[:, 1:], reduction="none")
            per_block_B3 = torch.stack(
                [nll_BL.sum(1), torch.full_like(nll_BL[:, 0], nll_BL.shape[1]), byte_lengths[ids_BL[:, 1:]].sum(1)],
                dim=1,
            ).double()
            # gather_for_metrics drops the blocks repeated to give every process equal batches.
            totals += accelerator.gather_for_metrics(per_block_B3).sum(0)
    model.train()
    nats, tokens, n_bytes = totals.tolist()  # host sync: once per evaluation
    loss = nats / tokens
    return {
        "eval_loss": round(loss, 6),
        "eval_ppl": round(math.exp(loss), 4) if loss < 700 else math.inf,
        "eval_bpb": round(nats / (math.log(2) * n_bytes), 6) if n_bytes else math.nan,
        "eval_tokens": int(tokens),
        "eval_bytes": int(n_bytes),
    }


# ----------------------------------------------------------------------------------------------
# Configuration: sizes, checks, the model config
# ----------------------------------------------------------------------------------------------


def model_sizes(cfg: PretrainConfig) -> dict:
    """The size preset with every explicitly given flag laid over it."""
    sizes = {**SIZES[cfg.size]}
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "block_size", "learning_rate"):
        if getattr(cfg, key) is not None:
            sizes[key] = getattr(cfg, key)
    sizes["max_position_embeddings"] = cfg.max_position_embeddings or sizes["block_size"]
    return sizes


def build_model_config(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> ScratchformerConfig:
    sizes = model_sizes(cfg)
    overrides = {
        k: getattr(cfg, k)
        for k in ("num_key_value_heads", "intermediate_size", "position_embedding")
        if getattr(cfg, k) is not None
    }
    if cfg.dropout is not None:
        overrides.update(embedding_dropout=cfg.dropout, hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout)
    return ScratchformerConfig.from_preset(
        cfg.preset,
        vocab_size=len(tokenizer),
        num_hidden_layers=sizes["num_hidden_layers"],
        hidden_size=sizes["hidden_size"],
        num_attention_heads=sizes["num_attention_heads"],
        max_position_embeddings=sizes["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id,
        fused_lm_loss=cfg.fused_lm_loss,  # this loop reads only the loss of a training step
        **overrides,
    )


def model_config_dict(model) -> dict:
    """The numbers that make two models interchangeable (a checkpoint is only resumable into its own)."""
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
        "position_embedding",
        "norm_type",
        "mlp_type",
    )
    return {k: getattr(model.config, k) for k in keys}


def _check_config(cfg: PretrainConfig) -> None:
    """Fail on inconsistent flags before anything slow runs."""
    if cfg.size not in SIZES:
        raise ValueError(f"--size {cfg.size!r} is not one of {', '.join(SIZES)}")
    counts = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "vocab_size",
        "shuffle_buffer_size",
        "total_batch_size",
        "max_train_steps",
        "max_eval_samples",
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "block_size",
    )
    for key in counts:
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"--{key} must be a positive integer, got {value}")
    if cfg.save_total_limit < 0:
        raise ValueError(f"--save_total_limit must be 0 (keep all) or more, got {cfg.save_total_limit}")
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {cfg.learning_rate}")
    if not 0.0 < cfg.validation_fraction < 1.0:
        raise ValueError(f"--validation_fraction must be between 0 and 1, got {cfg.validation_fraction}")
    if not cfg.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be positive, got {cfg.num_train_epochs}")
    if cfg.train_files and cfg.dataset_name:
        raise ValueError("give --train_files or --dataset_name, not both")
    if cfg.streaming and cfg.max_train_steps is None:
        raise ValueError("--streaming reads a corpus of unknown length: give --max_train_steps")
    sizes = model_sizes(cfg)
    if sizes["block_size"] < 2:
        raise ValueError(f"--block_size must be at least 2, got {sizes['block_size']}")
    if sizes["block_size"] > sizes["max_position_embeddings"]:
        raise ValueError(
            f"--block_size {sizes['block_size']} is longer than the model's positions (--max_position_embeddings "
            f"{sizes['max_position_embeddings']}): raise --max_position_embeddings or lower --block_size"
        )


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to --output_dir {out}: {e.strerror or e}") from None


def _accumulation_steps(cfg: PretrainConfig, num_processes: int) -> int:
    if cfg.total_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_pass = cfg.per_device_train_batch_size * num_processes
    if cfg.total_batch_size % per_pass:
        raise ValueError(
            f"--total_batch_size {cfg.total_batch_size} is not a multiple of --per_device_train_batch_size "
            f"{cfg.per_device_train_batch_size} x {num_processes} process(es) = {per_pass}; pick a total that "
            f"{per_pass} divides, or change the per-device batch"
        )
    return cfg.total_batch_size // per_pass


def _trackers(report_to: str) -> list[str]:
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if _installed("tensorboard") or _installed("tensorboardX") else []
    for name in names:
        if not _installed("tensorboard" if name == "tensorboard" else name):
            raise ValueError(f"--report_to {name}: the {name} package is not installed (pip install {name})")
    return names


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------
# Tokenizer and data
# ----------------------------------------------------------------------------------------------


def _tokenizer(cfg: PretrainConfig, accelerator: Accelerator, out: Path, resuming: bool) -> PreTrainedTokenizerBase:
    """The given tokenizer; or the run's own, trained once by the main process (and reused on resume)."""
    if cfg.tokenizer is not None:  # a local directory is checked first; anything else is a hub name
        if Path(cfg.tokenizer).exists():
            return load_tokenizer_dir(cfg.tokenizer)
        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    from scratchformer.training.tokenizer_cli import train_tokenizer

    tok_dir = out / "tokenizer"
    if accelerator.is_main_process and not (resuming and (tok_dir / "tokenizer.json").exists()):
        logger.info(f"training a {cfg.vocab_size}-token BPE tokenizer into {tok_dir}", main_process_only=True)
        train_tokenizer(
            tok_dir,
            files=cfg.train_files,
            dataset=cfg.dataset_name,
            dataset_config=cfg.dataset_config_name,
            text_column=cfg.text_column,
            vocab_size=cfg.vocab_size,
            max_length=model_sizes(cfg)["max_position_embeddings"],
            show_progress=False,
            overwrite=True,
        )
    accelerator.wait_for_everyone()
    return load_tokenizer_dir(tok_dir)


def _data(cfg: PretrainConfig, accelerator: Accelerator, tokenizer, samples_per_step: int) -> tuple:
    """(train loader, validation loader, steps per epoch or None when streaming, data description)."""
    block_size = model_sizes(cfg)["block_size"]
    with accelerator.main_process_first():  # rank 0 builds the datasets cache, the others then read it
        train_text, val_text, description = _load_text(cfg)
        train_ds, val_ds = (
            tokenize_and_pack(
                text,
                tokenizer,
                block_size,
                rows_are_documents=_documents(files),
                num_proc=cfg.preprocessing_num_workers,
                split=split,
            )
            for text, files, split in (
                (train_text, cfg.train_files, "train"),
                (val_text, cfg.validation_files or cfg.train_files, "validation"),
            )
        )
    _check_not_empty(train_ds, "training", block_size)
    _check_not_empty(val_ds, "validation", block_size)
    if cfg.max_eval_samples is not None:
        if not isinstance(val_ds, datasets.IterableDataset):
            # select, not take: datasets 3.0 raises when asked for more rows than there are.
            val_ds = val_ds.select(range(min(cfg.max_eval_samples, len(val_ds))))
        else:  # streamed: take stops where the stream does
            val_ds = val_ds.take(cfg.max_eval_samples)
    val_loader = DataLoader(val_ds.with_format("torch"), batch_size=cfg.per_device_train_batch_size)
    batch = cfg.per_device_train_batch_size
    if cfg.streaming:
        train_ds = train_ds.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer_size)
        return DataLoader(train_ds.with_format("torch"), batch_size=batch), val_loader, None, description
    if len(train_ds) < samples_per_step:
        raise ValueError(
            f"the training text packs into {len(train_ds)} blocks of {block_size} tokens, fewer than one optimizer "
            f"step takes ({batch} per device x {accelerator.num_processes} process(es) x "
            f"{accelerator.gradient_accumulation_steps} accumulation = {samples_per_step}); give more text, or "
            "lower the batch or --block_size"
        )
    sampler = EpochSampler(len(train_ds), seed=cfg.seed, multiple_of=samples_per_step)
    train_loader = DataLoader(train_ds.with_format("torch"), batch_size=batch, sampler=sampler, drop_last=True)
    return train_loader, val_loader, len(sampler) // samples_per_step, description


def _documents(files: list[str] | None) -> bool:
    """Rows of .txt files are lines of running text; every other source's rows are documents."""
    return not files or any(BUILDERS.get(Path(f).suffix.lower()) != "text" for f in files)


def _load_text(cfg: PretrainConfig) -> tuple:
    """(train, validation, description): the validation files or split if there is one, else a
    deterministic hold-out from the training rows."""
    common = dict(text_column=cfg.text_column, streaming=cfg.streaming)
    source = dict(files=cfg.train_files, dataset=cfg.dataset_name, dataset_config=cfg.dataset_config_name)
    if cfg.train_files:
        name = "files " + ", ".join(cfg.train_files)
    elif cfg.dataset_name:
        name = f"dataset {cfg.dataset_name}" + (f" ({cfg.dataset_config_name})" if cfg.dataset_config_name else "")
    else:
        name = "the embedded default corpus (Python's help topics, pydoc_data)"
    train = load_text_dataset(**source, split="train", **common)
    val = None
    if cfg.validation_files:
        val = load_text_dataset(files=cfg.validation_files, **common)
        how = "files " + ", ".join(cfg.validation_files)
    elif cfg.train_files is None:  # a named dataset, or the default corpus: try its validation split
        try:
            val = load_text_dataset(**source, split=cfg.validation_split, **common)
            how = f"split {cfg.validation_split!r} of the same source"
        except ValueError as e:
            if "split" not in str(e).lower():  # a missing split is expected; anything else is the user's to see
                raise
    if val is None and cfg.streaming:
        n = cfg.streaming_holdout_documents
        train, val = train.skip(n), train.take(n)
        how = f"the first {n} rows of the training source, held out"
    elif val is None:
        if len(train) < 2:
            raise ValueError(
                f"{len(train)} training row(s): too few to hold out validation text; give --validation_files"
            )
        # Documents are held out at random; lines of running text as one final stretch, as nanoGPT
        # does, so no validation line has its neighbours in the training set.
        documents = _documents(cfg.train_files)
        parts = train.train_test_split(test_size=cfg.validation_fraction, shuffle=documents, seed=cfg.seed)
        train, val = parts["train"], parts["test"]
        what = "documents, at random" if documents else "lines, at the end"
        how = f"{cfg.validation_fraction:.0%} of the training source's {what} (seed {cfg.seed}), held out"
    return train, val, {"train_data": name, "validation_data": how}


def _check_not_empty(ds, name: str, block_size: int) -> None:
    empty = next(iter(ds), None) is None if isinstance(ds, datasets.IterableDataset) else len(ds) == 0
    if empty:
        raise ValueError(
            f"the {name} text holds fewer than {block_size} tokens, not even one block of --block_size "
            f"{block_size}: give more text or lower --block_size"
        )


class EpochSampler(Sampler[int]):
    """A fresh permutation of the blocks each epoch, drawn from (seed, epoch) alone, cut to a whole
    number of optimizer steps.

    Depending on nothing but those two numbers is what lets a resumed run (or one with a
    different accumulation split of the same global batch) see exactly the same blocks in
    exactly the same order; cutting to whole steps gives every process the same number of batches
    and every step a full batch.
    """

    def __init__(self, num_blocks: int, seed: int, multiple_of: int) -> None:
        self.num_blocks, self.seed, self.epoch = num_blocks, seed, 0
        self.length = num_blocks // multiple_of * multiple_of

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard.set_epoch calls this
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_blocks, generator=generator)[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints that finished writing (renamed from their temporary name), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_RE.fullmatch(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.fullmatch(p.name).group(1)))


def _resume_dir(resume: str | None, root: Path) -> Path | None:
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
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint is never left to look like one
        found = complete_checkpoints(root)
        kept = f"the previous checkpoint, {found[-1]}, is kept" if found else "no earlier checkpoint exists"
        raise _write_error(e, f"checkpoint {final}", kept, root) from e
    if accelerator.is_main_process:
        os.replace(tmp, final)
        for old in complete_checkpoints(root)[: -keep if keep else 0]:
            # renamed first, so a kill part way through the removal cannot leave a half-deleted
            # directory that still carries a checkpoint's name (and its trainer_state.json)
            doomed = root / f".{old.name}.removed.tmp"
            os.replace(old, doomed)
            shutil.rmtree(doomed)
    accelerator.wait_for_everyone()
    return final


def _write_error(e: OSError, what: str, kept: str, where: Path) -> OSError:
    """An OSError that says what was being written, whether the disk is full, and what survives."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk holding {where} is full ({e.strerror or e})"
        fix = "Free space there (or lower --save_total_limit, or use another --output_dir), then --resume"
    else:
        cause, fix = f"{e.strerror or e}", "Fix the cause, then --resume"
    return OSError(e.errno, f"could not write {what}: {cause}; the partial files were removed and {kept}. {fix}")


def _load_checkpoint(accelerator: Accelerator, path: Path, signature: dict) -> dict:
    check_weights(path)  # a damaged model.safetensors is named, not a deserialization traceback
    state = json.loads((path / STATE_FILE).read_text())
    saved = state.get("run", {})
    if saved.get("model_config") != signature["model_config"]:
        raise ValueError(
            f"--resume {path}: the checkpoint holds a different model ({saved.get('model_config')}) than the flags "
            f"describe ({signature['model_config']}); use the run's original model flags"
        )
    changed = [k for k in ("samples_per_step", "block_size", "seed") if saved.get(k) != signature[k]]
    if changed:
        logger.warning(
            f"--resume: {', '.join(changed)} changed since the checkpoint, so the data order will "
            "differ from the original run's",
            main_process_only=True,
        )
    accelerator.load_state(str(path))
    return state


def _all_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm) -> bool:
    """Whether the loss (and gradient norm, at a step's last micro-batch) is finite on every process:
    one reduce, so all processes skip the same step (a host sync, paid only with --on_nonfinite skip)."""
    values = [loss.detach().float().reshape(())]
    if grad_norm is not None:
        values.append(torch.as_tensor(grad_norm, dtype=torch.float32, device=loss.device).reshape(()))
    bad = (~torch.isfinite(torch.stack(values))).any().float()
    return accelerator.reduce(bad, reduction="sum").item() == 0


def _non_finite_message(loss: float, step: int, root: Path) -> str:
    found = complete_checkpoints(root)
    keep = f"the last good checkpoint, {found[-1]}, is kept" if found else "no checkpoint was written yet"
    return (
        f"the training loss became {loss} by step {step}: stopping; {keep}. Lower --learning_rate, or raise "
        "--num_warmup_steps, then --resume (or start afresh); or pass --on_nonfinite skip to leave such steps out"
    )


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next step boundary, which then
    saves a checkpoint and writes the model directory; a second signal stops at once."""

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (again to abort)", file=sys.stderr)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------------------------
# Logging and the artifact
# ----------------------------------------------------------------------------------------------


def _log(accelerator: Accelerator, path: Path, record: dict) -> None:
    accelerator.log(
        {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}, step=record["step"]
    )
    if accelerator.is_main_process:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, after_step: int) -> None:
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
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _plot_curves(metrics_path: Path, png: Path) -> bool:
    """`scratchformer inspect run`'s picture of the log (loss, lr, tokens/s, gradient norm), when
    matplotlib (an optional dependency) is installed."""
    from scratchformer.training.inspect import InspectError, plot_run

    try:
        plot_run(metrics_path, png)
    except (ImportError, InspectError) as e:
        logger.warning(f"no loss curve: {e}", main_process_only=True)
        return False
    return True


def _scalars(config: dict) -> dict:
    """Tracker hyperparameters must be scalars: lists become strings, None is left out."""
    return {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in config.items() if v is not None}


def write_model_dir(
    accelerator: Accelerator, model, tokenizer, out: Path, cfg: PretrainConfig, run_config: dict, result: dict
) -> Path:
    """Write `out/model`, the directory stock transformers loads, atomically; an earlier run's
    model is moved aside (`model.replaced-<time>`), never deleted."""
    final, tmp = out / "model", out / ".model.tmp"
    state_dict = accelerator.get_state_dict(model)  # every process: under FSDP this gathers the shards
    # A compiled model's keys carry torch.compile's wrapper prefix; the saved names must not.
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    if accelerator.is_main_process:
        try:
            _write_model_files(accelerator, model, tokenizer, state_dict, out, tmp, cfg, run_config, result)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            found = complete_checkpoints(out / "checkpoints")
            kept = f"the last checkpoint, {found[-1]}, is kept" if found else "no checkpoint exists"
            if final.exists():
                kept += f", and the earlier {final} is untouched"
            raise _write_error(e, f"the model directory {final}", kept, out) from e
        if final.exists():
            final.rename(out / f"model.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(tmp, final)
        logger.info(f"model written to {final}", main_process_only=True)
    accelerator.wait_for_everyone()
    return final


def _write_model_files(accelerator, model, tokenizer, state_dict, out, tmp, cfg, run_config, result) -> None:
    """Everything in the model directory, written into `tmp` (main process only)."""
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    # The model classes carry `_auto_class` and a full `auto_map`, so save_pretrained also
    # copies the remote-code files: stock transformers loads the directory on its own.
    unwrapped.generation_config = generation_config(unwrapped.config)
    # The fused loss was this loop's choice; whoever loads the model gets the stock behaviour
    # (training outputs carry logits), which every Hugging Face trainer can use.
    unwrapped.config.fused_lm_loss = False
    unwrapped.save_pretrained(tmp, state_dict=state_dict, max_shard_size=cfg.max_shard_size)
    tokenizer.save_pretrained(tmp)
    (tmp / "training_args.json").write_text(json.dumps(run_config, indent=2) + "\n")
    if (out / "loss_curve.png").exists():
        shutil.copy(out / "loss_curve.png", tmp / "loss_curve.png")
    (tmp / "README.md").write_text(render_model_card(unwrapped.config, cfg, run_config, result))


def generation_config(config: ScratchformerConfig) -> GenerationConfig:
    """Sampling defaults that read well from a small model: a little below temperature 1, with the
    unlikely tail cut (top-k and nucleus), as hub models ship theirs. No length: a saved
    `max_new_tokens` would override the limit a caller sets another way (lm-eval's `max_gen_toks`,
    a pipeline's `max_length`), so the length is each caller's to choose."""
    return GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(
        PretrainConfig,
        prog="scratchformer pretrain",
        description="Pretrain a scratchformer on text and write a Hugging Face model directory to "
        "OUTPUT_DIR/model. Runs as one process, or under `accelerate launch` on several processes, GPUs "
        "or machines. With no data flags it trains on the embedded default corpus.",
    )


def _lost_a_process(e: RuntimeError) -> bool:
    """Whether `e` is a collective operation failing because another process is gone or stuck."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e).lower()
    signs = ("timed out", "timeout", "connection reset", "connection closed", "broken pipe", "nccl", "gloo")
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and (isinstance(e, dist_error) or any(s in text for s in signs))


def _lost_a_process_message(e: RuntimeError, cfg: PretrainConfig) -> str:
    found = complete_checkpoints(Path(cfg.output_dir) / "checkpoints")
    resume = f"the newest complete checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
    return (
        f"process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')} lost contact with the others: "
        f"a collective operation failed ({' '.join(str(e).split())[:300]}). Another process most likely died "
        f"(out of memory, killed, a crash: see its own error above) or hung; waits are cut off after --ddp_timeout "
        f"{cfg.ddp_timeout} s. {resume}; fix the cause and relaunch with --resume"
    )


def main(argv: list[str] | None = None) -> int:
    (cfg,) = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    try:
        result = train(cfg)
    except (ValueError, OSError, FloatingPointError, datasets.exceptions.DatasetsError) as e:
        if os.environ.get("RANK", "0") == "0":  # one message, not one per process
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1 if isinstance(e, FloatingPointError) else 2
    except RuntimeError as e:
        if not _lost_a_process(e):
            raise
        print(f"error: {_lost_a_process_message(e, cfg)}", file=sys.stderr, flush=True)
        return EXIT_LOST_PROCESS
    summary = {
        k: result[k] for k in ("output_dir", "steps", "tokens_seen", "eval_loss", "eval_ppl", "eval_bpb") if k in result
    }
    if PartialState().is_main_process:
        print(json.dumps(summary, indent=2))
    return EXIT_INTERRUPTED if result["interrupted"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
