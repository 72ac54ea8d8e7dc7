"""Attention maps: softmax(QK^T/sqrt(K) + mask) of every head for one text, as numbers, a grid of
heatmaps, and a self-contained interactive HTML page (hover a token to see where it looks)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError

from .common import _figure, _matplotlib, _select, _stack, token_labels


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
    base = _stack(model)
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
    layers, heads = _select(n_layers, layer, "layer"), _select(n_heads, head, "head")
    rows, cols = len(layers), len(heads)
    causal = _is_causal(maps)
    matplotlib = _matplotlib()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")

    single = rows * cols == 1
    # Labels on every panel when they fit, else only on the grid's outer edge.
    label_all = single or (rows * cols <= 4 and L <= 24)
    show_labels = L <= (80 if single else 40)
    fontsize = (10 if single else 9) if L <= 24 else 7 if L <= 48 else 5
    panel = max(5.0, 0.3 * L + 1.5) if single else (2.2 if L <= 16 else 2.8 if L <= 32 else 3.4)
    label_room = 0.07 * max((len(t) for t in tokens), default=1) * fontsize / 9 if show_labels else 0.2
    fig = _figure(cols * panel + label_room + 1.2, rows * panel + label_room + 0.8)
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
            ax.set_xticks(range(L))
            ax.set_yticks(range(L))
            left, bottom = label_all or c == 0, label_all or r == rows - 1
            if show_labels and bottom:
                ax.set_xticklabels(tokens, rotation=90, fontsize=fontsize)
            else:
                ax.set_xticklabels([])
            if show_labels and left:
                ax.set_yticklabels(tokens, fontsize=fontsize)
            else:
                ax.set_yticklabels([])
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
    if title is None:
        title = f"Attention, layer {layers[0]}, head {heads[0]}" if single else f"Attention weights ({kind})"
    fig.suptitle(title, fontsize=13)
    if single:
        axes[0, 0].set_title(kind, fontsize=9, color="#555555")
    return fig


def attention_html(tokens: Sequence[str], maps: np.ndarray, title: str = "Attention") -> str:
    """A self-contained HTML page (inline data, style and script; no network): pick a layer and a
    head (or their mean), hover a token to shade every token by how much it attends to it; click
    to pin. The bertviz idea, without the dependency."""
    maps = np.asarray(maps)
    n_layers, n_heads, L, _ = maps.shape
    payload = {
        "tokens": list(tokens),
        "maps": np.round(maps.astype(np.float64), 4).tolist(),
        "mean": np.round(maps.mean(axis=1).astype(np.float64), 4).tolist(),
        "layers": n_layers,
        "heads": n_heads,
        "causal": _is_causal(maps),
    }
    # Inside <script>, "</" would end the element: escape <, > and & as JSON \\u escapes.
    data = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _HTML_TEMPLATE.replace("%TITLE%", html.escape(title)).replace("%DATA%", data)


_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%TITLE%</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
  .controls { margin: 1em 0; }
  .controls label { margin-right: 1.5em; }
  #text { line-height: 2.6; font-family: ui-monospace, monospace; font-size: 15px; }
  .tok { display: inline-block; padding: 0 3px; margin: 2px 1px; border: 1px solid #ccc;
         border-radius: 3px; cursor: pointer; white-space: pre; }
  .tok.query { outline: 2px solid #d62728; }
  .tok.future { color: #aaa; border-style: dashed; }
  #info { min-height: 4em; font-size: 14px; }
  .hint { color: #666; font-size: 13px; }
</style>
</head>
<body>
<h2>%TITLE%</h2>
<p class="hint">Hover a token: every token is shaded by the weight the hovered (query) token puts on it.
Click a token to pin it. Row sums are 1; in a decoder, tokens to the right are masked (dashed).</p>
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
</div>
<div id="text"></div>
<div id="info"></div>
<script type="application/json" id="data">%DATA%</script>
<script>
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
  const text = document.getElementById("text"), info = document.getElementById("info");
  for (let l = 0; l < data.layers; l++) layerSel.add(new Option(String(l), String(l)));
  headSel.add(new Option("mean of heads", "-1"));
  for (let h = 0; h < data.heads; h++) headSel.add(new Option(String(h), String(h)));
  let pinned = null;
  const spans = data.tokens.map(function (tok, i) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = tok;
    span.addEventListener("mouseenter", function () { if (pinned === null) show(i); });
    span.addEventListener("click", function () { pinned = pinned === i ? null : i; show(i); });
    text.appendChild(span);
    return span;
  });
  function weights(i) {
    const l = Number(layerSel.value), h = Number(headSel.value);
    return h < 0 ? data.mean[l][i] : data.maps[l][h][i];
  }
  function show(i) {
    const w = weights(i);
    spans.forEach(function (span, j) {
      span.style.background = "rgba(31, 119, 180, " + w[j] + ")";
      span.style.color = w[j] > 0.55 ? "white" : "";
      span.title = "weight " + w[j].toFixed(3);
      span.classList.toggle("query", j === i);
      span.classList.toggle("future", data.causal && j > i);
    });
    const top = w.map(function (x, j) { return [x, j]; })
      .filter(function (pair) { return !(data.causal && pair[1] > i); })
      .sort(function (a, b) { return b[0] - a[0]; }).slice(0, 5);
    info.textContent = "";
    const head = document.createElement("div");
    head.textContent = "query " + i + " \\u201c" + data.tokens[i] + "\\u201d attends most to:";
    info.appendChild(head);
    top.forEach(function (pair) {
      const row = document.createElement("div");
      row.textContent = pair[0].toFixed(3) + "  \\u2192  " + pair[1] + " \\u201c" + data.tokens[pair[1]] + "\\u201d";
      info.appendChild(row);
    });
  }
  function refresh() { show(pinned === null ? data.tokens.length - 1 : pinned); }
  layerSel.addEventListener("change", refresh);
  headSel.addEventListener("change", refresh);
  refresh();
})();
</script>
</body>
</html>
"""
