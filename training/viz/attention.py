"""Attention maps: softmax(QK^T/sqrt(K) + mask) of every head for one text, as numbers, a grid of
heatmaps, and a self-contained interactive HTML page (hover a token to see where it looks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError

from .common import import_matplotlib, new_figure, select_indices, text_stack, token_labels


@torch.no_grad()
def attention_maps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    max_tokens: int | None = None,
    add_special_tokens: bool = True,
) -> tuple[list[str], np.ndarray]:
    """(token labels, weights[layer, head, query, key]): softmax(QKᵀ/√K + mask) of every head for
    one text. Row i is how query token i spreads its attention over the keys, so rows sum to 1 and,
    in a decoder, everything right of the diagonal is 0. Maps come from the hand-written eager path
    (`output_attentions=True`), whatever kernel the model runs with otherwise. For an
    encoder-decoder these are the encoder's (bidirectional) maps."""
    base = text_stack(model)
    ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"]
    limit = getattr(base.config, "max_position_embeddings", None)
    if getattr(base.config, "position_embedding", None) == "rope":
        limit = None  # rotary angles exist at every position
    for cap in (max_tokens, limit):
        if cap is not None and ids.shape[1] > cap:
            ids = ids[:, :cap]
    if ids.shape[1] == 0:
        raise UserError("The text encodes to no tokens: give some text to look at.")
    was_training = base.training
    base.eval()  # dropout off: the maps of one text must not change from run to run
    try:
        device = next(base.parameters()).device
        out = base(input_ids=ids.to(device), output_attentions=True)
    finally:
        base.train(was_training)
    maps_NHLM = torch.stack([probs_BHLM[0] for probs_BHLM in out.attentions]).float().cpu().numpy()
    return token_labels(tokenizer, ids[0].tolist()), maps_NHLM


def _is_causal(maps: np.ndarray) -> bool:
    # The additive mask is the dtype's minimum, so masked weights are exactly 0 after softmax.
    return bool(np.all(np.triu(maps, k=1) == 0.0))


def plot_attention(
    tokens: Sequence[str],
    maps: np.ndarray,
    layer: int | None = None,
    head: int | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmaps of `maps[layer, head, query, key]` with the tokens on both axes.

    Both given: one large map (weights printed in the cells when the text is short). Only `layer`:
    that layer's heads side by side. Only `head`: that head down the layers. Neither: the grid of
    every layer (rows) and head (columns), the overview in which the heads' specialisations
    (previous token, first token, same word...) stand out. In a decoder the masked future is grey."""
    maps = np.asarray(maps)
    n_layers, n_heads, L, _ = maps.shape
    if len(tokens) != L:
        raise ValueError(f"{len(tokens)} token labels for maps over {L} tokens.")
    layers, heads = select_indices(n_layers, layer, "layer"), select_indices(n_heads, head, "head")
    rows, cols = len(layers), len(heads)
    causal = _is_causal(maps)
    matplotlib = import_matplotlib()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")

    single = rows * cols == 1
    # Labels on every panel when they fit, else only on the grid's outer edge.
    label_all = single or (rows * cols <= 4 and L <= 24)
    # Past what fits, every k-th token keeps its label (never none: a map without tokens reads as noise).
    every = max(1, -(-L // (80 if single else 40)))
    ticks = list(range(0, L, every))
    labels = [tokens[i] for i in ticks]
    shown = len(ticks)
    fontsize = (10 if single else 9) if shown <= 24 else 7 if shown <= 48 else 5
    panel = max(5.0, 0.3 * min(L, 80) + 1.5) if single else (2.2 if L <= 16 else 2.8 if L <= 32 else 3.4)
    label_room = 0.07 * max((len(t) for t in labels), default=1) * fontsize / 9
    fig = new_figure(cols * panel + label_room + 1.2, rows * panel + label_room + 0.8)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))

    image = None
    for r, li in enumerate(layers):
        for c, hi in enumerate(heads):
            ax = axes[r, c]
            weights = maps[li, hi]
            if causal:
                weights = np.ma.masked_where(np.triu(np.ones_like(weights, dtype=bool), k=1), weights)
            image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            if not single:
                ax.set_title(f"layer {li}, head {hi}", fontsize=9)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            left, bottom = label_all or c == 0, label_all or r == rows - 1
            ax.set_xticklabels(labels if bottom else [], rotation=90, fontsize=fontsize)
            ax.set_yticklabels(labels if left else [], fontsize=fontsize)
            ax.tick_params(length=0)
            if single and L <= 14:  # numbers in the cells: the softmax rows can be checked by eye
                for i in range(L):
                    for j in range(i + 1 if causal else L):
                        w = maps[li, hi, i, j]
                        ax.text(
                            j,
                            i,
                            f"{w:.2f}"[1:] if w < 1 else "1",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if w > 0.6 else "#333333",
                        )
            if label_all and r == rows - 1:
                ax.set_xlabel("key token (attended to)", fontsize=9)
    if label_all:
        for ax in axes[:, 0]:
            ax.set_ylabel("query token (attending)", fontsize=9)
    else:  # one label per figure, not per panel
        fig.supxlabel("key token (attended to)", fontsize=10)
        fig.supylabel("query token (attending)", fontsize=10)

    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6 if rows > 1 else 0.9, pad=0.02)
    bar.set_label("attention weight (each row sums to 1)")
    kind = "causal: grey = masked future" if causal else "bidirectional"
    if every > 1:
        kind += f"; one token in {every} labelled"
    if title is None:
        title = f"Attention, layer {layers[0]}, head {heads[0]}" if single else f"Attention weights ({kind})"
    fig.suptitle(title, fontsize=13)
    if single:
        axes[0, 0].set_title(kind, fontsize=9, color="#555555")
    return fig


def most_specialised_head(maps: np.ndarray) -> tuple[int, int, str]:
    """(layer, head, why) of the head that does the most distinctive thing on this text, by the
    scores of library/head_scores.py: the lowest entropy among heads that are not parked on the first
    token (a sink is the no-op a head falls back on, not a specialisation), or the lowest entropy of
    all when every head is a sink. The mean over heads, the old default, blurs exactly this away."""
    from scratchformer.training.library.head_scores import entropy_scores, first_token_scores

    entropy, first = entropy_scores(maps), first_token_scores(maps)
    candidates = np.where(first < 0.5, entropy, np.inf)
    if np.isfinite(candidates).any():
        layer, head = np.unravel_index(int(candidates.argmin()), candidates.shape)
        why = (f"the lowest entropy ({entropy[layer, head]:.2f}; 1 is uniform) of the heads that do not park their "
               "attention on the first token")
    else:
        layer, head = np.unravel_index(int(entropy.argmin()), entropy.shape)
        why = ("every head parks its attention on the first token; this one has the lowest entropy "
               f"({entropy[layer, head]:.2f})")
    return int(layer), int(head), why


def attention_html(tokens: Sequence[str], maps: np.ndarray, title: str = "Attention", note: str | None = None) -> str:
    """A self-contained HTML page (inline data, style and script; no network): every head at once
    (click one), the chosen head as a head view in the spirit of bertviz (lines from each token to the
    tokens it attends to) and as a matrix with a colour legend, and the text shaded by where a hovered
    token looks. It opens on `most_specialised_head`, saying why. `note` (e.g. that the text was cut)
    is shown above everything."""
    from scratchformer.training.library.head_scores import entropy_scores, first_token_scores, previous_token_scores

    from .common import page

    maps = np.asarray(maps)
    n_layers, n_heads, L, _ = maps.shape
    layer, head, why = most_specialised_head(maps)

    def table(scores: np.ndarray) -> list[list[float]]:
        return [[round(float(v), 4) for v in row] for row in scores]

    payload = {
        "tokens": list(tokens),
        "maps": np.round(maps.astype(np.float64), 4).tolist(),
        "layers": n_layers,
        "heads": n_heads,
        "causal": _is_causal(maps),
        "scores": {"previous_token": table(previous_token_scores(maps)), "first_token": table(first_token_scores(maps)),
                   "entropy": table(entropy_scores(maps))},
        "start": {"layer": layer, "head": head, "reason": why},
        "truncated": note,
    }  # fmt: skip
    return page("attention.html", title, json.dumps(payload, ensure_ascii=True, separators=(",", ":")))
