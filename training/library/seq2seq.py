"""Training and scoring the encoder-decoder (`scratchformer finetune --task seq2seq` is the command).

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    train_file: str | list[str] | None = None,
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
    `datasets.Dataset` with the two text columns, or `train_file` (.json/.jsonl/.csv files, one kind). `training_args`:
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
        from .model_dir import load_model_dir

        model, loaded = load_model_dir(model_dir_or_config, AutoModelForSeq2SeqLM, need_tokenizer=tokenizer is None)
        tokenizer = tokenizer or loaded
    if train_dataset is None:
        if train_file is None:
            raise ValueError("Pass train_dataset or train_file.")
        files = [train_file] if isinstance(train_file, (str, Path)) else list(train_file)
        kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}[Path(files[0]).suffix]
        train_dataset = load_dataset(kind, data_files=files, split="train")
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
