"""Pictures of a model and a run: attention and cross-attention maps (PNG and self-contained HTML),
embeddings, positions, training curves and the training timeline (how the mechanisms formed).
Functions return numpy arrays and matplotlib figures for notebooks; `scratchformer inspect` draws
them from the command line. matplotlib is an optional dependency (`pip install scratchformer[plots]`),
imported only when a figure is drawn.

Each name is imported from its module when first used, so that reading a run's log
(`inspect run`, `inspect timeline`) never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "attention": ("attention_html", "attention_maps", "most_specialised_head", "plot_attention"),
    "common": ("load_model", "save", "token_labels"),
    "cross_attention": ("cross_attention_maps", "plot_cross_attention"),
    "curves": ("draw_run_curves", "find_run_log", "plot_run", "read_run_log"),
    "embeddings": ("embedding_matrix", "embedding_pca", "nearest_token_ids", "nearest_tokens", "plot_embedding_pca"),
    "positions": ("initial_encodings", "plot_positions", "position_encodings", "position_similarity",
                  "positions_note", "similarity_by_distance"),
    "timeline": ("Timeline", "draw_timeline", "plot_timeline", "read_timeline", "timeline_html", "write_timeline"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    if name in _WHERE:  # a submodule: scratchformer.training.viz.attention
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
