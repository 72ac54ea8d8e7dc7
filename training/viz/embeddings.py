"""The input embedding matrix: nearest tokens by cosine similarity, and a PCA picture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError

from .common import base_of, new_figure, token_labels


def embedding_matrix(model: PreTrainedModel) -> np.ndarray:
    """The input embeddings, (V, C): row v is the vector token v enters the model as."""
    return base_of(model).get_input_embeddings().weight.detach().float().cpu().numpy()


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


# The fixed background the projection is fitted on: the first this many ordinary (non-special) ids.
# In a byte-level BPE vocabulary those are the 256 bytes and the earliest merges, the most frequent
# pieces, so the axes are the vocabulary's main directions, the same whichever tokens are drawn.
BACKGROUND_TOKENS = 4096


def background_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int, limit: int = BACKGROUND_TOKENS) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(vocab_size) if i not in special][:limit]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embedding_pca(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, words: Sequence[str | int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, coords (N, 2), explained variance ratio (2,)): the chosen tokens' embeddings
    projected onto the two main directions of a fixed background set of the vocabulary
    (`BACKGROUND_TOKENS`, PCA via SVD of their centred unit vectors). Unit vectors, because the
    neighbours are ranked by cosine; a fixed background, because axes fitted to the few tokens drawn
    would change with them and stretch their differences (what once made 2-D distances contradict
    the ranking). The explained ratios are the background's."""
    ids = list(dict.fromkeys(_as_id(tokenizer, w) for w in words))
    if len(ids) < 2:
        raise UserError("A projection needs at least two distinct tokens.")
    emb_VC = embedding_matrix(model).astype(np.float64)
    centre, _, axes, explained = _projection(_unit(emb_VC[background_ids(tokenizer, len(emb_VC))]))
    return token_labels(tokenizer, ids), (_unit(emb_VC[ids]) - centre) @ axes.T, explained


def plot_embedding_pca(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str | int],
    highlight: str | int | None = None,
    title: str | None = None,
) -> Figure:
    """The chosen tokens on the vocabulary's two main directions (`embedding_pca`), over a faint
    cloud of the background tokens; with `highlight`, beside it the cosine similarity of each token
    to the highlighted one in all C dimensions: the ranking itself, which a 2-D picture can only
    hint at."""
    labels, coords, explained = embedding_pca(model, tokenizer, words)
    marked = token_labels(tokenizer, [_as_id(tokenizer, highlight)])[0] if highlight is not None else None
    emb_VC = embedding_matrix(model).astype(np.float64)
    background = _unit(emb_VC[background_ids(tokenizer, len(emb_VC))])
    _, cloud, _, _ = _projection(background)
    fig = new_figure(12.5 if marked else 8.0, 6.2)
    if marked:
        ax_rank, ax = fig.subplots(1, 2, width_ratios=[1, 1.7])
        ids = list(dict.fromkeys(_as_id(tokenizer, w) for w in words))
        unit = _unit(emb_VC[ids])
        sims = unit @ _unit(emb_VC[_as_id(tokenizer, highlight)])
        order = np.argsort(-sims, kind="stable")
        ax_rank.barh(range(len(ids)), sims[order], color=["#d62728" if labels[i] == marked else "#1f77b4"
                                                            for i in order])  # fmt: skip
        ax_rank.set_yticks(range(len(ids)), [labels[i] for i in order], fontsize=9)
        ax_rank.invert_yaxis()
        ax_rank.set_xlabel(f"cosine similarity to {marked!r} (all {emb_VC.shape[1]} dimensions)")
        ax_rank.set_xlim(min(0.0, float(sims.min()) - 0.05), 1.05)
        ax_rank.grid(alpha=0.3, axis="x")
        ax_rank.set_title("The ranking", fontsize=11)
    else:
        ax = fig.add_subplot()
    ax.scatter(cloud[:, 0], cloud[:, 1], s=4, color="#cccccc", label=f"{len(cloud)} background tokens", zorder=1)
    colors = ["#d62728" if label == marked else "#1f77b4" for label in labels]
    ax.scatter(coords[:, 0], coords[:, 1], c=colors, s=30, zorder=2)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the background's variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of the background's variance)")
    _place_labels(fig, ax, coords, labels, ["#d62728" if label == marked else "#222222" for label in labels])
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)  # "best" would search 4096 background points
    ax.set_title(f"Unit embeddings on the vocabulary's 2 main directions (of {emb_VC.shape[1]}): nearness here "
                 "is a hint, the cosine is the measure", fontsize=10)  # fmt: skip
    fig.suptitle(title or f"Input embeddings of {len(labels)} tokens", fontsize=12)
    return fig


def _projection(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre, coords (N, 2), axes (2, C), explained variance ratio (2,)): PCA of `rows` by SVD."""
    centre = rows.mean(axis=0)
    _, s, vt = np.linalg.svd(rows - centre, full_matrices=False)
    n = min(2, len(s))
    axes, explained = np.zeros((2, rows.shape[1])), np.zeros(2)
    axes[:n] = vt[:n]
    explained[:n] = (s**2 / max(float((s**2).sum()), 1e-12))[:n]
    return centre, (rows - centre) @ axes.T, axes, explained


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
