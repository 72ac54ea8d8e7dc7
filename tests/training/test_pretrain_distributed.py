"""Two processes under `accelerate launch` (DDP over gloo, on CPU) train exactly what one process
with the same global batch trains, and only the main process writes.

On CPU, `accelerate launch --cpu --num_processes 2` starts one process (accelerate 1.x reaches
several CPU processes only through mpirun); `--multi_gpu` with ACCELERATE_USE_CPU=1 starts them
through torchrun, and accelerate then joins them with gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scratchformer.training.library.data import default_corpus
from scratchformer.training.library.pretraining import PretrainConfig, train
from scratchformer.training.library.tokenizer_training import train_tokenizer

# Spawns processes and runs whole trainings: `make test-fast` (-m "not slow") leaves it out.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, optimizer):
    docs = [d[:2000] for d in list(default_corpus("train"))[:12]]
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    val_file.write_text("".join(json.dumps({"text": d[:1500]}) + "\n" for d in list(default_corpus("validation"))[:3]))
    tok = tmp_path / "tokenizer"
    train_tokenizer(tok, files=[str(train_file)], vocab_size=320, show_progress=False)
    flags = dict(
        train_files=str(train_file),
        validation_files=str(val_file),
        tokenizer=str(tok),
        size="tiny",
        hidden_size=32,
        block_size=32,
        max_train_steps=4,
        logging_steps=1,
        eval_steps=2,
        save_steps=2,
        report_to="none",
        optimizer=optimizer,
    )

    # Two processes x 4 blocks: the same 8 blocks a step as one process x 8 (rank r takes the r-th
    # batch of 4 of each step's 8), and DDP averages the two halves' gradients.
    argv = [f"--{k}={v}" for k, v in flags.items()]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "scratchformer.training",
        "pretrain",
    ]
    proc = subprocess.run(
        [*launch, *argv, f"--output_dir={tmp_path / 'two'}", "--per_device_train_batch_size=4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"output_dir"') == 1  # the summary, printed by the main process only

    one = train(PretrainConfig(**flags, output_dir=str(tmp_path / "one"), per_device_train_batch_size=8))

    two_records, one_records = _records(tmp_path / "two"), _records(tmp_path / "one")
    # One line per step and per evaluation: rank 1 wrote nothing.
    assert [(r["step"], "loss" in r) for r in two_records] == [(r["step"], "loss" in r) for r in one_records]
    for a, b in zip(two_records, one_records):
        for key in ("loss", "eval_loss", "eval_bpb", "eval_tokens", "tokens_seen"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-000004"
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert json.loads((tmp_path / "two" / "model" / "training_args.json").read_text())["num_processes"] == 2
    assert not list((tmp_path / "two").glob(".*tmp")) and not list((tmp_path / "two").glob("model.replaced-*"))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(one["output_dir"]).state_dict()
    # Muon orthogonalises in bfloat16, where gradients summed in another order can round apart.
    atol = 5e-4 if optimizer == "muon" else 1e-5
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol)
