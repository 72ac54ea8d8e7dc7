"""The README's attention picture and its caption, made by the commands the README prints above it.

Runs, in a fresh working directory, exactly

    scratchformer pretrain --output_dir runs/mini --size mini
    scratchformer inspect attention --model runs/mini/model "<the README's sentence>" --output_file attention.png

then copies `attention.png` to `docs/images/attention_grid.png` and records what `inspect` printed
(every head's previous-token / first-token / entropy scores on the sentence) and the caption drawn
from it in `docs/images/attention_grid.md`. `tests/test_readme.py` checks that the README's sentence
and caption are the recorded ones, so the picture cannot drift from the commands.

    .venv/bin/python benchmarks/readme_attention.py          # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
# The sentence the README's `inspect attention` command looks at (the demo's attention text opens with it).
SENTENCE = "The assert statement raises an AssertionError when its expression is false."
COMMANDS = [
    ["scratchformer", "pretrain", "--output_dir", "runs/mini", "--size", "mini"],
    ["scratchformer", "inspect", "attention", "--model", "runs/mini/model", SENTENCE, "--output_file", "attention.png"],
]


def caption(printed: str) -> str:
    """The picture's caption from `inspect attention`'s output: what the sharpest previous-token head does."""
    layers = len(re.findall(r"^\s*layer \d+:", printed, flags=re.M))
    found = re.search(r"strongest previous-token head: layer (\d+), head (\d+) \(([0-9.]+) of its weight", printed)
    if not found:
        raise SystemExit(f"inspect attention printed no head scores:\n{printed}")
    layer, head, score = found.groups()
    return (f"Every head of the {layers}-layer model the commands above train, on the sentence above; layer {layer}, "
            f"head {head} puts {score} of its attention on the previous token")  # fmt: skip


def main() -> None:
    scripts = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = []
        for command in COMMANDS:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, check=True)
            outputs.append(proc.stdout)
        printed = outputs[-1]
        shutil.copyfile(Path(tmp) / "attention.png", IMAGES / "attention_grid.png")
    text = caption(printed)
    import torch

    record = [
        "# The README's attention picture",
        "",
        "Made by `python benchmarks/readme_attention.py`, which ran these commands in a fresh directory:",
        "",
        *[f"    {' '.join(c if ' ' not in c else repr(c) for c in command)}" for command in COMMANDS],
        "",
        "What `inspect attention` printed:",
        "",
        *[f"    {line}" for line in printed.strip().splitlines()],
        "",
        f"Caption: {text}",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.platform()}), torch {torch.__version__}.",
        "",
    ]
    (IMAGES / "attention_grid.md").write_text("\n".join(record), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
