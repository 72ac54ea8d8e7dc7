"""Training a byte-level BPE tokenizer on a corpus (files, a dataset, the embedded corpus), saved
where `AutoTokenizer.from_pretrained(dir)` loads it, atomically, with what it achieved in
training_stats.json. `scratchformer tokenizer` is the command on top."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import tokenizers
import transformers
from tqdm.auto import tqdm

from scratchformer.tokenization import bytes_per_token, check_bpe_args, train_bpe

from .data import BUILDERS, default_corpus, iter_text_batches, load_text_dataset
from .files import fresh_sibling

STATS_FILE = "training_stats.json"


HOLDOUT_EVERY = 20  # every 20th document is held out of training to measure compression ...


HOLDOUT_MAX_BYTES = 1 << 20  # ... until 1 MiB is held out: plenty for a stable bytes/token figure


def train_tokenizer(
    out_dir: str | os.PathLike,
    *,
    files: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    vocab_size: int = 8192,
    min_frequency: int = 2,
    max_length: int = 1024,
    show_progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Train on files, a dataset, or (given neither) the embedded default corpus; write the tokenizer
    and `training_stats.json` to `out_dir`; return the stats.

    The corpus is streamed once, in batches, so memory stays flat however large it is. Every 20th
    document (up to 1 MiB) is held out to measure bytes per token; the default corpus uses its own
    validation split instead. `out_dir` appears complete or not at all: files are written to a
    temporary folder beside it and renamed into place. An existing, non-empty `out_dir` is replaced
    only with `overwrite=True`.
    """
    out = Path(out_dir)
    check_bpe_args(vocab_size, min_frequency, max_length)
    _check_out_dir(out, overwrite)
    if dataset_config is not None and dataset is None:
        raise ValueError("a dataset config only makes sense with a dataset")

    ds = load_text_dataset(files, dataset, dataset_config, split, text_column, streaming=True)
    # The default corpus has its own validation split; other text gives up every 20th document.
    hold_out = files is not None or dataset is not None or split != "train"
    heldout: list[str] = [] if hold_out else list(default_corpus("validation"))
    counts = {"documents": 0, "bytes": 0}
    sample: list[str] = []  # the first 1 MiB of training text: measures compression if nothing was held out
    bar = tqdm(total=_known_size(files), unit="B", unit_scale=True, desc="reading corpus", disable=not show_progress)

    def training_texts() -> Iterator[list[str]]:
        seen = heldout_bytes = 0
        for batch in iter_text_batches(ds):
            kept = []
            for text in batch:
                seen += 1
                n = len(text.encode("utf-8"))
                bar.update(n)
                if hold_out and seen % HOLDOUT_EVERY == 0 and heldout_bytes < HOLDOUT_MAX_BYTES:
                    heldout.append(text)
                    heldout_bytes += n
                    continue
                kept.append(text)
                counts["documents"] += 1
                counts["bytes"] += n
                if counts["bytes"] <= HOLDOUT_MAX_BYTES:
                    sample.append(text)
            yield kept
        # The bar's total is the files' size on disk, but it counts the text's UTF-8 bytes (no JSON
        # syntax, no line ends): at the end of the corpus it is complete, whatever the two say.
        bar.total = bar.n
        bar.set_description("computing merges")  # the corpus is read; what remains is the merge loop
        bar.refresh()

    start = time.perf_counter()
    with bar:
        tok = train_bpe(
            training_texts(),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            model_max_length=max_length,
            # One bar of ours (bytes read, with an ETA for files) rather than tokenizers' own, which
            # cannot know a stream's length and shows only on a terminal.
            show_progress=False,
        )
    seconds = time.perf_counter() - start

    stats = {
        "source": _describe(files, dataset, dataset_config, split, text_column),
        "vocab_size": len(tok),
        "vocab_size_requested": vocab_size,
        "min_frequency": min_frequency,
        "model_max_length": max_length,
        "documents": counts["documents"],
        "corpus_bytes": counts["bytes"],
        "heldout_documents": len(heldout),
        "heldout_bytes": sum(len(t.encode("utf-8")) for t in heldout),
        # Measured on text the tokenizer never saw, unless the corpus was too small to spare any.
        "bytes_per_token": round(bytes_per_token(tok, heldout or sample), 4),
        "bytes_per_token_measured_on": "held-out text" if heldout else "training text (too few documents to hold out)",
        "train_seconds": round(seconds, 3),
        "train_mb_per_s": round(counts["bytes"] / 1e6 / seconds, 3),
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
    }
    _write_atomically(out, overwrite, tok, stats)
    return stats


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def _write_atomically(out: Path, overwrite: bool, tok: transformers.PreTrainedTokenizerFast, stats: dict) -> None:
    """Save into a temporary folder beside `out`, then rename it into place, so `out` is never
    half-written: a crash leaves no `out`, the old one, or the new one. (With `overwrite`, the old
    one sits in a hidden `.old` folder beside it for the instant between the two renames.)"""
    _check_out_dir(out, overwrite)  # again: something may have appeared while training ran
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(out, "tmp")
    try:
        tok.save_pretrained(tmp)
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        if out.exists():  # empty, or overwrite=True: move it aside, then swap
            old = fresh_sibling(out, "old")
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _known_size(files: Sequence[str] | None) -> int | None:
    """Total bytes for the progress bar, when the files are plain text (parquet is compressed)."""
    if files is None or any(BUILDERS.get(Path(f).suffix.lower()) == "parquet" for f in files):
        return None
    return sum(os.path.getsize(f) for f in files)


def _describe(files, dataset, dataset_config, split, text_column) -> str:
    if files is not None:
        return "files: " + ", ".join(str(f) for f in files)
    if dataset is not None:
        config = f" ({dataset_config})" if dataset_config else ""
        return f"dataset: {dataset}{config}, split {split}, column {text_column}"
    return f"default corpus (pydoc_data.topics), split {split}"


def format_stats(stats: dict) -> str:
    """The few lines a user wants after training."""
    return "\n".join(
        [
            f"source           {stats['source']}",
            f"vocabulary       {stats['vocab_size']} tokens (asked for {stats['vocab_size_requested']})",
            f"corpus           {stats['corpus_bytes'] / 1e6:.2f} MB in {stats['documents']} documents",
            f"bytes per token  {stats['bytes_per_token']:.3f} on {stats['bytes_per_token_measured_on']}",
            f"time             {stats['train_seconds']:.2f} s ({stats['train_mb_per_s']:.2f} MB/s)",
        ]
    )
