"""Small pretraining runs shared by the pretraining tests (test_pretrain, test_pretrain_resume,
test_faults import these; pytest puts this folder on sys.path, and the name does not start with
test_, so nothing here is collected)."""

from __future__ import annotations

import json
from pathlib import Path

from scratchformer.training.library.data import default_corpus
from scratchformer.training.library.pretraining import PretrainConfig
from scratchformer.training.library.tokenizer_training import train_tokenizer

# Width 32, 2 layers, context 32, 8 blocks a step: a step takes milliseconds.
TINY = dict(
    size="tiny",
    hidden_size=32,
    block_size=32,
    per_device_train_batch_size=8,
    learning_rate=3e-3,
    report_to="none",
)



def as_flags(**overrides) -> list[str]:
    """Keyword arguments of PretrainConfig as command-line flags."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, list):  # nargs="+": the values after one flag
            out += [f"--{key}", *map(str, value)]
        else:
            out += [f"--{key}", str(value)] if value is not True else [f"--{key}"]
    return out


def write_corpus(root: Path) -> dict[str, Path]:
    """Slices of the default corpus: 20 documents of up to 2 KB (.jsonl), a 4 KB one that packs into
    a few steps an epoch, validation documents, and the same text as running lines (.txt)."""
    docs = [d[:2000] for d in list(default_corpus("train"))[:20]]
    val = [d[:2000] for d in list(default_corpus("validation"))[:5]]
    paths = {name: root / f"{name}.jsonl" for name in ("train", "small", "validation")}
    for name, rows in (("train", docs), ("small", docs[:2]), ("validation", val)):
        paths[name].write_text("".join(json.dumps({"text": d}) + "\n" for d in rows))
    paths["text"] = root / "train.txt"
    paths["text"].write_text("\n\n".join(docs))
    return paths


def write_tokenizer(corpus: dict[str, Path], root: Path) -> str:
    train_tokenizer(root / "tokenizer", files=[str(corpus["train"])], vocab_size=320, show_progress=False)
    return str(root / "tokenizer")


def run_config(tmp: Path, corpus: dict[str, Path], **overrides) -> PretrainConfig:
    base = dict(
        TINY,
        train_files=[str(corpus["train"])],
        validation_files=[str(corpus["validation"])],
        output_dir=str(tmp),
        logging_steps=1,
    )
    return PretrainConfig(**{**base, **overrides})


def logged_losses(run_dir: Path) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}
