"""Text in: the embedded default corpus, local files of every supported type, dataset folders, and
the errors a user meets with bad input."""

import json
import os
import subprocess
import sys

import datasets
import pandas as pd
import pytest

from scratchformer.training.library.data import (
    EpochSampler,
    check_not_empty,
    check_utf8,
    data_fingerprint,
    default_corpus,
    default_corpus_dataset,
    iter_text_batches,
    load_text_dataset,
    rows_are_documents,
)


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    # Non-streaming loads build an Arrow cache; keep it out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _texts(ds):
    return [t for batch in iter_text_batches(ds, batch_size=3) for t in batch]


# -- default corpus -------------------------------------------------------------------------------


def test_default_corpus_splits_are_deterministic_disjoint_and_cover_everything():
    train, validation, everything = (list(default_corpus(s)) for s in ("train", "validation", "all"))
    assert train == list(default_corpus("train"))  # same order every time
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(everything)
    assert 0.05 < len(validation) / len(everything) < 0.15
    assert sum(len(t) for t in everything) > 400_000  # ~466 KB of prose
    assert all(t == t.strip() and t for t in everything)


def test_default_corpus_rejects_unknown_split():
    with pytest.raises(ValueError, match="'train', 'validation', 'all'"):
        default_corpus("test")


def test_default_corpus_dataset_has_one_text_column():
    ds = default_corpus_dataset("validation")
    assert ds.column_names == ["text"]
    assert ds["text"] == list(default_corpus("validation"))
    assert load_text_dataset()["text"] == list(default_corpus("train"))
    assert _texts(load_text_dataset(split="validation", streaming=True)) == ds["text"]


# -- files ----------------------------------------------------------------------------------------


ROWS = ["first document", "second, with a comma", "third ünïcödé 🤗"]


def _write(tmp_path, kind, rows=ROWS, column="text"):
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({column: r, "id": i}) + "\n" for i, r in enumerate(rows)), encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps([{column: r, "id": i} for i, r in enumerate(rows)]), encoding="utf-8")
    elif kind == "csv":
        pd.DataFrame({"id": range(len(rows)), column: rows}).to_csv(path, index=False)
    elif kind == "parquet":
        pd.DataFrame({"id": range(len(rows)), column: rows}).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "csv", "parquet"])
def test_every_file_type_loads_as_one_text_column(tmp_path, kind, streaming):
    ds = load_text_dataset([_write(tmp_path, kind)], streaming=streaming)
    assert isinstance(ds, datasets.IterableDataset if streaming else datasets.Dataset)
    expected = [r + "\n" for r in ROWS] if kind == "txt" else ROWS  # .txt rows keep their line breaks
    assert _texts(ds) == expected
    assert list(next(iter(ds))) == ["text"]


def test_txt_rows_joined_give_back_the_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("line one\n\n  indented\nlast line without newline", encoding="utf-8")
    assert "".join(_texts(load_text_dataset([str(path)]))) == path.read_text(encoding="utf-8")


def test_other_text_column_is_renamed_to_text(tmp_path):
    ds = load_text_dataset([_write(tmp_path, "jsonl", column="body")], text_column="body")
    assert ds.column_names == ["text"]
    assert ds["text"] == ROWS


def test_several_files_are_read_in_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a", "jsonl", rows=["a1", "a2"])
    second = _write(tmp_path / "b", "jsonl", rows=["b1"])
    assert _texts(load_text_dataset([first, second])) == ["a1", "a2", "b1"]


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text_dataset([missing])


def test_unknown_and_mixed_extensions_are_refused(tmp_path):
    odd = tmp_path / "notes.docx"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"unknown file type '\.docx'.*\.jsonl"):
        load_text_dataset([str(odd)])
    with pytest.raises(ValueError, match="different formats"):
        load_text_dataset([_write(tmp_path, "txt"), _write(tmp_path, "csv")])


def test_missing_column_lists_the_columns_there_are(tmp_path):
    for kind in ("jsonl", "csv", "parquet"):
        with pytest.raises(ValueError, match=r"no column 'content'; its columns are .*--text-column") as err:
            load_text_dataset([_write(tmp_path, kind)], text_column="content")
        assert "'id'" in str(err.value) and "'text'" in str(err.value)


def test_a_column_of_numbers_is_not_text(tmp_path):
    with pytest.raises(ValueError, match="'id'.*not text"):
        load_text_dataset([_write(tmp_path, "parquet")], text_column="id")
    with pytest.raises(ValueError, match="'id'.*not text"):  # CSV streams carry no schema: caught on read
        load_text_dataset([_write(tmp_path, "csv")], text_column="id")


@pytest.mark.parametrize(
    "name, content",
    [("empty.txt", ""), ("blank.txt", "\n  \n\t\n"), ("empty.jsonl", ""), ("header.csv", "text,id\n")],
)
def test_empty_corpus_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="no text in .*" + name):
        load_text_dataset([str(path)])


def test_blank_rows_of_a_column_are_refused(tmp_path):
    with pytest.raises(ValueError, match="every row of column 'text' is empty"):
        load_text_dataset([_write(tmp_path, "jsonl", rows=["", "  ", "\n"])])


def test_non_utf8_text_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("good line\ncafé".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8: byte 0xe9 at offset 13.*iconv"):
        load_text_dataset([str(path)])
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_text_dataset([str(jsonl)])


def test_check_utf8_across_chunk_boundaries(tmp_path):
    path = tmp_path / "a.txt"
    text = "ab🤗cd中文e" * 50  # multi-byte characters land on every chunk boundary below
    path.write_bytes(text.encode("utf-8"))
    for chunk_size in (1, 2, 3, 5, 7):
        check_utf8(path, chunk_size=chunk_size)
    path.write_bytes(text.encode("utf-8")[:-1] + b"e\xf0\x9f")  # cut inside the last character
    with pytest.raises(ValueError, match=f"offset {len(text.encode('utf-8'))}"):
        check_utf8(path, chunk_size=4)


def test_malformed_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="could not read .*broken.jsonl"):
        load_text_dataset([str(path)])


def test_files_and_dataset_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        load_text_dataset([_write(tmp_path, "txt")], dataset="wikitext")
    with pytest.raises(ValueError, match="no files"):
        load_text_dataset([])


# -- dataset folders ------------------------------------------------------------------------------


def test_save_to_disk_folder_and_its_splits(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"body": ["t1", "t2"], "n": [1, 2]}),
        validation=datasets.Dataset.from_dict({"body": ["v1"], "n": [3]}),
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = load_text_dataset(dataset=str(tmp_path / "saved"), split="validation", text_column="body")
    assert ds.column_names == ["text"] and ds["text"] == ["v1"]
    stream = load_text_dataset(dataset=str(tmp_path / "saved"), text_column="body", streaming=True)
    assert _texts(stream) == ["t1", "t2"]
    with pytest.raises(ValueError, match="no split 'test'; its splits are 'train', 'validation'"):
        load_text_dataset(dataset=str(tmp_path / "saved"), split="test", text_column="body")
    with pytest.raises(ValueError, match="no column 'text'; its columns are 'body', 'n'"):
        load_text_dataset(dataset=str(tmp_path / "saved"))


def test_folder_of_data_files_goes_through_load_dataset(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder, "jsonl")
    assert _texts(load_text_dataset(dataset=str(folder))) == ROWS


# -- batches --------------------------------------------------------------------------------------


def test_iter_text_batches_skips_missing_and_empty_and_streams():
    ds = datasets.Dataset.from_dict({"text": ["a", None, "", "b", " ", "c", "d"]})
    assert list(iter_text_batches(ds, batch_size=3)) == [["a"], ["b", " ", "c"], ["d"]]
    assert list(iter_text_batches(ds.to_iterable_dataset(), batch_size=7)) == [["a", "b", " ", "c", "d"]]
    other = datasets.Dataset.from_dict({"body": ["x"]})
    assert list(iter_text_batches(other, text_column="body")) == [["x"]]


def test_a_malformed_row_far_into_a_file_is_named_with_its_cause(tmp_path):
    """The first rows read fine (the lazy check passes); the full read then meets bad JSON.
    datasets says only "An error occurred while generating the dataset": we name file and cause."""
    path = tmp_path / "big.jsonl"
    good = "\n".join(json.dumps({"text": f"row {i}"}) for i in range(30_000))
    path.write_text(good + '\n{"text": "broken\n')
    with pytest.raises(ValueError, match=r"could not read .*big\.jsonl as json: .*JSON parse error"):
        load_text_dataset(files=[str(path)])


# -- what a run records about its data, and how it reads it --------------------------------------


def test_the_data_fingerprint_changes_with_a_files_content_and_names_datasets(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("some text\n")
    first = data_fingerprint([str(path)])
    assert first == [{"file": str(path.resolve()), "bytes": 10, "sha256_first_mib": first[0]["sha256_first_mib"]}]
    assert data_fingerprint([str(path)]) == first  # untouched: the same
    path.write_text("some TEXT\n")  # same size, other bytes
    assert data_fingerprint([str(path)]) != first
    assert data_fingerprint(None, "wikitext", "wikitext-2-raw-v1", "train") == [
        {"dataset": "wikitext", "config": "wikitext-2-raw-v1", "split": "train"}
    ]
    assert data_fingerprint(None) == [{"embedded": "pydoc_data.topics"}]


def test_the_download_count_ping_is_off_when_the_variable_says_so():
    """`HF_UPDATE_DOWNLOAD_COUNTS=0`, which `scratchformer.training` sets unless the user set it, turns
    off datasets' request to count a download of its packaged builder. datasets reads the variable when
    it is imported: imported first, before the variable was set, it is told again. A user's own value
    is left alone."""
    code = ("import datasets; before = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS; "
            "import scratchformer.training.library.data; "
            "print(before, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS)")  # fmt: skip
    unset = {k: v for k, v in os.environ.items() if k != "HF_UPDATE_DOWNLOAD_COUNTS"}
    for env, want in ((unset, "True False"), ({**unset, "HF_UPDATE_DOWNLOAD_COUNTS": "1"}, "True True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.split() == want.split(), (env.get("HF_UPDATE_DOWNLOAD_COUNTS"), out.stdout)


def test_a_one_byte_file_is_text_and_an_empty_one_beside_others_is_skipped(tmp_path):
    (tmp_path / "one.txt").write_text("a")
    assert _texts(load_text_dataset([str(tmp_path / "one.txt")])) == ["a"]
    (tmp_path / "empty.jsonl").write_text("")
    kept = _write(tmp_path, "jsonl", rows=["kept"])
    assert _texts(load_text_dataset([str(tmp_path / "empty.jsonl"), str(kept)])) == ["kept"]


@pytest.mark.parametrize(
    ("count", "message"),
    [(1, r"no text in \S*e0\.txt: the file is empty$"), (3, r"no text in \S*e0\.txt, \S*e1\.txt, \S*e2\.txt$"),
     (4, r"no text in \S*e0\.txt and 3 more files$")],
)  # fmt: skip
def test_empty_files_are_named_up_to_three(tmp_path, count, message):
    paths = [tmp_path / f"e{i}.txt" for i in range(count)]
    for p in paths:
        p.write_text("")
    with pytest.raises(ValueError, match=message):
        load_text_dataset([str(p) for p in paths])


def test_check_utf8_gives_the_offset_in_the_file_not_in_the_chunk(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"abcdefghij\xffklm")
    with pytest.raises(ValueError, match="byte 0xff at offset 10;"):
        check_utf8(path, chunk_size=4)  # the bad byte is the third of the third chunk


@pytest.mark.parametrize(
    ("files", "documents"),
    [(None, True), ([], True), (["a.txt"], False), (["a.txt", "b.TEXT"], False), (["a.jsonl"], True),
     (["a.csv"], True), (["a.parquet"], True)],
)  # fmt: skip
def test_rows_of_txt_files_are_lines_and_every_other_sources_are_documents(files, documents):
    assert rows_are_documents(files) is documents


def test_an_empty_split_is_refused_with_the_block_size_and_a_way_out():
    message = "the validation text holds fewer than 64 tokens, not even one block of --block_size 64"
    one = datasets.Dataset.from_dict({"input_ids": [[1, 2]]})
    for empty in (one.select([]), one.to_iterable_dataset().filter(lambda row: False)):
        with pytest.raises(ValueError, match=message + ": give more text or lower --block_size"):
            check_not_empty(empty, "validation", 64)
    check_not_empty(one, "validation", 2)
    check_not_empty(one.to_iterable_dataset(), "validation", 2)


def test_a_seeds_epoch_orders_are_the_same_in_every_release():
    """A run resumed by a later release draws the same blocks: the order is a function of (seed, epoch)
    that never changes (these are the orders of seed 3 since the sampler was written)."""
    sampler = EpochSampler(12, seed=3, multiple_of=4)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders == [[11, 2, 8, 1, 10, 0, 6, 4, 9, 3, 5, 7], [1, 0, 9, 2, 4, 7, 6, 11, 5, 10, 8, 3],
                      [8, 7, 1, 6, 4, 10, 2, 3, 9, 0, 5, 11]]  # fmt: skip
