"""Text to training blocks: tokenize, join, cut into `block_size` chunks; and the byte count of
every token, which makes validation loss comparable across tokenizers (bits per byte).

Two passes, so the tokenized corpus is cached on its own and a new `block_size` re-uses it:

1. **Tokenize**: `datasets.map(batched=True)` over Arrow batches of text. Each batch goes to the
   Rust tokenizer's `encode_batch_fast` in one call (parallel over cores inside one process, or
   one core per worker with `num_proc` workers), and the ids come back as one flat numpy array
   plus row offsets, which is exactly Arrow's layout of a list column: no Python list per row is
   ever handed to `datasets`. The result is cached on disk next to a file-backed dataset, under a
   fingerprint of (input dataset, tokenizer, mode), so a second run with the same tokenizer and
   files reads it back at once, and a changed tokenizer or edited file builds it afresh.
2. **Pack**: one sequential pass over the token stream in Arrow batches, with numpy: join, cut
   into rows of `block_size` (a reshape), carry the remainder into the next batch. Only the very
   last partial block of the corpus is dropped, and the blocks do not depend on batch sizes or on
   the number of workers. The blocks are written to an Arrow cache file of their own (through
   `datasets`' `ArrowWriter`, read back memory-mapped), so memory stays flat whatever the size.

A streaming `IterableDataset` gets the same two steps lazily, as `IterableDataset.map`s (nothing
is cached); there each batch of `PACK_ROWS` rows drops its own last partial block, because a lazy
map cannot carry tokens from one batch to the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Rows per Arrow batch when packing. Only a stream drops a partial block per batch, so lines of a
# text file (short rows) get bigger batches to keep that waste near 0.1 %; documents are long
# enough that 1000 (Hugging Face's run_clm value) wastes as little while keeping memory flat.
PACK_ROWS = {"documents": 1_000, "lines": 10_000}
# A column of int32 lists: datasets' `List` feature since datasets 4, `Sequence` before (our floor is 3.0).
_LIST = getattr(datasets, "List", None) or datasets.Sequence
TOKENIZE_ROWS = 1_000  # texts per `encode_batch_fast` call: enough to keep every core busy
# Bump when the blocks this module makes for the same inputs change, so old caches are not reused.
PACKING_VERSION = "2"


def tokenize_and_pack(
    ds: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    rows_are_documents: bool = True,
    num_proc: int | None = None,
    split: str = "train",
) -> datasets.Dataset | datasets.IterableDataset:
    """Rows of column "text" -> rows of `block_size` token ids (column "input_ids"), every block full.

    Rows that are documents (JSON lines, CSV, Parquet, hub datasets, the default corpus) become
    `<s> text </s>` as the tokenizer frames them for inference (its post-processor adds `<s>`;
    the packer adds `</s>`), then are joined end to end, so a block may hold the end of one
    document and the start of the next: no padding, every position trains.

    Rows that are lines of running text (`.txt` files, read one row per line with line breaks
    kept) are joined with nothing between them, which gives back the file's text exactly; each
    block then opens with `<s>` so the model still sees the token every prompt starts with, in the
    one position that is never a target.

    The ids are stored as int32 (half the disk of int64); `with_format("torch")` hands them out as
    int64 tensors, as embeddings and losses expect. `num_proc` workers tokenize shards of the rows
    in parallel; the blocks are the same for any `num_proc`.
    """
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2: a block predicts its tokens 1..L-1")
    streaming = isinstance(ds, datasets.IterableDataset)
    mode = "documents" if rows_are_documents else "lines"
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if not rows_are_documents and bos is None:
        bos = eos  # a tokenizer without <s> (GPT-2's): its end-of-text token is also its separator
    # Lines: each block is `<s>` + `step` tokens of the stream. Documents carry their own `<s>`.
    step = block_size if rows_are_documents or bos is None else block_size - 1
    opener = None if step == block_size else bos
    tokenize = _tokenize_function(tokenizer, rows_are_documents, eos)
    token_ids = datasets.Features({"input_ids": _LIST(datasets.Value("int32"))})

    if streaming:
        tokenized = ds.with_format("arrow").map(
            tokenize, batched=True, batch_size=TOKENIZE_ROWS, remove_columns=["text"], features=token_ids
        )

        def pack_batch(batch: pa.Table) -> pa.Table:
            blocks, _ = _cut(_flat_ids(batch), step, opener)
            return _blocks_table(blocks, block_size)

        features = _block_features(block_size)
        return tokenized.map(pack_batch, batched=True, batch_size=PACK_ROWS[mode], features=features).with_format(None)

    tokenizer_id = _tokenizer_fingerprint(tokenizer)
    tokenized_fp = Hasher.hash(("tokenize", PACKING_VERSION, ds._fingerprint, tokenizer_id, mode, eos))
    workers = num_proc if num_proc and num_proc > 1 else None
    with _one_thread_per_worker(workers):
        tokenized = ds.with_format("arrow").map(
            tokenize,
            batched=True,
            batch_size=TOKENIZE_ROWS,
            remove_columns=["text"],
            features=token_ids,
            num_proc=workers,
            new_fingerprint=tokenized_fp,
            desc=f"Tokenizing {split}",
        )
    packed_fp = Hasher.hash(("pack", PACKING_VERSION, tokenized._fingerprint, block_size, step, opener))
    return _pack(tokenized, block_size, step, opener, PACK_ROWS[mode], packed_fp)


# -- tokenizing ----------------------------------------------------------------------------------


def _encoder(tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool) -> Callable[[list[str]], list[list[int]]]:
    """A function texts -> token ids that gives what `tokenizer(texts)` gives, as fast as possible.

    A fast (Rust-backed) tokenizer's `encode_batch_fast` skips what `tokenizer(...)` adds on top:
    character offsets, attention masks, a `BatchEncoding` of Python lists. It is used when it
    agrees with `tokenizer(...)` on a probe that exercises the framing (`<s>` from the
    post-processor) and non-ASCII text; a tokenizer whose Python class adds tokens on its own
    keeps the slower call, so the ids are always the tokenizer's.
    """

    def through_python(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return through_python

    def through_rust(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    probe = ["Hello, world.\n", " naïve café, 東京 🚀\r\n\tend"]
    return through_rust if through_rust(probe) == through_python(probe) else through_python


def _tokenize_function(
    tokenizer: PreTrainedTokenizerBase, rows_are_documents: bool, eos: int | None
) -> Callable[[pa.Table], pa.Table]:
    encode = _encoder(tokenizer, add_special_tokens=rows_are_documents)
    close_with_eos = rows_are_documents and eos is not None

    def tokenize(batch: pa.Table) -> pa.Table:
        """A batch of texts -> a batch of id lists, built as Arrow's (offsets, flat values)."""
        ids = encode([t for t in batch.column("text").to_pylist() if t])  # empty rows: no tokens
        if close_with_eos:
            for x in ids:
                if x[-1:] != [eos]:
                    x.append(eos)
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        values = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))})

    return tokenize


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the ids: the fast tokenizer's full JSON (model, merges,
    normalizer, pre-tokenizer, post-processor, added tokens), and the special ids used to frame.
    A slow tokenizer is hashed whole, as `datasets` would hash it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    return Hasher.hash((type(tokenizer).__name__, body, tokenizer.bos_token_id, tokenizer.eos_token_id))


@contextmanager
def _one_thread_per_worker(workers: int | None) -> Iterator[None]:
    """With `workers` processes, each tokenizes on one core: the processes are the parallelism,
    and a Rust thread pool in each would only oversubscribe the cores (and `tokenizers` disables
    it anyway in a process forked after the parent used it, with a warning). The variable is read
    at each encode call and inherited at fork; the parent's own setting is restored after."""
    if workers is None:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


# -- packing -------------------------------------------------------------------------------------


def _flat_ids(batch: pa.Table) -> np.ndarray:
    """All the ids of a batch of rows, end to end, as one int32 array (no copy for one chunk)."""
    return pc.list_flatten(batch.column("input_ids")).to_numpy().astype(np.int32, copy=False)


def _cut(stream: np.ndarray, step: int, opener: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(`[n, block_size]` blocks, the leftover tokens): the stream cut into rows of `step` tokens,
    each opened by `opener` when there is one."""
    n = len(stream) // step
    blocks = stream[: n * step].reshape(n, step)
    if opener is not None:
        blocks = np.concatenate([np.full((n, 1), opener, dtype=stream.dtype), blocks], axis=1)
    return blocks, stream[n * step :]


def _blocks_table(blocks: np.ndarray, block_size: int) -> pa.Table:
    values = pa.array(np.ascontiguousarray(blocks).reshape(-1))
    return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, block_size)})


def _block_features(block_size: int) -> datasets.Features:
    return datasets.Features({"input_ids": _LIST(datasets.Value("int32"), length=block_size)})


def _packed_tables(tokenized: datasets.Dataset, block_size: int, step: int, opener: int | None, rows: int):
    """Tables of blocks, in order, from one pass over the tokenized rows `rows` at a time; the
    tokens left over at the end of one batch open the next, so only the corpus's tail is lost."""
    carry = np.empty(0, dtype=np.int32)
    for batch in tokenized.with_format("arrow").iter(batch_size=rows):
        blocks, carry = _cut(np.concatenate([carry, _flat_ids(batch)]), step, opener)
        if len(blocks):
            yield _blocks_table(blocks, block_size)


def _pack(
    tokenized: datasets.Dataset, block_size: int, step: int, opener: int | None, rows: int, fingerprint: str
) -> datasets.Dataset:
    """The blocks as a `Dataset`: written once to `packed-<fingerprint>.arrow` beside the tokenized
    cache and memory-mapped from there (later calls just open it), or kept in memory when the
    tokenized rows are in memory themselves (a small in-memory corpus has no cache folder)."""
    features = _block_features(block_size)
    if not tokenized.cache_files:
        tables = list(_packed_tables(tokenized, block_size, step, opener, rows))
        table = pa.concat_tables(tables) if tables else _blocks_table(np.empty((0, block_size), np.int32), block_size)
        table = datasets.table.InMemoryTable(table.cast(features.arrow_schema))
        return datasets.Dataset(table, fingerprint=fingerprint)
    path = Path(tokenized.cache_files[0]["filename"]).parent / f"packed-{fingerprint}.arrow"
    if not path.exists():
        # Written under a temporary name, then renamed: an interrupted run leaves no half a cache.
        partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        with ArrowWriter(features=features, path=str(partial)) as writer:
            for table in _packed_tables(tokenized, block_size, step, opener, rows):
                writer.write_table(table)
            writer.finalize()
        os.replace(partial, path)
    return datasets.Dataset.from_file(str(path))


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """How many UTF-8 bytes of text each token id spells, as a `[len(tokenizer)]` int64 tensor.

    Summed over the tokens a model predicted, this is the exact byte count of the text it
    predicted, so `nll_nats / (ln 2 * bytes)` is bits per byte: comparable across vocabularies,
    unlike per-token loss. Special tokens spell no text and count 0 bytes (predicting `</s>` is
    charged to the bytes around it, a slight penalty, never a discount).

    Exact for byte-level BPE (ours, GPT-2's, Llama 3's), whose token strings map character for
    character to bytes through GPT-2's byte alphabet. For other tokenizers a token's length is
    that of its decoded text, close but not exact (SentencePiece's leading-space marker, say).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    for token, i in tokenizer.get_vocab().items():
        if i in special or i >= len(lengths):
            continue
        if byte_level and all(ch in byte_of for ch in token):
            lengths[i] = len(token)  # one alphabet character per byte
        else:
            lengths[i] = len(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
    return lengths
