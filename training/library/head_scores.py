"""What each attention head does, as numbers: the scores interpretability papers use to name heads,
defined once, on fixed probes, so that a training recipe, a test and a picture's caption all mean
the same thing by "a previous-token head".

Per layer and head, from the attention maps A[query, key] (rows sum to 1):

- `entropy`: -sum_k A[q, k] log A[q, k] / log(keys q may see), averaged over the rows that see at
  least two keys. 1 is uniform over everything the causal mask allows, 0 is one key. Normalising
  by the row's length lets early and late rows (2 keys vs 256) count alike (Clark et al. 2019,
  "What Does BERT Look At?", section 3.2, use the unnormalised entropy).
- `previous_token`: mean A[q, q-1]: how much each token reads the one before it (Clark et al. 2019;
  Olsson et al. 2022's "previous token heads", half of the induction circuit).
- `first_token`: mean A[q, 0]: weight parked on the first token, which carries no content for most
  queries: an "attention sink" (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
  Sinks"), the no-op a head falls back on when it has nothing to look for.
- `induction`: on a random token sequence repeated twice (r1..rT r1..rT), the mean attention from
  the second occurrence of a token to the token that followed its first occurrence, A[T + k, k + 1]:
  the "[A][B] ... [A] -> [B]" pattern of induction heads (Olsson et al. 2022, "In-context Learning
  and Induction Heads", and the score TransformerLens computes). Random tokens carry no meaning, so
  only copying from context can predict the repeat.

And per model, from the same repeated sequence, the `in_context` score: the mean loss (nats) on the
first copy minus the mean loss on the repeat (Olsson et al. 2022 compare the loss late in a context
with the loss early in it). About 0 for a model that cannot use its context; it approaches the
first copy's loss (≈ log V for random tokens) when the repeat is predicted perfectly.

A uniform head over L keys scores entropy 1, previous-token and first-token about H_L / L (0.02 on
256 tokens), induction about 1 / (T + k) (0.02 for T = 50): the chance levels to read figures against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The fixed text probe: prose of the embedded corpus's kind, the same for every model and tokenizer.
PROBE_TEXT = (
    "The assert statement raises an AssertionError when its expression is false. A list is a mutable "
    "sequence; a tuple is an immutable one. The for statement iterates over the items of any sequence, "
    "in the order that they appear in the sequence. When a function is called, a new local namespace is "
    "created for it, and the arguments are bound to its parameter names. The with statement wraps the "
    "execution of a block with methods defined by a context manager, so that common try, except and "
    "finally usage patterns can be encapsulated for convenient reuse. A class definition creates a new "
    "class object, and the names defined in its body become the attributes of that class. The import "
    "statement finds a module, loads and initializes it if necessary, and defines a name in the local "
    "namespace for the scope where the import statement occurs."
)
TEXT_TOKENS = 256  # at most this many tokens of PROBE_TEXT are scored
INDUCTION_PERIOD = 50  # T: random tokens per copy (shorter when the model's positions allow fewer)
INDUCTION_SEQUENCES = 8  # copies of the probe, averaged: one random sequence is noisy
INDUCTION_SEED = 0


def _rows_with_keys(maps: np.ndarray) -> np.ndarray:
    """Number of keys each query row may see: q + 1 under a causal mask, every key otherwise."""
    L = maps.shape[-2]
    causal = bool(np.all(np.triu(maps, k=1) == 0.0))
    return np.arange(1, L + 1) if causal else np.full(L, maps.shape[-1])


def entropy_scores(maps: np.ndarray) -> np.ndarray:
    """[layers, heads] mean normalised entropy of maps[..., query, key], over rows with >= 2 keys."""
    maps = np.asarray(maps, dtype=np.float64)
    seen = _rows_with_keys(maps)
    rows = seen >= 2
    plogp = np.where(maps > 0, maps * np.log(np.where(maps > 0, maps, 1.0)), 0.0)
    entropy = -plogp.sum(-1)[..., rows] / np.log(seen[rows])
    return entropy.mean(-1)


def previous_token_scores(maps: np.ndarray) -> np.ndarray:
    """[layers, heads] mean A[q, q - 1] over q >= 1."""
    maps = np.asarray(maps, dtype=np.float64)
    return np.diagonal(maps, offset=-1, axis1=-2, axis2=-1).mean(-1)


def first_token_scores(maps: np.ndarray) -> np.ndarray:
    """[layers, heads] mean A[q, 0] over q >= 1 (row 0 has nothing else to look at)."""
    maps = np.asarray(maps, dtype=np.float64)
    return maps[..., 1:, 0].mean(-1)


def induction_scores(maps: np.ndarray, period: int, offset: int = 1) -> np.ndarray:
    """[layers, heads] mean A[offset + T + k, offset + k + 1] for k = 0..T-2: from each token of the
    second copy to the token after its first occurrence. `offset` is the number of tokens before the
    first copy (1 for a leading <s>). Extra leading axes (a batch of probes) are averaged too."""
    maps = np.asarray(maps, dtype=np.float64)
    q = offset + period + np.arange(period - 1)
    k = offset + 1 + np.arange(period - 1)
    stripe = maps[..., q, k]
    score = stripe.mean(-1)
    while score.ndim > 2:  # average a batch of probes: [batch, layers, heads] -> [layers, heads]
        score = score.mean(0)
    return score


@dataclass
class HeadScores:
    """Scores per [layer][head] (nested lists, JSON-ready) and the model's in-context losses."""

    entropy: list[list[float]]
    previous_token: list[list[float]]
    first_token: list[list[float]]
    induction: list[list[float]]
    loss_first_copy: float
    loss_repeat: float
    text_tokens: int
    induction_period: int

    @property
    def in_context(self) -> float:
        return self.loss_first_copy - self.loss_repeat

    def best(self, score: str) -> tuple[int, int, float]:
        """(layer, head, value) of the head with the highest `score` (lowest for entropy)."""
        table = np.asarray(getattr(self, score))
        flat = table.argmin() if score == "entropy" else table.argmax()
        layer, head = np.unravel_index(flat, table.shape)
        return int(layer), int(head), float(table[layer, head])

    def summary(self) -> dict[str, float | int]:
        """The few numbers a run logs: mean entropy, the strongest head of each kind, in-context loss."""
        out: dict[str, float | int] = {"heads_entropy_mean": round(float(np.mean(self.entropy)), 4)}
        for score in ("previous_token", "first_token", "induction"):
            layer, head, value = self.best(score)
            out[f"heads_{score}_max"] = round(value, 4)
            out[f"heads_{score}_layer"], out[f"heads_{score}_head"] = layer, head
        out["in_context_score"] = round(self.in_context, 4)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "in_context": self.in_context, "summary": self.summary()}


def text_probe(tokenizer, text: str = PROBE_TEXT, max_tokens: int = TEXT_TOKENS) -> torch.Tensor:
    """[1, L] ids of the probe text, as the model sees text (with the tokenizer's special tokens)."""
    # verbose=False: the text is longer than a small model's context on purpose (it is cut here), which
    # transformers would otherwise warn about in the middle of a training run's log.
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][:, :max_tokens]
    if ids.shape[1] < 2:
        raise ValueError("The probe text encodes to fewer than 2 tokens: nothing for a head to attend to.")
    return ids


def induction_probe(
    vocab_size: int,
    period: int = INDUCTION_PERIOD,
    sequences: int = INDUCTION_SEQUENCES,
    bos_token_id: int | None = None,
    exclude: tuple[int, ...] = (),
    seed: int = INDUCTION_SEED,
    token_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """[sequences, (1) + 2T] ids: (<s>) r1..rT r1..rT, the r drawn uniformly (seeded) from the
    vocabulary (or from `token_ids`, the tokens a model was trained on) without `exclude` (special
    tokens), distinct within a sequence so that every token's "first occurrence" is unique."""
    pool = range(vocab_size) if token_ids is None else token_ids
    allowed = torch.tensor(sorted(set(pool) - set(exclude)))
    if len(allowed) < period:
        raise ValueError(f"A vocabulary of {len(allowed)} usable tokens cannot give {period} distinct ones.")
    generator = torch.Generator().manual_seed(seed)
    rows = [allowed[torch.randperm(len(allowed), generator=generator)[:period]] for _ in range(sequences)]
    ids = torch.stack(rows)
    ids = torch.cat([ids, ids], dim=1)
    if bos_token_id is not None:
        ids = torch.cat([torch.full((sequences, 1), bos_token_id), ids], dim=1)
    return ids


@torch.no_grad()
def head_scores(
    model,
    tokenizer,
    text: str = PROBE_TEXT,
    max_text_tokens: int = TEXT_TOKENS,
    period: int = INDUCTION_PERIOD,
    sequences: int = INDUCTION_SEQUENCES,
    token_ids: Sequence[int] | None = None,
    text_ids: torch.Tensor | None = None,
) -> HeadScores:
    """Every head's scores on the fixed probes (see the module). Any decoder with
    `output_attentions=True` works; the maps come from the model's eager path. The model's mode is
    restored afterwards (scores are taken in eval mode: no dropout). The probes are cut to the model's
    `max_position_embeddings`.

    A model trained on a few tokens only (`scratchformer pretrain --synthetic_data`) is probed with
    those: `token_ids` for the induction probe (its period at most their number), `text_ids` ([1, L])
    in place of the text."""
    config = model.config
    # Within the positions the model was built for (pretraining sets them to its block size): past
    # them a rotary model extrapolates and a learned or sinusoidal table ends.
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None:
        max_text_tokens = min(max_text_tokens, limit)
        period = min(period, (limit - 1) // 2)
    if token_ids is not None:
        period = min(period, len(set(token_ids)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        ids = (text_probe(tokenizer, text, max_text_tokens) if text_ids is None else text_ids[:, :max_text_tokens])
        ids = ids.to(device)
        maps = _maps(model, ids)[:, 0]  # [layers, heads, L, L]
        bos = tokenizer.bos_token_id
        special = tuple(i for i in tokenizer.all_special_ids if i is not None)
        vocab = min(len(tokenizer), getattr(config, "vocab_size", len(tokenizer)))
        rep = induction_probe(vocab, period, sequences, bos, special, token_ids=token_ids).to(device)
        out = model(input_ids=rep, output_attentions=True, use_cache=False)
        rep_maps = torch.stack(out.attentions, dim=1).float().cpu().numpy()  # [batch, layers, heads, L, L]
        offset = 0 if bos is None else 1
        # position t predicts token t+1; the first token of each copy cannot be predicted from context.
        nll = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), rep[:, 1:], reduction="none")
        first = nll[:, offset : offset + period - 1].mean().item()
        repeat = nll[:, offset + period : offset + 2 * period - 1].mean().item()
    finally:
        model.train(was_training)
    return HeadScores(
        entropy=_rounded(entropy_scores(maps)),
        previous_token=_rounded(previous_token_scores(maps)),
        first_token=_rounded(first_token_scores(maps)),
        induction=_rounded(induction_scores(rep_maps, period, offset)),
        loss_first_copy=round(first, 4),
        loss_repeat=round(repeat, 4),
        text_tokens=int(ids.shape[1]),
        induction_period=period,
    )


def _maps(model, ids: torch.Tensor) -> np.ndarray:
    out = model(input_ids=ids, output_attentions=True, use_cache=False)
    return torch.stack(out.attentions).float().cpu().numpy()  # [layers, batch, heads, L, L]


def _rounded(table: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in table]


def chance_previous_token(length: int) -> float:
    """previous_token (and first_token) of a uniform causal head over `length` tokens: mean 1/(q+1)."""
    return sum(1.0 / (q + 1) for q in range(1, length)) / (length - 1)


__all__ = [
    "HeadScores",
    "PROBE_TEXT",
    "chance_previous_token",
    "entropy_scores",
    "first_token_scores",
    "head_scores",
    "induction_probe",
    "induction_scores",
    "previous_token_scores",
    "text_probe",
]
