"""Corpus BLEU (Papineni et al. 2002) and chrF (Popović 2015). The BLEU a run reports is sacrebleu's
(`sacrebleu_score`, with its signature; `pip install 'scratchformer[bleu]'`); the one written out here
is the fallback without it, signed as ours, and the reference the tests check by hand.

BLEU = BP * exp(mean over n=1..4 of log p_n), where p_n is the *corpus* modified n-gram precision:
clipped n-gram matches summed over all sentences, divided by all candidate n-grams. Clipping counts
a candidate n-gram at most as often as it occurs in the reference, so "the the the" earns no more
than the reference's "the"s. BP = exp(1 - r/c) when the candidate corpus (c tokens) is shorter than
the reference corpus (r tokens): precision alone would reward saying little.

Tokenisation is whitespace splitting: scores are comparable only between systems tokenised the same
way (sacrebleu's 13a tokeniser also splits punctuation, so its numbers can differ). Scores are on
sacrebleu's 0-100 scale. With `smooth=True`, zero match counts for n > 1 are replaced as in
Lin & Och (2004) "add-one" smoothing (sacrebleu's "add-k" with k=1), so short sentences score > 0.

BLEU's limit on short outputs: with no 4-gram in the corpus (every target shorter than four words,
"4 7"), p_4 is 0 and so is BLEU, however many outputs are exactly right. chrF does not have that
blind spot: it is the F-score (recall weighted beta = 2 times precision) of character n-grams, n = 1
to 6, whitespace removed, so a two-character target is scored on what it has. Exact match beside
both says how many outputs are right as a whole.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4, smooth: bool = False
) -> dict[str, float | list[float]]:
    """BLEU of `hypotheses` against one reference each. Returns {"bleu", "precisions", "bp",
    "hyp_len", "ref_len"}; precisions in percent, like sacrebleu's."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references: one reference each.")
    matches = [0] * max_order
    totals = [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_tokens, ref_tokens = hyp.split(), ref.split()
        hyp_len += len(hyp_tokens)
        ref_len += len(ref_tokens)
        for n in range(1, max_order + 1):
            hyp_ngrams, ref_ngrams = ngrams(hyp_tokens, n), ngrams(ref_tokens, n)
            matches[n - 1] += sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
            totals[n - 1] += max(0, len(hyp_tokens) - n + 1)

    precisions = []
    for n in range(max_order):
        if smooth and n > 0:
            precisions.append((matches[n] + 1) / (totals[n] + 1))
        else:
            precisions.append(matches[n] / totals[n] if totals[n] else 0.0)
    if hyp_len == 0 or min(precisions) == 0.0:
        bleu = 0.0
    else:
        bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
        bleu = bp * math.exp(sum(math.log(p) for p in precisions) / max_order)
    bp = 0.0 if hyp_len == 0 else (1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len))
    return {
        "bleu": 100.0 * bleu,
        "precisions": [100.0 * p for p in precisions],
        "bp": bp,
        "hyp_len": hyp_len,
        "ref_len": ref_len,
    }


def char_ngrams(text: str, n: int) -> Counter:
    """Character n-grams of `text` with its whitespace removed (chrF's default)."""
    chars = "".join(text.split())
    return Counter(chars[i : i + n] for i in range(len(chars) - n + 1))


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str], char_order: int = 6, beta: float = 2.0
                ) -> float:  # fmt: skip
    """chrF (Popović 2015) of `hypotheses` against one reference each, on a 0-100 scale, computed as
    sacrebleu's CHRF computes it: matched, hypothesis and reference n-gram counts summed over the
    corpus for each n; precision and recall per n averaged over the orders that occur in both; then
    F_beta = (1 + beta^2) P R / (beta^2 P + R)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references: one reference each.")
    stats = [[0, 0, 0] for _ in range(char_order)]  # hypothesis n-grams, reference n-grams, matches
    for hyp, ref in zip(hypotheses, references):
        for n in range(1, char_order + 1):
            hyp_ngrams, ref_ngrams = char_ngrams(hyp, n), char_ngrams(ref, n)
            stats[n - 1][0] += sum(hyp_ngrams.values())
            stats[n - 1][1] += sum(ref_ngrams.values())
            stats[n - 1][2] += sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
    orders = [(h, r, m) for h, r, m in stats if h > 0 and r > 0]
    if not orders:
        return 0.0
    precision = sum(m / h for h, _, m in orders) / len(orders)
    recall = sum(m / r for _, r, m in orders) / len(orders)
    if precision + recall == 0:
        return 0.0
    factor = beta**2
    return 100.0 * (1 + factor) * precision * recall / (factor * precision + recall)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share of hypotheses equal to their reference after stripping surrounding whitespace, in percent."""
    if not hypotheses:
        return 0.0
    return 100.0 * sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(hypotheses)


# What our own BLEU is, in sacrebleu's signature notation, so a reader never takes it for sacrebleu's.
OUR_SIGNATURE = "scratchformer-bleu|nrefs:1|case:mixed|tok:whitespace|smooth:none"
SACREBLEU_MISSING = "sacrebleu is not installed: pip install 'scratchformer[bleu]' for the score papers report"


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """(corpus BLEU, its signature): sacrebleu's (Post 2018: 13a tokens, exponential smoothing; the
    number papers report, and the signature that says how it was computed) when it is installed,
    else ours, signed as ours (whitespace tokens, no smoothing: not comparable with sacrebleu's)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        return float(corpus_bleu(hypotheses, references)["bleu"]), f"{OUR_SIGNATURE} ({SACREBLEU_MISSING})"
    bleu = BLEU()
    score = bleu.corpus_score(list(hypotheses), [list(references)]).score
    return float(score), f"sacrebleu {bleu.get_signature()}"


def sacrebleu_or_ours(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU when it is installed (the number papers report), ours otherwise."""
    return sacrebleu_score(hypotheses, references)[0]


__all__ = ["OUR_SIGNATURE", "char_ngrams", "corpus_bleu", "corpus_chrf", "exact_match", "ngrams",
           "sacrebleu_or_ours", "sacrebleu_score"]
