"""The input embedding matrix: nearest tokens by cosine similarity, and a PCA picture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError

from .common import _base, _figure, token_labels


def embedding_matrix(model: PreTrainedModel) -> np.ndarray:
    """The input embeddings, (V, C): row v is the vector token v enters the model as."""
    return _base(model).get_input_embeddings().weight.detach().float().cpu().numpy()


def token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of `word` as one token. A byte-level vocabulary usually has two: "cat" at the start
    of a text and " cat" inside one; the mid-sentence form wins when it exists. A leading '␣' or
    space asks for that form explicitly; raw vocabulary entries ('Ġcat', '<s>') work too."""
    if word.startswith("␣"):
        word = " " + word[1:]
    candidates = [word] if word.startswith(" ") else [" " + word, word]
    for candidate in candidates:
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    vocab = tokenizer.get_vocab()
    if word in vocab:
        return vocab[word]
    pieces = token_labels(tokenizer, tokenizer.encode(word, add_special_tokens=False))
    raise UserError(
        f"{word!r} is not a single token in this vocabulary; it splits into {pieces}. "
        "Ask for one of those pieces instead."
    )


def nearest_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, word: str | int, k: int = 10
) -> tuple[list[int], np.ndarray]:
    """`nearest_tokens` as (ids, similarities), for code that wants to feed the ids on."""
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}.")
    query = _as_id(tokenizer, word)
    emb_VC = embedding_matrix(model)
    unit_VC = emb_VC / np.maximum(np.linalg.norm(emb_VC, axis=1, keepdims=True), 1e-12)
    sims_V = unit_VC @ unit_VC[query]
    order = np.argsort(-sims_V, kind="stable")
    # Exact duplicates also score 1.0; put the query first so the answer never looks shuffled.
    ids = [query] + [int(i) for i in order if i != query][: k - 1]
    return ids, sims_V[ids]


def nearest_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, word: str | int, k: int = 10
) -> list[tuple[str, float]]:
    """The `k` tokens whose input embeddings have the highest cosine similarity to `word`'s (a
    word that is one token, or a token id), best first. The token itself leads at similarity 1.0:
    a check that the lookup is right."""
    ids, sims = nearest_token_ids(model, tokenizer, word, k)
    return [(label, float(sim)) for label, sim in zip(token_labels(tokenizer, ids), sims)]


def _as_id(tokenizer: PreTrainedTokenizerBase, word: str | int) -> int:
    if isinstance(word, (int, np.integer)):
        if not 0 <= word < len(tokenizer):
            raise UserError(f"token id {word} is outside the vocabulary [0, {len(tokenizer)}).")
        return int(word)
    return token_id(tokenizer, word)


def embedding_pca(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, words: Sequence[str | int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, coords (N, 2), explained variance ratio (2,)): the chosen tokens' embeddings
    projected onto their own two main directions of variation (PCA via SVD of the centred rows)."""
    ids = list(dict.fromkeys(_as_id(tokenizer, w) for w in words))
    if len(ids) < 2:
        raise UserError("A projection needs at least two distinct tokens.")
    x_NC = embedding_matrix(model)[ids].astype(np.float64)
    x_NC -= x_NC.mean(axis=0)
    u, s, _ = np.linalg.svd(x_NC, full_matrices=False)
    coords = np.zeros((len(ids), 2))
    n = min(2, len(s))
    coords[:, :n] = u[:, :n] * s[:n]
    explained = np.zeros(2)
    explained[:n] = (s**2 / max(float((s**2).sum()), 1e-12))[:n]
    return token_labels(tokenizer, ids), coords, explained


def plot_embedding_pca(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str | int],
    highlight: str | int | None = None,
    title: str | None = None,
) -> Figure:
    """A scatter of `embedding_pca`: tokens used alike end up near each other."""
    labels, coords, explained = embedding_pca(model, tokenizer, words)
    marked = token_labels(tokenizer, [_as_id(tokenizer, highlight)])[0] if highlight is not None else None
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot()
    colors = ["#d62728" if label == marked else "#1f77b4" for label in labels]
    ax.scatter(coords[:, 0], coords[:, 1], c=colors, s=30)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of the variance)")
    _place_labels(fig, ax, coords, labels, ["#d62728" if label == marked else "#222222" for label in labels])
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of the variance)")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Input embeddings of {len(labels)} tokens, PCA to 2-D")
    return fig


def _place_labels(fig: Figure, ax: Any, coords: np.ndarray, labels: Sequence[str], colors: Sequence[str]) -> None:
    """Annotate each point, trying a few spots around it until the label overlaps none placed
    before: neighbouring tokens sit close together, which is the point of the picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # fixes the layout, so label extents are where they will be drawn
    renderer = fig.canvas.get_renderer()
    spots = [(4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
             (-4, -3, "right", "top"), (0, 8, "center", "bottom"), (0, -8, "center", "top")]  # fmt: skip
    placed = []
    for (x, y), label, color in zip(coords, labels, colors):
        for dx, dy, ha, va in spots:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=10, color=color)  # fmt: skip
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == spots[-1][:2]:
                break
            text.remove()
        placed.append(box)
