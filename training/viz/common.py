"""What every picture needs: matplotlib (optional, imported when a figure is drawn), a model loaded
through the one gate, readable token labels, saving. Figures are built with
`matplotlib.figure.Figure` directly, never pyplot: no display, no global figure registry to leak from
a training loop, and PNGs are rendered by Agg. Layers and heads are counted from 0, as in
`outputs.attentions[layer][:, head]`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError

# Whitespace made visible in axis labels: a token " the" is drawn "␣the".
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}


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


def load_model(
    model_dir: str | Path, tokenizer_dir: str | Path | None = None, need_tokenizer: bool = True, auto_class: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The checkpoint's base model (any head's checkpoint works: the head is not needed to look
    inside) in float32 and eval mode, and its tokenizer (from `tokenizer_dir` if given).
    `auto_class` (e.g. `AutoModelForSeq2SeqLM`) loads a head instead, for pictures that generate."""
    from transformers import AutoModel

    import scratchformer.modeling  # noqa: F401  (registers scratchformer with the Auto classes)
    from scratchformer.training.library.model_dir import load_model_dir, load_tokenizer_dir

    model_dir = Path(model_dir)
    try:
        model, _ = load_model_dir(model_dir, auto_class or AutoModel, need_tokenizer=False, dtype=torch.float32)
    except UserError as e:
        raise UserError(str(e)) from None
    model.eval()
    if not need_tokenizer:
        return model, None
    source = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir
    if not any((source / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(
            f"No tokenizer in {source} (a model saved on its own has none). Pass --tokenizer DIR, the "
            "directory the tokenizer was saved to (e.g. by `scratchformer tokenizer`)."
        )
    try:
        return model, load_tokenizer_dir(source)
    except UserError as e:
        raise UserError(str(e)) from None


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


def _select(count: int, index: int | None, what: str) -> list[int]:
    if index is None:
        return list(range(count))
    if not -count <= index < count:
        raise UserError(f"--{what} {index} is out of range: this model has {count} {what}s (0..{count - 1}).")
    return [index % count]


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
