"""An encoder-decoder's cross-attention: where each target token looked in the source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def cross_attention_maps(model, tokenizer, source: str, target: str | None = None, max_new_tokens: int = 64):
    """Cross-attention of every decoder layer and head while producing `target` (generated greedily
    when None). Returns (source labels, target labels, array [layers, heads, T, S]): row t is where
    the decoder looked when predicting target token t, so each row sums to 1 over the source tokens.
    A translation model's rows trace the alignment. Labels are readable tokens ('␣the', not 'Ġthe')."""
    from .common import token_labels

    model.eval()
    enc = tokenizer(source, return_tensors="pt").to(model.device)
    if target is None:
        with torch.no_grad():
            generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        # generate() starts from decoder_start_token_id: the decoder read ids[:-1] to predict ids[1:].
        decoder_input_ids, target_ids = generated[:, :-1], generated[:, 1:]
    else:
        # Framed as training frames targets (library.seq2seq.tokenize_pairs): the tokens, then eos.
        ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        target_ids = torch.tensor([ids], device=model.device)
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(target_ids)
    with torch.no_grad():
        out = model(**enc, decoder_input_ids=decoder_input_ids, output_attentions=True, use_cache=False)
    maps_NHTS = torch.stack([probs_BHTS[0] for probs_BHTS in out.cross_attentions]).float().cpu().numpy()
    src_labels = token_labels(tokenizer, enc["input_ids"][0].tolist())
    tgt_labels = token_labels(tokenizer, target_ids[0].tolist())
    return src_labels, tgt_labels, maps_NHTS


def plot_cross_attention(
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    maps: np.ndarray,
    layer: int = -1,
    heads: Sequence[int] | None = None,
    title: str | None = None,
):
    """The mean over `heads` of decoder layer `layer` (large, weights in the cells when short), then
    one small heatmap per head. Rows: target tokens; columns: source tokens. Built on
    `matplotlib.figure.Figure`, as in `inspect`, so no pyplot state leaks."""
    from .common import import_matplotlib, new_figure

    maps = np.asarray(maps)
    n_layers, n_heads, T, S = maps.shape
    if (len(tgt_tokens), len(src_tokens)) != (T, S):
        raise ValueError(f"{len(tgt_tokens)} x {len(src_tokens)} token labels for maps over {T} x {S} tokens.")
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the decoder has {n_layers} layers (0..{n_layers - 1}).")
    layer %= n_layers
    heads = list(range(n_heads)) if heads is None else list(heads)
    panels = [("mean of heads", maps[layer, heads].mean(0))] + [(f"head {h}", maps[layer, h]) for h in heads]
    cmap = import_matplotlib().colormaps["Blues"]

    # The mean is drawn twice the size of a head: it is the picture to read; the heads show who does what.
    n = len(panels) - 1
    cell = 0.55 if max(T, S) <= 12 else 0.3
    big_w, big_h = max(2.5, cell * S * 1.6), max(2.5, cell * T * 1.6)
    label_room = 0.08 * max(len(t) for t in [*src_tokens, *tgt_tokens])
    fig = new_figure(big_w * (1 + n / 2) + label_room + 1.8, big_h + label_room + 1.6)
    grid = fig.add_gridspec(1, 1 + n, width_ratios=[2] + [1] * n)
    image = None
    for i, (name, weights) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10 if i == 0 else 9)
        ax.set_xticks(range(S), src_tokens, rotation=90, fontsize=9 if i == 0 else 7)
        ax.set_yticks(range(T), tgt_tokens if i == 0 else [""] * T, fontsize=9)
        ax.tick_params(length=0)
        if i == 0:
            ax.set_xlabel("source token (encoder)", fontsize=9)
            ax.set_ylabel("target token being predicted", fontsize=9)
            if max(T, S) <= 12:  # numbers in the cells: each row's weights sum to 1
                for t in range(T):
                    for s in range(S):
                        w = weights[t, s]
                        ax.text(s, t, f"{w:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if w > 0.6 else "#333333")
    bar = fig.colorbar(image, ax=fig.axes, shrink=0.8, pad=0.02)
    bar.set_label("attention weight (rows sum to 1)", fontsize=8)
    fig.suptitle(title or f"Cross-attention of decoder layer {layer}: where each target token looked", fontsize=11)
    return fig
