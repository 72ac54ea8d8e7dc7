"""`scratchformer seq2seq` (also spelled `scratchformer finetune --task seq2seq`): train the
encoder-decoder on (source, target) pairs with stock `Seq2SeqTrainer`, score exact match and BLEU
(sacrebleu's, with its signature), and write a hub-style model directory with its card and results.
The flags are `Seq2SeqArguments`' fields, parsed as pretrain's and finetune's are; the work is
`library.seq2seq.finetune_seq2seq`.

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

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from scratchformer.modeling import ScratchformerSeq2SeqConfig
from scratchformer.modeling.configuration_scratchformer_seq2seq import PRESETS
from scratchformer.training.arguments import command
from scratchformer.training.library import seq2seq as lib
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.layout import RunLayout
from scratchformer.training.library.model_dir import load_tokenizer_dir
from scratchformer.training.viz.curves import draw_run_curves

# The flags that describe a new model; they mean nothing next to --model (a model already built).
NEW_MODEL_FLAGS = ("preset", "size", "num_hidden_layers", "encoder_layers", "decoder_layers", "hidden_size",
                   "num_attention_heads", "intermediate_size", "dropout", "tokenizer", "vocab_size")  # fmt: skip
DEFAULT_VOCAB_SIZE = 8192


SIZES_HELP = "; ".join(
    f"{k}={v['encoder_layers']}+{v['decoder_layers']} layers x {v['hidden_size']}, {v['num_attention_heads']} heads"
    for k, v in lib.SIZES.items()
)


@dataclass
class Seq2SeqArguments:
    """Every flag of `scratchformer seq2seq`: the model (a checkpoint, or a new one described as
    `scratchformer pretrain` describes one), the pairs, and how to train (Trainer's names)."""

    model: str | None = field(default=None, metadata={
        "help": "a checkpoint to train (model + tokenizer); without it, a new model", "metavar": "DIR"})
    preset: str | None = field(default=None, metadata={
        "help": "new model: architecture family (default: paper)", "choices": sorted(PRESETS)})
    size: str | None = field(default=None, metadata={
        "help": f"new model: shape (default: mini): {SIZES_HELP}; base is the paper's", "choices": list(lib.SIZES)})
    num_hidden_layers: int | None = field(default=None, metadata={
        "help": "new model: layers of each stack (the paper's N)", "metavar": "N"})
    encoder_layers: int | None = field(default=None, metadata={"help": "new model: encoder layers", "metavar": "N"})
    decoder_layers: int | None = field(default=None, metadata={"help": "new model: decoder layers", "metavar": "N"})
    hidden_size: int | None = field(default=None, metadata={"help": "new model: width (d_model)", "metavar": "C"})
    num_attention_heads: int | None = field(default=None, metadata={
        "help": "new model: attention heads", "metavar": "H"})
    intermediate_size: int | None = field(default=None, metadata={
        "help": "new model: feed-forward width (default: 4 x width)", "metavar": "F"})
    dropout: float | None = field(default=None, metadata={
        "help": "new model: dropout on embeddings and residual branches (preset: 0.1)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "new model: a tokenizer directory (from `scratchformer tokenizer`); default: train a byte-level "
        "BPE on the pairs' source and target text", "metavar": "DIR"})
    vocab_size: int | None = field(default=None, metadata={
        "help": f"new model: vocabulary of the tokenizer trained here ({DEFAULT_VOCAB_SIZE})"})

    train_files: list[str] = field(default_factory=list, metadata={
        "help": ".jsonl/.json/.csv with the two text columns", "metavar": "F", "required": True})
    validation_files: list[str] | None = field(default=None, metadata={
        "help": "scored after training: loss, exact match and BLEU", "metavar": "F"})
    source_column: str = field(default="source", metadata={"help": "the column holding the source text"})
    target_column: str = field(default="target", metadata={"help": "the column holding the target text"})
    max_source_length: int | None = field(default=None, metadata={
        "help": "source tokens kept (default: 256, or the model's positions)"})
    max_target_length: int | None = field(default=None, metadata={
        "help": "target tokens kept, eos included (default: as the source's)"})

    output_dir: str = field(default="", metadata={
        "help": "where the trained model goes", "metavar": "DIR", "required": True})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})
    num_train_epochs: float = field(default=3.0, metadata={"help": "passes over the pairs"})
    max_steps: int = field(default=-1, metadata={
        "help": "optimizer steps; overrides --num_train_epochs (--max_train_steps is the same flag)"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "pairs per batch and device"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches per optimizer step"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "peak lr; default: the paper's peak, d_model^-0.5 * 4000^-0.5 (7e-4 at width 512, 2e-3 at 64)"})
    warmup_steps: int | None = field(default=None, metadata={
        "help": "default: 5%% of the steps, or 4000 with --paper_schedule"})
    paper_schedule: bool = field(default=False, metadata={
        "help": "the paper's inverse square root, lr = d^-0.5 * min(step^-0.5, step * warmup^-1.5), made for "
        "100k-step runs (default: linear warm-up, then linear decay to 0)"})
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "the paper's label smoothing (§5.4)"})
    seed: int = field(default=42, metadata={"help": "seeds a new model's weights, the data order and dropout"})
    num_beams: int = field(default=1, metadata={"help": "beams when scoring the validation pairs (1: greedy)"})


def build_parser():
    """`Seq2SeqArguments` as flags, parsed as `pretrain` and `finetune` parse theirs (transformers'
    dataclass parser, both spellings of each flag, one-line errors)."""
    from scratchformer.training.arguments import HfParser

    p = HfParser(
        Seq2SeqArguments,
        prog="scratchformer seq2seq",
        description="Train an encoder-decoder on (source, target) pairs: a new one (--preset, --size, the size "
        "flags, --tokenizer) or a checkpoint (--model). Writes a Hugging Face model directory with a model card "
        "and finetune_results.json to --output_dir. Flags take dashes or underscores. "
        "`scratchformer finetune --task seq2seq` is the same command.",
    )
    p.add_argument("--no_paper_schedule", "--no-paper-schedule", dest="paper_schedule", action="store_false",
                   default=False, help="the linear schedule (default)")  # fmt: skip
    return p


def check_flags(a: Seq2SeqArguments) -> None:
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
    (a,) = build_parser().parse(argv)
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


def _describe_data(a: Seq2SeqArguments) -> str:
    val = f", validation {', '.join(a.validation_files)}" if a.validation_files else ""
    return f"{', '.join(a.train_files)}{val} (columns {a.source_column!r} -> {a.target_column!r})"


if __name__ == "__main__":
    raise SystemExit(main())
