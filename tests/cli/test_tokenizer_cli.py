"""`scratchformer tokenizer` and `train_tokenizer`: every input type to a directory `AutoTokenizer`
loads, the stats a user reads, and one-line errors that leave nothing half-written."""

import json

import datasets
import pandas as pd
import pytest
from transformers import AutoTokenizer

from scratchformer.tokenization import SPECIAL_TOKENS
from scratchformer.training import cli
from scratchformer.training.library.tokenizer_training import STATS_FILE, train_tokenizer
from scratchformer.training.tokenizer import main

LINES = [f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 7} times." for i in range(200)]
SMALL = ["--vocab-size", "300", "--quiet"]


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _corpus(tmp_path, kind, column="text"):
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({column: t}) + "\n" for t in LINES), encoding="utf-8")
    elif kind == "csv":
        pd.DataFrame({column: LINES}).to_csv(path, index=False)
    elif kind == "parquet":
        pd.DataFrame({column: LINES, "n": range(len(LINES))}).to_parquet(path)
    return str(path)


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet"])
def test_cli_trains_on_each_file_type(tmp_path, kind, capsys):
    out = tmp_path / "tok"
    assert main(["--output_dir", str(out), "--train_files", _corpus(tmp_path, kind), "--max-length", "256",
                *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "bytes per token" in printed and "300 tokens" in printed

    tok = AutoTokenizer.from_pretrained(out)  # no trust_remote_code: stock classes only
    assert len(tok) == 300 and tok.model_max_length == 256
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tok.decode(tok.encode(LINES[3], add_special_tokens=False)) == LINES[3]

    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["vocab_size"] == 300 and stats["model_max_length"] == 256
    assert stats["heldout_documents"] == 10 and stats["documents"] == 190  # every 20th line held out
    assert stats["bytes_per_token_measured_on"] == "held-out text" and stats["bytes_per_token"] > 1
    expected_bytes = sum(len(t) + (kind == "txt") for i, t in enumerate(LINES) if (i + 1) % 20)
    assert stats["corpus_bytes"] == expected_bytes  # .txt rows keep their "\n"
    assert stats["train_seconds"] > 0 and stats["train_mb_per_s"] > 0
    assert _leftovers(tmp_path) == []


def test_cli_default_corpus_through_the_scratchformer_command(tmp_path, capsys):
    out = tmp_path / "tok"
    assert cli.main(["tokenizer", "--output_dir", str(out), *SMALL]) == 0
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["source"].startswith("default corpus")
    assert stats["corpus_bytes"] > 400_000 and stats["heldout_documents"] > 0
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_train_tokenizer_returns_what_it_saves(tmp_path):
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in LINES), encoding="utf-8")
    stats = train_tokenizer(
        tmp_path / "nested" / "tok",
        files=[str(table)],
        text_column="body",
        vocab_size=280,
        min_frequency=1,
        max_length=32,
        show_progress=False,
    )
    assert json.loads((tmp_path / "nested" / "tok" / STATS_FILE).read_text()) == stats
    assert stats["vocab_size_requested"] == 280 and stats["min_frequency"] == 1


def test_tiny_corpus_measures_compression_on_training_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world\nhello there\n", encoding="utf-8")
    stats = train_tokenizer(tmp_path / "tok", files=[str(path)], vocab_size=300, show_progress=False)
    assert stats["heldout_documents"] == 0 and stats["bytes_per_token_measured_on"].startswith("training text")
    assert stats["vocab_size"] < 300  # too few pairs to fill the vocabulary: reported, not hidden


# -- errors: one line, exit 2, nothing written ----------------------------------------------------


def _fails(tmp_path, capsys, argv, *needles):
    out = tmp_path / "tok"
    assert main(["--output_dir", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_error_missing_file(tmp_path, capsys):
    _fails(tmp_path, capsys, ["--train_files", str(tmp_path / "missing.txt")], "no such file", "missing.txt")


def test_error_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    _fails(tmp_path, capsys, ["--train_files", str(tmp_path / "empty.txt")], "no text", "empty.txt")


def test_error_missing_text_column_lists_columns(tmp_path, capsys):
    _fails(
        tmp_path,
        capsys,
        ["--train_files", _corpus(tmp_path, "parquet"), "--text-column", "body"],
        "no column 'body'",
        "'text', 'n'",
        "--text-column",
    )


def test_error_vocab_smaller_than_bytes_plus_specials(tmp_path, capsys):
    _fails(tmp_path, capsys, ["--train_files", _corpus(tmp_path, "txt"), "--vocab-size", "200"], "265")


def test_error_non_utf8_txt(tmp_path, capsys):
    (tmp_path / "latin.txt").write_bytes("naïve\n".encode("latin-1"))
    _fails(tmp_path, capsys, ["--train_files", str(tmp_path / "latin.txt")], "latin.txt", "UTF-8", "offset 2", "iconv")


def test_error_config_without_dataset(tmp_path, capsys):
    _fails(tmp_path, capsys, ["--dataset_config_name", "x"], "dataset config")


def test_files_and_dataset_are_exclusive(tmp_path, capsys):
    assert main(["--output_dir", str(tmp_path / "tok"), "--train_files", "a.txt", "--dataset_name", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not allowed with" in err


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    corpus = _corpus(tmp_path, "txt")
    assert main(["--output_dir", str(out), "--train_files", corpus, *SMALL]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "precious.txt").exists()

    assert main(["--output_dir", str(out), "--train_files", corpus, "--overwrite", *SMALL]) == 0
    assert not (out / "precious.txt").exists() and (out / "tokenizer.json").exists()
    assert _leftovers(tmp_path) == []


def test_failure_while_saving_leaves_no_output(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        train_tokenizer(tmp_path / "tok", files=[_corpus(tmp_path, "txt")], vocab_size=300, show_progress=False)
    assert not (tmp_path / "tok").exists() and _leftovers(tmp_path) == []


# -- several files: the vocabulary comes from all of them --------------------------------------------


def _lines_with(word):
    # A word that occurs only in this file, often enough (190 training rows) that BPE makes it a token.
    return [f"{line} The {word} again." for line in LINES]


def _one_token(tok, word):
    ids = tok.encode(" " + word, add_special_tokens=False)
    return len(ids) == 1 and tok.convert_ids_to_tokens(ids) == ["Ġ" + word]


def _trained_bytes(*files_rows):
    # Rows are numbered across the files in order; every 20th one is held out of training.
    rows = [row for rows in files_rows for row in rows]
    return sum(len(row.encode("utf-8")) for i, row in enumerate(rows, 1) if i % 20)


def test_several_text_files_all_feed_the_vocabulary(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(_lines_with("aardvark")) + "\n", encoding="utf-8")
    second.write_text("\n".join(_lines_with("zygomorphic")) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["--output_dir", str(out), "--train_files", str(first), str(second), "--vocab-size", "400",
                "--quiet"]) == 0

    tok = AutoTokenizer.from_pretrained(out)
    assert _one_token(tok, "aardvark") and _one_token(tok, "zygomorphic")  # one from each file
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["documents"] + stats["heldout_documents"] == 2 * len(LINES)
    # .txt rows keep their "\n"
    assert stats["corpus_bytes"] == _trained_bytes([r + "\n" for r in _lines_with("aardvark")],
                                                   [r + "\n" for r in _lines_with("zygomorphic")])  # fmt: skip
    assert "first.txt" in stats["source"] and "second.txt" in stats["source"]


def test_a_json_file_beside_a_jsonl_file_with_a_text_column(tmp_path):
    # .json holds one array of records, .jsonl one record a line; both are read with --text-column.
    lines, array = tmp_path / "a.jsonl", tmp_path / "b.json"
    lines.write_text("".join(json.dumps({"n": i, "body": t}) + "\n" for i, t in enumerate(_lines_with("aardvark"))),
                     encoding="utf-8")  # fmt: skip
    array.write_text(json.dumps([{"n": i, "body": t} for i, t in enumerate(_lines_with("zygomorphic"))]),
                     encoding="utf-8")  # fmt: skip
    out = tmp_path / "tok"
    argv = ["--output_dir", str(out), "--train_files", str(lines), str(array), "--text-column", "body",
            "--vocab-size", "400"]
    assert main([*argv, "--quiet"]) == 0

    tok = AutoTokenizer.from_pretrained(out)
    assert _one_token(tok, "aardvark") and _one_token(tok, "zygomorphic")
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["corpus_bytes"] == _trained_bytes(_lines_with("aardvark"), _lines_with("zygomorphic"))
