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
   `datasets`' `ArrowWriter`, read back memory-mapped), so memory stays flat whatever the size;
   its fingerprint covers everything that shapes a block (block size, framing, document masking).

**Documents kept apart** (`document_masking=True`, rows that are documents): each block also
carries `position_ids` that restart at 0 where a document starts (and at the block's start, where
a document cut by the previous block goes on). The model reads them twice: its positions, and the
mask, since transformers' mask builder treats a row whose positions restart as several sequences,
so no token attends across a boundary (eager, sdpa, flex; flash-attention through the same
position_ids, its packed-sequence path). `collate_blocks` turns them into labels with -100 on each
document's first token, so the `</s> -> <s>` step between two documents is never a target: the
second document of a block is computed, and scored, exactly as if it were alone.

A streaming `IterableDataset` becomes a `PackedStream`: the same tokenizing, then the same cut
with the same carry-over (a stream yields exactly the blocks the non-streamed path makes), read
one document at a time, through a seeded shuffle buffer, and resumable where it stopped: its
`state_dict()` (torchdata's Stateful protocol, saved with a run's checkpoints through accelerate's
stateful data loader) holds the reading position in the files (`datasets`' own
`IterableDataset.state_dict()`), the tokens carried over, the shuffle buffer and its generator.
"""

from __future__ import annotations

import collections
import copy
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

from .files import atomic_output

# Rows per Arrow batch when packing: memory stays flat, and the blocks do not depend on it.
PACK_ROWS = {"documents": 1_000, "lines": 10_000}
# A column of int32 lists: datasets' `List` feature since datasets 4, `Sequence` before (our floor is 3.0).
_LIST = getattr(datasets, "List", None) or datasets.Sequence
TOKENIZE_ROWS = 1_000  # texts per `encode_batch_fast` call: enough to keep every core busy
# Bump when the blocks this module makes for the same inputs change, so old caches are not reused.
PACKING_VERSION = "3"


def tokenize_and_pack(
    ds: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    rows_are_documents: bool = True,
    document_masking: bool = False,
    num_proc: int | None = None,
    split: str = "train",
) -> datasets.Dataset | PackedStream:
    """Rows of column "text" -> rows of `block_size` token ids (column "input_ids"), every block full.

    Rows that are documents (JSON lines, CSV, Parquet, hub datasets, the default corpus) become
    `<s> text </s>` as the tokenizer frames them for inference (its post-processor adds `<s>`;
    the packer adds `</s>`), then are joined end to end, so a block may hold the end of one
    document and the start of the next: no padding, every position trains. With
    `document_masking`, each block also has a "position_ids" column that keeps its documents apart
    (see the module's docstring); lines of running text have no documents to keep apart, so it
    changes nothing for them.

    Rows that are lines of running text (`.txt` files, read one row per line with line breaks
    kept) are joined with nothing between them, which gives back the file's text exactly; each
    block then opens with `<s>` so the model still sees the token every prompt starts with, in the
    one position that is never a target.

    The ids are stored as int32 (half the disk of int64), the positions as int16 when they fit;
    `with_format("torch")` hands both out as int64 tensors, as embeddings and losses expect.
    `num_proc` workers tokenize shards of the rows in parallel; the blocks are the same for any
    `num_proc`. A streaming `IterableDataset` gives a `PackedStream` of the same blocks.
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
    cut = Cut(block_size, step, opener=None if step == block_size else bos,
              document_masking=document_masking and rows_are_documents)  # fmt: skip
    tokenize = _tokenize_function(tokenizer, rows_are_documents, eos)
    token_ids = datasets.Features({"input_ids": _LIST(datasets.Value("int32"))})

    if streaming:
        tokenized = ds.with_format("arrow").map(
            tokenize, batched=True, batch_size=TOKENIZE_ROWS, remove_columns=["text"], features=token_ids
        )
        return PackedStream(tokenized.with_format(None), cut)

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
    packed_fp = Hasher.hash(("pack", PACKING_VERSION, tokenized._fingerprint, cut.fingerprint()))
    return _pack(tokenized, cut, PACK_ROWS[mode], packed_fp)


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


class Cut:
    """How a stream of token ids becomes blocks: rows of `step` tokens, each opened by `opener`
    when there is one (lines of running text), and with `document_masking` each block's
    position_ids, restarting at every document's first token (and at the block's own start)."""

    def __init__(self, block_size: int, step: int, opener: int | None, document_masking: bool) -> None:
        self.block_size, self.step, self.opener, self.document_masking = block_size, step, opener, document_masking
        # Positions are below block_size: int16 halves their disk whenever they fit.
        self.position_dtype = np.int16 if block_size <= np.iinfo(np.int16).max else np.int32

    def fingerprint(self) -> tuple:
        return (self.block_size, self.step, self.opener, self.document_masking)

    def features(self) -> datasets.Features:
        columns = {"input_ids": _LIST(datasets.Value("int32"), length=self.block_size)}
        if self.document_masking:
            dtype = np.dtype(self.position_dtype).name
            columns["position_ids"] = _LIST(datasets.Value(dtype), length=self.block_size)
        return datasets.Features(columns)

    def __call__(self, ids: np.ndarray, starts: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(`{"input_ids": [n, block_size], "position_ids": ...}`, leftover ids, leftover starts): as
        many whole blocks as `ids` fill. `starts` flags the first token of each document."""
        n = len(ids) // self.step
        blocks = {"input_ids": ids[: n * self.step].reshape(n, self.step)}
        if self.opener is not None:
            opener = np.full((n, 1), self.opener, dtype=ids.dtype)
            blocks["input_ids"] = np.concatenate([opener, blocks["input_ids"]], axis=1)
        if self.document_masking:
            blocks["position_ids"] = document_positions(starts[: n * self.step].reshape(n, self.step)).astype(
                self.position_dtype
            )
        return blocks, ids[n * self.step :], starts[n * self.step :]

    def table(self, blocks: dict[str, np.ndarray]) -> pa.Table:
        return pa.table(
            {
                name: pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)), self.block_size)
                for name, a in blocks.items()
            }
        ).cast(self.features().arrow_schema)

    def empty(self) -> dict[str, np.ndarray]:
        return {name: np.empty((0, self.block_size), np.int32) for name in self.features()}


def document_positions(starts_NL: np.ndarray) -> np.ndarray:
    """Each token's position in its document, for `[N, L]` flags of documents' first tokens: a
    document that began in an earlier block counts from this block's first token, so positions
    stay below L (learned and sinusoidal tables end there) and every block starts at 0."""
    N, L = starts_NL.shape
    index_NL = np.broadcast_to(np.arange(L), (N, L))
    start_NL = np.where(starts_NL, index_NL, 0)  # position 0 is a start whatever its flag
    np.maximum.accumulate(start_NL, axis=1, out=start_NL)
    return index_NL - start_NL


def _flat_ids(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """All the ids of a batch of rows, end to end, as one int32 array (no copy for one chunk), and
    the flags of each row's first token (every row is one document, never empty)."""
    column = batch.column("input_ids")
    ids = pc.list_flatten(column).to_numpy().astype(np.int32, copy=False)
    starts = np.zeros(len(ids), dtype=bool)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    starts[np.cumsum(lengths)[:-1]] = True
    if len(ids):
        starts[0] = True
    return ids, starts


def _packed_tables(tokenized: datasets.Dataset, cut: Cut, rows: int) -> Iterator[pa.Table]:
    """Tables of blocks, in order, from one pass over the tokenized rows `rows` at a time; the
    tokens left over at the end of one batch open the next, so only the corpus's tail is lost."""
    carry_ids, carry_starts = np.empty(0, dtype=np.int32), np.empty(0, dtype=bool)
    for batch in tokenized.with_format("arrow").iter(batch_size=rows):
        ids, starts = _flat_ids(batch)
        blocks, carry_ids, carry_starts = cut(np.concatenate([carry_ids, ids]), np.concatenate([carry_starts, starts]))
        if len(blocks["input_ids"]):
            yield cut.table(blocks)


def _pack(tokenized: datasets.Dataset, cut: Cut, rows: int, fingerprint: str) -> datasets.Dataset:
    """The blocks as a `Dataset`: written once to `packed-<fingerprint>.arrow` beside the tokenized
    cache and memory-mapped from there (later calls just open it), or kept in memory when the
    tokenized rows are in memory themselves (a small in-memory corpus has no cache folder)."""
    features = cut.features()
    if not tokenized.cache_files:
        tables = list(_packed_tables(tokenized, cut, rows))
        table = pa.concat_tables(tables) if tables else cut.table(cut.empty())
        return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=fingerprint)
    path = Path(tokenized.cache_files[0]["filename"]).parent / f"packed-{fingerprint}.arrow"
    if not path.exists():
        with atomic_output(path) as partial:  # an interrupted run leaves no half a cache
            with ArrowWriter(features=features, path=str(partial)) as writer:
                for table in _packed_tables(tokenized, cut, rows):
                    writer.write_table(table)
                writer.finalize()
    return datasets.Dataset.from_file(str(path))


def collate_blocks(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of blocks as the model's keyword arguments: input_ids and labels, and with documents
    kept apart their position_ids, the labels then -100 on each document's first token (its
    prediction from the end of the previous document is no target; the model shifts the labels,
    so position t predicts labels[t + 1])."""
    input_ids = torch.stack([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples])
    batch = {"input_ids": input_ids, "labels": input_ids}
    if "position_ids" in examples[0]:
        position_ids = torch.stack([torch.as_tensor(e["position_ids"], dtype=torch.long) for e in examples])
        batch.update(position_ids=position_ids, labels=input_ids.masked_fill(position_ids == 0, -100))
    return batch


class PackedStream(torch.utils.data.IterableDataset):
    """The blocks of a stream of tokenized documents, cut exactly as the non-streamed path cuts
    them (the same carry-over from one document to the next), optionally through a seeded shuffle
    buffer and epoch after epoch, and resumable wherever it stopped.

    It follows torchdata's Stateful protocol: `state_dict()` at any point between two blocks, and
    `load_state_dict()` before the next `iter()`, which then continues with the very next block.
    The state holds `datasets`' own `IterableDataset.state_dict()` for the reading position in the
    files (shards, row in shard, the tokenizing map's batch), the tokens carried over, the shuffle
    buffer's blocks and the generator that draws from it, so a resumed stream neither repeats nor
    skips a block and draws the same order. (`datasets`' own shuffle buffer cannot do this: it
    saves no buffer content and refills it on resume, with a warning.)
    """

    def __init__(self, tokenized: datasets.IterableDataset, cut: Cut, *, seed: int = 0, buffer_size: int = 0,
                 limit: int | None = None, repeat: bool = False, lag: int = 0) -> None:  # fmt: skip
        self.tokenized, self.cut = tokenized, cut
        self.seed, self.buffer_size, self.limit, self.repeat, self.lag = seed, buffer_size, limit, repeat, lag
        self._history: collections.deque = collections.deque(maxlen=lag + 2)  # (yielded, state) after each block
        self._live: dict | None = None  # the state of the iteration under way
        self._owner: object | None = None  # which iteration that is
        self._resume: dict | None = None  # a state to start the next iteration from

    def _with(self, **changes) -> PackedStream:
        fields = dict(seed=self.seed, buffer_size=self.buffer_size, limit=self.limit, repeat=self.repeat, lag=self.lag)
        return PackedStream(self.tokenized, self.cut, **{**fields, **changes})

    def shuffle(self, seed: int, buffer_size: int) -> PackedStream:
        """Blocks drawn at random from a buffer of `buffer_size`, by a generator seeded from (seed, epoch)."""
        return self._with(seed=seed, buffer_size=buffer_size)

    def take(self, n: int) -> PackedStream:
        return self._with(limit=n)

    def repeated(self) -> PackedStream:
        """Epoch after epoch without end: when the documents run out, the last blocks leave the buffer
        and the next pass begins (its leftover tokens dropped, as the non-streamed path drops the tail)."""
        return self._with(repeat=True)

    def held_back(self, blocks: int) -> PackedStream:
        """A stream whose `state_dict()` is the state of `blocks` blocks ago: for a reader that asks
        for the state after fetching blocks it has not handed on yet. accelerate's dispatching loader
        (one process reads the stream for all, the only way a stream is read under several
        processes) fetches the next step's batches for every process before it hands out this one's,
        and takes the loader's state just before the last of them, (processes - 1) batches ahead of
        what was trained on; it corrects its own counters for that, but not a dataset's state."""
        return self._with(lag=blocks)

    def state_dict(self) -> dict:
        """Where the stream stands (`lag` blocks back, see `held_back`). Cheap (a data loader asks after
        every batch): the blocks and arrays in it are never changed in place, only replaced, so
        shallow copies suffice."""
        if self._live is not None and self.lag and self._history:
            target = self._live["yielded"] - self.lag
            return next((st for n, st in reversed(self._history) if n <= target), self._history[0][1])
        state = self._live if self._live is not None else self._resume
        if state is None:
            return {"epoch": 0, "yielded": 0}
        return self._snapshot(state)

    @staticmethod
    def _snapshot(state: dict) -> dict:
        # Tensors, not numpy arrays: accelerate reads the state back with torch.load(weights_only=True).
        return {k: ({n: list(b) for n, b in v.items()} if k == "buffer" else
                    torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in state.items()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self._resume, self._live = state, None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        state = self._resume or {"epoch": 0, "yielded": 0}
        self._resume = None
        if state.get("finished"):  # saved after a whole pass (a validation stream): the next pass is new
            state = {"epoch": 0, "yielded": 0}
        self._owner = owner = object()
        try:
            while self.limit is None or state["yielded"] < self.limit:
                state = yield from self._epoch(state)
                if not self.repeat:
                    break
                state = {"epoch": state["epoch"] + 1, "yielded": state["yielded"]}
            self._live = {**state, "finished": True}
        except GeneratorExit:  # a pass left half-way (a peek at the first block): nothing to resume from
            if self._owner is owner:
                self._live = None
            raise

    def _epoch(self, state: dict) -> Iterator[dict[str, torch.Tensor]]:
        cut = self.cut
        rng = np.random.default_rng([self.seed, state["epoch"]])
        if "rng" in state:
            rng.bit_generator.state = state["rng"]
        source = copy.deepcopy(self.tokenized)  # load_state_dict sticks to a datasets object: a copy each time
        if state.get("source") is not None:
            source.load_state_dict(state["source"])
        live = {"epoch": state["epoch"], "yielded": state["yielded"], "source": state.get("source"),
                "carry_ids": np.asarray(state.get("carry_ids", np.empty(0, np.int32))),
                "carry_starts": np.asarray(state.get("carry_starts", np.empty(0, bool))),
                "buffer": {k: list(v) for k, v in state.get("buffer", {}).items()} or {k: [] for k in cut.features()},
                "rng": rng.bit_generator.state, "source_done": state.get("source_done", False)}  # fmt: skip
        self._live = live
        if self.lag:
            self._history.append((live["yielded"], self._snapshot(live)))
        rows = iter(source)
        while True:
            # Yield while the buffer holds more than it keeps (everything, once the documents are read).
            keep = 0 if live["source_done"] else max(self.buffer_size, 1) - 1
            while len(live["buffer"]["input_ids"]) > keep:
                if self.limit is not None and live["yielded"] >= self.limit:
                    return live
                pick = int(rng.integers(len(live["buffer"]["input_ids"]))) if self.buffer_size > 1 else 0
                block = {k: v.pop(pick).long() for k, v in live["buffer"].items()}
                live["rng"], live["yielded"] = rng.bit_generator.state, live["yielded"] + 1
                if self.lag:
                    self._history.append((live["yielded"], self._snapshot(live)))
                yield block
            if live["source_done"]:
                return live
            row = next(rows, None)
            if row is None:
                live["source_done"] = True
                continue
            ids = np.asarray(row["input_ids"], dtype=np.int32)
            starts = np.zeros(len(ids), dtype=bool)
            starts[:1] = True
            blocks, live["carry_ids"], live["carry_starts"] = cut(
                np.concatenate([live["carry_ids"], ids]), np.concatenate([live["carry_starts"], starts])
            )
            for name, array in blocks.items():
                live["buffer"][name].extend(torch.from_numpy(array))  # one tensor per block, never changed
            live["source"] = source.state_dict()


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
