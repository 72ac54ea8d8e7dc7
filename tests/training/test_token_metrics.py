"""Token classification's metrics: entity-level precision/recall/F1 (seqeval, CoNLL's counting) for
BIO/IOBES label sets, word accuracy and macro-F1 for everything, and the same through `finetune`."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, TrainingArguments

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training.library.finetuning import RESULTS_FILE, FinetuneArguments, finetune
from scratchformer.training.library.metrics import (
    accuracy_and_macro_f1,
    compute_classification_metrics,
    compute_token_metrics,
    is_entity_tagging,
    token_metrics,
)

CONLL = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def eval_pred(names: list[str], sentences: list[tuple[list[str], list[str]]]) -> EvalPrediction:
    """What Trainer hands compute_metrics for (reference tags, predicted tags) per sentence, laid out
    as `tasks.align_word_labels` lays them: <s> and each word's later sub-tokens carry -100, and the
    batch is padded with -100. The model "predicts" B-ORG at every unlabelled position, so a metric
    that reads them is wrong."""
    index = {n: i for i, n in enumerate(names)}
    width = 2 * max(len(ref) for ref, _ in sentences) + 3
    labels = np.full((len(sentences), width), -100)
    predicted = np.full((len(sentences), width), index.get("B-ORG", 0))
    for row, (ref, pred) in enumerate(sentences):
        for word, (r, p) in enumerate(zip(ref, pred)):
            position = 1 + 2 * word  # <s>, then a first sub-token and one more sub-token per word
            labels[row, position], predicted[row, position] = index[r], index[p]
    logits = np.eye(len(names), dtype=np.float32)[predicted] * 5.0
    return EvalPrediction(predictions=logits, label_ids=labels)


def test_entity_f1_counts_whole_entities_where_token_accuracy_counts_words():
    sentences = [
        # John Smith lives in New York: "York" tagged I-ORG breaks the LOC into LOC(New) + ORG(York)
        (["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"], ["B-PER", "I-PER", "O", "O", "B-LOC", "I-ORG"]),
        # Acme hired Bob: all right
        (["B-ORG", "O", "B-PER"], ["B-ORG", "O", "B-PER"]),
    ]
    metrics = token_metrics(CONLL)(eval_pred(CONLL, sentences))
    # 8 of 9 words right; entities: 4 true, 5 predicted (PER, LOC, ORG, ORG, PER), 3 of them right.
    assert metrics["accuracy"] == pytest.approx(8 / 9)
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))  # 2/3, well below 8/9
    assert "macro_f1" in metrics  # the word-level numbers of before are all still there


def test_spans_are_read_as_seqeval_reads_them():
    # CoNLL's conlleval counting (seqeval's default mode): an I- after O opens an entity, so
    # "I-PER I-PER" is the same PER span as "B-PER I-PER": entity F1 1.0 with one word "wrong".
    lenient = token_metrics(CONLL)(eval_pred(CONLL, [(["B-PER", "I-PER", "O"], ["I-PER", "I-PER", "O"])]))
    assert lenient["accuracy"] == pytest.approx(2 / 3) and lenient["f1"] == 1.0

    # IOBES: S- is a one-word entity, so S-LOC S-LOC are two entities where B-LOC E-LOC is one.
    iobes = ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "S-PER"]
    m = token_metrics(iobes)(eval_pred(iobes, [(["S-PER", "O", "B-LOC", "E-LOC"], ["S-PER", "O", "S-LOC", "S-LOC"])]))
    assert (m["precision"], m["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))

    # Each row is its own sentence: a B-PER ending one and an I-PER opening the next are two
    # entities (both right here), not one PER across the sentence boundary (which would be wrong).
    split = token_metrics(CONLL)(eval_pred(CONLL, [(["O", "B-PER"], ["O", "B-PER"]), (["B-PER", "O"], ["I-PER", "O"])]))
    assert split["f1"] == 1.0 and split["accuracy"] == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "names, tagged",
    [
        (CONLL, True),
        (["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"], True),  # IOBES
        (["O", "I-PER", "I-LOC", "B-LOC"], True),  # IOB1: B- only between two entities of a type
        (["B", "I", "O"], True),  # untyped chunks (keyphrases)
        (["O"], False),  # nothing to find
        (["DET", "NOUN", "VERB"], False),  # part-of-speech tags
        (["0", "1", "2"], False),  # numeric labels
        (["O", "B-PER", "MISC"], False),  # one label outside the scheme
        (["o", "b-per", "i-per"], False),
    ],
)
def test_which_label_sets_are_entity_tags(names, tagged):
    assert is_entity_tagging(names) is tagged


def test_other_labels_keep_the_word_metrics_of_before():
    names = ["DET", "NOUN", "VERB"]
    pred = eval_pred(names, [(["DET", "NOUN", "VERB"], ["DET", "VERB", "VERB"]), (["NOUN", "VERB"], ["NOUN", "VERB"])])
    compute = token_metrics(names)
    assert not compute.entity_level
    assert compute(pred) == compute_token_metrics(pred)
    assert set(compute(pred)) == {"accuracy", "macro_f1"}


def test_without_seqeval_a_warning_and_the_word_metrics(monkeypatch, caplog):
    for name in ["seqeval", *(m for m in sys.modules if m.startswith("seqeval."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import seqeval...` now raises ImportError
    monkeypatch.setitem(sys.modules, "seqeval.metrics.sequence_labeling", None)
    pred = eval_pred(CONLL, [(["B-PER", "I-PER", "O"], ["B-PER", "O", "O"])])
    with caplog.at_level(logging.WARNING, logger="scratchformer.training.library.metrics"):
        compute = token_metrics(CONLL)
        first, second = compute(pred), compute(pred)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'pip install "scratchformer[ner]"' in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert not compute.entity_level
    assert first == second == compute_token_metrics(pred) and "f1" not in first


PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = [["paris"], ["new", "york"], ["rome"], ["san", "jose"]]


def tagged_sentence(i: int) -> dict:
    person, place = PEOPLE[i % 4], PLACES[(i // 4) % 4]
    words = [person, "went", "to", *place, "today"]
    tags = ["B-PER", "O", "O", "B-LOC"] + ["I-LOC"] * (len(place) - 1) + ["O"]
    return {"tokens": words, "ner_tags": tags}


def test_finetune_reports_entity_f1_keeps_the_best_by_it_and_writes_it_down(tmp_path):
    rows = [tagged_sentence(i) for i in range(40)]
    for name, part in (("train", rows[:32]), ("validation", rows[32:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    tokenizer = train_bpe([" ".join(r["tokens"]) for r in rows], vocab_size=300, show_progress=False,
                          model_max_length=32)  # fmt: skip
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    args = FinetuneArguments(model=str(tmp_path / "base"), task="token-classification",
                             train_files=[str(tmp_path / "train.jsonl")],
                             validation_files=[str(tmp_path / "validation.jsonl")])  # fmt: skip
    training = TrainingArguments(
        output_dir=str(tmp_path / "ner"), use_cpu=True, report_to="none", disable_tqdm=True,
        num_train_epochs=2, per_device_train_batch_size=16, learning_rate=5e-3, seed=0,
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy",  # what `scratchformer finetune` sets for token-classification
    )  # fmt: skip
    results = finetune(args, training)

    assert results["labels"] == ["B-LOC", "B-PER", "I-LOC", "O"]
    assert results["metric_for_best_model"] == "f1" and results["best_checkpoint"]
    assert training.metric_for_best_model == "accuracy"  # the caller's arguments are left alone
    evaluations = [r for r in results["log_history"] if "eval_loss" in r]
    assert len(evaluations) == 3 and all("eval_f1" in r for r in evaluations)  # 2 epochs + the final one
    written = json.loads((tmp_path / "ner" / RESULTS_FILE).read_text())
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_macro_f1"):
        assert 0.0 <= written["eval"][key] <= 1.0, key
    assert written["eval"]["eval_f1"] == results["eval"]["eval_f1"]
    card = (tmp_path / "ner" / "README.md").read_text()
    assert f"| validation entity F1 (micro, seqeval) | {results['eval']['eval_f1']:.4f} |" in card
    assert "| validation accuracy (per word) |" in card


def test_accuracy_and_macro_f1_are_scikit_learns():
    """Against scikit-learn (installed with seqeval) on random labels, where some class occurs only among
    the predictions and another only among the references: macro-F1 over the classes in either array."""
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for n, classes in ((1, 2), (2, 3), (7, 3), (50, 6), (200, 4)):
        predictions, references = rng.integers(0, classes, n), rng.integers(1, classes + 1, n)
        metrics = accuracy_and_macro_f1(predictions, references)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(references, predictions))
        assert metrics["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert accuracy_and_macro_f1([3], [3]) == {"accuracy": 1.0, "macro_f1": 1.0}
    # Class 0 predicted twice, right once (tp 1, fp 1, fn 0): F1 2/3; class 1: tp 1, fp 0, fn 1: 2/3.
    assert accuracy_and_macro_f1([0, 0, 1], [0, 1, 1])["macro_f1"] == pytest.approx(2 / 3)
    empty = accuracy_and_macro_f1(np.array([]), np.array([]))
    assert set(empty) == {"accuracy", "macro_f1"} and all(np.isnan(v) for v in empty.values())


def test_classification_metrics_read_the_argmax_of_the_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    labels = np.array([1, 0, 1, 1])
    expected = accuracy_and_macro_f1(np.array([1, 0, 2, 1]), labels)
    assert expected["accuracy"] == 0.75
    assert compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == expected
    # A model that also returns hidden states hands Trainer a tuple: the logits come first.
    both = EvalPrediction(predictions=(logits, np.zeros((4, 2))), label_ids=labels)
    assert compute_classification_metrics(both) == expected
