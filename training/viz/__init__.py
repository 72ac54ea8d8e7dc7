"""Pictures of a model and a run: attention and cross-attention maps (PNG and self-contained HTML),
embeddings, positions, training curves. Functions return numpy arrays and matplotlib figures for
notebooks; `scratchformer inspect` draws them from the command line. matplotlib is an optional
dependency (`pip install scratchformer[plots]`), imported only when a figure is drawn."""

from .attention import attention_html, attention_maps, plot_attention
from .common import load_model, save, token_labels
from .cross_attention import cross_attention_maps, plot_cross_attention
from .curves import draw_run_curves, find_run_log, plot_run, read_run_log
from .embeddings import embedding_matrix, embedding_pca, nearest_token_ids, nearest_tokens, plot_embedding_pca
from .positions import plot_positions, position_encodings, position_similarity, similarity_by_distance

__all__ = [
    "attention_html",
    "attention_maps",
    "cross_attention_maps",
    "draw_run_curves",
    "embedding_matrix",
    "embedding_pca",
    "find_run_log",
    "load_model",
    "nearest_token_ids",
    "nearest_tokens",
    "plot_attention",
    "plot_cross_attention",
    "plot_embedding_pca",
    "plot_positions",
    "plot_run",
    "position_encodings",
    "position_similarity",
    "read_run_log",
    "save",
    "similarity_by_distance",
    "token_labels",
]
