"""The command line answers at once: `scratchformer --help` and `scratchformer inspect --help` import
neither torch nor transformers (they took 8 to 11 s when they did), reading a run's log imports no
torch, and each `inspect` command loads what its picture needs, not the training stack. Measured by
what a fresh process imported, never by a duration (the time itself is measured, not asserted: the
README gives it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft", "matplotlib")

CHILD = """
import contextlib, io, json, sys
from scratchformer.training import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = cli.main({argv!r})
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def run(argv: list[str], cwd) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(argv=argv, heavy=HEAVY)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["inspect", "timeline", "--help"],
                                  ["inspect", "attention", "--help"]])
def test_help_imports_neither_torch_nor_transformers(argv, tmp_path):
    result = run(argv, tmp_path)
    assert result["code"] == 0 and result["loaded"] == []


@pytest.mark.slow
def test_reading_a_runs_log_loads_no_torch(tmp_path):
    lines = [{"step": s, "loss": 5.0 - s / 10, "epoch": s / 7} for s in range(1, 21)]
    lines += [{"step": 10, "eval_loss": 4.5}, {"step": 20, "eval_loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = run(["inspect", "run", str(tmp_path)], tmp_path)
    assert result["code"] == 0 and result["loaded"] == ["matplotlib"]  # the picture, nothing else
    result = run(["inspect", "timeline", "--run", str(tmp_path)], tmp_path)
    assert result["code"] == 0 and result["loaded"] == []  # a page: not even matplotlib
    assert (tmp_path / "timeline.html").is_file() and (tmp_path / "loss_curve.png").is_file()


@pytest.mark.slow
def test_inspect_attention_loads_the_model_not_the_training_stack(tmp_path):
    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.tokenization import train_bpe

    tokenizer = train_bpe(["The cat sat on the mat."] * 20, vocab_size=300, show_progress=False)
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ScratchformerForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    result = run(["inspect", "attention", "--model", str(tmp_path / "m"), "The cat", "--output_file",
                  str(tmp_path / "a.png")], tmp_path)  # fmt: skip
    assert result["code"] == 0
    assert {"torch", "transformers", "matplotlib"} <= set(result["loaded"])
    # accelerate comes with transformers' from_pretrained; the data pipeline and LoRA are not for a picture.
    assert not {"datasets", "peft"} & set(result["loaded"])
