"""`tokenize_and_pack` against a plain-Python packing of the same text, and its cache: reused on a
second call with the same tokenizer and file, rebuilt when either changes."""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from scratchformer.tokenization import BOS_ID, EOS_ID, train_bpe
from scratchformer.training.library import packing
from scratchformer.training.library.data import default_corpus, load_text_dataset
from scratchformer.training.library.packing import PackedStream, collate_blocks, tokenize_and_pack

# Running text with the awkward cases: blank lines, an empty row, CRLF, tabs, non-ASCII, emoji.
TEXT = "".join(list(default_corpus("train"))[:6]) + "\n\nnaïve café, 東京 🚀\r\n\ttabbed\n\n"
DOCS = [d[:700] for d in list(default_corpus("train"))[:12]] + ["", "naïve café, 東京 🚀\r\n"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe(DOCS, vocab_size=300, show_progress=False)


@pytest.fixture(scope="module")
def no_bos_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """GPT-2's arrangement: no `<s>`, no post-processor adding one; `</s>` ends text and separates."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")


def reference_blocks(rows: list[str], tokenizer, block_size: int, rows_are_documents: bool) -> list[list[int]]:
    """The packing spelled out: frame or join every row, one stream, cut into full blocks."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    stream: list[int] = []
    for row in rows:
        if not row:
            continue
        if rows_are_documents:
            ids = tokenizer(row)["input_ids"]
            stream += ids + [eos] if ids[-1:] != [eos] else ids
        else:
            stream += tokenizer(row, add_special_tokens=False)["input_ids"]
    if rows_are_documents:
        return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    opener = bos if bos is not None else eos
    step = block_size - 1
    return [[opener, *stream[i : i + step]] for i in range(0, len(stream) - step + 1, step)]


@pytest.mark.parametrize("block_size", [2, 7, 64])
@pytest.mark.parametrize("with_bos", [True, False])
@pytest.mark.parametrize("rows_are_documents", [True, False])
def test_blocks_are_the_plain_python_packing(tokenizer, no_bos_tokenizer, block_size, with_bos, rows_are_documents):
    tok = tokenizer if with_bos else no_bos_tokenizer
    rows = DOCS if rows_are_documents else TEXT.splitlines(keepends=True)
    ds = datasets.Dataset.from_dict({"text": rows})
    blocks = tokenize_and_pack(ds, tok, block_size, rows_are_documents=rows_are_documents)
    expected = reference_blocks(rows, tok, block_size, rows_are_documents)
    assert len(expected) > 3
    assert blocks["input_ids"] == expected
    if with_bos:
        assert expected[0][0] == BOS_ID
        if rows_are_documents:
            assert EOS_ID in {t for b in expected for t in b}


@pytest.mark.parametrize("rows_are_documents", [True, False])
def test_a_stream_packs_the_same_blocks_when_it_fits_one_batch(tokenizer, rows_are_documents):
    rows = DOCS if rows_are_documents else TEXT.splitlines(keepends=True)
    stream = datasets.Dataset.from_dict({"text": rows}).to_iterable_dataset()
    blocks = tokenize_and_pack(stream, tokenizer, 16, rows_are_documents=rows_are_documents)
    assert isinstance(blocks, PackedStream)
    assert [row["input_ids"].tolist() for row in blocks] == reference_blocks(rows, tokenizer, 16, rows_are_documents)


# -- across batch boundaries: many packing batches, many tokenizing batches, several workers -----
# A real corpus spans many packing batches (PACK_ROWS rows each) and the tokenizing map's batches
# and workers; the corpora above fit one of each. Here both batch sizes are shrunk so that the
# corpus spans dozens of them and every packing batch ends part-way through a block: a packer that
# dropped a batch's leftover tokens (instead of opening the next batch with them), or one whose
# blocks depended on where the workers' shards end, changes blocks here.

PARAGRAPHS = [p for d in default_corpus("train") for p in d.split("\n\n") if p.strip()][:150]
LINES = "".join(list(default_corpus("train"))[:3]).splitlines(keepends=True) + ["naïve café, 東京 🚀\r\n", "\n"]


@pytest.fixture
def leftovers(monkeypatch) -> list[int]:
    """The number of tokens each cut leaves over for the next batch (or the next document, streamed)."""
    seen: list[int] = []

    class Counting(packing.Cut):
        def __call__(self, ids, starts):
            out = super().__call__(ids, starts)
            seen.append(len(out[1]))
            return out

    monkeypatch.setattr(packing, "Cut", Counting)
    return seen


def _write_rows(root, rows: list[str], rows_are_documents: bool, shards: int) -> list[str]:
    """The rows as `shards` files in order: .jsonl documents, or .txt lines (read back line by line)."""
    paths = []
    size = -(-len(rows) // shards)
    for i in range(shards):
        part = rows[i * size : (i + 1) * size]
        if rows_are_documents:
            path = root / f"part-{i}.jsonl"
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in part), encoding="utf-8")
        else:
            path = root / f"part-{i}.txt"
            path.write_bytes("".join(part).encode("utf-8"))
        paths.append(str(path))
    return paths


# A block size at which every packing batch of 5 rows below ends part-way through a block.
SPAN_BLOCK = 51
MODES = [("documents", False), ("documents", True), ("lines", False)]


@pytest.mark.parametrize("num_proc", [None, 3])
@pytest.mark.parametrize(("mode", "masking"), MODES)
def test_blocks_spanning_many_batches_and_workers_are_the_plain_python_packing(
    tmp_path, monkeypatch, tokenizer, leftovers, mode, masking, num_proc
):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(packing, "TOKENIZE_ROWS", 16)  # several tokenizing batches per worker
    monkeypatch.setitem(packing.PACK_ROWS, mode, 5)
    documents = mode == "documents"
    files = _write_rows(tmp_path, PARAGRAPHS if documents else LINES, documents, shards=2)
    ds = load_text_dataset(files=files)
    rows = ds["text"]
    blocks = tokenize_and_pack(ds, tokenizer, SPAN_BLOCK, rows_are_documents=documents, document_masking=masking,
                               num_proc=num_proc)  # fmt: skip
    assert len(leftovers) == -(-len(rows) // 5) >= 30  # one cut per packing batch
    assert all(n > 0 for n in leftovers)  # every batch ends part-way through a block
    assert len(blocks) > 100 and blocks["input_ids"] == reference_blocks(rows, tokenizer, SPAN_BLOCK, documents)
    if masking:
        assert blocks["position_ids"] == reference_positions(rows, tokenizer, SPAN_BLOCK)
    assert blocks.cache_files  # the path a user's files take: written to the cache, read back mapped


@pytest.mark.parametrize(("mode", "masking"), MODES)
def test_a_stream_spanning_many_batches_and_shards_packs_the_plain_python_blocks(
    tmp_path, monkeypatch, tokenizer, leftovers, mode, masking
):
    monkeypatch.setattr(packing, "TOKENIZE_ROWS", 16)  # the stream's tokenizing map: many batches
    documents = mode == "documents"
    files = _write_rows(tmp_path, PARAGRAPHS if documents else LINES, documents, shards=3)
    rows = load_text_dataset(files=files)["text"]
    stream = tokenize_and_pack(load_text_dataset(files=files, streaming=True), tokenizer, SPAN_BLOCK,
                               rows_are_documents=documents, document_masking=masking)  # fmt: skip
    blocks = list(stream)
    assert sum(n > 0 for n in leftovers) > len(rows) // 2  # tokens carried from document to document
    assert len(blocks) > 100
    assert [b["input_ids"].tolist() for b in blocks] == reference_blocks(rows, tokenizer, SPAN_BLOCK, documents)
    if masking:
        assert [b["position_ids"].tolist() for b in blocks] == reference_positions(rows, tokenizer, SPAN_BLOCK)


# -- documents kept apart ------------------------------------------------------------------------


def reference_positions(rows: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Each token's position in its document, spelled out: 0 at a document's first token (`<s>`)
    and at each block's first token, +1 otherwise."""
    starts: list[bool] = []
    for row in rows:
        if row:
            ids = tokenizer(row)["input_ids"]
            n = len(ids) + (ids[-1:] != [tokenizer.eos_token_id])
            starts += [True] + [False] * (n - 1)
    out = []
    for i in range(0, len(starts) - block_size + 1, block_size):
        positions = []
        for j, start in enumerate(starts[i : i + block_size]):
            positions.append(0 if start or j == 0 else positions[-1] + 1)
        out.append(positions)
    return out


@pytest.mark.parametrize("block_size", [7, 64])
def test_documents_kept_apart_carry_positions_restarting_at_each_document(tokenizer, block_size):
    ds = datasets.Dataset.from_dict({"text": DOCS})
    blocks = tokenize_and_pack(ds, tokenizer, block_size, document_masking=True)
    assert blocks["input_ids"] == reference_blocks(DOCS, tokenizer, block_size, True)  # the same blocks
    assert blocks["position_ids"] == reference_positions(DOCS, tokenizer, block_size)
    assert sum(p.count(0) for p in blocks["position_ids"]) > len(blocks)  # some block holds two documents
    # Every document starts with <s> and is labelled -100 there, and nowhere else.
    batch = collate_blocks(list(blocks.with_format("torch")))
    starts = batch["position_ids"] == 0
    assert torch.equal(batch["labels"] == -100, starts)
    inside = starts.clone()
    inside[:, 0] = False  # a block's first token may continue a document
    assert inside.any() and (batch["input_ids"][inside] == BOS_ID).all()
    # Lines of running text have no documents: nothing changes for them.
    lines = datasets.Dataset.from_dict({"text": TEXT.splitlines(keepends=True)})
    plain = tokenize_and_pack(lines, tokenizer, block_size, rows_are_documents=False, document_masking=True)
    assert plain.column_names == ["input_ids"]


# -- streams: the same blocks, and a resume that neither repeats nor skips one --------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer) -> dict:
    """The default corpus's paragraphs as rows (over 2,000: more than one tokenizing batch and one
    packing batch), in three .jsonl shards and as the same three .parquet shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paragraphs = [p for d in default_corpus("all") for p in d.split("\n\n") if p.strip()][:2500]
    assert len(paragraphs) > 2 * packing.TOKENIZE_ROWS
    root = tmp_path_factory.mktemp("shards")
    out: dict = {"jsonl": [], "parquet": []}
    for i in range(3):
        part = paragraphs[i::3]
        path = root / f"part-{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "id": n}) + "\n" for n, t in enumerate(part)))
        out["jsonl"].append(str(path))
        pq.write_table(pa.table({"text": part}), root / f"part-{i}.parquet", row_group_size=300)
        out["parquet"].append(str(root / f"part-{i}.parquet"))
    return out


@pytest.mark.parametrize(("kind", "masking"), [("jsonl", True), ("jsonl", False), ("parquet", True)])
def test_a_stream_of_shards_gives_exactly_the_blocks_of_the_cached_path(shards, tokenizer, kind, masking):
    cached = tokenize_and_pack(load_text_dataset(files=shards[kind]), tokenizer, 48, document_masking=masking)
    stream = tokenize_and_pack(load_text_dataset(files=shards[kind], streaming=True), tokenizer, 48,
                               document_masking=masking)  # fmt: skip
    blocks = list(stream)
    assert len(blocks) == len(cached) > 1000
    assert [b["input_ids"].tolist() for b in blocks] == cached["input_ids"]
    if masking:
        assert [b["position_ids"].tolist() for b in blocks] == cached["position_ids"]


def _take(stream, n: int) -> list[list[int]]:
    it = iter(stream)
    return [next(it)["input_ids"].tolist() for _ in range(n)]


def test_a_shuffled_stream_resumes_exactly_where_it_stopped(shards, tokenizer):
    """Stopped after any number of blocks (inside the first buffer fill, inside a tokenizing batch,
    across a shard and an epoch boundary), saved, loaded into a new stream: the rest is exactly the
    uninterrupted order. Each pass is a permutation of the cached blocks, drawn anew."""
    def stream():
        raw = tokenize_and_pack(load_text_dataset(files=shards["jsonl"], streaming=True), tokenizer, 160,
                                document_masking=True)  # fmt: skip
        return raw.shuffle(seed=7, buffer_size=100).repeated()

    cached = tokenize_and_pack(load_text_dataset(files=shards["jsonl"]), tokenizer, 160, document_masking=True)
    n = len(cached)
    straight = _take(stream(), 2 * n + 10)
    assert sorted(straight[:n]) == sorted(cached["input_ids"]) == sorted(straight[n : 2 * n])
    assert straight[:n] != cached["input_ids"] and straight[:n] != straight[n : 2 * n]
    for cut in (1, 100, n // 2 + 1, n + 3):
        first = stream()
        blocks = iter(first)  # alive while the state is read, as a data loader's iterator is
        before = [next(blocks)["input_ids"].tolist() for _ in range(cut)]
        state = torch.load(_saved(first.state_dict()), weights_only=True)  # as accelerate reads a checkpoint
        second = stream()
        second.load_state_dict(state)
        assert before + _take(second, 2 * n + 10 - cut) == straight, cut


def test_a_held_back_stream_reports_the_state_of_blocks_ago(shards, tokenizer):
    """A reader that fetched 5 blocks ahead of what it used (accelerate's dispatching loader) saves
    the state of 5 blocks ago, and the resumed stream starts at the first block not used."""
    def stream():
        raw = tokenize_and_pack(load_text_dataset(files=shards["jsonl"], streaming=True), tokenizer, 160)
        return raw.shuffle(seed=1, buffer_size=30).repeated().held_back(5)

    straight = _take(stream(), 80)
    first = stream()
    blocks = iter(first)
    for _ in range(45):  # 40 used, 5 fetched ahead
        next(blocks)
    second = stream()
    second.load_state_dict(torch.load(_saved(first.state_dict()), weights_only=True))
    assert _take(second, 40) == straight[40:]


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


# -- the cache -----------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Counts the texts actually tokenized (in this process, so with `num_proc=None`)."""
    seen = [0]
    make = packing._tokenize_function

    def counting(*args, **kwargs):
        tokenize = make(*args, **kwargs)

        def wrapped(batch):
            seen[0] += batch.num_rows
            return tokenize(batch)

        return wrapped

    monkeypatch.setattr(packing, "_tokenize_function", counting)
    return seen


@pytest.fixture
def text_file(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _pack_file(path, tokenizer, **kwargs) -> datasets.Dataset:
    return tokenize_and_pack(load_text_dataset(files=[str(path)]), tokenizer, 32, rows_are_documents=False, **kwargs)


def _expected(path, tokenizer) -> list[list[int]]:
    """The reference packing of the file's rows as the text loader reads them (lines, CRLF as LF)."""
    return reference_blocks(load_text_dataset(files=[str(path)])["text"], tokenizer, 32, rows_are_documents=False)


def test_a_second_call_with_the_same_tokenizer_and_file_reads_the_cache(text_file, tokenizer, counted):
    first = _pack_file(text_file, tokenizer)
    assert counted[0] > 0
    cache = sorted((p, p.stat().st_mtime_ns) for p in (text_file.parent / "hf-cache").rglob("*.arrow"))
    assert any(p.name.startswith("packed-") for p, _ in cache)
    counted[0] = 0
    second = _pack_file(text_file, tokenizer)
    assert counted[0] == 0  # nothing tokenized again
    assert sorted((p, p.stat().st_mtime_ns) for p in (text_file.parent / "hf-cache").rglob("*.arrow")) == cache
    assert second.cache_files == first.cache_files
    assert second["input_ids"] == first["input_ids"] == _expected(text_file, tokenizer)


def test_a_changed_tokenizer_or_an_edited_file_builds_afresh(text_file, tokenizer, no_bos_tokenizer, counted):
    first = _pack_file(text_file, tokenizer)
    counted[0] = 0
    other = _pack_file(text_file, no_bos_tokenizer)
    assert counted[0] > 0 and other.cache_files != first.cache_files
    assert other["input_ids"] == _expected(text_file, no_bos_tokenizer)

    edited = TEXT.replace("the", "THE")
    text_file.write_text(edited, encoding="utf-8")
    counted[0] = 0
    after = _pack_file(text_file, tokenizer)
    assert counted[0] > 0 and after.cache_files != first.cache_files
    assert after["input_ids"] == _expected(text_file, tokenizer) != first["input_ids"]


def test_workers_make_the_same_blocks_as_one_process(text_file, tokenizer):
    one = _pack_file(text_file, tokenizer)
    two = _pack_file(text_file, tokenizer, num_proc=2)
    assert two["input_ids"] == one["input_ids"]


def test_document_masking_is_part_of_the_cache_key(tmp_path, tokenizer, counted, monkeypatch):
    """The same documents packed kept apart and joined are two caches: a joined run never reads blocks
    with positions (or a masked run blocks without), and each mode reads its own cache again."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")

    def pack(masking: bool) -> datasets.Dataset:
        return tokenize_and_pack(load_text_dataset(files=[str(path)]), tokenizer, 32, document_masking=masking)

    masked, joined = pack(True), pack(False)
    assert "position_ids" in masked.column_names and "position_ids" not in joined.column_names
    assert masked.cache_files and joined.cache_files and masked.cache_files != joined.cache_files
    assert masked["input_ids"] == joined["input_ids"] == reference_blocks(DOCS, tokenizer, 32, True)
    for masking, first in ((True, masked), (False, joined)):
        counted[0] = 0
        again = pack(masking)
        assert counted[0] == 0 and again.cache_files == first.cache_files
        assert again.column_names == first.column_names and again["input_ids"] == first["input_ids"]


# -- the edges of the contract: defaults, limits, dtypes, the fast path, workers ------------------


def test_by_default_documents_are_joined_and_a_block_is_at_least_two_tokens(tokenizer):
    docs = datasets.Dataset.from_dict({"text": DOCS})
    assert tokenize_and_pack(docs, tokenizer, 2).column_names == ["input_ids"]  # no positions unless asked
    with pytest.raises(ValueError, match="block_size=1 must be at least 2"):
        tokenize_and_pack(docs, tokenizer, 1)


@pytest.mark.parametrize("masking", [False, True])
def test_text_shorter_than_one_block_gives_no_block_with_the_usual_columns(tokenizer, masking):
    short = datasets.Dataset.from_dict({"text": ["a few words"]})
    blocks = tokenize_and_pack(short, tokenizer, 64, document_masking=masking)
    assert len(blocks) == 0
    assert blocks.column_names == (["input_ids", "position_ids"] if masking else ["input_ids"])


def test_positions_are_stored_as_int16_while_a_block_fits_it():
    assert packing.Cut(32767, 32767, None, True).position_dtype == np.int16  # positions 0..32766
    assert packing.Cut(32768, 32768, None, True).position_dtype == np.int32
    blocks = packing.Cut(8, 8, None, True)(np.arange(20, dtype=np.int32), np.arange(20) % 5 == 0)[0]
    assert blocks["position_ids"].dtype == np.int16 and blocks["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_a_fast_tokenizer_is_encoded_through_rust_unless_its_python_class_adds_tokens(tokenizer):
    assert packing._encoder(tokenizer, add_special_tokens=True).__name__ == "through_rust"

    class Stamped(PreTrainedTokenizerFast):
        """A tokenizer whose Python class appends a token of its own: the Rust backend alone would lose it."""

        def __call__(self, text, *args, **kwargs):
            out = super().__call__(text, *args, **kwargs)
            ids = out["input_ids"]
            out["input_ids"] = [x + [7] for x in ids] if isinstance(text, list) else ids + [7]
            return out

    stamped = Stamped(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                      bos_token="<s>", eos_token="</s>")  # fmt: skip
    assert packing._encoder(stamped, add_special_tokens=True).__name__ == "through_python"
    docs = datasets.Dataset.from_dict({"text": DOCS})
    assert tokenize_and_pack(docs, stamped, 16)["input_ids"] == reference_blocks(DOCS, stamped, 16, True)


def test_a_tokenizer_without_a_rust_backend_packs_through_its_python_call(tokenizer):
    class PythonOnly(PreTrainedTokenizerFast):
        backend_tokenizer = None  # what a slow (pure Python) tokenizer has

    slow = PythonOnly(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                      bos_token="<s>", eos_token="</s>")  # fmt: skip
    assert packing._encoder(slow, add_special_tokens=True).__name__ == "through_python"
    docs = datasets.Dataset.from_dict({"text": DOCS})
    assert tokenize_and_pack(docs, slow, 16)["input_ids"] == reference_blocks(DOCS, tokenizer, 16, True)


@pytest.mark.parametrize("workers", [2, 3])
def test_num_proc_workers_tokenize_in_that_many_processes(text_file, tokenizer, workers):
    blocks = _pack_file(text_file, tokenizer, num_proc=workers)
    shards = [p.name for p in (text_file.parent / "hf-cache").rglob(f"cache-*_of_{workers:05d}.arrow")]
    assert len(shards) == workers, shards  # datasets writes one tokenized shard per worker
    assert blocks["input_ids"] == _expected(text_file, tokenizer)


@contextmanager
def _deadline(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _small_stream(tokenizer, block_size: int = 16) -> PackedStream:
    rows = datasets.Dataset.from_dict({"text": DOCS}).to_iterable_dataset(num_shards=2)
    return tokenize_and_pack(rows, tokenizer, block_size)


def _ids(blocks) -> list[list[int]]:
    return [b["input_ids"].tolist() for b in blocks]


def test_take_gives_that_many_blocks_in_one_pass_or_across_passes(tokenizer):
    every = _ids(_small_stream(tokenizer))
    n = len(every)
    assert n > 50
    assert _ids(_small_stream(tokenizer).take(10)) == every[:10]
    assert _ids(_small_stream(tokenizer).take(n + 5)) == every  # no more than one pass without repeated()

    with _deadline(seconds=60):  # a stream that never stops fails here instead of hanging the suite
        blocks = _ids(_small_stream(tokenizer).repeated().take(2 * n + 3))
    assert blocks == every + every + every[:3]  # each pass drops its own tail, as the cached path does


def test_a_whole_pass_saved_and_loaded_starts_the_next_pass_afresh(tokenizer):
    """A validation stream's state after a complete pass (accelerate saves it with the checkpoint):
    loaded, the next iteration is a whole new pass, not an empty remainder."""
    fresh = _small_stream(tokenizer)
    assert fresh.state_dict() == {"epoch": 0, "yielded": 0}
    every = _ids(fresh)
    state = fresh.state_dict()
    assert state["finished"] is True and state["yielded"] == len(every)
    again = _small_stream(tokenizer)
    again.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert _ids(again) == every


@pytest.mark.parametrize("buffer_size", [2, 10])
def test_a_shuffle_buffer_of_b_blocks_draws_each_block_from_the_next_b(buffer_size):
    """Rows of one block each: the k-th block drawn is one of blocks k .. k+b-1 of the stream (a buffer
    never holds more than b blocks), every block is drawn once, and with b >= 2 the order changes."""
    rows = datasets.Dataset.from_dict({"input_ids": [[i] * 8 for i in range(300)]}).to_iterable_dataset()
    stream = PackedStream(rows, packing.Cut(8, 8, None, False)).shuffle(seed=3, buffer_size=buffer_size)
    drawn = [b["input_ids"][0].item() for b in stream]
    assert sorted(drawn) == list(range(300)) and drawn != list(range(300))
    assert all(i < k + buffer_size for k, i in enumerate(drawn))
