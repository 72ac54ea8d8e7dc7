"""`scratchformer finetune --task seq2seq`: train the encoder-decoder on (source, target) pairs with
stock `Seq2SeqTrainer`, score exact match and BLEU, and write a hub-style model directory with its
card and results. The work is `library.seq2seq.finetune_seq2seq`.

    # a new model, with a tokenizer trained on the pairs' source and target text:
    scratchformer finetune --task seq2seq --size tiny --train_files train.jsonl --validation_files dev.jsonl \\
        --output_dir out/s2s --num_train_epochs 20
    # or with a tokenizer from `scratchformer tokenizer`, and the paper's own model and schedule:
    scratchformer finetune --task seq2seq --size base --tokenizer tok --paper_schedule --train_files ... \\
        --output_dir ...
    # a checkpoint, trained further:
    scratchformer finetune --task seq2seq --model out/s2s --train_files more.jsonl --output_dir out/s2s-2

The flags are the shared vocabulary (`--output_dir`, `--train_files`, `--max_steps`, `--seed`, ...);
without --model, `--preset`/`--size` and the size flags name a new model as `scratchformer pretrain`'s do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scratchformer.modeling import ScratchformerSeq2SeqConfig
from scratchformer.modeling.configuration_scratchformer_seq2seq import PRESETS
from scratchformer.training.arguments import Parser, command
from scratchformer.training.library import seq2seq as lib
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.layout import RunLayout
from scratchformer.training.library.model_dir import load_tokenizer_dir
from scratchformer.training.viz.curves import draw_run_curves

# The flags that describe a new model; they mean nothing next to --model (a model already built).
NEW_MODEL_FLAGS = ("preset", "size", "num_hidden_layers", "encoder_layers", "decoder_layers", "hidden_size",
                   "num_attention_heads", "intermediate_size", "dropout", "tokenizer", "vocab_size")  # fmt: skip
DEFAULT_VOCAB_SIZE = 8192


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer finetune --task seq2seq",
        description="Train an encoder-decoder on (source, target) pairs: a new one (--preset, --size, the size "
        "flags, --tokenizer) or a checkpoint (--model). Writes a Hugging Face model directory with a model card "
        "and finetune_results.json to --output_dir. Flags take dashes or underscores.",
    )
    sizes = "; ".join(
        f"{k}={v['encoder_layers']}+{v['decoder_layers']} layers x {v['hidden_size']}, {v['num_attention_heads']} heads"
        for k, v in lib.SIZES.items()
    )
    p.add("--model", metavar="DIR", help="a checkpoint to train (model + tokenizer); without it, a new model")
    p.add("--preset", choices=sorted(PRESETS), help="new model: architecture family (default: paper)")
    p.add("--size", choices=list(lib.SIZES), help=f"new model: shape (default: mini): {sizes}; base is the paper's")
    p.add("--num_hidden_layers", type=int, metavar="N", help="new model: layers of each stack (the paper's N)")
    p.add("--encoder_layers", type=int, metavar="N", help="new model: encoder layers")
    p.add("--decoder_layers", type=int, metavar="N", help="new model: decoder layers")
    p.add("--hidden_size", type=int, metavar="C", help="new model: width (d_model)")
    p.add("--num_attention_heads", type=int, metavar="H", help="new model: attention heads")
    p.add("--intermediate_size", type=int, metavar="F", help="new model: feed-forward width (default: 4 x width)")
    p.add("--dropout", type=float, help="new model: dropout on embeddings and residual branches (preset: 0.1)")
    p.add("--tokenizer", metavar="DIR", help="new model: a tokenizer directory (from `scratchformer tokenizer`); "
          "default: train a byte-level BPE on the pairs' source and target text")  # fmt: skip
    p.add("--vocab_size", type=int, help=f"new model: vocabulary of the tokenizer trained here ({DEFAULT_VOCAB_SIZE})")

    p.add("--train_files", required=True, nargs="+", metavar="F", help=".jsonl/.json/.csv with the two text columns")
    p.add("--validation_files", nargs="+", metavar="F", help="scored after training: loss, exact match and BLEU")
    p.add("--source_column", default="source")
    p.add("--target_column", default="target")
    p.add("--max_source_length", type=int, help="source tokens kept (default: 256, or the model's positions)")
    p.add("--max_target_length", type=int, help="target tokens kept, eos included (default: as the source's)")

    p.add("--output_dir", required=True, metavar="DIR", help="where the trained model goes")
    p.add("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.add("--num_train_epochs", type=float, default=3.0)
    p.add("--max_steps", type=int, default=-1, help="optimizer steps; overrides --num_train_epochs "
          "(--max_train_steps is the same flag)")  # fmt: skip
    p.add("--per_device_train_batch_size", type=int, default=32)
    p.add("--gradient_accumulation_steps", type=int, default=1)
    p.add("--learning_rate", type=float, help="peak lr; default: the paper's peak, d_model^-0.5 * 4000^-0.5 "
          "(7e-4 at width 512, 2e-3 at 64)")  # fmt: skip
    p.add("--warmup_steps", type=int, help="default: 5%% of the steps, or 4000 with --paper_schedule")
    p.add("--paper_schedule", dest="paper_schedule", action="store_true", default=False,
          help="the paper's inverse square root, lr = d^-0.5 * min(step^-0.5, step * warmup^-1.5), "
          "made for 100k-step runs (default: linear warm-up, then linear decay to 0)")  # fmt: skip
    p.add("--no_paper_schedule", dest="paper_schedule", action="store_false", help="the linear schedule (default)")
    p.add("--label_smoothing_factor", type=float, default=0.1)
    p.add("--seed", type=int, default=42, help="seeds a new model's weights, the data order and dropout")
    p.add("--num_beams", type=int, default=1, help="beams when scoring the validation pairs (1: greedy)")
    return p


def check_flags(a: argparse.Namespace) -> None:
    given = [f"--{name}" for name in NEW_MODEL_FLAGS if getattr(a, name) is not None]
    if a.model is not None and given:
        raise UserError(
            f"{', '.join(given)} describe a new model, and --model {a.model} is one already built: drop "
            f"{'it' if len(given) == 1 else 'them'}, or drop --model to start from scratch"
        )
    if a.tokenizer is not None and a.vocab_size is not None:
        raise UserError(f"--vocab_size sizes a tokenizer trained here; --tokenizer {a.tokenizer} has its own: drop one")
    for name in ("max_steps", "num_beams", "per_device_train_batch_size", "gradient_accumulation_steps"):
        value = getattr(a, name)
        if value == 0 or value < (-1 if name == "max_steps" else 1):
            raise UserError(f"--{name} {value} must be at least 1")
    for name in ("max_source_length", "max_target_length"):
        if getattr(a, name) is not None and getattr(a, name) < 2:
            raise UserError(f"--{name} {getattr(a, name)} must be at least 2 (a token and eos)")
    if a.warmup_steps is not None and a.warmup_steps < 0:
        raise UserError(f"--warmup_steps {a.warmup_steps} must be 0 or more")


@command("seq2seq")
def main(argv: list[str]) -> int:
    a = build_parser().parse(argv)
    check_flags(a)
    # Everything a flag decides is checked before any data is read or a tokenizer trained.
    lib.check_output_dir(a.output_dir, a.overwrite)
    shape: dict[str, Any] = dict(preset=a.preset or "paper", size=a.size or "mini",
                                 num_hidden_layers=a.num_hidden_layers, dropout=a.dropout,
                                 **{k: getattr(a, k) for k in lib.SHAPE_FIELDS})  # fmt: skip
    if a.model is None:
        lib.model_shape(**shape)
    train = lib.load_pairs(a.train_files, a.source_column, a.target_column, "--train_files")
    validation = None
    if a.validation_files:
        validation = lib.load_pairs(a.validation_files, a.source_column, a.target_column, "--validation_files")

    model: str | ScratchformerSeq2SeqConfig = a.model
    tokenizer, tokenizer_description = None, None
    if a.model is None:
        if a.tokenizer is not None:
            tokenizer, tokenizer_description = load_tokenizer_dir(a.tokenizer), a.tokenizer
        else:
            vocab = a.vocab_size or DEFAULT_VOCAB_SIZE
            print(f"training a {vocab}-token byte-level BPE tokenizer on the pairs' source and target text",
                  file=sys.stderr)  # fmt: skip
            tokenizer = lib.train_pairs_tokenizer(train, a.source_column, a.target_column, vocab_size=vocab)
            tokenizer_description = f"byte-level BPE trained on the training pairs ({len(tokenizer):,} tokens)"
        # Sinusoidal positions cost no weights: room for 512 tokens, or the longest --max_*_length.
        positions = max(512, a.max_source_length or 0, a.max_target_length or 0)
        model = lib.new_model_config(tokenizer, max_position_embeddings=positions, **shape)

    training_args: dict[str, Any] = dict(
        output_dir=a.output_dir,
        num_train_epochs=a.num_train_epochs,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.per_device_train_batch_size,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
        seed=a.seed,
        logging_steps=10,
    )
    if a.learning_rate is not None:
        training_args["learning_rate"] = a.learning_rate
    _, results = lib.finetune_seq2seq(
        model,
        train,
        eval_dataset=validation,
        tokenizer=tokenizer,
        source_column=a.source_column,
        target_column=a.target_column,
        training_args=training_args,
        label_smoothing=a.label_smoothing_factor,
        inverse_sqrt_schedule=a.paper_schedule,
        warmup_steps=a.warmup_steps,
        max_source_length=a.max_source_length,
        max_target_length=a.max_target_length,
        num_beams=a.num_beams,
        overwrite=a.overwrite,
        data_description=_describe_data(a),
        tokenizer_description=tokenizer_description,
        draw_curves=draw_run_curves,
    )
    print(json.dumps({k: results[k] for k in ("train_loss", "train_steps", "epochs", "train_runtime_s")}))
    if results["eval"]:
        print(json.dumps(results["eval"]))
    out, layout = results["output_dir"], RunLayout(results["output_dir"])
    print(f"saved to    {out}  (model card: {layout.card}, numbers: {layout.results})")
    print(f"use it      AutoModelForSeq2SeqLM.from_pretrained({out!r}, trust_remote_code=True)")
    return 0


def _describe_data(a: argparse.Namespace) -> str:
    val = f", validation {', '.join(a.validation_files)}" if a.validation_files else ""
    return f"{', '.join(a.train_files)}{val} (columns {a.source_column!r} -> {a.target_column!r})"


if __name__ == "__main__":
    raise SystemExit(main())
