"""`scratchformer demo --quick` end to end, and the pieces of its word-order task."""

from __future__ import annotations

import json
import random

import pytest

from scratchformer.training import demo


def test_quick_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    # The demo's fresh processes copy remote code into $HF_HOME/modules: keep that inside tmp_path.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # A relative --out, as `make demo` uses: the fresh processes run elsewhere and must still find it.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo-out"
    assert demo.main(["--quick", "--out", "demo-out"]) == 0
    printed = capsys.readouterr().out

    for stage in range(1, 7):
        assert f"[{stage}/6]" in printed
    # Stage 3 ran in a process that could not import scratchformer: the classes came from the
    # checkpoint's own files, through transformers' remote-code loader.
    assert "loaded ScratchformerForCausalLM from transformers_modules." in printed
    assert "'The for statement' -> 'The for statement" in printed
    assert 'pipeline("text-classification", model=...) -> transformers_modules.' in printed
    assert printed.count("(right)") + printed.count("(WRONG)") == 6

    summary = json.loads((out / "demo.json").read_text())
    assert summary["pretrain"]["steps"] == demo.PLANS["quick"].steps
    assert 0.0 <= summary["classifier"]["eval_accuracy"] <= 1.0
    for path in ("tokenizer/tokenizer.json", "pretrain/model/model.safetensors", "pretrain/model/README.md",
                 "pretrain/model/modeling_scratchformer.py", "classifier/config.json", "classifier/README.md",
                 "classifier-data/train.jsonl", "classifier-data/validation.jsonl"):  # fmt: skip
        assert (out / path).is_file(), path
    config = json.loads((out / "classifier" / "config.json").read_text())
    assert config["id2label"] == {"0": "original", "1": "scrambled"}


def test_demo_replaces_its_own_output_but_nothing_else(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert demo.main(["--out", str(mine)]) == 2  # refused before any work
    assert "was not made by the demo" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious"


def test_scrambled_passages_are_balanced_and_keep_first_and_last_letters():
    rng = random.Random(0)
    words = [rng.choice(["passage", "letters", "the", "scrambled", "of", "inside", "words"]) for _ in range(1200)]
    examples = demo.scrambled_examples(words, 40, rng)
    labels = [label for _, label in examples]
    assert len(examples) == 40 and labels.count("original") == labels.count("scrambled") == 20
    for text, label in examples:
        passage = text.split()
        assert len(passage) == demo.WINDOW_WORDS
        assert all(w in words for w in passage) == (label == "original")
        for w in passage:  # scrambling keeps the length and the first and last letters
            assert any(len(v) == len(w) and v[0] == w[0] and v[-1] == w[-1] and sorted(v) == sorted(w) for v in words)
    assert demo.scramble("cat", rng) == "cat" and demo.scramble("x_y1", rng) == "x_y1"


def test_user_text_too_short_for_the_classifier_is_a_clear_error(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("only a few words here\n")
    with pytest.raises(demo.DemoError, match="give more text"):
        demo.write_scrambled_data([str(small)], tmp_path / "data", 100, 20, seed=0)
