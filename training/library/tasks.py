"""Fine-tuning data: records from files, a dataset or the embedded corpus, turned into what each
task trains on: classification (one label per text), token classification (one label per word,
on its first sub-token), language modelling (packed blocks, or chat records through the template,
optionally with the loss on the assistant's turns only). Labels may be strings or integers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import (
    PreTrainedTokenizerBase,
)

import scratchformer.modeling  # noqa: F401  (registers the Scratchformer* classes with the Auto classes)

from .data import BUILDERS, check_utf8, default_corpus_dataset, load_text_dataset
from .errors import UserError, one_line
from .finetune_config import TASKS, FinetuneArguments, Task  # noqa: F401  (Task, TASKS: re-exported)
from .packing import tokenize_and_pack

# Column names when --text_column / --label_column are left out: the names Hugging Face's own
# example scripts and the usual hub datasets (imdb, conll2003) use.
DEFAULT_COLUMNS = {
    "classification": ("text", "label"),
    "token-classification": ("tokens", "ner_tags"),
    "causal-lm": ("text", None),
    "masked-lm": ("text", None),
}


def load_raw_splits(args: FinetuneArguments, seed: int = 42) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation) records with all their columns, from files, a dataset, or (for the
    language-model tasks only) the embedded default corpus. Validation is carved from training
    (`validation_fraction`, seeded) when none is given."""
    labelled = args.task in ("classification", "token-classification")
    if args.train_files and args.dataset_name:
        raise UserError("give --train_files or --dataset_name, not both")
    if args.validation_files and not args.train_files:
        raise UserError("--validation_files needs --train_files too")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction={args.validation_fraction} must be in [0, 1)")

    validation = None
    if args.train_files:
        train = _read_files(args.train_files, args.task)
        if args.validation_files:
            validation = _read_files(args.validation_files, args.task)
    elif args.dataset_name:
        train, validation = _read_dataset(args)
    elif labelled:
        text, label = DEFAULT_COLUMNS[args.task]
        raise UserError(
            f"{args.task} needs labelled examples: --train_files data.jsonl (or .csv/.parquet) with columns "
            f"{text!r} and {label!r}, or --dataset_name NAME"
        )
    else:  # the language-model tasks default to the embedded corpus, as pretraining does
        train, validation = default_corpus_dataset("train"), default_corpus_dataset("validation")

    if len(train) == 0:
        raise UserError("the training data has no rows")
    if validation is None and args.validation_fraction > 0:
        if len(train) < 4:
            raise UserError(
                f"{len(train)} training rows are too few to hold out a validation set; add data, give "
                "--validation_files, or pass --validation-fraction 0"
            )
        parts = train.train_test_split(test_size=args.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    return train, validation


def _read_files(files: Sequence[str], task: str) -> datasets.Dataset:
    builders = set()
    for path in files:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"no such file: {path}")
        builder = BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise UserError(f"{path}: unknown file type {p.suffix!r}; known: {', '.join(sorted(BUILDERS))}")
        builders.add(builder)
    if len(builders) > 1:
        raise UserError(f"files of different formats ({', '.join(sorted(builders))}) cannot be read together")
    builder = builders.pop()
    if builder == "text":
        if task in ("classification", "token-classification"):
            raise UserError(
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
        raise UserError(f"could not read {', '.join(files)} as {builder}: {one_line(e)}") from e


def _read_dataset(args: FinetuneArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    path = Path(args.dataset_name)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))  # a folder written by save_to_disk
    else:
        loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    if isinstance(loaded, datasets.Dataset):
        return loaded, None
    if args.train_split not in loaded:
        raise UserError(f"{args.dataset_name} has no split {args.train_split!r}; its splits are {', '.join(loaded)}")
    return loaded[args.train_split], loaded[args.validation_split] if args.validation_split in loaded else None


def _require_columns(ds: datasets.Dataset, columns: Sequence[str], flag_of: dict[str, str]) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise UserError(
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
        raise UserError(f"some rows have no label in column {column!r}; fill them in or drop those rows")
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
        raise UserError(
            f"the {split} data has labels never seen in training ({shown}) in column {column!r}; the model can "
            f"only predict the training labels ({', '.join(map(repr, names))}). Add training examples of them, "
            f"or drop those rows"
        )
    return [index[str(v)] for v in values]


def _check_classes(ids: Sequence[int], names: list[str], column: str) -> None:
    present = set(ids)
    if len(present) < 2:
        only = names[next(iter(present))] if present else "nothing"
        raise UserError(
            f"the label column {column!r} has a single class ({only!r}) in the training data: a classifier needs "
            "at least two. Check --label_column, or add examples of the other classes"
        )


def prepare_classification(
    args: FinetuneArguments,
    tokenizer: PreTrainedTokenizerBase,
    train: datasets.Dataset,
    validation: datasets.Dataset | None,
    max_length: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, list[str]]:
    text_col, label_col = _columns(args)
    flags = {text_col: "--text_column", label_col: "--label_column"}
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
            raise UserError(f"row {bad} of the {split} data has no text in column {text_col!r}")
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
    flags = {words_col: "--text_column", label_col: "--label_column"}
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("token-classification needs a fast (Rust) tokenizer, for word_ids()")
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
                raise UserError(f"row {i} of the {split} data has no words in column {words_col!r}")
            if len(words) != len(tags):
                raise UserError(
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
        raise UserError(
            f"--assistant_only_loss needs chat records: a {args.messages_column!r} column of "
            "[{'role': ..., 'content': ...}] lists (choose it with --messages_column)"
        )
    out = []
    for split, ds in (("training", train), ("validation", validation)):
        if ds is None:
            out.append(None)
        elif is_chat:
            out.append(_encode_chats(args, tokenizer, ds, split, max_length))
        else:
            text_col = _columns(args)[0]
            _require_columns(ds, (text_col,), {text_col: "--text_column"})
            ds = ds.select_columns([text_col])
            if text_col != "text":
                ds = ds.rename_column(text_col, "text")
            if args.packing:
                out.append(_pack(args, tokenizer, ds, split, max_length))
            else:  # one example per row, cut at max_length; the collator pads each batch
                texts = [t for t in ds["text"] if t and t.strip()]
                if not texts:
                    raise UserError(f"the {split} data has no text in column {text_col!r}")
                enc = tokenizer(texts, truncation=True, max_length=max_length)
                out.append(datasets.Dataset.from_dict(dict(enc)))
    return out[0], out[1], is_chat


def _pack(
    args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, ds: datasets.Dataset, split: str, max_length: int
) -> datasets.Dataset:
    # A .txt file arrives one row per line; everything else is one row per document.
    from_lines = bool(args.train_files) and Path(args.train_files[0]).suffix.lower() in (".txt", ".text")
    # Documents kept apart only where a causal mask can keep them so (masked-lm attends both ways).
    keep_apart = args.document_masking and args.task == "causal-lm"
    packed = tokenize_and_pack(ds, tokenizer, max_length, rows_are_documents=not from_lines,
                               document_masking=keep_apart, split=split)  # fmt: skip
    if len(packed) == 0:
        raise UserError(
            f"the {split} text is shorter than one block of {max_length} tokens; add text, lower --max_length, "
            "or pass --no_packing"
        )
    return packed


def _encode_chats(
    args: FinetuneArguments, tokenizer: PreTrainedTokenizerBase, ds: datasets.Dataset, split: str, max_length: int
) -> datasets.Dataset:
    if not tokenizer.chat_template:
        raise UserError("the checkpoint's tokenizer has no chat template, so chat records cannot be formatted")
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i, messages in enumerate(list(ds[args.messages_column])):
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages
        ):
            raise UserError(
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
        raise UserError(
            f"--assistant_only_loss found no assistant tokens in the {split} data: the records need assistant "
            "turns, and the chat template must mark them with {% generation %} ... {% endgeneration %}"
        )
    return datasets.Dataset.from_dict(rows)


def _columns(args: FinetuneArguments) -> tuple[str, str | None]:
    text, label = DEFAULT_COLUMNS[args.task]
    return args.text_column or text, args.label_column or label
