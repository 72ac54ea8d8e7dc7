"""`scratchformer finetune --task seq2seq`: train the encoder-decoder on (source, target) pairs with
stock `Seq2SeqTrainer` and the paper's recipe (label smoothing 0.1, inverse-square-root warm-up),
then score exact match and BLEU. The work is `library.seq2seq.finetune_seq2seq`.

    scratchformer finetune --task seq2seq --model DIR --train_files pairs.jsonl --validation_files dev.jsonl \\
        --output_dir out/s2s --num_train_epochs 20
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.seq2seq import evaluate_translation, finetune_seq2seq

KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer finetune --task seq2seq", description="Train an encoder-decoder on (source, target) pairs."
    )
    p.add("--model", required=True, metavar="DIR", help="checkpoint directory (model + tokenizer)")
    p.add("--train_files", required=True, nargs="+", metavar="F",
          help=".json/.jsonl/.csv with source and target columns")
    p.add("--validation_files", nargs="+", metavar="F", help="scored after training: exact match and BLEU")
    p.add("--source_column", default="source")
    p.add("--target_column", default="target")
    p.add("--output_dir", default="out/seq2seq", metavar="DIR")
    p.add("--num_train_epochs", type=float, default=3.0)
    p.add("--per_device_train_batch_size", type=int, default=32)
    p.add("--learning_rate", type=float, help="peak lr; default: the paper's d_model^-0.5 * warmup^-0.5")
    p.add("--warmup_steps", type=int, help="default: 4000 with the paper's schedule, none with --no_paper_schedule")
    p.add("--label_smoothing_factor", type=float, default=0.1)
    p.add("--no_paper_schedule", action="store_true", help="linear decay instead of inverse sqrt")
    p.add("--num_beams", type=int, default=1)
    return p


def _kind(files: list[str], flag: str) -> str:
    kinds = {KINDS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise UserError(f"{flag} {' '.join(files)}: use .jsonl, .json or .csv files, all of one kind")
    return kinds.pop()


@command("seq2seq")
def main(argv: list[str]) -> int:
    a = build_parser().parse(argv)
    args: dict[str, Any] = dict(
        output_dir=a.output_dir,
        num_train_epochs=a.num_train_epochs,
        per_device_train_batch_size=a.per_device_train_batch_size,
        save_strategy="no",
        logging_steps=50,
    )
    if a.learning_rate is not None:
        args["learning_rate"] = a.learning_rate
    if a.warmup_steps is not None:
        # Given explicitly, it applies to either schedule: --no_paper_schedule used to drop it.
        args["warmup_steps"] = a.warmup_steps
    _kind(a.train_files, "--train_files")
    eval_kind = _kind(a.validation_files, "--validation_files") if a.validation_files else None
    trainer, metrics = finetune_seq2seq(
        a.model,
        train_file=a.train_files,
        source_column=a.source_column,
        target_column=a.target_column,
        training_args=args,
        label_smoothing=a.label_smoothing_factor,
        inverse_sqrt_schedule=not a.no_paper_schedule,
        warmup_steps=4000 if a.warmup_steps is None else a.warmup_steps,
    )
    print(json.dumps(metrics))
    if eval_kind:
        from datasets import load_dataset

        data = load_dataset(eval_kind, data_files=a.validation_files, split="train")
        scores = evaluate_translation(
            trainer.model, trainer.processing_class, data[a.source_column], data[a.target_column],
            num_beams=a.num_beams,
        )
        print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
