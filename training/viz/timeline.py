"""A run's timeline: how the loss fell and how the mechanisms formed, step by step, from what the run
logged (metrics.jsonl with its mechanism metrics, attention_snapshots.jsonl). One self-contained HTML
page (inline data, style and script; no network) with numbers on hover, and a PNG of the same story
for a README or a model card.

What the page shows: the loss (training, smoothed, and validation; epochs marked), every head's
score over the steps (induction, previous-token, first-token, entropy: library/head_scores.py), the
in-context score, the logit lens by layer (library/mechanisms.py), and the attention of the fixed
probe (a short text written twice) at every evaluation, each head drawn. The step at which the
strongest induction score rose most between two evaluations is marked as the phase change
(Olsson et al. 2022): in a model that forms induction heads, the loss bends there too. A run whose
induction score never clears `INDUCTION_CLEAR` formed no induction head: nothing is marked (the
largest wiggle of a score at chance is noise), and the picture follows its strongest previous-token
head instead, the first half of the circuit, which small runs do form.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from scratchformer.training.library.errors import UserError
from scratchformer.training.library.layout import RunLayout

from .common import import_matplotlib, new_figure, page, save
from .curves import find_run_log, moving_average, read_run_log

SNAPSHOTS_FILE = RunLayout.SNAPSHOTS
# An induction score a run must reach before a jump in it is called a phase change: chance is about
# 1 / (T + k), 0.01 to 0.03 on the probes (library/head_scores.py).
INDUCTION_CLEAR = 0.2
SCORES = ("induction", "previous_token", "first_token", "entropy")
SCORE_TITLES = {
    "induction": "induction",
    "previous_token": "previous-token",
    "first_token": "first-token (sink)",
    "entropy": "entropy (1 = uniform)",
}


@dataclass
class Timeline:
    """Everything the timeline draws, as plain numbers (JSON-ready)."""

    name: str
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    steps_per_epoch: float | None = None
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float | None] = field(default_factory=list)
    # per evaluation with mechanism metrics:
    mech_steps: list[int] = field(default_factory=list)
    heads: dict[str, list] = field(default_factory=dict)  # score -> [evaluation][layer][head]
    in_context: list[float] = field(default_factory=list)
    logit_lens: list[list[float | None]] = field(default_factory=list)  # [evaluation][reading]
    snapshots: list[dict] = field(default_factory=list)  # {"step", "tokens", "maps" [layer][head][q][k<=q]}

    @property
    def has_mechanisms(self) -> bool:
        return bool(self.mech_steps)

    def epochs(self) -> list[float]:
        """Steps at which an epoch ended (a full pass over the training blocks), within the run."""
        if not self.steps_per_epoch or not self.train_steps:
            return []
        last = max(self.train_steps)
        return [k * self.steps_per_epoch for k in range(1, int(last / self.steps_per_epoch) + 1)]

    def strongest_induction(self) -> tuple[int, int] | None:
        """(layer, head) with the highest induction score at the last evaluation."""
        if not self.heads.get("induction"):
            return None
        final = np.asarray(self.heads["induction"][-1])
        layer, head = np.unravel_index(int(final.argmax()), final.shape)
        return int(layer), int(head)

    def phase_change(self) -> int | None:
        """The evaluation step after which the strongest induction score rose most (None without
        mechanism metrics or with fewer than two evaluations)."""
        table = self.heads.get("induction")
        if not table or len(table) < 2:
            return None
        best = np.asarray(table).reshape(len(table), -1).max(-1)
        if best.max() < INDUCTION_CLEAR:  # no induction head formed: a wiggle at chance is no phase change
            return None
        return int(self.mech_steps[int(np.diff(best).argmax()) + 1])

    def featured_head(self) -> tuple[str, int, int] | None:
        """(score, layer, head) the picture follows: the strongest induction head when one formed
        (a phase change), else the strongest previous-token head at the last evaluation."""
        if not self.heads.get("induction"):
            return None
        score = "induction" if self.phase_change() is not None else "previous_token"
        final = np.asarray(self.heads[score][-1])
        layer, head = np.unravel_index(int(final.argmax()), final.shape)
        return score, int(layer), int(head)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "train_steps": self.train_steps, "train_loss": self.train_loss,
            "epochs": self.epochs(), "eval_steps": self.eval_steps, "eval_loss": self.eval_loss,
            "mech_steps": self.mech_steps, "heads": self.heads, "in_context": self.in_context,
            "logit_lens": self.logit_lens, "snapshots": self.snapshots, "phase_change": self.phase_change(),
            "strongest_induction": self.strongest_induction(), "induction_clear": INDUCTION_CLEAR,
        }  # fmt: skip


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_timeline(run_dir_or_log_path: str | Path) -> Timeline:
    """The timeline of a pretraining run: its metrics.jsonl (and attention_snapshots.jsonl beside it).
    Tolerant like `read_run_log`: a run still writing its log reads up to its last whole line."""
    log = find_run_log(run_dir_or_log_path)
    records = read_run_log(log)
    timeline = Timeline(name=log.parent.name)
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        loss = _number(record.get("loss"))
        if loss is not None:
            timeline.train_steps.append(step)
            timeline.train_loss.append(loss)
            epoch = _number(record.get("epoch"))
            if epoch and timeline.steps_per_epoch is None and not float(epoch).is_integer():
                timeline.steps_per_epoch = step / epoch
        if "eval_loss" in record:
            timeline.eval_steps.append(step)
            timeline.eval_loss.append(_number(record["eval_loss"]))
        heads = record.get("heads")
        if isinstance(heads, dict) and all(isinstance(heads.get(s), list) for s in SCORES):
            timeline.mech_steps.append(step)
            for score in SCORES:
                timeline.heads.setdefault(score, []).append(heads[score])
            timeline.in_context.append(_number(record.get("in_context_score")))
            timeline.logit_lens.append([_number(v) for v in record.get("logit_lens_loss") or []])
    snapshots = log.parent / SNAPSHOTS_FILE
    if snapshots.is_file():
        for snapshot in read_run_log(snapshots):
            if isinstance(snapshot.get("step"), int) and isinstance(snapshot.get("maps"), list):
                timeline.snapshots.append(
                    {"step": snapshot["step"], "tokens": list(snapshot.get("tokens") or []), "maps": snapshot["maps"]}
                )
    if not timeline.train_steps and not timeline.eval_steps:
        raise UserError(f"{log} has no training or validation losses to draw: is it a pretraining run's log?")
    return timeline


def full_map(rows: list[list[float]]) -> np.ndarray:
    """A snapshot's causal rows (row q holds keys 0..q) as a square matrix, the future 0."""
    L = len(rows)
    out = np.zeros((L, L))
    for q, row in enumerate(rows):
        out[q, : len(row)] = row
    return out


# ----------------------------------------------------------------------------------------------
# The picture (PNG)
# ----------------------------------------------------------------------------------------------


def plot_timeline(run_dir_or_log_path: str | Path, out_png: str | Path | None = None, title: str | None = None
                  ) -> Figure:  # fmt: skip
    """The timeline as one figure: loss (epochs and the phase change marked), the head scores over
    steps, the logit lens by layer, and the attention of `Timeline.featured_head` on the probe at
    three steps (the first evaluation, the phase change or the middle one, the last). Saved to `out_png` if given."""
    t = read_timeline(run_dir_or_log_path)
    phase = t.phase_change()
    strongest = t.strongest_induction()
    featured = t.featured_head()
    picks = _snapshot_picks(t, phase)
    top = 3 if t.has_mechanisms else 1
    bottom = len(picks) if featured is not None else 0
    fig = new_figure(5.2 * top if top > 1 else 7.5, 4.2 + (3.9 if bottom else 0))
    grid = fig.add_gridspec(2 if bottom else 1, max(top, bottom) * 2)
    span = max(top, bottom) * 2 // top
    axes = [fig.add_subplot(grid[0, i * span:(i + 1) * span]) for i in range(top)]
    cmap = import_matplotlib().colormaps["tab10"]

    ax = axes[0]
    steps, losses = np.asarray(t.train_steps), np.asarray(t.train_loss)
    if steps.size > 50:
        ax.plot(steps, losses, color="#1f77b4", alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(losses, 0.95), color="#1f77b4", linewidth=1.5, label="train (smoothed)")
    elif steps.size:
        ax.plot(steps, losses, color="#1f77b4", linewidth=1.2, label="train")
    if t.eval_steps:
        ax.plot(t.eval_steps, [np.nan if v is None else v for v in t.eval_loss], "o-", color="#d62728",
                markersize=3, label="validation")  # fmt: skip
    for i, x in enumerate(t.epochs()):
        ax.axvline(x, color="#888888", linestyle=":", linewidth=0.9, label="epoch" if i == 0 else None)
    if phase is not None:
        ax.axvline(phase, color="#2ca02c", linewidth=1.2, alpha=0.8, label=f"induction jump (step {phase})")
    ax.set_title("Loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    if t.has_mechanisms:
        ax = axes[1]
        induction = np.asarray(t.heads["induction"])  # [evaluation, layer, head]
        n_layers, n_heads = induction.shape[1:]
        for layer in range(n_layers):
            for head in range(n_heads):
                is_best = strongest == (layer, head)
                ax.plot(t.mech_steps, induction[:, layer, head], color=cmap(layer % 10),
                        linewidth=2.0 if is_best else 0.8, alpha=1.0 if is_best else 0.55,
                        label=f"induction, layer {layer}" if head == 0 else None)  # fmt: skip
        previous = np.asarray(t.heads["previous_token"]).reshape(len(t.mech_steps), -1).max(-1)
        ax.plot(t.mech_steps, previous, color="#555555", linestyle="--", linewidth=1.2,
                label="previous-token (strongest head)")  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_title("Head scores on the probes")
        ax.set_xlabel("step")
        ax.set_ylabel("score (attention weight)")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(t.mech_steps, [np.nan if v is None else v for v in t.in_context], color="#9467bd", linewidth=1.5,
                  label="in-context score (right)")  # fmt: skip
        twin.set_ylabel("in-context score (nats)", color="#9467bd")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="upper left")

        ax = axes[2]
        lens = np.asarray([[np.nan if v is None else v for v in row] for row in t.logit_lens], dtype=float)
        names = _reading_names(lens.shape[1])
        lens_cmap = import_matplotlib().colormaps["viridis"]
        for i, name in enumerate(names):
            ax.plot(t.mech_steps, lens[:, i], color=lens_cmap(i / max(1, len(names) - 1)), label=name)
        ax.set_title("Logit lens: loss read after each layer")
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token on the probe text")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    if bottom:
        score, layer, head = featured
        image = None
        for i, snapshot in enumerate(picks):
            ax = fig.add_subplot(grid[1, i * 2:(i + 1) * 2])
            weights = full_map(snapshot["maps"][layer][head])
            masked = np.ma.masked_where(np.triu(np.ones_like(weights, dtype=bool), k=1), weights)
            cmap_blue = import_matplotlib().colormaps["Blues"].with_extremes(bad="#eeeeee")
            image = ax.imshow(masked, cmap=cmap_blue, vmin=0, vmax=1, interpolation="nearest")
            value = _scores_at(t, snapshot["step"], score, layer, head)
            ax.set_title(f"step {snapshot['step']}: {SCORE_TITLES[score]} {value}", fontsize=9)
            tokens = snapshot["tokens"]
            every = max(1, math.ceil(len(tokens) / 17))
            ticks = list(range(0, len(tokens), every))
            ax.set_xticks(ticks, [tokens[k] for k in ticks], rotation=90, fontsize=6)
            ax.set_yticks(ticks, [tokens[k] for k in ticks], fontsize=6)
            ax.tick_params(length=0)
        fig.colorbar(image, ax=fig.axes[-len(picks):], shrink=0.8, label="attention weight")
        if score == "induction":
            caption = (f"Layer {layer}, head {head} (the strongest induction head at the end) on the probe, a text "
                       "written twice: an induction head looks from each token of the second copy to the token after "
                       "its first occurrence (the stripe left of the diagonal)")
        else:
            best = max(max(map(max, table)) for table in t.heads["induction"])
            caption = (f"No induction head formed (the strongest induction score, {best:.2f}, stayed below "
                       f"{INDUCTION_CLEAR}): layer {layer}, head {head}, the strongest previous-token head, on the "
                       "probe, a text written twice: each token looks at the one before it (the stripe just below "
                       "the diagonal), the first half of an induction circuit")
        fig.supxlabel(textwrap.fill(caption, 150), fontsize=8, color="#444444")  # laid out, not over the labels
    fig.suptitle(title or f"How {t.name} learned", fontsize=13)
    if out_png is not None:
        save(fig, out_png)
    return fig


def _reading_names(n: int) -> list[str]:
    return ["embeddings"] + [f"after block {i}" for i in range(n - 1)]


def _snapshot_picks(t: Timeline, phase: int | None) -> list[dict]:
    """The first snapshot, the one at the phase change (the middle one without a phase change) when it
    is neither end, and the last."""
    if not t.snapshots:
        return []
    picks = [t.snapshots[0]]
    # the phase change, or with none the middle of the run
    middle = t.snapshots[len(t.snapshots) // 2]
    at = middle if phase is None else next((s for s in t.snapshots if s["step"] == phase), None)
    if at is not None and at is not t.snapshots[0] and at is not t.snapshots[-1]:
        picks.append(at)
    if t.snapshots[-1] is not t.snapshots[0]:
        picks.append(t.snapshots[-1])
    return picks


def _scores_at(t: Timeline, step: int, score: str, layer: int, head: int) -> str:
    if step not in t.mech_steps:
        return "?"
    return f"{t.heads[score][t.mech_steps.index(step)][layer][head]:.2f}"


# ----------------------------------------------------------------------------------------------
# The page (HTML)
# ----------------------------------------------------------------------------------------------


def timeline_html(run_dir_or_log_path: str | Path, title: str | None = None) -> str:
    """The timeline as one self-contained HTML page (inline data, style and script; no network)."""
    t = read_timeline(run_dir_or_log_path)
    data = json.dumps(t.to_dict(), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return page("timeline.html", title or f"How {t.name} learned", data)


def write_timeline(run_dir_or_log_path: str | Path, out_html: str | Path, png: str | Path | None = None) -> Timeline:
    """`timeline_html` into `out_html` (and `plot_timeline` into `png`), each written under a
    temporary name and renamed."""
    from scratchformer.training.library.files import write_text_atomically

    write_text_atomically(out_html, timeline_html(run_dir_or_log_path))
    if png is not None:
        save(plot_timeline(run_dir_or_log_path), png)
    return read_timeline(run_dir_or_log_path)



def draw_timeline(log: Path, png: Path) -> bool:
    """`plot_timeline` into `png`, or False when it cannot be drawn (no matplotlib, nothing logged):
    what `scratchformer pretrain` passes to the run, whose missing picture is never its failure."""
    try:
        save(plot_timeline(log), png)
    except (ImportError, UserError):
        return False
    return True
