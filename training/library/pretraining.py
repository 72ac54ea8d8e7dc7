"""Pretraining: text in, a Hugging Face model directory out; one CPU or many GPUs.

`train(cfg)` reads like nanoGPT's loop: accelerator, tokenizer, data, model, optimizer, `prepare`,
the loop, the model directory. accelerate owns devices, DDP/FSDP, mixed precision and gradient
accumulation; this module decides only what a pretraining run decides. The robustness (kill-safe
checkpoints, exact resume, sync-free logging, signals, non-finite losses, lost processes) lives in
the pieces the loop names: `loop` and `run_dir`. What lands in --output_dir:

    model/                   the artifact: config.json (with auto_map), model.safetensors, tokenizer,
                             generation_config.json, the remote-code .py files, README.md, training_args.json
    tokenizer/               the tokenizer trained for this run (unless --tokenizer was given)
    checkpoints/step-NNNNNN/ accelerate state for --resume (the last --save_total_limit kept)
    metrics.jsonl            one JSON line per logging step and per evaluation (with the mechanism metrics)
    attention_snapshots.jsonl  the probe's attention maps at each evaluation (--mechanism_metrics)
    loss_curve.png           the run's curves (when a `draw_curves` function is given)
    timeline.png             how the mechanisms formed (`draw_timeline`; `scratchformer inspect timeline`)
    logs/                    tracker output (tensorboard, wandb)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import datasets
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM

from .data import EpochSampler, check_not_empty, data_fingerprint, load_text_dataset, rows_are_documents
from .layout import RunLayout
from .loop import LossMeter, NonFiniteGuard, StopOnSignal, batches
from .mechanisms import enabled_by_default, mechanism_metrics
from .metrics import evaluate
from .model_dir import load_tokenizer_dir
from .optim import build_optimizer, lr_at, set_lr
from .packing import collate_blocks, token_byte_lengths, tokenize_and_pack
from .parallel import make_accelerator
from .pretrain_config import (  # noqa: F401  (EMBEDDED_CORPUS_STEPS, SIZES: re-exported for callers)
    EMBEDDED_CORPUS_STEPS,
    SIZES,
    PretrainConfig,
    RunPlan,
    check_config,
    model_sizes,
    non_embedding_parameters,
    plan_run,
    run_length,
    trackers,
    training_flops,
)
from .run_dir import (
    check_writable,
    checkpoint_to_resume,
    load_checkpoint,
    log_record,
    push_model_dir,
    save_checkpoint,
    scalars,
    truncate_jsonl,
    write_model_dir,
)
from .synthetic import describe as describe_synthetic
from .synthetic import fingerprint as synthetic_fingerprint
from .synthetic import symbol_ids, synthetic_datasets

logger = get_logger(__name__)
# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(cfg: PretrainConfig, draw_curves: Callable[[Path, Path], bool] | None = None,
          draw_timeline: Callable[[Path, Path], bool] | None = None) -> dict:
    """Pretrain a model as `cfg` says; return the final metrics and where the model was written.
    `draw_curves(metrics_jsonl, png)` draws the run's curves, and `draw_timeline(metrics_jsonl, png)`
    how its mechanisms formed (with --mechanism_metrics), into the run and model directories (the
    command passes viz's functions; the library draws no pictures itself)."""
    clock = time.perf_counter()
    check_config(cfg)
    run = RunLayout(Path(cfg.output_dir))
    check_writable(run.root)
    accelerator = make_accelerator(run.root, cfg.mixed_precision, trackers(cfg.report_to), cfg.torch_compile,
                                   cfg.ddp_timeout, stateful_data=cfg.streaming)
    resume_from = checkpoint_to_resume(cfg.resume, run.checkpoints)
    plan = plan_run(cfg, accelerator.num_processes)  # the flags resolved, once; completed below
    accelerator.gradient_accumulation_steps = plan.gradient_accumulation_steps
    set_seed(cfg.seed)

    tokenizer = run_tokenizer(cfg, plan, accelerator, run, resuming=resume_from is not None)
    train_loader, val_loader, steps_per_epoch, data_description = training_data(cfg, plan, accelerator, tokenizer)
    model = ScratchformerForCausalLM(build_model_config(cfg, tokenizer, plan))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params, n_core = sum(p.numel() for p in model.parameters()), non_embedding_parameters(model)
    plan = plan.for_length(cfg, steps_per_epoch, n_core)  # steps, evaluations, the lr schedule
    optimizer = build_optimizer(model, plan.optimizer, lr=plan.learning_rate, weight_decay=plan.weight_decay,
                                betas=plan.betas, query_key=plan.query_key_optimizer)  # fmt: skip
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    byte_lengths = token_byte_lengths(tokenizer).to(accelerator.device)

    signature = run_signature(cfg, plan, accelerator.unwrap_model(model))
    state = start_or_resume(accelerator, resume_from, signature, run)
    watch = cfg.mechanism_metrics
    if watch is None:
        watch = enabled_by_default(plan.num_hidden_layers, plan.num_attention_heads)
    # On generated rows the probes draw from the symbols the rows use: the other tokens were never trained.
    probe_ids = symbol_ids(tokenizer) if cfg.synthetic_data else None
    run_config = describe_run(cfg, plan, accelerator, data_description, n_params, n_core, watch)
    accelerator.init_trackers("scratchformer-pretrain", config=scalars(run_config))

    # The loop. A run resumed at its very end (killed while writing model/) reports the checkpoint's loss.
    max_steps, tokens_per_step = plan.max_train_steps, plan.tokens_per_step
    last_eval, last_loss, grad_norm, stopping = state["eval"], state.get("train_loss"), None, False
    meter, guard = LossMeter(accelerator, state["step"], tokens_per_step), NonFiniteGuard(
        cfg.on_nonfinite, accelerator, skipped=state.get("skipped_steps", []))
    # Counted in tokens, seen / planned, so tqdm's rate and ETA speak tokens too.
    bar = tqdm(total=plan.planned_tokens, initial=state["step"] * tokens_per_step, desc="pretrain", unit="tok",
               unit_scale=True, dynamic_ncols=True, disable=not accelerator.is_local_main_process)
    model.train()
    with StopOnSignal() as stop:
        micro_batches = batches(train_loader, state, accelerator, cfg.seed, plan.gradient_accumulation_steps,
                                stream=cfg.streaming)  # fmt: skip
        for batch in [] if state["step"] >= max_steps else micro_batches:
            lr = lr_at(state["step"], **plan.schedule)
            with accelerator.accumulate(model):
                # input_ids and labels; with documents kept apart, position_ids and num_items_in_batch too
                loss = model(**batch, use_cache=False).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                set_lr(optimizer, lr)
                if guard.allows_update(loss, grad_norm):  # --on_nonfinite skip: or drop this step's update
                    optimizer.step()  # a no-op until the step's last micro-batch (accelerate's accumulation)
                optimizer.zero_grad(set_to_none=True)
            if guard.finite:
                meter.add(loss)
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            step = state["step"]
            bar.update(tokens_per_step)
            guard.end_step(step, logger)
            done = step >= max_steps
            if accelerator.num_processes == 1:
                stopping = stop.requested  # one process: no other to agree with, so every step
            if done or stopping or any(step % n == 0 for n in (cfg.logging_steps, plan.eval_steps, cfg.save_steps)):
                # The loop's one host sync outside evaluation and saving; it also carries the stop flags.
                last_loss, stop_anywhere, tokens_per_s = meter.read(step, stop.requested)
                stopping = stopping or stop_anywhere
                guard.check(last_loss, step, run.checkpoints)
                log_record(accelerator, run.metrics, {**training_record(
                    step, last_loss, lr, grad_norm, tokens_per_step, tokens_per_s, steps_per_epoch, state["epoch"]),
                    "tokens_planned": plan.planned_tokens})
                bar.set_postfix(step=f"{step}/{max_steps}", loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            if done or stopping or step % plan.eval_steps == 0:
                last_eval = evaluate_and_log(accelerator, model, val_loader, byte_lengths, tokenizer, watch, run, step,
                                             probe_ids)
                bar.write(f"step {step}: validation loss {last_eval['eval_loss']:.4f}, perplexity "
                          f"{last_eval['eval_ppl']:.2f}, {last_eval['eval_bpb']:.4f} bits per byte")
                meter.restart_clock()  # tokens/s measures training, not evaluation
            if done or stopping or step % cfg.save_steps == 0:
                # The flags as given and the plan as resolved: resume reads the plan's numbers back.
                state.update(eval=last_eval, run=signature, skipped_steps=guard.skipped,
                             flags=dataclasses.asdict(cfg), plan=dataclasses.asdict(plan), train_loss=last_loss,
                             train_seconds=state["train_seconds"] + time.perf_counter() - clock)  # fmt: skip
                save_checkpoint(accelerator, run.checkpoints, state, keep=cfg.save_total_limit)
                clock = time.perf_counter()  # train_seconds now holds everything up to here
                meter.restart_clock()  # nor saving
            if done or stopping:
                break
    bar.close()
    if stopping:
        logger.warning(f"stopped by a signal at step {state['step']}; continue with --resume", main_process_only=True)

    tokens_seen = state["step"] * tokens_per_step
    result = {
        "output_dir": str(run.model), "run_dir": str(run.root), "steps": state["step"], "max_train_steps": max_steps,
        "tokens_seen": tokens_seen, "train_loss": last_loss, **(last_eval or {}),
        "parameters": n_params, "non_embedding_parameters": n_core, "tokens_per_parameter": tokens_seen / n_core,
        "training_flops": training_flops(n_core, tokens_seen),
        "train_seconds": round(state["train_seconds"] + time.perf_counter() - clock, 2),
        "interrupted": stopping, "skipped_steps": guard.skipped,
    }
    if accelerator.is_main_process:
        result["has_loss_curve"] = bool(draw_curves and draw_curves(run.metrics, run.loss_curve))
        result["has_timeline"] = bool(watch and draw_timeline and draw_timeline(run.metrics, run.timeline))
    write_model_dir(accelerator, model, tokenizer, run.root, cfg, run_config, result)
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub_url"] = push_model_dir(run.model, cfg.push_to_hub, state["step"])
    accelerator.end_training()
    return result


def evaluate_and_log(accelerator: Accelerator, model, val_loader, byte_lengths, tokenizer, watch: bool,
                     run: RunLayout, step: int, probe_ids: list[int] | None = None) -> dict:  # fmt: skip
    """The validation metrics (and with `watch` the mechanism probes, their attention snapshot logged
    beside), logged to metrics.jsonl and the trackers; returns the validation metrics."""
    metrics = evaluate(model, val_loader, accelerator, byte_lengths)
    mechanisms = {}
    if watch:  # every process runs the probes: under FSDP a forward pass is collective
        mechanisms, snapshot = mechanism_metrics(accelerator.unwrap_model(model), tokenizer, probe_ids)
        log_record(accelerator, run.snapshots, {"step": step, **snapshot}, track=False)
    log_record(accelerator, run.metrics, {"step": step, **metrics, **mechanisms})
    return metrics


def run_signature(cfg: PretrainConfig, plan: RunPlan, model) -> dict:
    """What a checkpoint must share with the run that resumes it (checked by `load_checkpoint`)."""
    return {"model_config": model_config_dict(model), "optimizer": plan.optimizer,
            "query_key_optimizer": plan.query_key_optimizer if plan.optimizer == "muon" else None,
            "samples_per_step": plan.samples_per_step, "block_size": plan.block_size, "seed": cfg.seed,
            "document_masking": cfg.document_masking, "max_train_steps": plan.max_train_steps,
            "data": synthetic_fingerprint(cfg.synthetic_data) if cfg.synthetic_data else
                    data_fingerprint(cfg.train_files, cfg.dataset_name, cfg.dataset_config_name, "train")}  # fmt: skip


def start_or_resume(accelerator: Accelerator, resume_from: Path | None, signature: dict, run: RunLayout) -> dict:
    """The loop's counters: fresh, or exactly where the checkpoint `resume_from` left off (its model,
    optimizer and data position loaded), with the log records a killed run wrote past it dropped."""
    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "micro_total": 0, "train_seconds": 0.0, "eval": None}
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, signature)
        logger.info(f"resuming from {resume_from} at step {state['step']}", main_process_only=True)
    if accelerator.is_main_process:
        truncate_jsonl(run.metrics, after_step=state["step"])  # a killed run may have logged past its checkpoint
        truncate_jsonl(run.snapshots, after_step=state["step"])
    return state


def describe_run(cfg: PretrainConfig, plan: RunPlan, accelerator: Accelerator, data_description: dict,
                 n_params: int, n_core: int, watch: bool) -> dict:  # fmt: skip
    """The run's configuration as trackers and training_args.json record it (the flags, the plan's
    numbers under the flags' names, where it runs), announced in one log line."""
    planned = plan.planned_tokens
    run_config = {**dataclasses.asdict(cfg), **plan.sizes, **data_description,
                  "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                  "non_embedding_parameters": n_core, "planned_tokens": planned,
                  "planned_training_flops": training_flops(n_core, planned),
                  "num_processes": accelerator.num_processes, "max_train_steps": plan.max_train_steps,
                  "num_warmup_steps": plan.schedule["warmup_steps"], "min_lr": plan.schedule["min_lr"],
                  "distributed_type": str(accelerator.distributed_type).split(".")[-1],
                  "mixed_precision": accelerator.mixed_precision, "eval_steps": plan.eval_steps,
                  "mechanism_metrics": watch}  # fmt: skip
    logger.info(
        f"{n_params / 1e6:.2f}M parameters, {n_core:,} outside the embeddings; {plan.max_train_steps} steps of "
        f"{plan.samples_per_step} blocks x {plan.block_size} tokens = {planned:,} tokens planned "
        f"({planned / n_core:.1f} per parameter), ~{training_flops(n_core, planned):.3g} training FLOPs (6ND); "
        f"{accelerator.num_processes} process(es), accumulation {plan.gradient_accumulation_steps}, mixed "
        f"precision {accelerator.mixed_precision}",
        main_process_only=True,
    )
    return run_config


def training_record(step, loss, lr, grad_norm, tokens_per_step, tokens_per_s, steps_per_epoch, epoch) -> dict:
    """One line of metrics.jsonl for a logging step."""
    return {
        "step": step,
        "epoch": round(step / steps_per_epoch, 4) if steps_per_epoch else epoch,
        "loss": round(loss, 6) if math.isfinite(loss) else None,
        "lr": lr,
        "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
        "tokens_seen": step * tokens_per_step,
        "tokens_per_s": round(tokens_per_s, 1),
    }


# ----------------------------------------------------------------------------------------------
# Configuration: sizes, checks, the model config
# ----------------------------------------------------------------------------------------------


def build_model_config(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase,
                       plan: RunPlan | None = None) -> ScratchformerConfig:  # fmt: skip
    sizes = plan.sizes if plan is not None else model_sizes(cfg)
    overrides = {
        k: getattr(cfg, k)
        for k in ("num_key_value_heads", "intermediate_size", "position_embedding")
        if getattr(cfg, k) is not None
    }
    if cfg.qk_norm:
        overrides["qk_norm"] = True
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
    signature = {k: getattr(model.config, k) for k in keys}
    if model.config.qk_norm:  # named only when on, so checkpoints from before the option keep their signature
        signature["qk_norm"] = True
    return signature


# ----------------------------------------------------------------------------------------------
# Tokenizer and data
# ----------------------------------------------------------------------------------------------


def run_tokenizer(cfg: PretrainConfig, plan: RunPlan, accelerator: Accelerator, run: RunLayout,
                  resuming: bool) -> PreTrainedTokenizerBase:  # fmt: skip
    """The given tokenizer; or the run's own, trained once by the main process (and reused on resume)."""
    if cfg.tokenizer is not None:  # a local directory (a hub id fails at once, saying how to fetch it)
        return load_tokenizer_dir(cfg.tokenizer)
    from .tokenizer_training import train_tokenizer

    tok_dir = run.tokenizer
    if accelerator.is_main_process and not (resuming and (tok_dir / "tokenizer.json").exists()):
        logger.info(f"training a {cfg.vocab_size}-token BPE tokenizer into {tok_dir}", main_process_only=True)
        train_tokenizer(
            tok_dir,
            files=cfg.train_files,
            dataset=cfg.dataset_name,
            dataset_config=cfg.dataset_config_name,
            text_column=cfg.text_column,
            vocab_size=cfg.vocab_size,
            max_length=plan.max_position_embeddings,
            show_progress=False,
            overwrite=True,
        )
    accelerator.wait_for_everyone()
    return load_tokenizer_dir(tok_dir)


def training_data(cfg: PretrainConfig, plan: RunPlan, accelerator: Accelerator, tokenizer) -> tuple:
    """(train loader, validation loader, steps per epoch or None when streaming, data description)."""
    block_size, samples_per_step = plan.block_size, plan.samples_per_step
    if cfg.synthetic_data is not None:
        train_ds, val_ds = synthetic_datasets(cfg.synthetic_data, tokenizer, block_size, cfg.seed)
        description = {**describe_synthetic(cfg.synthetic_data), "document_masking_applied": False}
    else:
        train_ds, val_ds, description = text_data(cfg, block_size, accelerator, tokenizer)
    check_not_empty(train_ds, "training", block_size)
    check_not_empty(val_ds, "validation", block_size)
    if cfg.max_eval_samples is not None:
        if isinstance(val_ds, datasets.Dataset):
            # select, not take: datasets 3.0 raises when asked for more rows than there are.
            val_ds = val_ds.select(range(min(cfg.max_eval_samples, len(val_ds))))
        else:  # streamed: take stops where the stream does
            val_ds = val_ds.take(cfg.max_eval_samples)
    batch = cfg.per_device_train_batch_size
    if cfg.streaming:
        val_loader = DataLoader(val_ds, batch_size=batch, collate_fn=collate_blocks)
        # Epoch after epoch, through a seeded buffer; its state goes into every checkpoint. Under several
        # processes accelerate's dispatching loader reads ahead of its state (PackedStream.held_back).
        train_ds = train_ds.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer_size).repeated()
        train_ds = train_ds.held_back(batch * (accelerator.num_processes - 1))
        return DataLoader(train_ds, batch_size=batch, collate_fn=collate_blocks), val_loader, None, description
    val_loader = DataLoader(val_ds.with_format("torch"), batch_size=batch, collate_fn=collate_blocks)
    if len(train_ds) < samples_per_step:
        raise ValueError(
            f"the training text packs into {len(train_ds)} blocks of {block_size} tokens, fewer than one optimizer "
            f"step takes ({batch} per device x {accelerator.num_processes} process(es) x "
            f"{accelerator.gradient_accumulation_steps} accumulation = {samples_per_step}); give more text, or "
            "lower the batch or --block_size"
        )
    sampler = EpochSampler(len(train_ds), seed=cfg.seed, multiple_of=samples_per_step)
    train_loader = DataLoader(train_ds.with_format("torch"), batch_size=batch, sampler=sampler, drop_last=True,
                              collate_fn=collate_blocks)
    return train_loader, val_loader, len(sampler) // samples_per_step, description


def text_data(cfg: PretrainConfig, block_size: int, accelerator: Accelerator, tokenizer) -> tuple:
    """(train blocks, validation blocks, description) of the text the flags name."""
    with accelerator.main_process_first():  # rank 0 builds the datasets cache, the others then read it
        train_text, val_text, description = load_text(cfg)
        train_ds, val_ds = (
            tokenize_and_pack(
                text,
                tokenizer,
                block_size,
                rows_are_documents=rows_are_documents(files),
                document_masking=cfg.document_masking,
                num_proc=cfg.preprocessing_num_workers,
                split=split,
            )
            for text, files, split in (
                (train_text, cfg.train_files, "train"),
                (val_text, cfg.validation_files or cfg.train_files, "validation"),
            )
        )
    # .txt rows are lines of running text: no documents to keep apart.
    description["document_masking_applied"] = cfg.document_masking and rows_are_documents(cfg.train_files)
    return train_ds, val_ds, description


def load_text(cfg: PretrainConfig) -> tuple:
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
        documents = rows_are_documents(cfg.train_files)
        parts = train.train_test_split(test_size=cfg.validation_fraction, shuffle=documents, seed=cfg.seed)
        train, val = parts["train"], parts["test"]
        what = "documents, at random" if documents else "lines, at the end"
        how = f"{cfg.validation_fraction:.0%} of the training source's {what} (seed {cfg.seed}), held out"
    return train, val, {"train_data": name, "validation_data": how}
