"""A run's curves from its JSON-lines log: loss (training and validation), learning rate, tokens/s,
gradient norm. `draw_run_curves` is what pretraining and fine-tuning pass in to draw theirs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from scratchformer.training.library.errors import UserError
from scratchformer.training.library.layout import RunLayout

from .common import new_figure, save

# `scratchformer pretrain` writes metrics.jsonl; other names, then any *.jsonl, are the fallback.
RUN_LOG_NAMES = (RunLayout.METRICS, "log.jsonl", "train_log.jsonl", "training_log.jsonl")


# Curves `plot_run` draws when the log has them: panel -> (keys it may be logged under, title, y label).
RUN_PANELS = {
    "loss": (("loss", "train_loss"), "Loss (cross-entropy)", "nats / token"),
    "lr": (("lr", "learning_rate"), "Learning rate", "lr"),
    "throughput": (("tokens_per_s", "tokens_per_sec"), "Throughput", "tokens / s"),
    "grad_norm": (("grad_norm",), "Gradient norm (before clipping)", "L2 norm"),
}


VAL_KEYS = ("eval_loss", "val_loss")


def find_run_log(run_dir_or_log_path: str | Path) -> Path:
    """The JSONL metrics log of a pretraining run: the path itself, or the log inside the run
    directory (a known name first, else the only/newest *.jsonl)."""
    path = Path(run_dir_or_log_path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path} does not exist: pass a pretraining run's output directory or its .jsonl log.")
    for name in RUN_LOG_NAMES:
        if (path / name).is_file():
            return path / name
    logs = sorted(path.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise UserError(f"No *.jsonl metrics log in {path}: is it the output directory of `scratchformer pretrain`?")
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
        raise UserError(f"{log} has no metrics to plot (looked for {', '.join(wanted)}).")

    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(panels) == 4 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(5.5 * cols, 3.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, key in zip(axes, panels):
        keys, title, ylabel = RUN_PANELS[key]
        steps, values = _series(records, keys)
        if key == "loss" and steps.size > 50:
            # Per-step losses are noisy; the trend is an exponential moving average over ~20 points.
            ax.plot(steps, values, linewidth=0.8, alpha=0.3, color="#1f77b4")
            ax.plot(steps, moving_average(values, 0.95), linewidth=1.5, color="#1f77b4", label="train (smoothed)")
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


def moving_average(values: np.ndarray, decay: float) -> np.ndarray:
    # Bias-corrected, as in Adam: the average starts at 0, so divide by the weight seen so far.
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = decay * avg + (1 - decay) * v
        out[i] = avg / (1 - decay ** (i + 1))
    return out



def draw_run_curves(log: Path, png: Path) -> bool:
    """`plot_run` into `png`, or False when it cannot be drawn (no matplotlib, an optional dependency;
    nothing logged yet): a run's missing picture is never its failure."""
    try:
        plot_run(log, png)
    except (ImportError, UserError):
        return False
    return True
