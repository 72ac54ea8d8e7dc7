"""Generated training data in which a transformer can only lower its loss by learning from its context.

`scratchformer pretrain --synthetic_data in_context_markov` trains on rows of this kind (the setting of
Edelman et al. 2024, "The Evolution of Statistical Induction Heads: In-Context Learning Markov Chains"):

    <s> x1 x2 ... xN    x(t+1) = f(x(t)) with probability FOLLOW, else a symbol drawn uniformly

over a few single-token symbols (the letters A-M), where the successor map f is drawn afresh for every
row. Nothing about f can be memorised across rows, so below the uniform loss the only way down is to
look up, in the row so far, what followed the current symbol the last time: an induction head (Olsson et
al. 2022). It needs a previous-token head in a layer below it (a 2-layer model can build one, a 1-layer
model cannot), and forms late and suddenly: the phase change `scratchformer inspect timeline` draws.

Why not the usual "a random sequence written twice": there the distance from a token's second copy to
its first is fixed by the row (or the period), and a model with rotary positions finds heads that look
back a fixed number of positions long before it finds the induction circuit; trained that way on 2 CPU
cores, the models of benchmarks/results/phase_change_trials.md (and a 1-layer model, which cannot have an
induction head) all scored high on a probe whose period matched, for the wrong reason. Here the distance to
the previous occurrence of a symbol changes with every row and position.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

KINDS = ("in_context_markov",)
SYMBOLS = "ABCDEFGHIJKLM"  # 13 symbols: at 32 tokens a row, each occurs ~2.4 times
FOLLOW = 0.6  # probability that the next symbol is the row's successor of the current one
TRAIN_ROWS = 65_536  # 2 M tokens at 32 a row: more than a few thousand steps of 32 rows see
VALIDATION_ROWS = 512


def symbol_ids(tokenizer, symbols: str = SYMBOLS) -> list[int]:
    """The token id of each symbol; each must be one token of `tokenizer` (a byte-level BPE's base
    alphabet holds every single character)."""
    ids = []
    for s in symbols:
        encoded = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(
                f"the synthetic data's symbol {s!r} is {len(encoded)} tokens of this tokenizer, not one: use a "
                "byte-level BPE tokenizer (the one `scratchformer pretrain` trains)"
            )
        ids.append(encoded[0])
    return ids


def in_context_markov(
    num_rows: int,
    length: int,
    symbols: Sequence[int],
    seed: int,
    bos_token_id: int | None = None,
    follow: float = FOLLOW,
) -> np.ndarray:
    """[num_rows, length] int64 token ids: (<s>) then a Markov chain over `symbols` whose successor
    map is drawn per row (see the module). The same (arguments, seed) give the same rows."""
    if len(symbols) < 2:
        raise ValueError(f"in-context Markov chains need at least 2 symbols, got {len(symbols)}")
    if not 0.0 <= follow <= 1.0:
        raise ValueError(f"follow must be a probability, got {follow}")
    start = int(bos_token_id is not None)
    if length < start + 2:
        raise ValueError(f"rows of {length} tokens hold no transition to learn: give at least {start + 2}")
    rng = np.random.default_rng(seed)
    k = len(symbols)
    successor = rng.integers(0, k, size=(num_rows, k))  # f, per row
    steps = length - start
    drawn = rng.integers(0, k, size=(num_rows, steps))  # the uniform draws (the first symbol is one)
    follows = rng.random((num_rows, steps)) < follow
    x = np.empty((num_rows, steps), dtype=np.int64)
    x[:, 0] = drawn[:, 0]
    rows = np.arange(num_rows)
    for t in range(1, steps):
        x[:, t] = np.where(follows[:, t], successor[rows, x[:, t - 1]], drawn[:, t])
    ids = np.asarray(symbols, dtype=np.int64)[x]
    if start:
        ids = np.concatenate([np.full((num_rows, 1), bos_token_id, dtype=np.int64), ids], axis=1)
    return ids


def synthetic_datasets(kind: str, tokenizer, block_size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation) blocks of `kind` as the packed text path gives them (column "input_ids"),
    each block one row. Validation rows come from a different seed than the training rows."""
    if kind not in KINDS:
        raise ValueError(f"--synthetic_data {kind!r} is not one of {', '.join(KINDS)}")
    symbols = symbol_ids(tokenizer)
    bos = tokenizer.bos_token_id
    train, val = (
        datasets.Dataset.from_dict({"input_ids": in_context_markov(rows, block_size, symbols, s, bos).astype(np.int32)})
        for rows, s in ((TRAIN_ROWS, seed), (VALIDATION_ROWS, seed + 1_000_003))
    )
    return train, val


def fingerprint(kind: str) -> list[dict]:
    """What a synthetic run trains on, for the checkpoint's signature (as `data.data_fingerprint` for text):
    a run resumed with other data, or other generated rows, is refused, naming the difference."""
    return [{"dataset": f"synthetic {kind}", "symbols": SYMBOLS, "follow": FOLLOW, "rows": TRAIN_ROWS}]


def trained_symbols(model_dir: str | os.PathLike, tokenizer) -> list[int] | None:
    """The symbols' ids when the model directory's run trained on generated rows (its
    training_args.json names --synthetic_data), else None: the tokens such a model's probes must use."""
    args_file = Path(model_dir) / "training_args.json"
    try:
        kind = json.loads(args_file.read_text(encoding="utf-8")).get("synthetic_data")
    except (OSError, ValueError, AttributeError):
        return None
    return symbol_ids(tokenizer) if kind in KINDS else None


def describe(kind: str) -> dict[str, str]:
    return {
        "train_data": f"synthetic: {kind} over the symbols {SYMBOLS} (follow {FOLLOW}, a fresh successor map per row)",
        "validation_data": f"synthetic: {VALIDATION_ROWS} rows of the same kind from another seed",
    }


__all__ = [
    "FOLLOW", "KINDS", "SYMBOLS", "describe", "fingerprint", "in_context_markov", "symbol_ids", "synthetic_datasets",
    "trained_symbols",
]
