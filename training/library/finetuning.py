"""Fine-tuning a checkpoint with stock `transformers.Trainer`: the task decides the Auto class, the
preprocessing (`tasks`), the collator and the metrics, and Trainer does the rest, so every
`TrainingArguments` flag works as documented. The result in --output_dir is an ordinary Hugging Face
directory (weights, config with `id2label`, tokenizer, the remote-code files, a model card); Trainer's
checkpoints go to OUTPUT_DIR/checkpoints. `scratchformer finetune` is the command on top."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import IntervalStrategy

import scratchformer.modeling  # noqa: F401  (registers the Scratchformer* classes with the Auto classes)

from .doctor import where_it_runs_of
from .errors import UserError, one_line
from .files import has_files_besides, move_into
from .finetune_config import TASKS, FinetuneArguments
from .layout import RunLayout
from .metrics import compute_classification_metrics, token_metrics
from .model_card import render_finetune_card
from .model_dir import (
    check_tokenizer,
    check_weights,
    load_model_dir,
    load_tokenizer_dir,
    read_config,
)
from .packing import collate_blocks
from .tasks import (
    load_raw_splits,
    prepare_classification,
    prepare_language_modeling,
    prepare_token_classification,
)

# The Auto class each task loads, and the pipeline task that serves the result.
AUTO_CLASSES = {
    "classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "causal-lm": AutoModelForCausalLM,
    "masked-lm": AutoModelForMaskedLM,
}


PIPELINE_TASKS = {
    "classification": "text-classification",
    "token-classification": "token-classification",
    "causal-lm": "text-generation",
    "masked-lm": "fill-mask",
}


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


CHECKPOINTS_DIR = RunLayout.CHECKPOINTS  # Trainer's checkpoints, under OUTPUT_DIR


RESULTS_FILE = RunLayout.RESULTS


def check_model_dir(path: str | os.PathLike, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The checkpoint's config, after `checkpoint_io`'s checks (the project's one gate for model
    directories): config.json readable with a known model type, complete safetensors weights (never
    pickles), a tokenizer. Raises `UserError` saying what is wrong and the fix."""
    read_config(path, trust_remote_code)
    check_weights(path)
    check_tokenizer(path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{path}/config.json could not be read as a model config: {one_line(e)}") from e


def check_task(config: PretrainedConfig, task: str, path: str) -> None:
    """Refuse a task the checkpoint's architecture cannot serve, before any data is read."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    is_causal = getattr(config, "is_causal", None)
    if config.model_type == "scratchformer" and task == "masked-lm" and is_causal:
        raise UserError(
            f"{path} is a decoder (is_causal=True), and masked-lm needs a bidirectional encoder that sees both "
            "sides of the blank; pass --bidirectional to turn this decoder into one (its weights are kept, its "
            "attention mask opened), or use --task causal-lm"
        )
    if config.model_type == "scratchformer" and task == "causal-lm" and is_causal is False:
        raise UserError(
            f"{path} is a bidirectional encoder (is_causal=False), which cannot predict the next token; "
            "use --task masked-lm (or classification / token-classification)"
        )
    mapping = AUTO_CLASSES[task]._model_mapping
    if type(config) not in mapping and not (getattr(config, "auto_map", None) or {}).get(AUTO_CLASSES[task].__name__):
        raise UserError(
            f"{path} is a {config.model_type!r} model, which has no {AUTO_CLASSES[task].__name__} head for "
            f"--task {task}"
        )


def finetune(args: FinetuneArguments, training_args: TrainingArguments, draw_curves=None) -> dict[str, Any]:
    """Fine-tune `args.model` for `args.task` with `Trainer`; return the results (metrics, label
    names, paths), also written to `OUTPUT_DIR/finetune_results.json`.

    The best (or last) model goes to `training_args.output_dir`, the directory a pipeline then loads;
    Trainer's checkpoints go inside it, to OUTPUT_DIR/checkpoints, out of the model's way (and are
    removed after a successful run unless --keep_checkpoints). `draw_curves(log, png)` draws the
    loss curve (the command passes `viz.curves`'s)."""
    out = Path(training_args.output_dir)
    training_args = copy.copy(training_args)  # the caller's arguments keep their output_dir
    training_args.output_dir = str(RunLayout(out).checkpoints)
    if training_args.dataloader_pin_memory and not _has_accelerator():
        training_args.dataloader_pin_memory = False  # pinning with no GPU only warns (torch), once per run
    config = check_run(args, training_args, out)
    resuming = bool(training_args.resume_from_checkpoint)

    tokenizer = load_tokenizer_dir(args.model, trust_remote_code=args.trust_remote_code)
    max_length = _max_length(args, tokenizer, config)
    data = task_data(args, training_args, tokenizer, max_length)
    if data.validation is None:
        # Nothing to evaluate on: evaluation and best-model selection switch off rather than fail.
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.load_best_model_at_end = False
    model, loading = _load_model(args, data.labels, config)
    if args.lora_r:
        model = _wrap_lora(args, model)

    if out.is_dir() and args.overwrite and not resuming:
        # Only now, with the data and model checked: no file of the earlier run (an adapter, old
        # checkpoints) may pass for this one's, but a mistyped flag must not cost the user that run.
        shutil.rmtree(out)
    callbacks = []
    if args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.validation,
                      data_collator=data.collator, processing_class=tokenizer, compute_metrics=data.compute_metrics,
                      callbacks=callbacks)  # fmt: skip
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or None)
    eval_metrics = trainer.evaluate() if data.validation is not None else {}
    if "eval_loss" in eval_metrics and args.task in ("causal-lm", "masked-lm"):
        eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))

    results = describe_results(args, training_args, trainer, train_output, eval_metrics, data, max_length, loading,
                               out)  # fmt: skip
    save_final(args, trainer.model, tokenizer, results, out, draw_curves)
    checkpoints = Path(training_args.output_dir)
    if not args.keep_checkpoints and checkpoints == RunLayout(out).checkpoints and checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # the best model is at the top of OUT; the rest was only for resuming
    return results


def check_run(args: FinetuneArguments, training_args: TrainingArguments, out: Path) -> PretrainedConfig:
    """Everything the flags decide, checked before any data is read: the checkpoint, the task, the
    output directory, the training arguments. Returns the checkpoint's config."""
    config = check_model_dir(args.model, trust_remote_code=args.trust_remote_code)
    if args.bidirectional:
        if config.model_type != "scratchformer" or args.task == "causal-lm":
            raise UserError("--bidirectional turns a scratchformer decoder into an encoder: not with causal-lm")
        config.is_causal = False
    check_task(config, args.task, args.model)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} exists and is not a directory")
    resuming = bool(training_args.resume_from_checkpoint)
    if out.is_dir() and has_files_besides(out, CHECKPOINTS_DIR) and not (args.overwrite or resuming):
        raise UserError(f"--output_dir {out} exists and is not empty; choose another --output_dir or pass --overwrite")
    _check_training_args(args, training_args)
    return config


class TaskData(NamedTuple):
    """What Trainer is handed for a task: the two splits, how to batch them, how to score them."""

    train: Any
    validation: Any
    collator: Any
    compute_metrics: Any = None
    labels: list[str] | None = None
    is_chat: bool = False


def task_data(args: FinetuneArguments, training_args: TrainingArguments, tokenizer: PreTrainedTokenizerBase,
              max_length: int) -> TaskData:  # fmt: skip
    """The data read and prepared for `args.task`, with the collator and metrics that task needs."""
    train_raw, validation_raw = load_raw_splits(args, seed=training_args.seed)
    if args.task == "classification":
        train, validation, labels = prepare_classification(args, tokenizer, train_raw, validation_raw, max_length)
        return TaskData(train, validation, DataCollatorWithPadding(tokenizer), compute_classification_metrics, labels)
    if args.task == "token-classification":
        train, validation, labels = prepare_token_classification(args, tokenizer, train_raw, validation_raw, max_length)
        compute_metrics = token_metrics(labels)
        if compute_metrics.entity_level and training_args.metric_for_best_model == "accuracy":
            # Entity tags: token accuracy, the command's default, mostly counts the `O` words, so keep the
            # model with the best entity F1 instead (`--metric_for_best_model eval_accuracy` keeps accuracy).
            training_args.metric_for_best_model = "f1"
        return TaskData(train, validation, DataCollatorForTokenClassification(tokenizer), compute_metrics, labels)
    train, validation, is_chat = prepare_language_modeling(args, tokenizer, train_raw, validation_raw, max_length)
    if args.task == "masked-lm":
        if tokenizer.mask_token is None:
            raise UserError("masked-lm needs a tokenizer with a mask token (<mask>)")
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=args.mlm_probability)
    elif is_chat:
        # Conversations differ in length and carry their own labels (maybe assistant-only):
        # pad input_ids with <pad> and labels with -100, which is what this collator does.
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    elif "position_ids" in train.column_names:  # packed documents kept apart: labels -100 where each starts
        collator = collate_blocks
    else:
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = input_ids; the model shifts
    return TaskData(train, validation, collator, is_chat=is_chat)


def describe_results(args: FinetuneArguments, training_args: TrainingArguments, trainer: Trainer, train_output,
                     eval_metrics: dict, data: TaskData, max_length: int, loading: dict,
                     out: Path) -> dict:  # fmt: skip
    """The run's numbers and choices, as finetune_results.json and the model card give them."""
    return {
        "task": args.task,
        "pipeline_task": PIPELINE_TASKS[args.task],
        "base_model": str(args.model),
        "output_dir": str(out),
        "data": describe_data(args),
        "train_examples": len(data.train),
        "validation_examples": len(data.validation) if data.validation is not None else 0,
        "max_length": max_length,
        "labels": data.labels,
        "chat": data.is_chat,
        "assistant_only_loss": args.assistant_only_loss,
        "new_weights": sorted(loading.get("missing_keys", [])),
        "lora": {"r": args.lora_r, "alpha": _lora_alpha(args), "target_modules": args.lora_target_modules}
        if args.lora_r
        else None,
        "train_loss": train_output.training_loss,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "eval": eval_metrics,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "metric_for_best_model": training_args.metric_for_best_model if training_args.load_best_model_at_end else None,
        "hyperparameters": {
            "learning_rate": training_args.learning_rate,
            "num_train_epochs": training_args.num_train_epochs,
            "max_steps": training_args.max_steps,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "weight_decay": training_args.weight_decay,
            "lr_scheduler_type": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
            "warmup_steps": training_args.warmup_steps,
            "seed": training_args.seed,
        },
        "log_history": trainer.state.log_history,
    }


def save_final(args: FinetuneArguments, model, tokenizer, results: dict, out: Path, draw_curves=None) -> None:
    """The model (merged, and with LoRA its adapter too), tokenizer, card, curve, results and log at the
    top of OUT: written into a hidden staging directory first and moved in entry by entry once
    complete, so a crash while saving leaves no half-written file."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a run killed while saving
    staging.mkdir()
    if args.lora_r:
        model.save_pretrained(staging / "adapter")  # the adapter alone, for sharing beside the base model
        model = model.merge_and_unload()  # and the merged model, which needs no peft to load
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_card_and_curve(staging, results, args.model, draw_curves)
    RunLayout(staging).results.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    move_into(staging, out)


def _has_accelerator() -> bool:
    """A device pinned memory is for (CUDA, or any accelerator torch knows, on torch >= 2.6)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def describe_data(args: FinetuneArguments) -> str:
    if args.train_files:
        val = f", validation {', '.join(args.validation_files)}" if args.validation_files else ""
        return f"{', '.join(args.train_files)}{val}"
    if args.dataset_name:
        config = f" ({args.dataset_config_name})" if args.dataset_config_name else ""
        return f"dataset {args.dataset_name}{config}"
    return "the embedded default corpus (Python's help topics, pydoc_data)"


def _check_training_args(args: FinetuneArguments, training_args: TrainingArguments) -> None:
    if args.early_stopping_patience is not None:
        if args.early_stopping_patience < 1:
            raise UserError("--early_stopping_patience must be at least 1")
        if not training_args.load_best_model_at_end or training_args.eval_strategy == IntervalStrategy.NO:
            raise UserError(
                "--early_stopping_patience needs evaluation and best-model tracking: keep --eval_strategy and "
                "--load_best_model_at_end on (the defaults)"
            )
    if args.lora_r < 0:
        raise UserError("--lora_r must be positive (or 0 for full fine-tuning)")


def _max_length(args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length, 1024]
    context = min(int(n) for n in limits if n)
    if args.max_length is None:
        return context
    if args.max_length < 2:
        raise UserError(f"--max_length={args.max_length} must be at least 2")
    if getattr(config, "max_position_embeddings", None) and args.max_length > config.max_position_embeddings:
        raise UserError(
            f"--max_length={args.max_length} is longer than the model's context "
            f"(max_position_embeddings={config.max_position_embeddings})"
        )
    return args.max_length


def _load_model(args: FinetuneArguments, labels: list[str] | None, config: PretrainedConfig):
    """(model, loading info) through `checkpoint_io.load_model_dir`. The checked config goes in as is,
    so --bidirectional's is_causal=False is what gets built. A classifier checkpoint with another
    label set gets a fresh head of the right size (its old one is reported among the new weights)."""
    kwargs: dict[str, Any] = dict(config=config, trust_remote_code=args.trust_remote_code, output_loading_info=True)
    if labels is not None:
        config.id2label = dict(enumerate(labels))  # also sets num_labels
        config.label2id = {name: i for i, name in enumerate(labels)}
        kwargs["ignore_mismatched_sizes"] = True
    (model, loading), _ = load_model_dir(args.model, AUTO_CLASSES[args.task], need_tokenizer=False, **kwargs)
    loading["missing_keys"] = set(loading.get("missing_keys", ())) | {k for k, *_ in loading.get("mismatched_keys", ())}
    return model, loading


def _lora_alpha(args: FinetuneArguments) -> float:
    return args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r


def _wrap_lora(args: FinetuneArguments, model):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as e:
        raise UserError("--lora_r needs peft: pip install 'scratchformer[peft]'") from e
    task_type = {
        "classification": TaskType.SEQ_CLS,  # also keeps the new `score` head fully trainable
        "token-classification": TaskType.TOKEN_CLS,
        "causal-lm": TaskType.CAUSAL_LM,
        "masked-lm": None,
    }[args.task]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in args.lora_target_modules if m not in names]
    if missing:
        raise UserError(
            f"--lora_target_modules {' '.join(missing)}: no such module; scratchformer's are q_proj k_proj v_proj "
            "o_proj (attention) and gate_proj up_proj down_proj (MLP)"
        )
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=_lora_alpha(args),
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def write_card_and_curve(out: Path, results: dict, base_model: str, draw_curves=None) -> None:
    """`OUT/metrics.jsonl` (Trainer's log history), `OUT/loss_curve.png` when `draw_curves(log, png)`
    draws it (the command passes `viz.curves`'s, the picture pretraining draws too), and
    `OUT/README.md`: the fine-tuning card, with the base model's card kept below it."""
    layout = RunLayout(out)
    metrics = layout.metrics
    metrics.write_text("".join(json.dumps(r) + "\n" for r in results["log_history"] if "step" in r), encoding="utf-8")
    results["has_loss_curve"] = bool(draw_curves and draw_curves(metrics, layout.loss_curve))
    base_card = Path(base_model) / "README.md"
    card = render_finetune_card(results, base_card.read_text(encoding="utf-8") if base_card.is_file() else None,
                                where=where_it_runs_of(out))
    layout.card.write_text(card, encoding="utf-8")
