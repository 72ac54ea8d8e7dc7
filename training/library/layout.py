"""The names of everything a run writes under its --output_dir, spelled here and nowhere else, so that
pretraining, resume, the loop, FSDP saving, fine-tuning, seq2seq, the demo and the pictures all find
the same files (`run_dir` says how each is written so that a kill leaves nothing half-written):

    pretraining (OUTPUT_DIR)                      fine-tuning, seq2seq (OUTPUT_DIR)
      checkpoints/step-NNNNNN/  for --resume        the model directory itself, at the top
      metrics.jsonl             the run's log       checkpoints/               Trainer's, for --resume
      attention_snapshots.jsonl the probe's maps    metrics.jsonl              Trainer's log history
      tokenizer/                trained by the run  finetune_results.json      every number
      logs/                     the trackers'       loss_curve.png             the curves
      loss_curve.png, timeline.png                  README.md                  the card
      model/                    the model directory
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _under_root(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"OUTPUT_DIR/{name}")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory. `RunLayout(out).checkpoints` and not `out / "checkpoints"`:
    a name changed here changes for every writer and reader at once."""

    root: Path

    CHECKPOINTS = "checkpoints"
    METRICS = "metrics.jsonl"
    SNAPSHOTS = "attention_snapshots.jsonl"
    MODEL = "model"
    TOKENIZER = "tokenizer"
    LOGS = "logs"
    LOSS_CURVE = "loss_curve.png"
    TIMELINE = "timeline.png"
    RESULTS = "finetune_results.json"
    CARD = "README.md"
    PICTURES = (LOSS_CURVE, TIMELINE)  # copied into the model directory, where its card shows them

    checkpoints = _under_root(CHECKPOINTS)
    metrics = _under_root(METRICS)
    snapshots = _under_root(SNAPSHOTS)
    model = _under_root(MODEL)
    tokenizer = _under_root(TOKENIZER)
    logs = _under_root(LOGS)
    loss_curve = _under_root(LOSS_CURVE)
    timeline = _under_root(TIMELINE)
    results = _under_root(RESULTS)
    card = _under_root(CARD)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
