"""Corpus BLEU against values computed by hand (and Papineni et al.'s own clipping example)."""

import math

import pytest

from scratchformer.training.library.bleu import OUR_SIGNATURE, corpus_bleu, exact_match, sacrebleu_score


def test_identical_corpus_scores_100():
    refs = ["the cat is on the mat", "there is a cat on the mat"]
    assert corpus_bleu(refs, refs)["bleu"] == pytest.approx(100.0)


def test_clipped_unigram_precision_of_the_paper():
    # Papineni et al. 2002, section 2.1: "the" x7 against a reference with two "the"s -> 2/7.
    result = corpus_bleu(["the the the the the the the"], ["the cat is on the mat"], max_order=1)
    assert result["precisions"][0] == pytest.approx(100 * 2 / 7)


def test_hand_computed_corpus_with_brevity_penalty():
    # Matches summed over the corpus: 1-grams 10/11, 2-grams 7/9, 3-grams 4/7, 4-grams 2/5;
    # 11 hypothesis tokens against 13 reference tokens -> BP = exp(1 - 13/11).
    hyps = ["the cat sat on the mat", "a b c d e"]
    refs = ["the cat is on the mat", "a b c d e f g"]
    expected = math.exp(1 - 13 / 11) * (10 / 11 * 7 / 9 * 4 / 7 * 2 / 5) ** 0.25
    result = corpus_bleu(hyps, refs)
    assert result["bleu"] == pytest.approx(100 * expected)
    assert result["bp"] == pytest.approx(math.exp(1 - 13 / 11))


def test_no_four_gram_match_is_zero_unless_smoothed():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"])["bleu"] == 0.0
    smoothed = corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"], smooth=True)["bleu"]
    # add-one on n > 1: 5/6, 4/6, 2/5, 1/4
    assert smoothed == pytest.approx(100 * (5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_empty_hypotheses_and_exact_match():
    assert corpus_bleu([""], ["a b c d"])["bleu"] == 0.0
    assert exact_match(["12 3", "x"], ["12 3 ", "y"]) == 50.0
    with pytest.raises(ValueError, match="one reference each"):
        corpus_bleu(["a"], [])


def test_chrf_scores_what_bleu_cannot_see():
    """A words-to-digits model whose targets are two characters: all right, BLEU 0 (no 4-gram), chrF 100."""
    from scratchformer.training.library.bleu import corpus_chrf

    hyps = refs = ["4 7", "1 2", "9"]
    assert corpus_bleu(hyps, refs)["bleu"] == 0.0 and exact_match(hyps, refs) == 100.0
    assert corpus_chrf(hyps, refs) == pytest.approx(100.0)
    assert corpus_chrf(["a b"], ["ab"]) == pytest.approx(100.0)  # whitespace is not a character of chrF
    assert corpus_chrf(["xyz"], ["abc"]) == 0.0


def test_chrf_by_hand():
    from scratchformer.training.library.bleu import corpus_chrf

    # "ab" against "abc": 1-grams 2 of 2 hypothesis / 2 of 3 reference; 2-grams 1 of 1 / 1 of 2; no 3-gram
    # in the hypothesis, so orders 1 and 2 count: P = (1 + 1) / 2, R = (2/3 + 1/2) / 2 = 7/12,
    # F2 = 5 P R / (4 P + R) = 35/55.
    assert corpus_chrf(["ab"], ["abc"]) == pytest.approx(100 * 35 / 55)
    # Counts are summed over the corpus before the ratios: "ab"/"abc" with "abc"/"abc" gives
    # 1-grams 5/5 and 5/6, 2-grams 3/3 and 3/4, 3-grams 1/1 and 1/2.
    p, r = 1.0, (5 / 6 + 3 / 4 + 1 / 2) / 3
    assert corpus_chrf(["ab", "abc"], ["abc", "abc"]) == pytest.approx(100 * 5 * p * r / (4 * p + r))
    with pytest.raises(ValueError, match="one reference each"):
        corpus_chrf(["a"], ["a", "b"])


def test_the_reported_bleu_is_sacrebleus_with_its_signature():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = ["the cat sat on the mat.", "a b c d e"], ["the cat is on the mat.", "a b c d e f g"]
    score, signature = sacrebleu_score(hyps, refs)
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert signature == f"sacrebleu nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    # Not ours: sacrebleu splits the final "." off "mat." (13a) and smooths, so the numbers differ.
    assert score != pytest.approx(corpus_bleu(hyps, refs)["bleu"])


def test_without_sacrebleu_ours_is_reported_and_signed_as_ours(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # an import of it now fails, as when not installed
    monkeypatch.setitem(sys.modules, "sacrebleu.metrics", None)
    hyps, refs = ["the cat sat on the mat", "a b c d e"], ["the cat is on the mat", "a b c d e f g"]
    score, signature = sacrebleu_score(hyps, refs)
    assert score == corpus_bleu(hyps, refs)["bleu"]
    assert signature.startswith(OUR_SIGNATURE) and "pip install 'scratchformer[bleu]'" in signature
