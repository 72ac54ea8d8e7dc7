"""`tokenize_and_pack` against a plain-Python packing of the same text, and its cache: reused on a
second call with the same tokenizer and file, rebuilt when either changes."""

from __future__ import annotations

import datasets
import pytest
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from scratchformer.tokenization import BOS_ID, EOS_ID, train_bpe
from scratchformer.training.library import packing
from scratchformer.training.library.data import default_corpus, load_text_dataset
from scratchformer.training.library.packing import tokenize_and_pack

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
    assert isinstance(blocks, datasets.IterableDataset)
    assert [row["input_ids"] for row in blocks] == reference_blocks(rows, tokenizer, 16, rows_are_documents)


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
