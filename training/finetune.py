"""`scratchformer finetune`: fine-tune a checkpoint with stock `transformers.Trainer`.

    scratchformer finetune --model run/model --task classification --train-file train.csv --out clf
    scratchformer finetune --model run/model --task token-classification --train-file ner.jsonl --out ner
    scratchformer finetune --model run/model --task causal-lm --train-file chats.jsonl --assistant-only-loss --out sft
    scratchformer finetune --model run/model --task masked-lm --bidirectional --train-file notes.txt --out encoder
    scratchformer finetune ... --lora-r 8 --learning_rate 1e-3 --num_train_epochs 5   # any TrainingArguments flag

Data: .jsonl/.json/.csv/.parquet records (or .txt for the language-model tasks), a hub dataset or a
`save_to_disk` folder. Classification reads "text" and "label" columns; token-classification
"tokens" (a list of words) and "ner_tags" (one label per word); causal-lm a "messages" chat column
if there is one, else "text". Labels may be strings or integers; `id2label` is saved in the config.

Nothing here is a training loop: the task decides the Auto class, the preprocessing, the collator and
the metrics, and `Trainer` does the rest, so every `TrainingArguments` flag works as documented
(the parser is `HfArgumentParser` over `FinetuneArguments` and `TrainingArguments`). The result in
`--out` is an ordinary Hugging Face directory (weights, config with `id2label`, tokenizer, the
remote-code files, a model card), loadable by `pipeline(task, model=OUT)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
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
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import IntervalStrategy

import scratchformer.modeling  # noqa: F401  (registers the Scratchformer* classes with the Auto classes)
from scratchformer.training.checkpoint_io import (
    CheckpointError,
    check_tokenizer,
    check_weights,
    load_model_dir,
    load_tokenizer_dir,
    read_config,
)
from scratchformer.training.data import BUILDERS, check_utf8, default_corpus_dataset, load_text_dataset
from scratchformer.training.packing import tokenize_and_pack

Task = Literal["classification", "token-classification", "causal-lm", "masked-lm"]
TASKS: tuple[str, ...] = ("classification", "token-classification", "causal-lm", "masked-lm")

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
# Column names when --text-column / --label-column are left out: the names Hugging Face's own
# example scripts and the usual hub datasets (imdb, conll2003) use.
DEFAULT_COLUMNS = {
    "classification": ("text", "label"),
    "token-classification": ("tokens", "ner_tags"),
    "causal-lm": ("text", None),
    "masked-lm": ("text", None),
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "finetune_results.json"


class FinetuneError(ValueError):
    """A problem with what the user asked for; the CLI prints it as `error: ...` and exits 2."""


@dataclass
class FinetuneArguments:
    """What to fine-tune, on what, for which task. Everything about *how* to train is a
    `TrainingArguments` field (`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, ...)."""

    model: str = field(metadata={"help": "checkpoint directory (from `scratchformer pretrain` or any save_pretrained)"})
    task: Task = field(
        metadata={"help": "what to fine-tune for (`--task seq2seq` trains an encoder-decoder: see its --help)"}
    )
    out: str = field(metadata={"help": "where the fine-tuned model goes (a Hugging Face directory)"})
    train_file: list[str] | None = field(
        default=None, metadata={"help": f"training data, one format: {', '.join(sorted(BUILDERS))}"}
    )
    validation_file: list[str] | None = field(default=None, metadata={"help": "validation data (same format)"})
    dataset: str | None = field(
        default=None, metadata={"help": "a hub dataset name or a local dataset folder, instead of files"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_split: str = field(default="train", metadata={"help": "the dataset's training split"})
    validation_split: str = field(
        default="validation", metadata={"help": "the dataset's validation split (carved from training if absent)"}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "share of the training data held out for validation when none is given (0: no validation)"},
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": "text column (default: 'text'; 'tokens', a list of words, for token-classification)"},
    )
    label_column: str | None = field(
        default=None, metadata={"help": "label column (default: 'label'; 'ner_tags' for token-classification)"}
    )
    messages_column: str = field(
        default="messages",
        metadata={"help": "causal-lm: column of chat records ([{'role', 'content'}, ...]); used when present"},
    )
    assistant_only_loss: bool = field(
        default=False, metadata={"help": "causal-lm on chat records: train on the assistant's turns only"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per example or block (default: the model's context, at most 1024)"}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "causal-lm/masked-lm on text: join rows into full blocks (--no-packing: one example per row)"
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "masked-lm: share of tokens masked"})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after this many evaluations without improvement"}
    )
    lora_r: int = field(default=0, metadata={"help": "train LoRA adapters of this rank (peft) instead of all weights"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 * lora_r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "module names that get adapters"}
    )
    bidirectional: bool = field(
        default=False,
        metadata={
            "help": "masked-lm/classification: load a decoder checkpoint as a bidirectional encoder "
            "(is_causal=False) and adapt it, as LLM2Vec does; the result is an encoder"
        },
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep Trainer's checkpoints in OUT/checkpoints after a successful run"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --out directory"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow a non-scratchformer checkpoint's own code to run"}
    )


# ----------------------------------------------------------------------------------------------
# Checking the checkpoint
# ----------------------------------------------------------------------------------------------


def check_model_dir(path: str | os.PathLike, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The checkpoint's config, after `checkpoint_io`'s checks (the project's one gate for model
    directories): config.json readable with a known model type, complete safetensors weights (never
    pickles), a tokenizer. Raises `CheckpointError` / `FinetuneError` saying what is wrong and the fix."""
    read_config(path, trust_remote_code)
    check_weights(path)
    check_tokenizer(path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as e:
        raise FinetuneError(f"{path}/config.json could not be read as a model config: {one_line(e)}") from e


def check_task(config: PretrainedConfig, task: str, path: str) -> None:
    """Refuse a task the checkpoint's architecture cannot serve, before any data is read."""
    if task not in TASKS:
        raise FinetuneError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    is_causal = getattr(config, "is_causal", None)
    if config.model_type == "scratchformer" and task == "masked-lm" and is_causal:
        raise FinetuneError(
            f"{path} is a decoder (is_causal=True), and masked-lm needs a bidirectional encoder that sees both "
            "sides of the blank; pass --bidirectional to turn this decoder into one (its weights are kept, its "
            "attention mask opened), or use --task causal-lm"
        )
    if config.model_type == "scratchformer" and task == "causal-lm" and is_causal is False:
        raise FinetuneError(
            f"{path} is a bidirectional encoder (is_causal=False), which cannot predict the next token; "
            "use --task masked-lm (or classification / token-classification)"
        )
    mapping = AUTO_CLASSES[task]._model_mapping
    if type(config) not in mapping and not (getattr(config, "auto_map", None) or {}).get(AUTO_CLASSES[task].__name__):
        raise FinetuneError(
            f"{path} is a {config.model_type!r} model, which has no {AUTO_CLASSES[task].__name__} head for "
            f"--task {task}"
        )


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_raw_splits(args: FinetuneArguments, seed: int = 42) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation) records with all their columns, from files, a dataset, or (for the
    language-model tasks only) the embedded default corpus. Validation is carved from training
    (`validation_fraction`, seeded) when none is given."""
    labelled = args.task in ("classification", "token-classification")
    if args.train_file and args.dataset:
        raise FinetuneError("give --train-file or --dataset, not both")
    if args.validation_file and not args.train_file:
        raise FinetuneError("--validation-file needs --train-file too")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise FinetuneError(f"--validation-fraction={args.validation_fraction} must be in [0, 1)")

    validation = None
    if args.train_file:
        train = _read_files(args.train_file, args.task)
        if args.validation_file:
            validation = _read_files(args.validation_file, args.task)
    elif args.dataset:
        train, validation = _read_dataset(args)
    elif labelled:
        text, label = DEFAULT_COLUMNS[args.task]
        raise FinetuneError(
            f"{args.task} needs labelled examples: --train-file data.jsonl (or .csv/.parquet) with columns "
            f"{text!r} and {label!r}, or --dataset NAME"
        )
    else:  # the language-model tasks default to the embedded corpus, as pretraining does
        train, validation = default_corpus_dataset("train"), default_corpus_dataset("validation")

    if len(train) == 0:
        raise FinetuneError("the training data has no rows")
    if validation is None and args.validation_fraction > 0:
        if len(train) < 4:
            raise FinetuneError(
                f"{len(train)} training rows are too few to hold out a validation set; add data, give "
                "--validation-file, or pass --validation-fraction 0"
            )
        parts = train.train_test_split(test_size=args.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    return train, validation


def _read_files(files: Sequence[str], task: str) -> datasets.Dataset:
    builders = set()
    for path in files:
        p = Path(path)
        if not p.is_file():
            raise FinetuneError(f"no such file: {path}")
        builder = BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise FinetuneError(f"{path}: unknown file type {p.suffix!r}; known: {', '.join(sorted(BUILDERS))}")
        builders.add(builder)
    if len(builders) > 1:
        raise FinetuneError(f"files of different formats ({', '.join(sorted(builders))}) cannot be read together")
    builder = builders.pop()
    if builder == "text":
        if task in ("classification", "token-classification"):
            raise FinetuneError(
                f"{task} needs records with a text and a label column: give .jsonl, .csv or .parquet files, not .txt"
            )
        # Plain text goes through the same reader as pretraining (UTF-8 checks, line breaks kept).
        return load_text_dataset(files=list(files))
    if builder != "parquet":
        for path in files:
            check_utf8(path)
    try:
        return datasets.load_dataset(builder, data_files={"train": list(files)}, split="train")
    except Exception as e:  # the parsers raise many types; say which files they were reading
        raise FinetuneError(f"could not read {', '.join(files)} as {builder}: {one_line(e)}") from e


def _read_dataset(args: FinetuneArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    path = Path(args.dataset)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))  # a folder written by save_to_disk
    else:
        loaded = datasets.load_dataset(args.dataset, args.dataset_config)
    if isinstance(loaded, datasets.Dataset):
        return loaded, None
    if args.train_split not in loaded:
        raise FinetuneError(f"{args.dataset} has no split {args.train_split!r}; its splits are {', '.join(loaded)}")
    return loaded[args.train_split], loaded[args.validation_split] if args.validation_split in loaded else None


def _require_columns(ds: datasets.Dataset, columns: Sequence[str], flag_of: dict[str, str]) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise FinetuneError(
                f"the data has no column {column!r}; its columns are {', '.join(map(repr, ds.column_names))} "
                f"(choose one with {flag_of[column]})"
            )


def label_names(ds: datasets.Dataset, column: str, *, per_token: bool = False) -> list[str]:
    """The label vocabulary: a `ClassLabel`'s names when the data declares them (hub datasets),
    otherwise the distinct values seen in training, numbers in numeric order, text in sorted order."""
    feature = ds.features[column]
    inner = getattr(feature, "feature", feature) if per_token else feature
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    values = list(ds[column])
    if per_token:
        values = [v for row in values for v in (row or [])]
    if any(v is None for v in values):
        raise FinetuneError(f"some rows have no label in column {column!r}; fill them in or drop those rows")
    distinct = set(values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in distinct):
        return [str(v) for v in sorted(distinct)]
    return sorted(str(v) for v in distinct)


def _label_ids(values: list, names: list[str], feature: Any, split: str, column: str) -> list[int]:
    if isinstance(feature, datasets.ClassLabel):
        return [int(v) for v in values]  # already ids into feature.names
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted({str(v) for v in values} - index.keys())
    if unseen:
        shown = ", ".join(map(repr, unseen[:5])) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
        raise FinetuneError(
            f"the {split} data has labels never seen in training ({shown}) in column {column!r}; the model can "
            f"only predict the training labels ({', '.join(map(repr, names))}). Add training examples of them, "
            f"or drop those rows"
        )
    return [index[str(v)] for v in values]


def _check_classes(ids: Sequence[int], names: list[str], column: str) -> None:
    present = set(ids)
    if len(present) < 2:
        only = names[next(iter(present))] if present else "nothing"
        raise FinetuneError(
            f"the label column {column!r} has a single class ({only!r}) in the training data: a classifier needs "
            "at least two. Check --label-column, or add examples of the other classes"
        )


def prepare_classification(
    args: FinetuneArguments,
    tokenizer: PreTrainedTokenizerBase,
    train: datasets.Dataset,
    validation: datasets.Dataset | None,
    max_length: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, list[str]]:
    text_col, label_col = _columns(args)
    flags = {text_col: "--text-column", label_col: "--label-column"}
    names = None
    encoded = []
    for split, ds in (("training", train), ("validation", validation)):
        if ds is None:
            encoded.append(None)
            continue
        _require_columns(ds, (text_col, label_col), flags)
        if names is None:
            names = label_names(ds, label_col)
        labels = _label_ids(list(ds[label_col]), names, ds.features[label_col], split, label_col)
        if split == "training":
            _check_classes(labels, names, label_col)
        texts = list(ds[text_col])
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise FinetuneError(f"row {bad} of the {split} data has no text in column {text_col!r}")
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        encoded.append(datasets.Dataset.from_dict({**enc, "labels": labels}))
    return encoded[0], encoded[1], names


def align_word_labels(
    tokenizer: PreTrainedTokenizerBase, words: list[str], word_labels: list[int] | None, max_length: int
) -> dict[str, list[int]]:
    """Tokenize one pre-split sentence and give each word's label to its first sub-token.

    The words are tokenized with the spaces they had in running text put back (" word"), because
    a byte-level BPE with no prefix space would otherwise tokenize them as if glued together
    ("TheFoxsaw"): ids the model never met in pretraining. `word_ids()` then maps tokens to words.
    "First sub-token" means the first one that spells part of the word, not a lone space token
    ("Ġ" before "s a w" in a small vocabulary): transformers' token-classification pipeline starts
    a word at that same token, so training and inference agree. Other sub-tokens and the special
    tokens get -100, which the loss ignores.
    """
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    enc = tokenizer(
        pieces, is_split_into_words=True, truncation=True, max_length=max_length, return_offsets_mapping=True
    )
    labels, done = [], set()
    for word, (start, end) in zip(enc.word_ids(), enc["offset_mapping"]):
        if word is None or word in done or not pieces[word][start:end].strip():
            labels.append(-100)
            continue
        done.add(word)
        labels.append(word_labels[word] if word_labels is not None else 0)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def prepare_token_classification(
    args: FinetuneArguments,
    tokenizer: PreTrainedTokenizerBase,
    train: datasets.Dataset,
    validation: datasets.Dataset | None,
    max_length: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, list[str]]:
    words_col, label_col = _columns(args)
    flags = {words_col: "--text-column", label_col: "--label-column"}
    if not getattr(tokenizer, "is_fast", False):
        raise FinetuneError("token-classification needs a fast (Rust) tokenizer, for word_ids()")
    names = None
    encoded = []
    for split, ds in (("training", train), ("validation", validation)):
        if ds is None:
            encoded.append(None)
            continue
        _require_columns(ds, (words_col, label_col), flags)
        if names is None:
            names = label_names(ds, label_col, per_token=True)
        feature = getattr(ds.features[label_col], "feature", None)
        rows = {"input_ids": [], "attention_mask": [], "labels": []}
        all_ids = []
        for i, (words, tags) in enumerate(zip(list(ds[words_col]), list(ds[label_col]))):
            words = words.split() if isinstance(words, str) else list(words or [])
            tags = list(tags or [])
            if not words:
                raise FinetuneError(f"row {i} of the {split} data has no words in column {words_col!r}")
            if len(words) != len(tags):
                raise FinetuneError(
                    f"row {i} of the {split} data has {len(words)} words but {len(tags)} labels; "
                    f"{words_col!r} and {label_col!r} must pair one label with each word"
                )
            ids = _label_ids(tags, names, feature, split, label_col)
            all_ids.extend(ids)
            for key, value in align_word_labels(tokenizer, words, ids, max_length).items():
                rows[key].append(value)
        if split == "training":
            _check_classes(all_ids, names, label_col)
        encoded.append(datasets.Dataset.from_dict(rows))
    return encoded[0], encoded[1], names


def prepare_language_modeling(
    args: FinetuneArguments,
    tokenizer: PreTrainedTokenizerBase,
    train: datasets.Dataset,
    validation: datasets.Dataset | None,
    max_length: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, bool]:
    """Plain text is packed into full blocks, as in pretraining (or, with `packing=False`, one
    example per row, as HF's run_mlm --line_by_line: better for short independent sentences, whose
    neighbours in a block would only be noise). Chat records (a `messages` column)
    go through the tokenizer's chat template one conversation per example, with labels on the
    assistant's turns only when `assistant_only_loss` asks for it. Returns (train, validation, is_chat)."""
    is_chat = args.task == "causal-lm" and args.messages_column in train.column_names
    if args.assistant_only_loss and not is_chat:
        raise FinetuneError(
            f"--assistant-only-loss needs chat records: a {args.messages_column!r} column of "
            "[{'role': ..., 'content': ...}] lists (choose it with --messages-column)"
        )
    out = []
    for split, ds in (("training", train), ("validation", validation)):
        if ds is None:
            out.append(None)
        elif is_chat:
            out.append(_encode_chats(args, tokenizer, ds, split, max_length))
        else:
            text_col = _columns(args)[0]
            _require_columns(ds, (text_col,), {text_col: "--text-column"})
            ds = ds.select_columns([text_col])
            if text_col != "text":
                ds = ds.rename_column(text_col, "text")
            if args.packing:
                out.append(_pack(args, tokenizer, ds, split, max_length))
            else:  # one example per row, cut at max_length; the collator pads each batch
                texts = [t for t in ds["text"] if t and t.strip()]
                if not texts:
                    raise FinetuneError(f"the {split} data has no text in column {text_col!r}")
                enc = tokenizer(texts, truncation=True, max_length=max_length)
                out.append(datasets.Dataset.from_dict(dict(enc)))
    return out[0], out[1], is_chat


def _pack(
    args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, ds: datasets.Dataset, split: str, max_length: int
) -> datasets.Dataset:
    # A .txt file arrives one row per line; everything else is one row per document.
    from_lines = bool(args.train_file) and Path(args.train_file[0]).suffix.lower() in (".txt", ".text")
    packed = tokenize_and_pack(ds, tokenizer, max_length, rows_are_documents=not from_lines, split=split)
    if len(packed) == 0:
        raise FinetuneError(
            f"the {split} text is shorter than one block of {max_length} tokens; add text, lower --max-length, "
            "or pass --no-packing"
        )
    return packed


def _encode_chats(
    args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, ds: datasets.Dataset, split: str, max_length: int
) -> datasets.Dataset:
    if not tokenizer.chat_template:
        raise FinetuneError("the checkpoint's tokenizer has no chat template, so chat records cannot be formatted")
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i, messages in enumerate(list(ds[args.messages_column])):
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages
        ):
            raise FinetuneError(
                f"row {i} of the {split} data: {args.messages_column!r} must be a list of "
                "{'role': ..., 'content': ...} messages"
            )
        enc = tokenizer.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            truncation=True,
            max_length=max_length,
            return_assistant_tokens_mask=args.assistant_only_loss,
        )
        ids = list(enc["input_ids"])
        if args.assistant_only_loss:
            labels = [t if keep else -100 for t, keep in zip(ids, enc["assistant_masks"])]
        else:
            labels = list(ids)
        rows["input_ids"].append(ids)
        rows["attention_mask"].append(list(enc["attention_mask"]))
        rows["labels"].append(labels)
    if args.assistant_only_loss and all(label == -100 for row in rows["labels"] for label in row):
        raise FinetuneError(
            f"--assistant-only-loss found no assistant tokens in the {split} data: the records need assistant "
            "turns, and the chat template must mark them with {% generation %} ... {% endgeneration %}"
        )
    return datasets.Dataset.from_dict(rows)


def _columns(args: FinetuneArguments) -> tuple[str, str | None]:
    text, label = DEFAULT_COLUMNS[args.task]
    return args.text_column or text, args.label_column or label


# ----------------------------------------------------------------------------------------------
# Metrics: computed here, in numpy, so nothing is downloaded (no `evaluate`, no scikit-learn)
# ----------------------------------------------------------------------------------------------


def accuracy_and_macro_f1(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Accuracy, and F1 averaged over classes with equal weight (so a rare class counts as much as a
    common one), over the classes that occur in either array, as scikit-learn's `f1_score(average="macro")`."""
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if references.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    f1s = []
    for c in np.union1d(predictions, references):
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1s))}


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels)


def compute_token_metrics(eval_pred) -> dict[str, float]:
    """Word-level: only the positions that carry a label (each word's first sub-token) count."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    keep = labels != -100
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1)[keep], labels[keep])


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------


def finetune(args: FinetuneArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Fine-tune `args.model` for `args.task` with `Trainer`; save to `args.out`; return the
    results (metrics, label names, paths) that are also written to `OUT/finetune_results.json`.

    Trainer's checkpoints go to `training_args.output_dir`; the best (or last) model to `args.out`.
    """
    config = check_model_dir(args.model, trust_remote_code=args.trust_remote_code)
    if args.bidirectional:
        if config.model_type != "scratchformer" or args.task == "causal-lm":
            raise FinetuneError("--bidirectional turns a scratchformer decoder into an encoder: not with causal-lm")
        config.is_causal = False
    check_task(config, args.task, args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} exists and is not a directory")
    resuming = bool(training_args.resume_from_checkpoint)
    if out.is_dir() and _has_files_besides(out, CHECKPOINTS_DIR) and not (args.overwrite or resuming):
        raise FinetuneError(f"--out {out} exists and is not empty; choose another --out or pass --overwrite")
    _check_training_args(args, training_args)

    tokenizer = load_tokenizer_dir(args.model, trust_remote_code=args.trust_remote_code)
    max_length = _max_length(args, tokenizer, config)
    train_raw, validation_raw = load_raw_splits(args, seed=training_args.seed)

    labels: list[str] | None = None
    compute_metrics = None
    is_chat = False
    if args.task == "classification":
        train, validation, labels = prepare_classification(args, tokenizer, train_raw, validation_raw, max_length)
        collator = DataCollatorWithPadding(tokenizer)
        compute_metrics = compute_classification_metrics
    elif args.task == "token-classification":
        train, validation, labels = prepare_token_classification(args, tokenizer, train_raw, validation_raw, max_length)
        collator = DataCollatorForTokenClassification(tokenizer)
        compute_metrics = compute_token_metrics
    else:
        train, validation, is_chat = prepare_language_modeling(args, tokenizer, train_raw, validation_raw, max_length)
        if args.task == "masked-lm":
            if tokenizer.mask_token is None:
                raise FinetuneError("masked-lm needs a tokenizer with a mask token (<mask>)")
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=args.mlm_probability)
        elif is_chat:
            # Conversations differ in length and carry their own labels (maybe assistant-only):
            # pad input_ids with <pad> and labels with -100, which is what this collator does.
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        else:
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = input_ids; the model shifts

    if validation is None:
        # Nothing to evaluate on: evaluation and best-model selection switch off rather than fail.
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.load_best_model_at_end = False

    model, loading = _load_model(args, labels, config)
    if args.lora_r:
        model = _wrap_lora(args, model)

    if out.is_dir() and args.overwrite and not resuming:
        # Only now, with the data and model checked: no file of the earlier run (an adapter, old
        # checkpoints) may pass for this one's, but a mistyped flag must not cost the user that run.
        shutil.rmtree(out)
    callbacks = []
    if args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or None)
    eval_metrics = trainer.evaluate() if validation is not None else {}
    if "eval_loss" in eval_metrics and args.task in ("causal-lm", "masked-lm"):
        eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))

    # Everything the run leaves at the top of OUT is written into a hidden staging directory first
    # and moved in file by file once complete, so a crash while saving leaves no half-written file.
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a run killed while saving
    staging.mkdir()
    final = trainer.model
    if args.lora_r:
        final.save_pretrained(staging / "adapter")  # the adapter alone, for sharing beside the base model
        final = final.merge_and_unload()  # and the merged model, which needs no peft to load
    final.save_pretrained(staging)
    tokenizer.save_pretrained(staging)

    results = {
        "task": args.task,
        "pipeline_task": PIPELINE_TASKS[args.task],
        "base_model": str(args.model),
        "out": str(out),
        "data": describe_data(args),
        "train_examples": len(train),
        "validation_examples": len(validation) if validation is not None else 0,
        "max_length": max_length,
        "labels": labels,
        "chat": is_chat,
        "assistant_only_loss": args.assistant_only_loss,
        "new_weights": sorted(loading.get("missing_keys", [])),
        "lora": {"r": args.lora_r, "alpha": _lora_alpha(args), "target_modules": args.lora_target_modules}
        if args.lora_r
        else None,
        "train_loss": train_output.training_loss,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "eval": eval_metrics,
        "best_checkpoint": trainer.state.best_model_checkpoint,
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
    write_card_and_curve(staging, results, args.model)
    (staging / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    _move_into(staging, out)

    checkpoints = Path(training_args.output_dir)
    if not args.keep_checkpoints and checkpoints == out / CHECKPOINTS_DIR and checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # the best model is at the top of OUT; the rest was only for resuming
    return results


def _move_into(staging: Path, out: Path) -> None:
    """Renames each entry of `staging` into `out` (same file system: each rename is atomic),
    replacing what an earlier attempt left there, then removes `staging`."""
    for entry in sorted(staging.iterdir()):
        dest = out / entry.name
        if entry.is_dir() and dest.is_dir():
            shutil.rmtree(dest)  # e.g. the adapter of a finished earlier attempt
        os.replace(entry, dest)
    staging.rmdir()


def describe_data(args: FinetuneArguments) -> str:
    if args.train_file:
        val = f", validation {', '.join(args.validation_file)}" if args.validation_file else ""
        return f"{', '.join(args.train_file)}{val}"
    if args.dataset:
        config = f" ({args.dataset_config})" if args.dataset_config else ""
        return f"dataset {args.dataset}{config}"
    return "the embedded default corpus (Python's help topics, pydoc_data)"


def _has_files_besides(directory: Path, *ignored: str) -> bool:
    return any(p.name not in ignored for p in directory.iterdir())


def _check_training_args(args: FinetuneArguments, training_args: TrainingArguments) -> None:
    if args.early_stopping_patience is not None:
        if args.early_stopping_patience < 1:
            raise FinetuneError("--early-stopping-patience must be at least 1")
        if not training_args.load_best_model_at_end or training_args.eval_strategy == IntervalStrategy.NO:
            raise FinetuneError(
                "--early-stopping-patience needs evaluation and best-model tracking: keep --eval_strategy and "
                "--load_best_model_at_end on (the defaults)"
            )
    if args.lora_r < 0:
        raise FinetuneError("--lora-r must be positive (or 0 for full fine-tuning)")


def _max_length(args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length, 1024]
    context = min(int(n) for n in limits if n)
    if args.max_length is None:
        return context
    if args.max_length < 2:
        raise FinetuneError(f"--max-length={args.max_length} must be at least 2")
    if getattr(config, "max_position_embeddings", None) and args.max_length > config.max_position_embeddings:
        raise FinetuneError(
            f"--max-length={args.max_length} is longer than the model's context "
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
        raise FinetuneError("--lora-r needs peft: pip install 'scratchformer[peft]'") from e
    task_type = {
        "classification": TaskType.SEQ_CLS,  # also keeps the new `score` head fully trainable
        "token-classification": TaskType.TOKEN_CLS,
        "causal-lm": TaskType.CAUSAL_LM,
        "masked-lm": None,
    }[args.task]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in args.lora_target_modules if m not in names]
    if missing:
        raise FinetuneError(
            f"--lora-target-modules {' '.join(missing)}: no such module; scratchformer's are q_proj k_proj v_proj "
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


# ----------------------------------------------------------------------------------------------
# Model card and loss curve
# ----------------------------------------------------------------------------------------------


def write_card_and_curve(out: Path, results: dict, base_model: str) -> None:
    """`OUT/metrics.jsonl` (Trainer's log history), `OUT/loss_curve.png` when matplotlib is there,
    and `OUT/README.md`: the fine-tuning card, with the base model's card kept below it."""
    from scratchformer.training.inspect import InspectError, plot_run  # the picture pretraining draws too

    metrics = out / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in results["log_history"] if "step" in r), encoding="utf-8")
    try:
        plot_run(metrics, out / "loss_curve.png")
        results["has_loss_curve"] = True
    except (ImportError, InspectError):  # no matplotlib (an optional dependency), or nothing logged
        results["has_loss_curve"] = False
    base_card = Path(base_model) / "README.md"
    card = render_finetune_card(results, base_card.read_text(encoding="utf-8") if base_card.is_file() else None)
    (out / "README.md").write_text(card, encoding="utf-8")


def render_finetune_card(results: dict, base_card: str | None = None) -> str:
    """Markdown with the hub's YAML header: what the model was fine-tuned from, for what, on what,
    how well it does, and how to use it with stock transformers."""
    task, pipeline_task = results["task"], results["pipeline_task"]
    name = Path(results["out"]).resolve().name
    tags = ["scratchformer", "custom_code", pipeline_task] + (["lora"] if results["lora"] else [])
    rows = []
    for key, label, spec in (
        ("eval_accuracy", "validation accuracy", "{:.4f}"),
        ("eval_macro_f1", "validation macro-F1", "{:.4f}"),
        ("eval_loss", "validation loss", "{:.4f}"),
        ("eval_perplexity", "validation perplexity", "{:.2f}"),
    ):
        if key in results["eval"]:
            rows.append((label, spec.format(results["eval"][key])))
    if results["train_loss"] is not None:
        rows.append(("final training loss", f"{results['train_loss']:.4f}"))
    h = results["hyperparameters"]
    training = [
        ("base model", f"`{results['base_model']}`"),
        ("data", results["data"]),
        ("examples", f"{results['train_examples']} training, {results['validation_examples']} validation"),
        ("tokens per example", f"up to {results['max_length']}"),
        ("epochs", f"{h['num_train_epochs']:g}" if h["max_steps"] <= 0 else f"{h['max_steps']} steps"),
        ("learning rate", f"{h['learning_rate']:g} ({h['lr_scheduler_type']}), weight decay {h['weight_decay']:g}"),
        ("batch", f"{h['per_device_train_batch_size']} per device x {h['gradient_accumulation_steps']} accumulation"),
        ("seed", str(h["seed"])),
    ]
    if results["new_weights"]:
        training.append(("newly initialised", ", ".join(f"`{k}`" for k in results["new_weights"])))
    if results["lora"]:
        lora = results["lora"]
        training.append(
            (
                "LoRA",
                f"rank {lora['r']}, alpha {lora['alpha']:g} on {', '.join(lora['target_modules'])}; merged "
                "into the weights here, the adapter alone is in adapter/",
            )
        )
    if results["chat"]:
        training.append(
            (
                "format",
                "chat template; loss on "
                + ("assistant turns only" if results["assistant_only_loss"] else "every token"),
            )
        )
    labels = ""
    if results["labels"]:
        labels = "\n## Labels\n\n" + _table([(str(i), name) for i, name in enumerate(results["labels"])]) + "\n"
    example = {
        "text-classification": 'print(pipe("Some text to classify"))',
        "token-classification": 'print(pipe("Some text to tag", aggregation_strategy="first"))',
        "text-generation": 'print(pipe("Once upon a time", max_new_tokens=50)[0]["generated_text"])',
        "fill-mask": 'print(pipe("The capital of France is<mask>."))',
    }[pipeline_task]
    curve = "\n![Training and validation loss](loss_curve.png)\n" if results.get("has_loss_curve") else ""
    base = ""
    if base_card:
        body = re.sub(r"\A---\n.*?\n---\n", "", base_card, flags=re.S).strip()
        body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # its headings one level down, under ours
        body = re.sub(r"^!\[.*\]\(.*\)\n", "", body, flags=re.M)  # its images are not in this directory
        base = f"\n## The base model\n\nThe card of `{results['base_model']}`, as it was:\n\n{body}\n"
    return f"""---
library_name: transformers
pipeline_tag: {pipeline_task}
tags:
{"".join(f"- {t}{chr(10)}" for t in tags)}---

# {name}

`{results["base_model"]}` fine-tuned for {task} with `transformers.Trainer` (`scratchformer finetune`).

## Results

{_table(rows)}
{curve}{labels}
## Training

{_table(training)}

`finetune_results.json` holds every number above and Trainer's full log.

## How to use

The model code ships in this directory, so stock transformers runs it with `trust_remote_code=True`;
with the `scratchformer` package installed, no remote code is needed.

```python
from transformers import AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("path/to/{name}", trust_remote_code=True)
pipe = pipeline("{pipeline_task}", model="path/to/{name}", tokenizer=tokenizer, trust_remote_code=True)
{example}
```
{base}"""


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser(task: str | None = None) -> HfArgumentParser:
    """`FinetuneArguments` and every `TrainingArguments` flag, with defaults suited to fine-tuning a
    small model: evaluate and save each epoch, keep the best model (by accuracy for the classifiers,
    by validation loss for the language models), log every 10 steps, report to no tracker."""
    parser = HfArgumentParser(
        (FinetuneArguments, TrainingArguments),
        prog="scratchformer finetune",
        description="Fine-tune a checkpoint with transformers.Trainer. Every TrainingArguments flag works "
        "(--learning_rate, --num_train_epochs, --per_device_train_batch_size, --gradient_accumulation_steps, "
        "--use_cpu, ...). Flags take dashes or underscores.",
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


def parse_args(argv: Sequence[str] | None = None) -> tuple[FinetuneArguments, TrainingArguments]:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--out")
    pre.add_argument("--output_dir", "--output-dir")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.task)
    if known.out and not known.output_dir:
        # Trainer's checkpoints go inside OUT, out of the way of the model at its top level.
        parser.set_defaults(output_dir=str(Path(known.out) / CHECKPOINTS_DIR))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return args, training_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _seq2seq_requested(argv):
        # The encoder-decoder trains through Seq2SeqTrainer with the paper's recipe: its own module.
        from scratchformer.training import seq2seq

        return seq2seq.main([a for a in argv if a not in ("--task", "seq2seq", "--task=seq2seq")])
    try:
        args, training_args = parse_args(argv)
        results = finetune(args, training_args)
    except (FinetuneError, CheckpointError, OSError, datasets.exceptions.DatasetsError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(format_results(results))
    return 0


def _seq2seq_requested(argv: list[str]) -> bool:
    return "--task=seq2seq" in argv or any(a == "--task" and b == "seq2seq" for a, b in zip(argv, argv[1:]))


def format_results(results: dict) -> str:
    lines = [
        f"fine-tuned {results['base_model']} for {results['task']}: "
        f"{results['train_examples']} training / {results['validation_examples']} validation examples"
    ]
    if results["labels"]:
        lines.append(f"labels      {', '.join(results['labels'])}")
    for key in ("eval_accuracy", "eval_macro_f1", "eval_loss", "eval_perplexity"):
        if key in results["eval"]:
            lines.append(f"{key[5:]:<11} {results['eval'][key]:.4f}")
    out = results["out"]
    lines.append(f"saved to    {out}  (model card: {out}/README.md)")
    lines.append(f"use it      pipeline({results['pipeline_task']!r}, model={out!r})")
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    return re.sub(r"\s+", " ", str(e)).strip() or type(e).__name__


__all__ = [
    "TASKS",
    "FinetuneArguments",
    "FinetuneError",
    "accuracy_and_macro_f1",
    "align_word_labels",
    "build_parser",
    "check_model_dir",
    "check_task",
    "finetune",
    "label_names",
    "load_raw_splits",
    "main",
    "parse_args",
]

if __name__ == "__main__":
    raise SystemExit(main())
