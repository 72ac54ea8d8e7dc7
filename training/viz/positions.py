"""Positional encodings: the table (sinusoidal, learned, or rotary angles), the similarity of every
pair of positions, and similarity against distance."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel

from scratchformer.modeling.transformer_scratchformer import rope_inv_freq
from scratchformer.training.library.errors import UserError

from .common import new_figure, text_stack


def position_encodings(model: PreTrainedModel, num_positions: int | None = None) -> np.ndarray:
    """The positional signal as a (P, channels) table, whatever its kind:

    - sinusoidal: the paper's fixed table, (P, C), added to the embeddings;
    - learned: the trained position embeddings, (P, C), added to the embeddings;
    - rope: nothing is added; queries and keys are rotated. The table is sin/cos of the rotation
      angles pos·θᵢ, interleaved like the paper's, (P, K): the same clocks, applied by rotation.

    An encoder-decoder's table is its encoder's (the decoder's has the same kind and size).
    """
    base = text_stack(model)
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
    raise UserError(f"Don't know how to read positions of a model with position_embedding={kind!r}.")


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


def initial_encodings(model: PreTrainedModel, num_positions: int | None = None, seed: int = 0) -> np.ndarray | None:
    """For learned positions, a table as the model starts training: a fresh draw from the same
    initialisation (normal, std `initializer_range`), the baseline to read a trained table against:
    structure beyond it is what training found. None for the fixed kinds (they never change)."""
    config = text_stack(model).config
    if config.position_embedding != "learned":
        return None
    P = num_positions or config.max_position_embeddings
    return np.random.default_rng(seed).normal(0.0, config.initializer_range, (P, config.hidden_size))


def positions_note(model: PreTrainedModel) -> str:
    """One sentence on what the positions picture can and cannot show for this model."""
    config = text_stack(model).config
    kind = config.position_embedding
    if kind == "learned":
        table = position_encodings(model)
        rms, init = float(np.sqrt(np.mean(table**2))), config.initializer_range
        return (f"learned positions: RMS {rms:.3f} against {init:.3f} at initialisation; the grey band is a fresh "
                "initialisation's similarity against distance: structure outside it is what training found")
    what = "rotation angles pos·θᵢ" if kind == "rope" else "sinusoidal table"
    return (f"{kind} positions are fixed by the config ({what}): this picture is the same before and after training; "
            "what training changes is how each head's queries and keys use them (see inspect attention)")


def plot_positions(model: PreTrainedModel, num_positions: int | None = None, title: str | None = None) -> Figure:
    """Three panels: the table itself (position × channel), the similarity of every pair of
    positions, and similarity against distance, the curve that shows why the encoding works. A
    fixed encoding (sinusoidal, rotary) says so in the title: training cannot change it; a learned
    one is drawn against a fresh initialisation (`initial_encodings`), so noise is not read as
    structure."""
    config = text_stack(model).config
    kind = config.position_embedding
    P = num_positions or min(config.max_position_embeddings, 256)
    table = position_encodings(model, P)
    distances, mean, low, high = similarity_by_distance(table)
    initial = initial_encodings(model, P)

    fig = new_figure(16.5, 5.0)
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

    if initial is not None:
        _, init_mean, init_low, init_high = similarity_by_distance(initial)
        ax_dist.fill_between(distances, init_low, init_high, color="#888888", alpha=0.2,
                             label="at initialisation (a fresh draw): min–max")  # fmt: skip
        ax_dist.plot(distances, init_mean, color="#888888", linestyle="--", linewidth=1.0,
                     label="at initialisation: mean")  # fmt: skip
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
        "learned": "what training found, against the grey\nof an untrained table",
        "rope": "score of a query and a key with the\nsame content, d tokens apart: it\ndepends on d only",
    }[kind]
    # The explanation goes in the legend, which matplotlib places where it hides no data.
    legend = ax_dist.legend(title=note, loc="best", fontsize=9, title_fontsize=9, alignment="left")
    legend.get_title().set_color("#444444")
    fixed = " (fixed by the config: identical before and after training)" if kind != "learned" else ""
    fig.suptitle(title or f"{kind} positions: first {P} of {config.max_position_embeddings}{fixed}", fontsize=13)
    return fig
