"""Training and scoring the encoder-decoder (`scratchformer finetune --task seq2seq` is the command).

Training is transformers' own: `Seq2SeqTrainer` with `DataCollatorForSeq2Seq` (which pads labels
with -100 and builds `decoder_input_ids` through the model's `prepare_decoder_input_ids_from_labels`).

A new model is `new_model_config(tokenizer, preset=..., size=...)`: the preset's architecture (the
paper's: post-norm, ReLU, sinusoids, one shared embedding) at one of `SIZES`, any field laid over it,
its vocabulary and special tokens from the tokenizer (`train_pairs_tokenizer` trains one on the
pairs' source and target text together: one vocabulary, as in the paper).

Two learning-rate schedules, both peaking at the paper's value C^-0.5 * 4000^-0.5 (C = d_model;
7.0e-4 at the paper's width 512, 2.0e-3 at width 64), with the paper's Adam beta2 = 0.98, eps = 1e-9:

- the default (`default_training_args`): a linear warm-up over 5 % of the run, then a linear decay
  to zero. It suits runs of any length, including the few hundred steps a small model gets;
- the paper's (section 5.3, `inverse_sqrt_schedule=True`, `--paper_schedule`):
  lr = C^-0.5 * min(step^-0.5, step * warmup^-1.5) with warmup 4000: transformers'
  `lr_scheduler_type="inverse_sqrt"` with `warmup_steps=warmup` and `learning_rate` set to the
  schedule's peak C^-0.5 * warmup^-0.5. Both rise linearly to the peak at `warmup` and then fall as
  sqrt(warmup / step); transformers counts steps from 0, so its first step has lr 0 (one step late).
  `noam_lr` below is the paper's formula, for plotting and for the test that pins the equivalence.
  Its 4000-step warm-up was made for 100k-step runs: a run of a few hundred steps ends while the
  learning rate is still a few percent of its peak, and learns next to nothing.

Label smoothing 0.1 (section 5.4) is the default of both: `TrainingArguments(label_smoothing_factor=0.1)`.

Evaluation generates with `model.generate` (no pipeline exists for encoder-decoders in v5) and reports
exact match and corpus BLEU (`bleu.py`; sacrebleu's when it is installed).

The output directory is a hub-style model (weights, config, generation config, tokenizer, the
remote-code files), a model card (README.md), `finetune_results.json` and Trainer's log
(metrics.jsonl), all written into OUT/.final.tmp and renamed in once complete; no pickle
(`training_args.bin`) is among them. Trainer's own checkpoints, if asked for, go to OUT/checkpoints.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig
from scratchformer.modeling.configuration_scratchformer_seq2seq import PRESETS

from .bleu import corpus_chrf, exact_match, sacrebleu_score
from .doctor import where_it_runs_of
from .errors import UserError, one_line
from .files import has_files_besides, move_into
from .layout import RunLayout
from .model_card import render_seq2seq_card

KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}

# Named shapes of a new model; any explicit field overrides its entry. The feed-forward width is 4x
# the model width (the paper's 2048 for 512). "base" is the paper's base model (table 3).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(encoder_layers=2, decoder_layers=2, hidden_size=64, num_attention_heads=4),
    "mini": dict(encoder_layers=3, decoder_layers=3, hidden_size=128, num_attention_heads=4),
    "small": dict(encoder_layers=6, decoder_layers=6, hidden_size=256, num_attention_heads=4),
    "base": dict(encoder_layers=6, decoder_layers=6, hidden_size=512, num_attention_heads=8),
}
SHAPE_FIELDS = ("encoder_layers", "decoder_layers", "hidden_size", "num_attention_heads", "intermediate_size")
PAPER_WARMUP_STEPS = 4000
DEFAULT_WARMUP_RATIO = 0.05  # of the run's optimizer steps (pretraining's default share too)
DEFAULT_MAX_LENGTH = 256  # tokens of a source or target, unless the model's positions end sooner
STAGING_DIR = ".final.tmp"
MODEL_FIELDS = (
    "encoder_layers",
    "decoder_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "position_embedding",
    "norm_type",
    "norm_position",
    "mlp_type",
    "hidden_dropout",
    "tie_word_embeddings",
)


def noam_lr(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The paper's equation (3) for 1-based `step`: factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def paper_training_args(output_dir: str, d_model: int, warmup_steps: int = 4000, **overrides: Any) -> dict:
    """The keyword arguments of `Seq2SeqTrainingArguments` that reproduce section 5.3-5.4."""
    return dict(
        output_dir=output_dir,
        learning_rate=noam_lr(warmup_steps, d_model, warmup_steps),  # the schedule's peak
        lr_scheduler_type="inverse_sqrt",
        warmup_steps=warmup_steps,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-9,
        weight_decay=0.0,
        label_smoothing_factor=0.1,
        **overrides,
    )


def default_training_args(
    output_dir: str, d_model: int, warmup_steps: float = DEFAULT_WARMUP_RATIO, **overrides: Any
) -> dict:
    """The default recipe: the paper's peak learning rate (at its 4000-step warm-up), Adam and label
    smoothing, with a warm-up of `warmup_steps` (steps, or a share of the run below 1) and a linear
    decay to zero instead of the inverse square root."""
    return {
        **paper_training_args(output_dir, d_model, PAPER_WARMUP_STEPS),
        "lr_scheduler_type": "linear",
        "warmup_steps": warmup_steps,
        **overrides,
    }


# -- a new model ---------------------------------------------------------------------------------


def model_shape(
    preset: str = "paper",
    size: str = "mini",
    num_hidden_layers: int | None = None,
    dropout: float | None = None,
    **fields: int | None,
) -> dict[str, Any]:
    """The config fields of a new encoder-decoder's shape, checked (a `UserError` names what cannot
    be built): `size`'s entry in `SIZES`, with the given `fields` (encoder_layers, decoder_layers,
    hidden_size, num_attention_heads, intermediate_size; None: the size's) laid over it.
    `num_hidden_layers` is the paper's N, the layers of each stack (an explicit encoder_layers /
    decoder_layers wins); `dropout` applies to the embeddings and every residual branch; the
    feed-forward is 4x the width unless given. `preset` is the architecture the shape is checked in."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: the encoder-decoder's are {', '.join(sorted(PRESETS))}")
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    unknown = set(fields) - set(SHAPE_FIELDS)
    if unknown:
        raise TypeError(f"unknown shape field(s) {sorted(unknown)}; the shape fields are {SHAPE_FIELDS}")
    shape: dict[str, Any] = dict(SIZES[size])
    if num_hidden_layers is not None:
        shape.update(encoder_layers=num_hidden_layers, decoder_layers=num_hidden_layers)
    shape.update({k: v for k, v in fields.items() if v is not None})
    shape.setdefault("intermediate_size", 4 * shape["hidden_size"])
    if dropout is not None:
        shape.update(embedding_dropout=dropout, hidden_dropout=dropout)
    try:
        ScratchformerSeq2SeqConfig.from_preset(preset, **shape)
    except ValueError as e:
        raise UserError(f"the model's shape: {one_line(e)}") from None
    return shape


def new_model_config(
    tokenizer: PreTrainedTokenizerBase, *, preset: str = "paper", max_position_embeddings: int = 512, **shape: Any
) -> ScratchformerSeq2SeqConfig:
    """The config of a new encoder-decoder: `preset`'s architecture (the paper's) at the shape
    `model_shape(preset, **shape)` gives (size, size fields, dropout), with its vocabulary and
    special tokens from `tokenizer`; the decoder starts from the bos token."""
    fields = model_shape(preset, **shape)
    for name in ("pad_token", "eos_token"):
        if getattr(tokenizer, f"{name}_id") is None:
            raise UserError(
                f"the tokenizer has no {name}: an encoder-decoder pads batches and learns to stop on eos; "
                "use a tokenizer from `scratchformer tokenizer`, or let this command train one"
            )
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    return ScratchformerSeq2SeqConfig.from_preset(
        preset,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start,
        **fields,
    )


def train_pairs_tokenizer(
    dataset,
    source_column: str = "source",
    target_column: str = "target",
    *,
    vocab_size: int = 8192,
    max_length: int = 512,
) -> PreTrainedTokenizerBase:
    """A byte-level BPE (`scratchformer.tokenization.train_bpe`, the one `scratchformer tokenizer`
    trains) learned on the source and the target text together: one vocabulary for both sides."""
    from scratchformer.tokenization import train_bpe

    def batches() -> Iterator[list[str]]:
        for start in range(0, len(dataset), 1000):
            rows = dataset[start : start + 1000]
            yield rows[source_column]
            yield rows[target_column]

    return train_bpe(batches(), vocab_size=vocab_size, model_max_length=max_length, show_progress=False)


# -- data --------------------------------------------------------------------------------------


def load_pairs(files: str | Sequence[str], source_column: str = "source", target_column: str = "target",
               flag: str = "--train_files"):  # fmt: skip
    """(source, target) rows from .jsonl/.json/.csv files of one kind, as a `datasets.Dataset`;
    `UserError` for another kind, a missing column, a non-text value or no rows."""
    from datasets import load_dataset

    files = [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
    kinds = {KINDS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise UserError(f"{flag} {' '.join(files)}: use .jsonl, .json or .csv files, all of one kind")
    kind = kinds.pop()
    try:
        data = load_dataset(kind, data_files=files, split="train")
    except StopIteration:  # datasets' json reader on an empty file
        data = None
    except Exception as e:
        cause = e.__cause__ or e  # datasets wraps the parser's error in a message that names neither
        # No rows: a CSV header alone or a JSON `[]` ("corresponds to no data"); an empty .jsonl on datasets 3.
        if "corresponds to no data" not in str(e) and type(cause).__name__ != "SchemaInferenceError":
            raise UserError(f"{flag} {' '.join(files)}: could not read it as {kind}: "
                            f"{type(cause).__name__}: {cause}") from e  # fmt: skip
        data = None
    if data is None or len(data) == 0:
        raise UserError(f"{flag} {' '.join(files)}: no rows")
    for column, option in ((source_column, "--source_column"), (target_column, "--target_column")):
        if column not in data.column_names:
            raise UserError(
                f"{flag}: no column {column!r} (the columns are {', '.join(data.column_names)}); "
                f"name yours with {option}"
            )
        bad = next((i for i, v in enumerate(data[column]) if not isinstance(v, str)), None)
        if bad is not None:
            raise UserError(f"{flag}: row {bad + 1} has {data[column][bad]!r} as {column!r}, not text")
    return data


def tokenize_pairs(
    dataset,
    tokenizer: PreTrainedTokenizerBase,
    source_column: str,
    target_column: str,
    max_source_length: int = 256,
    max_target_length: int = 256,
):
    """Source ids for the encoder; as labels for the decoder, the target's tokens then eos, and no
    bos: the decoder starts from its own start token (decoder_start_token_id), and eos is what it
    learns to stop on. (The tokenizer would frame the target `<s> text`, as it frames prompts.)"""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: an encoder-decoder learns to stop on it; set eos_token")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch[source_column], truncation=True, max_length=max_source_length)
        targets = tokenizer(
            batch[target_column], add_special_tokens=False, truncation=True, max_length=max_target_length - 1
        )["input_ids"]
        enc["labels"] = [ids + [eos] for ids in targets]
        return enc

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


# -- scoring -------------------------------------------------------------------------------------


def generate_texts(
    model, tokenizer, sources: Sequence[str], max_new_tokens: int = 64, num_beams: int = 1, batch_size: int = 64
) -> list[str]:
    model.eval()
    outputs: list[str] = []
    for i in range(0, len(sources), batch_size):
        enc = tokenizer(list(sources[i : i + batch_size]), return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        outputs += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return outputs


def evaluate_translation(
    model, tokenizer, sources: Sequence[str], references: Sequence[str], **generate_kwargs: Any
) -> dict[str, float | str]:
    """Exact match, corpus BLEU (sacrebleu's, with its signature under "bleu_signature") and chrF of
    the model's greedy or beam outputs for `sources`."""
    hypotheses = generate_texts(model, tokenizer, sources, **generate_kwargs)
    bleu, signature = sacrebleu_score(hypotheses, references)
    # chrF beside BLEU: BLEU is 0 on a corpus of targets shorter than 4 words, however many are right (bleu.py).
    return {"exact_match": exact_match(hypotheses, references), "bleu": bleu,
            "chrf": corpus_chrf(hypotheses, references), "bleu_signature": signature}


# -- training ------------------------------------------------------------------------------------


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output directory that is a file, or holds another run's files (unless `overwrite`);
    Trainer's checkpoints and what a save killed half-way left in OUT/.final.tmp are no run's files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} exists and is not a directory")
    if out.is_dir() and has_files_besides(out, RunLayout.CHECKPOINTS, STAGING_DIR) and not overwrite:
        raise UserError(f"--output_dir {out} exists and is not empty; choose another --output_dir or pass --overwrite")


def finetune_seq2seq(
    model_dir_or_config: str | os.PathLike | ScratchformerSeq2SeqConfig,
    train_dataset=None,
    *,
    train_file: str | list[str] | None = None,
    eval_dataset=None,
    source_column: str = "source",
    target_column: str = "target",
    tokenizer: PreTrainedTokenizerBase | None = None,
    training_args: Seq2SeqTrainingArguments | dict | None = None,
    label_smoothing: float = 0.1,
    inverse_sqrt_schedule: bool = False,
    warmup_steps: float | None = None,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    num_beams: int = 1,
    overwrite: bool = False,
    data_description: str | None = None,
    tokenizer_description: str | None = None,
    draw_curves: Callable[[Path, Path], bool] | None = None,
) -> tuple[Seq2SeqTrainer, dict]:
    """Train an encoder-decoder on (source, target) pairs with stock `Seq2SeqTrainer`, score it, and
    write the output directory. Returns (trainer, results); the results are also
    OUTPUT_DIR/finetune_results.json.

    `model_dir_or_config`: a checkpoint directory (model and tokenizer loaded from it), or a
    `ScratchformerSeq2SeqConfig` for a new model (then pass `tokenizer`; `new_model_config` builds
    one), initialised under the run's seed. Data: `datasets.Dataset`s with the two text columns, or
    `train_file` (.json/.jsonl/.csv files, one kind). `eval_dataset` is scored after training: loss,
    exact match and BLEU of `generate` (`num_beams`). `training_args`: `Seq2SeqTrainingArguments` or
    a dict of its fields (`output_dir` is where the model goes); the recipe fills in what it leaves
    out: the default schedule (linear warm-up over 5 % of the run, or `warmup_steps`, then linear
    decay), or with `inverse_sqrt_schedule=True` the paper's (warm-up 4000 unless `warmup_steps`).
    Sources and targets are cut to `max_*_length` tokens (default 256, or the model's positions).
    `draw_curves(log, png)` may draw OUT/loss_curve.png from Trainer's log.
    """
    args = training_args if isinstance(training_args, dict) or training_args is None else training_args.to_dict()
    args = dict(args or {})
    out = Path(args.get("output_dir") or "out/seq2seq")
    check_output_dir(out, overwrite)
    model, tokenizer, base_model = model_and_tokenizer(model_dir_or_config, tokenizer, seed=args.get("seed", 42))
    if train_dataset is None:
        if train_file is None:
            raise ValueError("Pass train_dataset or train_file.")
        train_dataset = load_pairs(train_file, source_column, target_column)
    for data in (train_dataset, eval_dataset):
        for column in (source_column, target_column):
            if data is not None and column not in data.column_names:
                raise ValueError(f"Column {column!r} not in the data (columns: {data.column_names}).")
    args = trainer_arguments(args, RunLayout(out).checkpoints, model.config.hidden_size, label_smoothing,
                             inverse_sqrt_schedule, warmup_steps)  # fmt: skip

    max_source_length, max_target_length = pair_lengths(model.config, max_source_length, max_target_length)
    encode = dict(tokenizer=tokenizer, source_column=source_column, target_column=target_column,
                  max_source_length=max_source_length, max_target_length=max_target_length)  # fmt: skip
    train = tokenize_pairs(train_dataset, **encode)
    evaluation = tokenize_pairs(eval_dataset, **encode) if eval_dataset is not None else None
    if out.is_dir() and overwrite and has_files_besides(out, RunLayout.CHECKPOINTS, STAGING_DIR):
        # Only now, with the data and the model checked: a mistyped flag must not cost the earlier run.
        shutil.rmtree(out)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer)
    train_output = trainer.train()
    checkpoints = RunLayout(out).checkpoints
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # Trainer makes it whether or not it saves there

    scores: dict[str, float] = {}
    generation = None
    if evaluation is not None:
        scores["loss"] = trainer.evaluate()["eval_loss"]
        # A hypothesis longer than every reference matches none: generation may stop there.
        max_new_tokens = min(max_target_length, max(len(labels) for labels in evaluation["labels"]) + 16)
        scores.update(evaluate_translation(trainer.model, tokenizer, eval_dataset[source_column],
                                           eval_dataset[target_column], num_beams=num_beams,
                                           max_new_tokens=max_new_tokens))  # fmt: skip
        # How BLEU was computed (sacrebleu's signature): beside the scores, not among them.
        generation = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False,
                      "bleu": scores.pop("bleu_signature")}  # fmt: skip

    results = {
        "task": "seq2seq",
        "base_model": base_model,
        "output_dir": str(out),
        "data": data_description or "a datasets.Dataset given in Python",
        "tokenizer": tokenizer_description or (f"the one in {base_model}" if base_model else "given in Python"),
        "train_examples": len(train),
        "validation_examples": len(evaluation) if evaluation is not None else 0,
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
        "model": describe_model(trainer.model),
        "train_loss": train_output.training_loss,
        "train_steps": trainer.state.global_step,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "epochs": trainer.state.epoch,
        "eval": scores,
        "generation": generation,
        "hyperparameters": hyperparameters(trainer, inverse_sqrt_schedule),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        write_output_dir(out, trainer.model, tokenizer, results, draw_curves)
    return trainer, results


def model_and_tokenizer(model_dir_or_config, tokenizer: PreTrainedTokenizerBase | None, seed: int) -> tuple:
    """(model, tokenizer, the base model's directory or None): a new model from a config, initialised
    under the run's `seed`, or a checkpoint with its own tokenizer unless one is given. The tokenizer
    is a copy that pads on the right: targets (labels) are padded on the tokenizer's side, and a
    left-padded target puts padding between the decoder's start token and the text, which generation
    never does (the source may be padded either way: the mask hides it)."""
    base_model = None
    if isinstance(model_dir_or_config, ScratchformerSeq2SeqConfig):
        if tokenizer is None:
            raise ValueError("Training from a config needs a tokenizer: pass tokenizer=...")
        set_seed(seed)  # a new model's weights are the run's seed's
        model = ScratchformerForConditionalGeneration(model_dir_or_config)
    else:
        from .model_dir import load_model_dir

        base_model = str(model_dir_or_config)
        model, loaded = load_model_dir(model_dir_or_config, AutoModelForSeq2SeqLM, need_tokenizer=tokenizer is None)
        tokenizer = tokenizer or loaded
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "right"
    return model, tokenizer, base_model


def trainer_arguments(args: dict, checkpoints: Path, d_model: int, label_smoothing: float,
                      inverse_sqrt_schedule: bool, warmup_steps: float | None) -> Seq2SeqTrainingArguments:  # fmt: skip
    """The caller's arguments with the recipe filling in what they leave out: Trainer's checkpoints in
    `checkpoints` (out of the model's way), no tracker, no pinned memory without a GPU, label
    smoothing, and the schedule: linear warm-up (5 % or `warmup_steps`) and decay, or the paper's."""
    args = {**args, "output_dir": str(checkpoints)}
    args.setdefault("save_strategy", "no")
    args.setdefault("report_to", "none")
    args.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning without a GPU only warns
    args.setdefault("label_smoothing_factor", label_smoothing)
    if inverse_sqrt_schedule:
        warmup = PAPER_WARMUP_STEPS if warmup_steps is None else int(warmup_steps)
        if warmup < 1:
            raise UserError(f"the paper's schedule divides by its warm-up: --warmup_steps {warmup_steps} must be >= 1")
        recipe = paper_training_args(args["output_dir"], d_model, warmup)
    else:
        warmup = DEFAULT_WARMUP_RATIO if warmup_steps is None else warmup_steps
        recipe = default_training_args(args["output_dir"], d_model, warmup)
    recipe.pop("label_smoothing_factor")
    for key, value in recipe.items():
        args.setdefault(key, value)
    fields = Seq2SeqTrainingArguments.__dataclass_fields__
    return Seq2SeqTrainingArguments(**{k: v for k, v in args.items() if k in fields})


def pair_lengths(config, max_source_length: int | None, max_target_length: int | None) -> tuple[int, int]:
    """Source and target tokens kept: as asked, else 256 or the model's positions, never past them."""
    positions = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    max_source_length = max_source_length or min(DEFAULT_MAX_LENGTH, positions)
    max_target_length = max_target_length or min(DEFAULT_MAX_LENGTH, positions)
    if max(max_source_length, max_target_length) > positions:
        raise UserError(
            f"--max_source_length/--max_target_length {max_source_length}/{max_target_length}: the model has "
            f"positions for {positions} tokens (max_position_embeddings)"
        )
    return max_source_length, max_target_length


def describe_model(model) -> dict[str, Any]:
    """The numbers of the model's shape the card and the results show."""
    return {"parameters": model.num_parameters(), **{k: getattr(model.config, k, None) for k in MODEL_FIELDS}}


def hyperparameters(trainer: Seq2SeqTrainer, inverse_sqrt_schedule: bool) -> dict[str, Any]:
    a = trainer.args
    return {
        "schedule": "paper (inverse square root)" if inverse_sqrt_schedule else "linear warm-up and decay",
        "learning_rate": a.learning_rate,
        "lr_scheduler_type": getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type),
        "warmup_steps": a.get_warmup_steps(trainer.state.max_steps),
        "num_train_epochs": a.num_train_epochs,
        "max_steps": a.max_steps,
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "label_smoothing_factor": a.label_smoothing_factor,
        "adam_beta1": a.adam_beta1,
        "adam_beta2": a.adam_beta2,
        "adam_epsilon": a.adam_epsilon,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
    }


def write_output_dir(out: Path, model, tokenizer, results: dict, draw_curves=None) -> None:
    """The model, tokenizer, card, results and log, written into OUT/.final.tmp and renamed into
    OUT entry by entry once all are written: a crash leaves no half-written file at the top of OUT."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a run killed while saving
    staging.mkdir()
    model.save_pretrained(staging)  # config, safetensors, generation config, the remote-code files
    tokenizer.save_pretrained(staging)
    layout = RunLayout(staging)  # the final names, written in the staging folder first
    log = layout.metrics
    log.write_text("".join(json.dumps(r) + "\n" for r in results["log_history"] if "step" in r), encoding="utf-8")
    results["has_loss_curve"] = bool(draw_curves and draw_curves(log, layout.loss_curve))
    layout.card.write_text(render_seq2seq_card(results, where_it_runs_of(staging)), encoding="utf-8")
    layout.results.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    move_into(staging, out)


__all__ = [
    "SIZES",
    "check_output_dir",
    "default_training_args",
    "evaluate_translation",
    "finetune_seq2seq",
    "generate_texts",
    "load_pairs",
    "model_shape",
    "new_model_config",
    "noam_lr",
    "paper_training_args",
    "tokenize_pairs",
    "train_pairs_tokenizer",
]
