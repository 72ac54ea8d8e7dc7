"""Look inside a model: attention maps, embedding neighbours, positional encodings, training curves.

Every picture has a function that returns the numbers (numpy arrays) and one that returns a
matplotlib `Figure`, so a notebook can use either; `main` is the `scratchformer inspect` command
on top of them:

    scratchformer inspect attention  --model DIR "The cat sat" --out attention.png [--layer L] [--head H] [--html F]
    scratchformer inspect embeddings --model DIR --token cat [--k 10] [--words dog,house] [--out embeddings.png]
    scratchformer inspect positions  --model DIR --out positions.png
    scratchformer inspect run        OUT_DIR [--out curves.png]
    scratchformer inspect cross-attention --model DIR --source TEXT [--target TEXT] [--layer -1] [--out F]

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no display, no global
figure registry to leak from a training loop, and PNGs are rendered by Agg. Layers and heads are
counted from 0, as in `outputs.attentions[layer][:, head]`.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scratchformer.modeling.transformer_scratchformer import rope_inv_freq

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# `scratchformer pretrain` writes metrics.jsonl; other names, then any *.jsonl, are the fallback.
RUN_LOG_NAMES = ("metrics.jsonl", "log.jsonl", "train_log.jsonl", "training_log.jsonl")
# Curves `plot_run` draws when the log has them: panel -> (keys it may be logged under, title, y label).
RUN_PANELS = {
    "loss": (("loss", "train_loss"), "Loss (cross-entropy)", "nats / token"),
    "lr": (("lr", "learning_rate"), "Learning rate", "lr"),
    "throughput": (("tokens_per_s", "tokens_per_sec"), "Throughput", "tokens / s"),
    "grad_norm": (("grad_norm",), "Gradient norm (before clipping)", "L2 norm"),
}
VAL_KEYS = ("eval_loss", "val_loss")

# Whitespace made visible in axis labels: a token " the" is drawn "␣the".
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}


class InspectError(ValueError):
    """A problem with the user's input, reported by the CLI as one line, without a traceback."""


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # an optional dependency: the `plots` extra
        raise ImportError("Pictures need matplotlib: pip install 'scratchformer[plots]'") from err
    return matplotlib


def _figure(width: float, height: float) -> Figure:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# ----------------------------------------------------------------------------------------------
# Loading and token labels
# ----------------------------------------------------------------------------------------------


def load_model(
    model_dir: str | Path, tokenizer_dir: str | Path | None = None, need_tokenizer: bool = True, auto_class: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The checkpoint's base model (any head's checkpoint works: the head is not needed to look
    inside) in float32 and eval mode, and its tokenizer (from `tokenizer_dir` if given).
    `auto_class` (e.g. `AutoModelForSeq2SeqLM`) loads a head instead, for pictures that generate."""
    from transformers import AutoModel

    import scratchformer.modeling  # noqa: F401  (registers scratchformer with the Auto classes)

    from .checkpoint_io import CheckpointError, load_model_dir, load_tokenizer_dir

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InspectError(f"{model_dir} is not a model directory (no config.json). Pass --model DIR of a checkpoint.")
    try:
        model, _ = load_model_dir(model_dir, auto_class or AutoModel, need_tokenizer=False, dtype=torch.float32)
    except CheckpointError as e:
        raise InspectError(str(e)) from None
    model.eval()
    if not need_tokenizer:
        return model, None
    source = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir
    if not any((source / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise InspectError(
            f"No tokenizer in {source} (a model saved on its own has none). Pass --tokenizer DIR, the "
            "directory the tokenizer was saved to (e.g. by `scratchformer tokenizer`)."
        )
    try:
        return model, load_tokenizer_dir(source)
    except CheckpointError as e:
        raise InspectError(str(e)) from None


def _base(model: PreTrainedModel) -> PreTrainedModel:
    # A *ForCausalLM (or any head) keeps the transformer under `model`; the base model is itself.
    return model.base_model


def _stack(model: PreTrainedModel) -> PreTrainedModel:
    """The self-attention stack that reads the text: the model itself, or an encoder-decoder's
    encoder (its decoder needs a target sequence too)."""
    base = _base(model)
    if getattr(base.config, "is_encoder_decoder", False) and getattr(base, "encoder", None) is not None:
        return base.encoder
    return base


def _byte_to_unicode_inverse() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable stand-in character -> the byte it means.
    Printable bytes stand for themselves; the others (space, control bytes, ...) were shifted to
    256 + n, which is why a byte-level vocabulary shows a space as 'Ġ' (256 + 32)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    inverse = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            inverse[chr(256 + shifted)] = b
            shifted += 1
    return inverse


_BYTES_OF = _byte_to_unicode_inverse()


def _visible(text: str) -> str:
    return "".join(VISIBLE.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 32 else ch) for ch in text)


def token_labels(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """One readable label per token id, decoded on its own, with whitespace made visible
    (' the' -> '␣the', '\\n' -> '↵'). A byte-level token that holds only part of a multi-byte
    character shows its bytes ('<e2 80>'); special tokens show as themselves ('<s>')."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    labels = []
    for token_id, piece in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if token_id in special or piece is None:
            labels.append(str(piece))
        elif all(ch in _BYTES_OF for ch in piece):
            raw = bytes(_BYTES_OF[ch] for ch in piece)
            try:
                labels.append(_visible(raw.decode("utf-8")))
            except UnicodeDecodeError:
                labels.append("<" + " ".join(f"{b:02x}" for b in raw) + ">")
        else:  # not a byte-level vocabulary: let the tokenizer decode it
            labels.append(_visible(tokenizer.decode([token_id])))
    return labels


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


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
        raise InspectError("The text encodes to no tokens: give some text to look at.")
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


def _select(count: int, index: int | None, what: str) -> list[int]:
    if index is None:
        return list(range(count))
    if not -count <= index < count:
        raise InspectError(f"--{what} {index} is out of range: this model has {count} {what}s (0..{count - 1}).")
    return [index % count]


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


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


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
    raise InspectError(
        f"{word!r} is not a single token in this vocabulary; it splits into {pieces}. "
        "Ask for one of those pieces instead."
    )


def nearest_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, word: str | int, k: int = 10
) -> tuple[list[int], np.ndarray]:
    """`nearest_tokens` as (ids, similarities), for code that wants to feed the ids on."""
    if k < 1:
        raise InspectError(f"k must be at least 1, got {k}.")
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
            raise InspectError(f"token id {word} is outside the vocabulary [0, {len(tokenizer)}).")
        return int(word)
    return token_id(tokenizer, word)


def embedding_pca(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, words: Sequence[str | int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, coords (N, 2), explained variance ratio (2,)): the chosen tokens' embeddings
    projected onto their own two main directions of variation (PCA via SVD of the centred rows)."""
    ids = list(dict.fromkeys(_as_id(tokenizer, w) for w in words))
    if len(ids) < 2:
        raise InspectError("A projection needs at least two distinct tokens.")
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


# ----------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------


def position_encodings(model: PreTrainedModel, num_positions: int | None = None) -> np.ndarray:
    """The positional signal as a (P, channels) table, whatever its kind:

    - sinusoidal: the paper's fixed table, (P, C), added to the embeddings;
    - learned: the trained position embeddings, (P, C), added to the embeddings;
    - rope: nothing is added; queries and keys are rotated. The table is sin/cos of the rotation
      angles pos·θᵢ, interleaved like the paper's, (P, K): the same clocks, applied by rotation.

    An encoder-decoder's table is its encoder's (the decoder's has the same kind and size).
    """
    base = _stack(model)
    config = base.config
    kind = getattr(config, "position_embedding", None)
    P = num_positions or config.max_position_embeddings
    if kind in ("sinusoidal", "learned"):
        table = base.embed_positions.table if kind == "sinusoidal" else base.embed_positions.weight
        return table[:P].detach().float().cpu().numpy()
    if kind == "rope":
        rotary = base.rotary_emb
        inv_freq_D = rope_inv_freq(rotary.head_dim, rotary.theta).double().numpy()
        angle_PD = np.arange(P, dtype=np.float64)[:, None] * inv_freq_D
        table = np.empty((P, 2 * len(inv_freq_D)), dtype=np.float32)
        table[:, 0::2], table[:, 1::2] = np.sin(angle_PD), np.cos(angle_PD)
        return table
    raise InspectError(f"Don't know how to read positions of a model with position_embedding={kind!r}.")


def position_similarity(table: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of positions, (P, P)."""
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def similarity_by_distance(table: np.ndarray, max_distance: int | None = None) -> tuple[np.ndarray, ...]:
    """(distances, mean, min, max) of the cosine similarity between positions i and i + d.

    For sinusoids (and rotary angles) the similarity depends on d alone, so min = mean = max: each
    sin/cos pair is a clock, PE(i)·PE(i+d) = Σ cos(d·θᵢ), the same for every i. That is why the
    model can attend "3 tokens back" with one linear map. Learned tables only approximate this."""
    sim = position_similarity(table)
    P = len(table)
    D = min(P - 1, max_distance if max_distance is not None else P - 1)
    distances = np.arange(D + 1)
    diagonals = [np.diagonal(sim, offset=d) for d in distances]
    return (
        distances,
        np.array([d.mean() for d in diagonals]),
        np.array([d.min() for d in diagonals]),
        np.array([d.max() for d in diagonals]),
    )


def plot_positions(model: PreTrainedModel, num_positions: int | None = None, title: str | None = None) -> Figure:
    """Three panels: the table itself (position × channel), the similarity of every pair of
    positions, and similarity against distance, the curve that shows why the encoding works."""
    config = _stack(model).config
    kind = config.position_embedding
    P = num_positions or min(config.max_position_embeddings, 256)
    table = position_encodings(model, P)
    distances, mean, low, high = similarity_by_distance(table)

    fig = _figure(16.5, 5.0)
    ax_table, ax_sim, ax_dist = fig.subplots(1, 3, width_ratios=[1.15, 1, 1.1])
    limit = float(np.abs(table).max()) or 1.0
    image = ax_table.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=ax_table, pad=0.01, label="value")
    ax_table.set_xlabel("channel" if kind != "rope" else "channel (sin, cos of each rotated pair)")
    ax_table.set_ylabel("position")
    ax_table.set_title(
        {
            "sinusoidal": "Sinusoidal table PE[pos, channel] (fixed)",
            "learned": "Learned position embeddings",
            "rope": f"Rotary angles pos·θᵢ as sin/cos (θ = {getattr(config, 'rope_theta', 0):g})",
        }[kind]
    )

    image = ax_sim.imshow(position_similarity(table), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax_sim, pad=0.01, label="cosine similarity")
    ax_sim.set_xlabel("position j")
    ax_sim.set_ylabel("position i")
    ax_sim.set_title("Similarity of positions i and j")

    if not np.allclose(low, high, atol=1e-4):
        ax_dist.fill_between(distances, low, high, color="#1f77b4", alpha=0.2, label="min–max over i")
    ax_dist.plot(distances, mean, color="#1f77b4", label="mean over i")
    ax_dist.axhline(0.0, color="#888888", linewidth=0.8)
    ax_dist.set_xlabel("distance d = j − i (tokens)")
    ax_dist.set_ylabel("cos(PE[i], PE[i + d])")
    ax_dist.set_title("Similarity vs distance" + (" (the same for every i)" if kind != "learned" else ""))
    ax_dist.grid(alpha=0.3)
    note = {
        "sinusoidal": "nearby positions look alike, far ones\ndon't: distance is readable from PE",
        "learned": "whatever structure training found",
        "rope": "score of a query and a key with the\nsame content, d tokens apart: it\ndepends on d only",
    }[kind]
    # The explanation goes in the legend, which matplotlib places where it hides no data.
    legend = ax_dist.legend(title=note, loc="best", fontsize=9, title_fontsize=9, alignment="left")
    legend.get_title().set_color("#444444")
    fig.suptitle(title or f"{kind} positions: first {P} of {config.max_position_embeddings}", fontsize=13)
    return fig


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def find_run_log(run_dir_or_log_path: str | Path) -> Path:
    """The JSONL metrics log of a pretraining run: the path itself, or the log inside the run
    directory (a known name first, else the only/newest *.jsonl)."""
    path = Path(run_dir_or_log_path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InspectError(f"{path} does not exist: pass a pretraining run's output directory or its .jsonl log.")
    for name in RUN_LOG_NAMES:
        if (path / name).is_file():
            return path / name
    logs = sorted(path.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise InspectError(f"No *.jsonl metrics log in {path}: is it the output directory of `scratchformer pretrain`?")
    return logs[-1]


def read_run_log(run_dir_or_log_path: str | Path) -> list[dict[str, Any]]:
    """The log's records, one dict per line. Tolerant, since the run may still be writing: blank,
    truncated or non-object lines are skipped, and no key is required."""
    records = []
    with open(find_run_log(run_dir_or_log_path), encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _series(records: list[dict[str, Any]], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the first of `keys` the log has; non-numbers (None, NaN) are skipped."""
    key = next((k for k in keys if any(k in r for r in records)), keys[0])
    xs, ys = [], []
    for n, record in enumerate(records):
        y = record.get(key)
        if isinstance(y, bool) or not isinstance(y, (int, float)) or not math.isfinite(y):
            continue
        x = record.get("step", n)
        xs.append(x if isinstance(x, (int, float)) else n)
        ys.append(float(y))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def plot_run(run_dir_or_log_path: str | Path, out_png: str | Path | None = None) -> Figure:
    """Loss (train, and validation where logged), learning rate and tokens/s against step, one
    panel each, from a run's JSONL log; panels with no data are left out. Saved to `out_png` if
    given."""
    log = find_run_log(run_dir_or_log_path)
    records = read_run_log(log)
    panels = [panel for panel, (keys, *_) in RUN_PANELS.items() if _series(records, keys)[0].size]
    val_steps, val_values = _series(records, VAL_KEYS)
    val = val_steps.size > 0
    if val and "loss" not in panels:
        panels.insert(0, "loss")
    if not panels:
        wanted = [key for keys, *_ in RUN_PANELS.values() for key in keys] + list(VAL_KEYS)
        raise InspectError(f"{log} has no metrics to plot (looked for {', '.join(wanted)}).")

    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(panels) == 4 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig = _figure(5.5 * cols, 3.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, key in zip(axes, panels):
        keys, title, ylabel = RUN_PANELS[key]
        steps, values = _series(records, keys)
        if key == "loss" and steps.size > 50:
            # Per-step losses are noisy; the trend is an exponential moving average over ~20 points.
            ax.plot(steps, values, linewidth=0.8, alpha=0.3, color="#1f77b4")
            ax.plot(steps, _ema(values, 0.95), linewidth=1.5, color="#1f77b4", label="train (smoothed)")
        elif steps.size:
            ax.plot(steps, values, linewidth=1.2, label="train" if key == "loss" else None)
        if key == "loss" and val:
            ax.plot(val_steps, val_values, "o-", color="#d62728", markersize=4, label="validation")
            ax.annotate(
                f"{val_values[-1]:.3f}",
                (val_steps[-1], val_values[-1]),
                xytext=(-4, 6),
                textcoords="offset points",
                ha="right",
                fontsize=9,
                color="#d62728",
            )
        if key == "loss":
            ax.legend()
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training run: {log.parent.name}/{log.name}", fontsize=12)
    if out_png is not None:
        save(fig, out_png)
    return fig


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
    # Bias-corrected, as in Adam: the average starts at 0, so divide by the weight seen so far.
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = decay * avg + (1 - decay) * v
        out[i] = avg / (1 - decay ** (i + 1))
    return out


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchformer inspect",
        description="Pictures of what a model learned. Layers and heads count from 0.",
    )
    sub = parser.add_subparsers(
        dest="what", required=True, metavar="{attention,embeddings,positions,run,cross-attention}"
    )

    def model_args(p: argparse.ArgumentParser, tokenizer: bool = True) -> None:
        p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (any scratchformer head)")
        if tokenizer:
            p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory, if the checkpoint has none")

    p = sub.add_parser("attention", help="attention heatmaps for one text (PNG), optionally an HTML view")
    model_args(p)
    p.add_argument("text", help="the text to look at")
    p.add_argument("--layer", type=int, help="only this layer (negative counts from the end)")
    p.add_argument("--head", type=int, help="only this head")
    p.add_argument("--out", default="attention.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained interactive HTML page")
    p.add_argument("--max-tokens", type=int, default=48, help="truncate the text to this many tokens (%(default)s)")

    p = sub.add_parser("embeddings", help="nearest tokens by cosine similarity, and a PCA picture")
    model_args(p)
    p.add_argument("--token", required=True, metavar="WORD", help="a word that is one token ('␣cat' for ' cat')")
    p.add_argument("--k", type=int, default=10, help="how many nearest tokens, itself included (%(default)s)")
    p.add_argument("--words", default="", help="comma-separated extra tokens for the PCA picture")
    p.add_argument("--out", default="embeddings.png", help="PCA PNG to write (default: %(default)s)")

    p = sub.add_parser("positions", help="the positional encodings and their similarity vs distance")
    model_args(p, tokenizer=False)
    p.add_argument("--out", default="positions.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--positions", type=int, help="how many positions to draw (default: up to 256)")

    p = sub.add_parser("run", help="loss, learning rate and throughput curves of a pretraining run")
    p.add_argument("run", metavar="OUT_DIR", help="the run's output directory, or its .jsonl log")
    p.add_argument("--out", help="PNG to write (default: OUT_DIR/training_curves.png)")

    p = sub.add_parser("cross-attention", help="an encoder-decoder's cross-attention: where each target token looked")
    model_args(p)
    p.add_argument("--source", required=True, metavar="TEXT", help="the encoder's input")
    p.add_argument("--target", metavar="TEXT", help="the decoder's output (default: the model's own greedy output)")
    p.add_argument("--layer", type=int, default=-1, help="decoder layer (negative counts from the end; %(default)s)")
    p.add_argument("--out", default="cross_attention.png", help="PNG to write (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except InspectError as err:
        print(f"scratchformer inspect {args.what}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.what == "run":
        log = find_run_log(args.run)
        out = Path(args.out) if args.out else log.parent / "training_curves.png"
        plot_run(log, out)
        print(f"wrote {out}")
        return 0
    if args.what == "cross-attention":
        return _cross_attention(args)

    model, tokenizer = load_model(args.model, getattr(args, "tokenizer", None), need_tokenizer=args.what != "positions")
    if args.what == "attention":
        tokens, maps = attention_maps(model, tokenizer, args.text, max_tokens=args.max_tokens)
        save(plot_attention(tokens, maps, layer=args.layer, head=args.head), args.out)
        print(f"{len(tokens)} tokens: {' '.join(tokens)}")
        print(f"wrote {args.out} (the model has {maps.shape[0]} layers × {maps.shape[1]} heads)")
        if args.html:
            Path(args.html).write_text(attention_html(tokens, maps, title=f"Attention: {args.text[:60]}"), "utf-8")
            print(f"wrote {args.html}")
    elif args.what == "embeddings":
        ids, sims = nearest_token_ids(model, tokenizer, args.token, args.k)
        labels = token_labels(tokenizer, ids)
        print(f"nearest tokens to {labels[0]!r} (cosine similarity of input embeddings):")
        for label, sim in zip(labels, sims):
            print(f"  {sim:+.3f}  {label}")
        extra = [w.strip() for w in args.words.split(",") if w.strip()]
        save(plot_embedding_pca(model, tokenizer, ids + extra, highlight=ids[0]), args.out)
        print(f"wrote {args.out}")
    else:
        save(plot_positions(model, args.positions), args.out)
        print(f"wrote {args.out}")
    return 0


def _cross_attention(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from .seq2seq import cross_attention_maps, plot_cross_attention

    config_file = Path(args.model) / "config.json"
    if config_file.is_file() and not getattr(AutoConfig.from_pretrained(args.model), "is_encoder_decoder", False):
        raise InspectError(f"{args.model} is not an encoder-decoder: cross-attention needs a source and a target.")
    model, tokenizer = load_model(args.model, args.tokenizer, auto_class=AutoModelForSeq2SeqLM)
    src, tgt, maps = cross_attention_maps(model, tokenizer, args.source, args.target)
    if not src or not tgt:
        raise InspectError("The source or target encodes to no tokens: give some text to look at.")
    layer = _select(maps.shape[0], args.layer, "layer")[0]
    save(plot_cross_attention(src, tgt, maps, layer=layer), args.out)
    print(f"source: {' '.join(src)}")
    print(f"target: {' '.join(tgt)}")
    print(f"wrote {args.out} (decoder layer {layer} of {maps.shape[0]}, {maps.shape[1]} heads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
