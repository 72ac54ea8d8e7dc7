"""`scratchformer finetune`: fine-tune a checkpoint with stock `transformers.Trainer`.

    scratchformer finetune --model runs/mini/model --task classification --train_files train.csv --output_dir clf
    scratchformer finetune --model runs/mini/model --task token-classification --train_files ner.jsonl --output_dir ner
    scratchformer finetune --model runs/mini/model --task causal-lm --train_files chats.jsonl --assistant_only_loss \\
        --output_dir sft
    scratchformer finetune --model runs/mini/model --task masked-lm --bidirectional --train_files notes.txt \\
        --output_dir encoder
    scratchformer finetune ... --lora_r 8 --learning_rate 1e-3 --num_train_epochs 5   # any TrainingArguments flag
    scratchformer finetune --task seq2seq ...          # = scratchformer seq2seq, the encoder-decoder's command

Data: .jsonl/.json/.csv/.parquet records (or .txt for the language-model tasks), a hub dataset or a
`save_to_disk` folder. Classification reads "text" and "label" columns; token-classification
"tokens" (a list of words) and "ner_tags" (one label per word); causal-lm a "messages" chat column
if there is one, else "text". The model goes to --output_dir (a Hugging Face directory a pipeline
loads); Trainer's checkpoints to OUTPUT_DIR/checkpoints. The work is `library.finetuning.finetune`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from transformers import TrainingArguments

from scratchformer.training.arguments import HfParser, command, flag_value, run_command, without_flag
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.finetuning import FinetuneArguments, finetune
from scratchformer.training.viz.curves import draw_run_curves


def build_parser(task: str | None = None) -> HfParser:
    """`FinetuneArguments` and every `TrainingArguments` flag, with defaults suited to fine-tuning a
    small model: evaluate and save each epoch, keep the best model (by accuracy for the classifiers,
    by validation loss for the language models), log every 10 steps, report to no tracker."""
    parser = HfParser(
        (FinetuneArguments, TrainingArguments),
        prog="scratchformer finetune",
        description="Fine-tune a checkpoint with transformers.Trainer. Every TrainingArguments flag works "
        "(--learning_rate, --num_train_epochs, --per_device_train_batch_size, --gradient_accumulation_steps, "
        "--use_cpu, ...). --output_dir receives the model; Trainer's checkpoints go to OUTPUT_DIR/checkpoints. "
        "Flags take dashes or underscores.",
    )
    metric = "accuracy" if task in ("classification", "token-classification") else "loss"
    parser.set_defaults(
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        save_total_limit=2,
        logging_steps=10,
        learning_rate=2e-4,
        report_to="none",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[FinetuneArguments, TrainingArguments]:
    """(what to fine-tune, how to train). --output_dir is where the model goes; Trainer writes its
    checkpoints inside it, out of the model's way (`library.finetuning.finetune` arranges that)."""
    args, training_args = build_parser(flag_value(argv, "--task")).parse(argv)
    if not any(a.split("=")[0] in ("--output_dir", "--output-dir") for a in argv):
        # Trainer would pick "trainer_output" by itself; where a model goes is the user's to say.
        raise UserError("give --output_dir: the directory the fine-tuned model is written to")
    return args, training_args


@command("finetune")
def main(argv: list[str]) -> int:
    if flag_value(argv, "--task") == "seq2seq":  # an alias: `scratchformer seq2seq`, the encoder-decoder's command
        return run_command("seq2seq", without_flag(argv, "--task", "seq2seq"))
    args, training_args = parse_args(argv)
    results = finetune(args, training_args, draw_curves=draw_run_curves)
    print(format_results(results))
    return 0


def format_results(results: dict) -> str:
    lines = [
        f"fine-tuned {results['base_model']} for {results['task']}: "
        f"{results['train_examples']} training / {results['validation_examples']} validation examples"
    ]
    if results["labels"]:
        lines.append(f"labels      {', '.join(results['labels'])}")
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_macro_f1", "eval_loss",
                "eval_perplexity"):
        if key in results["eval"]:
            name = {"f1": "entity F1", "precision": "entity P", "recall": "entity R"}.get(key[5:], key[5:])
            lines.append(f"{name:<11} {results['eval'][key]:.4f}")
    out = results["output_dir"]
    lines.append(f"saved to    {out}  (model card: {out}/README.md)")
    lines.append(f"use it      pipeline({results['pipeline_task']!r}, model={out!r})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
