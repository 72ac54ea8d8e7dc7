"""Train, score and look inside the encoder-decoder: `scratchformer finetune --task seq2seq`.

Training is transformers' own: `Seq2SeqTrainer` with `DataCollatorForSeq2Seq` (which pads labels
with -100 and builds `decoder_input_ids` through the model's `prepare_decoder_input_ids_from_labels`).
The paper's recipe (section 5.3-5.4) is two options:

- label smoothing 0.1: `TrainingArguments(label_smoothing_factor=0.1)`;
- the inverse-square-root schedule lr = C^-0.5 * min(step^-0.5, step * warmup^-1.5): transformers'
  `lr_scheduler_type="inverse_sqrt"` with `warmup_steps=warmup` and `learning_rate` set to the
  schedule's peak C^-0.5 * warmup^-0.5. Both rise linearly to the peak at `warmup` and then fall as
  sqrt(warmup / step); transformers counts steps from 0, so its first step has lr 0 (one step late).
  `noam_lr` below is the paper's formula, for plotting and for the test that pins the equivalence.
  Adam gets the paper's beta2 = 0.98 and eps = 1e-9.

Evaluation generates with `model.generate` (no pipeline exists for encoder-decoders in v5) and reports
exact match and corpus BLEU (`training/bleu.py`; sacrebleu's when it is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig

from .bleu import exact_match, sacrebleu_or_ours


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
        targets = tokenizer(batch[target_column], add_special_tokens=False, truncation=True,
                            max_length=max_target_length - 1)["input_ids"]
        enc["labels"] = [ids + [eos] for ids in targets]
        return enc

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


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
) -> dict[str, float]:
    hypotheses = generate_texts(model, tokenizer, sources, **generate_kwargs)
    return {"exact_match": exact_match(hypotheses, references), "bleu": sacrebleu_or_ours(hypotheses, references)}


def finetune_seq2seq(
    model_dir_or_config: str | ScratchformerSeq2SeqConfig,
    train_dataset=None,
    *,
    train_file: str | None = None,
    eval_dataset=None,
    source_column: str = "source",
    target_column: str = "target",
    tokenizer: PreTrainedTokenizerBase | None = None,
    training_args: Seq2SeqTrainingArguments | dict | None = None,
    label_smoothing: float = 0.1,
    inverse_sqrt_schedule: bool = True,
    warmup_steps: int = 4000,
    max_source_length: int = 256,
    max_target_length: int = 256,
) -> tuple[Seq2SeqTrainer, dict]:
    """Train an encoder-decoder on (source, target) pairs with stock `Seq2SeqTrainer`.

    `model_dir_or_config`: a checkpoint directory (model and tokenizer loaded from it), or a
    `ScratchformerSeq2SeqConfig` to train from scratch (then pass `tokenizer`). Data: a
    `datasets.Dataset` with the two text columns, or `train_file` (.json/.jsonl/.csv). `training_args`:
    `Seq2SeqTrainingArguments` or a dict of its fields; the paper's recipe fills in what it leaves out
    unless `label_smoothing=0` / `inverse_sqrt_schedule=False`. Returns (trainer, train metrics); the
    model is saved to `output_dir` with its tokenizer and remote code.
    """
    from datasets import load_dataset

    if isinstance(model_dir_or_config, ScratchformerSeq2SeqConfig):
        if tokenizer is None:
            raise ValueError("Training from a config needs a tokenizer: pass tokenizer=...")
        model = ScratchformerForConditionalGeneration(model_dir_or_config)
    else:
        from scratchformer.training.checkpoint_io import load_model_dir

        model, loaded = load_model_dir(model_dir_or_config, AutoModelForSeq2SeqLM, need_tokenizer=tokenizer is None)
        tokenizer = tokenizer or loaded
    if train_dataset is None:
        if train_file is None:
            raise ValueError("Pass train_dataset or train_file.")
        kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}[Path(train_file).suffix]
        train_dataset = load_dataset(kind, data_files=train_file, split="train")
    for column in (source_column, target_column):
        if column not in train_dataset.column_names:
            raise ValueError(f"Column {column!r} not in the data (columns: {train_dataset.column_names}).")

    args = training_args if isinstance(training_args, dict) or training_args is None else training_args.to_dict()
    args = dict(args or {})
    args.setdefault("output_dir", "out/seq2seq")
    args.setdefault("report_to", "none")
    args.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning without a GPU only warns
    args.setdefault("label_smoothing_factor", label_smoothing)
    if inverse_sqrt_schedule:
        recipe = paper_training_args(args["output_dir"], model.config.hidden_size, warmup_steps)
        recipe.pop("label_smoothing_factor")
        for key, value in recipe.items():
            args.setdefault(key, value)
    fields = Seq2SeqTrainingArguments.__dataclass_fields__
    args = Seq2SeqTrainingArguments(**{k: v for k, v in args.items() if k in fields})

    encode = dict(
        tokenizer=tokenizer,
        source_column=source_column,
        target_column=target_column,
        max_source_length=max_source_length,
        max_target_length=max_target_length,
    )
    train = tokenize_pairs(train_dataset, **encode)
    evaluation = tokenize_pairs(eval_dataset, **encode) if eval_dataset is not None else None
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    metrics = trainer.train().metrics
    trainer.save_model()
    return trainer, metrics


# ----------------------------------------------------------------------------------------------
# Inspection: what the decoder looks at
# ----------------------------------------------------------------------------------------------


def cross_attention_maps(model, tokenizer, source: str, target: str | None = None, max_new_tokens: int = 64):
    """Cross-attention of every decoder layer and head while producing `target` (generated greedily
    when None). Returns (source labels, target labels, array [layers, heads, T, S]): row t is where
    the decoder looked when predicting target token t, so each row sums to 1 over the source tokens.
    A translation model's rows trace the alignment. Labels are readable tokens ('␣the', not 'Ġthe')."""
    from .inspect import token_labels

    model.eval()
    enc = tokenizer(source, return_tensors="pt").to(model.device)
    if target is None:
        with torch.no_grad():
            generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        # generate() starts from decoder_start_token_id: the decoder read ids[:-1] to predict ids[1:].
        decoder_input_ids, target_ids = generated[:, :-1], generated[:, 1:]
    else:
        target_ids = tokenizer(text_target=target, return_tensors="pt")["input_ids"].to(model.device)
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(target_ids)
    with torch.no_grad():
        out = model(**enc, decoder_input_ids=decoder_input_ids, output_attentions=True, use_cache=False)
    maps_NHTS = torch.stack([probs_BHTS[0] for probs_BHTS in out.cross_attentions]).float().cpu().numpy()
    src_labels = token_labels(tokenizer, enc["input_ids"][0].tolist())
    tgt_labels = token_labels(tokenizer, target_ids[0].tolist())
    return src_labels, tgt_labels, maps_NHTS


def plot_cross_attention(
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    maps: np.ndarray,
    layer: int = -1,
    heads: Sequence[int] | None = None,
    title: str | None = None,
):
    """The mean over `heads` of decoder layer `layer` (large, weights in the cells when short), then
    one small heatmap per head. Rows: target tokens; columns: source tokens. Built on
    `matplotlib.figure.Figure`, as in `inspect`, so no pyplot state leaks."""
    from .inspect import _figure, _matplotlib

    maps = np.asarray(maps)
    n_layers, n_heads, T, S = maps.shape
    if (len(tgt_tokens), len(src_tokens)) != (T, S):
        raise ValueError(f"{len(tgt_tokens)} x {len(src_tokens)} token labels for maps over {T} x {S} tokens.")
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the decoder has {n_layers} layers (0..{n_layers - 1}).")
    layer %= n_layers
    heads = list(range(n_heads)) if heads is None else list(heads)
    panels = [("mean of heads", maps[layer, heads].mean(0))] + [(f"head {h}", maps[layer, h]) for h in heads]
    cmap = _matplotlib().colormaps["Blues"]

    # The mean is drawn twice the size of a head: it is the picture to read; the heads show who does what.
    n = len(panels) - 1
    cell = 0.55 if max(T, S) <= 12 else 0.3
    big_w, big_h = max(2.5, cell * S * 1.6), max(2.5, cell * T * 1.6)
    label_room = 0.08 * max(len(t) for t in [*src_tokens, *tgt_tokens])
    fig = _figure(big_w * (1 + n / 2) + label_room + 1.8, big_h + label_room + 1.6)
    grid = fig.add_gridspec(1, 1 + n, width_ratios=[2] + [1] * n)
    image = None
    for i, (name, weights) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10 if i == 0 else 9)
        ax.set_xticks(range(S), src_tokens, rotation=90, fontsize=9 if i == 0 else 7)
        ax.set_yticks(range(T), tgt_tokens if i == 0 else [""] * T, fontsize=9)
        ax.tick_params(length=0)
        if i == 0:
            ax.set_xlabel("source token (encoder)", fontsize=9)
            ax.set_ylabel("target token being predicted", fontsize=9)
            if max(T, S) <= 12:  # numbers in the cells: each row's weights sum to 1
                for t in range(T):
                    for s in range(S):
                        w = weights[t, s]
                        ax.text(s, t, f"{w:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if w > 0.6 else "#333333")
    bar = fig.colorbar(image, ax=fig.axes, shrink=0.8, pad=0.02)
    bar.set_label("attention weight (rows sum to 1)", fontsize=8)
    fig.suptitle(title or f"Cross-attention of decoder layer {layer}: where each target token looked", fontsize=11)
    return fig


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scratchformer finetune --task seq2seq", description="Train an encoder-decoder on (source, target) pairs."
    )

    def add(*flags: str, **kwargs: Any) -> None:
        # Reached through `scratchformer finetune`, whose flags take dashes or underscores: so do these
        # (--learning_rate was an "unrecognized argument" here).
        p.add_argument(*flags, *("--" + f[2:].replace("-", "_") for f in flags if "-" in f[2:]), **kwargs)

    add("--model", required=True, help="checkpoint directory (model + tokenizer)")
    add("--train-file", required=True, help=".json/.jsonl/.csv with source and target columns")
    add("--eval-file", "--validation-file", help="scored after training: exact match and BLEU")
    add("--source-column", default="source")
    add("--target-column", default="target")
    add("--output-dir", "--out", default="out/seq2seq")
    add("--epochs", type=float, default=3.0)
    add("--batch-size", type=int, default=32)
    add("--learning-rate", type=float, help="peak lr; default: the paper's d_model^-0.5 * warmup^-0.5")
    add("--warmup-steps", type=int, help="default: 4000 with the paper's schedule, none with --no-paper-schedule")
    add("--label-smoothing", type=float, default=0.1)
    add("--no-paper-schedule", action="store_true", help="linear decay instead of inverse sqrt")
    add("--num-beams", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    args: dict[str, Any] = dict(
        output_dir=a.output_dir,
        num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch_size,
        save_strategy="no",
        logging_steps=50,
    )
    if a.learning_rate is not None:
        args["learning_rate"] = a.learning_rate
    if a.warmup_steps is not None:
        # Given explicitly, it applies to either schedule: --no-paper-schedule used to drop it.
        args["warmup_steps"] = a.warmup_steps
    try:
        eval_kind = None
        if a.eval_file:
            eval_kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(Path(a.eval_file).suffix)
            if eval_kind is None:
                raise ValueError(f"--eval-file {a.eval_file}: use a .jsonl, .json or .csv file.")
        trainer, metrics = finetune_seq2seq(
            a.model,
            train_file=a.train_file,
            source_column=a.source_column,
            target_column=a.target_column,
            training_args=args,
            label_smoothing=a.label_smoothing,
            inverse_sqrt_schedule=not a.no_paper_schedule,
            warmup_steps=4000 if a.warmup_steps is None else a.warmup_steps,
        )
        print(json.dumps(metrics))
        if eval_kind:
            from datasets import load_dataset

            data = load_dataset(eval_kind, data_files=a.eval_file, split="train")
            scores = evaluate_translation(
                trainer.model, trainer.processing_class, data[a.source_column], data[a.target_column],
                num_beams=a.num_beams,
            )
            print(json.dumps(scores))
    except (ValueError, OSError) as e:  # CheckpointError and the data errors are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "cross_attention_maps",
    "evaluate_translation",
    "finetune_seq2seq",
    "generate_texts",
    "main",
    "noam_lr",
    "paper_training_args",
    "plot_cross_attention",
]


if __name__ == "__main__":
    raise SystemExit(main())
