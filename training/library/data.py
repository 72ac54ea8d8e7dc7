"""Text in: the embedded default corpus, a user's files, or a `datasets` dataset, all as a `datasets`
dataset with one column, "text".

Every loader here validates what it is given and fails with a message that names the problem
(the path, the byte offset, the columns that do exist), before any training starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import torch
from torch.utils.data import Sampler

if os.environ.get("HF_UPDATE_DOWNLOAD_COUNTS") == "0":  # see training/__init__.py
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False

SPLITS = ("train", "validation", "all")
VALIDATION_EVERY = 10  # every 10th topic (in sorted-key order) is validation: ~10 %, deterministic

# File extension -> `datasets` packaged builder.
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_TEXT_FORMATS = {"text", "json", "csv"}  # formats read as UTF-8 text, so worth checking byte by byte


def default_corpus(split: str = "train") -> Iterator[str]:
    """Documents of the embedded default corpus: Python's help topics (`pydoc_data.topics`, about
    466 KB of English prose from the Python reference, PSF licence), one document per topic.

    It ships with every CPython, so the demo and the CLI work offline with no data from the user.
    `split` is "train", "validation" (every 10th topic in sorted-key order, ~10 %) or "all". The
    topics differ slightly between Python versions; the split is deterministic for a given one.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: the default corpus has splits {', '.join(map(repr, SPLITS))}")
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip pydoc_data from a minimal Python
        raise RuntimeError(
            "the default corpus is Python's pydoc_data.topics, which this Python installation lacks; "
            "give your own text instead (--files or --dataset)"
        ) from e
    return _topics(topics, split)


def _topics(topics: dict[str, str], split: str) -> Iterator[str]:
    for i, key in enumerate(sorted(topics)):
        is_validation = i % VALIDATION_EVERY == VALIDATION_EVERY - 1
        if split == "all" or is_validation == (split == "validation"):
            text = topics[key].strip()
            if text:
                yield text


def default_corpus_dataset(split: str = "train") -> datasets.Dataset:
    """`default_corpus(split)` as an in-memory `datasets.Dataset` with one column, "text"."""
    return datasets.Dataset.from_dict({"text": list(default_corpus(split))})


def load_text_dataset(
    files: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load text from local `files`, from a `dataset` (a hub name, a local dataset folder, or a folder
    written by `save_to_disk`), or, given neither, the embedded default corpus.

    The result always has exactly one column, "text" (`text_column` renamed if needed), so callers
    never carry the column name around. Files are read with `datasets.load_dataset` and the builder
    their extension names: `.txt` (one row per line, line breaks kept, so the rows joined give back
    the file with `\\r\\n` read as `\\n`), `.jsonl`/`.json`, `.csv`, `.parquet`. `split` picks the
    split of `dataset` or of the default corpus; files are a single split. `streaming=True` returns
    an `IterableDataset` that reads lazily and writes no cache: memory stays flat whatever the size.

    Raises `FileNotFoundError` for a missing file and `ValueError` for an unknown or mixed extension,
    a non-UTF-8 text file, a missing or non-text column, or a corpus with no text at all.
    """
    if files is not None and dataset is not None:
        raise ValueError("give files or a dataset, not both")
    if files is not None:
        return _load_files(list(files), text_column, streaming)
    if dataset is not None:
        ds = _load_named(dataset, dataset_config, split, streaming)
        return _checked(ds, text_column, source=dataset)
    ds = default_corpus_dataset(split)
    return ds.to_iterable_dataset() if streaming else ds


def data_fingerprint(
    files: Sequence[str] | None, dataset_name: str | None = None, dataset_config_name: str | None = None,
    split: str | None = None,
) -> list[dict]:
    """What a run trains on, recorded in its checkpoints so that `--resume` can tell when the data
    changed: each file's path, size and the SHA-256 of its first MiB (cheap on a 10 GB corpus, and a
    file edited, replaced or appended to changes its size or its head); or the dataset's name; or
    the embedded corpus."""
    import hashlib

    if files:
        found = []
        for f in files:
            p = Path(f)
            with open(p, "rb") as fh:
                head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]
            found.append({"file": str(p.resolve()), "bytes": p.stat().st_size, "sha256_first_mib": head})
        return found
    if dataset_name:
        return [{"dataset": dataset_name, "config": dataset_config_name, "split": split}]
    return [{"embedded": "pydoc_data.topics"}]


def iter_text_batches(
    ds: datasets.Dataset | datasets.IterableDataset, batch_size: int = 1000, text_column: str = "text"
) -> Iterator[list[str]]:
    """Stream lists of up to `batch_size` texts from `ds`, skipping missing (None) and empty texts.

    Reads in Arrow batches, never the whole dataset, so a memory-mapped `Dataset` or a streaming
    `IterableDataset` of any size goes through in flat memory.
    """
    # Arrow batches converted column-wise: for a stream, 5x faster than datasets' row-by-row dicts.
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        column = batch.column(text_column)
        kind = column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise ValueError(f"column {text_column!r} holds {kind} values, not text")
        texts = [t for t in column.to_pylist() if t]
        if texts:
            yield texts


# -- files ---------------------------------------------------------------------------------------


def _load_files(files: list[str], text_column: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    if not files:
        raise ValueError("no files given")
    builder = _builder_for(files)
    if builder in _TEXT_FORMATS:
        for path in files:
            check_utf8(path)
    # An empty file makes some builders fail obscurely (json: StopIteration), and holds no text anyway.
    paths = [str(p) for p in files if os.path.getsize(p) > 0]
    source = ", ".join(map(str, files)) if len(files) <= 3 else f"{files[0]} and {len(files) - 1} more files"
    if not paths:
        raise ValueError(f"no text in {source}: the file is empty" if len(files) == 1 else f"no text in {source}")

    extra = {"keep_linebreaks": True} if builder == "text" else {}

    def load(stream: bool) -> datasets.Dataset | datasets.IterableDataset:
        return datasets.load_dataset(builder, data_files={"train": paths}, split="train", streaming=stream, **extra)

    # Validate on a lazy view first: it reads only as far as the first text, and a header-only CSV or
    # a malformed file fails here with its name rather than deep inside a cache build.
    try:
        view = load(True)
        first = next(iter(view), None)
    except Exception as e:  # whatever the parser raised, say which files it was reading
        raise ValueError(f"could not read {source} as {builder}: {type(e).__name__}: {e}") from e
    if first is None:
        raise ValueError(f"no text in {source}: no rows")
    columns = list(view.column_names or first)
    checked = _checked(view, text_column, source, columns)
    if streaming:
        return checked
    try:
        full = load(False)
    except Exception as e:  # a bad row past the first ones: datasets wraps the parser's error
        cause = e.__cause__ or e.__context__ or e
        raise ValueError(f"could not read {source} as {builder}: {type(cause).__name__}: {cause}") from e
    return _only_text(full, text_column)


def _builder_for(files: list[str]) -> str:
    builders = set()
    for path in files:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no such file: {path}")
        if not p.is_file():
            raise ValueError(f"{path} is not a file")
        builder = BUILDERS.get(p.suffix.lower())
        if builder is None:
            known = ", ".join(sorted(BUILDERS))
            raise ValueError(f"{path}: unknown file type {p.suffix or '(no extension)'!r}; known: {known}")
        builders.add(builder)
    if len(builders) > 1:
        kinds = ", ".join(sorted(builders))
        raise ValueError(f"files of different formats ({kinds}) cannot be read together; convert them to one")
    return builders.pop()


def check_utf8(path: str | os.PathLike, chunk_size: int = 1 << 20) -> None:
    """Raise `ValueError` naming the file and the byte offset of the first byte that is not UTF-8.

    Reads in chunks, so any size of file is checked in flat memory (at several hundred MB/s).
    """
    offset = 0  # file offset of the start of `pending`
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            data = pending + chunk
            try:
                data.decode("utf-8")
                offset += len(data)
                pending = b""
            except UnicodeDecodeError as e:
                # A multi-byte character cut by the chunk boundary is not an error: carry it over.
                truncated = e.reason == "unexpected end of data" and e.end == len(data)
                if truncated and chunk:
                    offset += e.start
                    pending = data[e.start :]
                    continue
                bad = data[e.start : e.start + 1].hex()
                raise ValueError(
                    f"{path} is not valid UTF-8: byte 0x{bad} at offset {offset + e.start}; re-encode it, "
                    f"e.g. `iconv -f latin1 -t utf-8 {path} > {Path(path).stem}.utf8{Path(path).suffix}`"
                ) from None
            if not chunk:
                return


# -- named datasets ------------------------------------------------------------------------------


def _load_named(
    name: str, config: str | None, split: str, streaming: bool
) -> datasets.Dataset | datasets.IterableDataset:
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        # Written by `save_to_disk`: `load_dataset` cannot read that layout, `load_from_disk` can.
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{name} has no split {split!r}; its splits are {', '.join(map(repr, ds))}")
            ds = ds[split]
        return ds.to_iterable_dataset() if streaming else ds
    return datasets.load_dataset(name, config, split=split, streaming=streaming)


# -- columns and emptiness -----------------------------------------------------------------------


def _checked(
    ds: datasets.Dataset | datasets.IterableDataset,
    text_column: str,
    source: str,
    columns: list[str] | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """`ds` reduced to its text column, renamed "text", after checking the column exists, holds
    strings, and has at least one non-blank text."""
    if columns is None:
        columns = ds.column_names
        if columns is None:  # a stream whose schema is only known once read
            first = next(iter(ds), None)
            if first is None:
                raise ValueError(f"no text in {source}: no rows")
            columns = list(first)
    if text_column not in columns:
        raise ValueError(
            f"{source} has no column {text_column!r}; its columns are {', '.join(map(repr, columns))} "
            "(choose one with --text-column)"
        )
    features = ds.features or {}
    feature = features.get(text_column)
    if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"column {text_column!r} of {source} holds {feature}, not text")
    if ds.column_names != [text_column]:
        ds = ds.select_columns([text_column])
    if not any(t.strip() for batch in iter_text_batches(ds, text_column=text_column) for t in batch):
        raise ValueError(f"no text in {source}: every row of column {text_column!r} is empty or blank")
    return _only_text(ds, text_column)


def _only_text(
    ds: datasets.Dataset | datasets.IterableDataset, text_column: str
) -> datasets.Dataset | datasets.IterableDataset:
    if ds.column_names != [text_column]:
        ds = ds.select_columns([text_column])
    return ds.rename_column(text_column, "text") if text_column != "text" else ds


class EpochSampler(Sampler[int]):
    """A fresh permutation of the blocks each epoch, drawn from (seed, epoch) alone, cut to a whole
    number of optimizer steps.

    Depending on nothing but those two numbers is what lets a resumed run (or one with a
    different accumulation split of the same global batch) see exactly the same blocks in
    exactly the same order; cutting to whole steps gives every process the same number of batches
    and every step a full batch.
    """

    def __init__(self, num_blocks: int, seed: int, multiple_of: int) -> None:
        self.num_blocks, self.seed, self.epoch = num_blocks, seed, 0
        self.length = num_blocks // multiple_of * multiple_of

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard.set_epoch calls this
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_blocks, generator=generator)[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


def rows_are_documents(files: list[str] | None) -> bool:
    """Rows of .txt files are lines of running text; every other source's rows are documents."""
    return not files or any(BUILDERS.get(Path(f).suffix.lower()) != "text" for f in files)


def check_not_empty(ds, name: str, block_size: int) -> None:
    empty = len(ds) == 0 if isinstance(ds, datasets.Dataset) else next(iter(ds), None) is None
    if empty:
        raise ValueError(
            f"the {name} text holds fewer than {block_size} tokens, not even one block of --block_size "
            f"{block_size}: give more text or lower --block_size"
        )
