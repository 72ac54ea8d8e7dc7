"""benchmarks/compare.py runs: its functions on toy sizes, one repeat, including the GPU-only paths
(MFU accounting, the gpu suite's plan) that CI, having no GPU, can reach on CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.SIZES["toy"] = dict(layers=2, width=32, heads=2, context=16, vocab=128)
    return module


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_pair_has_identical_weights_and_logits(compare, preset):
    ref, ours = compare.build_pair(preset, "toy")
    ids = torch.randint(3, 128, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, ours(ids).logits, atol=1e-5)


@pytest.mark.parametrize("task", ["train", "prefill", "decode"])
def test_time_pair_gives_a_ratio(compare, task):
    row = compare.time_pair("t", "llama", "toy", task, batch=2, new_tokens=2, repeats=1, warmup=0,
                            peak_tflops=1.0)
    assert row.ref > 0 and row.ours > 0 and row.ratio > 0
    assert len(row.ref_all) == len(row.ours_all) == 1
    if task == "train":  # the MFU the gpu suite reports for 124M
        assert 0 < row.extra["mfu_ours"] < 1


@pytest.mark.parametrize("fused", [True, False])
def test_training_rows_run_the_loss_path_they_name(compare, fused):
    # Default rows train as `scratchformer pretrain` does (fused head + loss, no logits); the
    # `unfused` rows use the config default, whose training outputs carry logits like the reference's.
    ref, ours = compare.build_pair("llama", "toy", fused=fused)
    ids = torch.randint(3, 128, (2, 16))
    assert (ours.train()(ids, labels=ids).logits is None) == fused
    mine = compare.build_one("ours", "llama", "toy", "sdpa", torch.float32, "cpu", fused=fused)
    assert mine.config.fused_lm_loss is fused
    assert any(args[0] == "unfused" and kw["fused"] is False for _, args, kw in compare.plan("cpu", quick=False))


def test_interleave_alternates_order(compare):
    calls = []
    steps = {"ref": lambda: calls.append("ref") or 1, "ours": lambda: calls.append("ours") or 1}
    rates = compare.interleave(steps, repeats=2, warmup=0, device="cpu")
    assert calls == ["ref", "ours", "ours", "ref"]
    assert len(rates["ref"]) == len(rates["ours"]) == 2


def test_memory_child_measures_something(compare):
    mb = compare.measure_memory_here("ours", "gpt2", "toy", "train", "sdpa", 2, 16, "cpu", "float32")
    assert mb >= 0


def test_gpu_plan_builds_without_a_gpu(compare):
    jobs = compare.plan("gpu", quick=False)
    sizes = {args[2] for _, args, _ in jobs}
    assert "124m" in sizes
    assert any(kw.get("dtype") == torch.bfloat16 for _, _, kw in jobs)
    assert len(compare.plan("cpu", quick=True)) < len(compare.plan("cpu", quick=False))


def test_outputs_are_written(compare, tmp_path):
    jobs = [(compare.time_pair, ("headline", "gpt2", "toy", "train"), dict(batch=1, repeats=1, warmup=0)),
            (compare.time_pair, ("context", "gpt2", "toy", "prefill"), dict(context=16, repeats=1, warmup=0))]
    compare.run_suite("cpu", True, tmp_path, threads=1, jobs=jobs, command="test")
    data = json.loads((tmp_path / "compare_cpu_quick.json").read_text())
    assert len(data["rows"]) == 2 and data["command"] == "test"
    assert "| headline | gpt2 | toy | train |" in (tmp_path / "compare_cpu_quick.md").read_text()
    assert (tmp_path / "compare_cpu_quick.png").stat().st_size > 1000


def test_gpu_suite_timing_rows_run_in_bfloat16(compare):
    # Every timing row of the gpu suite's quick plan, at toy size on the CPU: the bf16 model building,
    # the training step and generate() paths the GPU run will take (only CUDA itself is missing).
    jobs = [(fn, args, kw) for fn, args, kw in compare.plan("gpu", quick=True) if fn is compare.time_pair]
    assert jobs and all(kw["dtype"] == torch.bfloat16 for _, _, kw in jobs)
    for fn, (section, preset, _size, task), kw in jobs:
        kw = {**kw, "device": "cpu", "repeats": 1, "warmup": 0, "new_tokens": 2, "peak_tflops": 1.0}
        row = fn(section, preset, "toy", task, **kw)
        assert row.ref > 0 and row.ours > 0, (preset, task)
