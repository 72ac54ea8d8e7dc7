"""What every picture needs: matplotlib (optional, imported when a figure is drawn), a model loaded
through the one gate, readable token labels, saving. Figures are built with
`matplotlib.figure.Figure` directly, never pyplot: no display, no global figure registry to leak from
a training loop, and PNGs are rendered by Agg. Layers and heads are counted from 0, as in
`outputs.attentions[layer][:, head]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scratchformer.training.library.errors import UserError
from scratchformer.training.library.token_labels import VISIBLE, token_labels  # noqa: F401  (re-exported)


def import_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # an optional dependency: the `plots` extra
        raise ImportError("Pictures need matplotlib: pip install 'scratchformer[plots]'") from err
    return matplotlib


def new_figure(width: float, height: float) -> Figure:
    import_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def load_model(
    model_dir: str | Path, tokenizer_dir: str | Path | None = None, need_tokenizer: bool = True, auto_class: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The checkpoint's base model (any head's checkpoint works: the head is not needed to look
    inside) in float32 and eval mode, and its tokenizer (from `tokenizer_dir` if given).
    `auto_class` (e.g. `AutoModelForSeq2SeqLM`) loads a head instead, for pictures that generate."""
    import torch
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


def base_of(model: PreTrainedModel) -> PreTrainedModel:
    # A *ForCausalLM (or any head) keeps the transformer under `model`; the base model is itself.
    return model.base_model


def text_stack(model: PreTrainedModel) -> PreTrainedModel:
    """The self-attention stack that reads the text: the model itself, or an encoder-decoder's
    encoder (its decoder needs a target sequence too)."""
    base = base_of(model)
    if getattr(base.config, "is_encoder_decoder", False) and getattr(base, "encoder", None) is not None:
        return base.encoder
    return base


def select_indices(count: int, index: int | None, what: str) -> list[int]:
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


def page(template: str, title: str, data_json: str) -> str:
    """A self-contained HTML page: `template` (a file beside this module) with the shared style and
    script (pages.css, pages.js) inlined, the title escaped and the data as inline JSON. Nothing is
    fetched when the page opens: no CDN, no font, no network."""
    import html
    import re

    here = Path(__file__).parent
    # Inside <script>, "</" would end the element: escape <, > and & as JSON \\u escapes.
    data = data_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    parts = {"STYLE": (here / "pages.css").read_text("utf-8"), "SCRIPT": (here / "pages.js").read_text("utf-8"),
             "TITLE": html.escape(title), "DATA": data}  # fmt: skip
    # One pass, so a title that reads "%DATA%" stays text.
    return re.sub(r"%(STYLE|SCRIPT|TITLE|DATA)%", lambda m: parts[m.group(1)], (here / template).read_text("utf-8"))
