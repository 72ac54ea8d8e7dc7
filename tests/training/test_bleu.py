"""Corpus BLEU against values computed by hand (and Papineni et al.'s own clipping example)."""

import math

import pytest

from scratchformer.training.library.bleu import corpus_bleu, exact_match


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
