"""benchmarks/compare.py runs: its functions on toy sizes, one repeat, including the GPU-only paths
(MFU accounting, the gpu suite's plan) that CI, having no GPU, can reach on CPU; and
benchmarks/bench_cpu_efficiency.py's FLOP accounting, peak and profile on the same toy size."""

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


# -- the direction of the ratios -------------------------------------------------------------------
# README and compare.py: "ratio = scratchformer / reference; speed: > 1 is faster, memory: < 1 is
# smaller". Stub sides whose cost is known exactly must come out as that number, the right way up.


class _Side:
    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds


def test_a_side_twice_as_fast_reads_as_ratio_two(compare, monkeypatch):
    # A fake clock that only the steps advance: the timing is exact, so this checks the harness's
    # arithmetic and direction, not this machine's noise.
    clock = [0.0]
    monkeypatch.setattr(compare, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(compare, "build_pair", lambda *a, **k: (_Side(0.02), _Side(0.01)))  # (reference, ours)

    def make(side, *args, **kwargs):
        def step() -> int:
            clock[0] += side.seconds
            return 100  # tokens

        return step

    for name in ("make_train_step", "make_prefill", "make_decode"):
        monkeypatch.setattr(compare, name, make)
    for task in ("train", "prefill", "decode"):
        row = compare.time_pair("headline", "llama", "toy", task, repeats=3, warmup=1)
        assert (row.ref, row.ours) == (pytest.approx(100 / 0.02), pytest.approx(100 / 0.01)), task  # tokens/s
        assert row.ratio == pytest.approx(2.0), task
    table = compare.to_markdown([row], {"cpu": "test", "torch": "x", "threads": 1}, "test")
    assert table.splitlines()[-1].endswith("| tokens/s | 5,000 | 10,000 | **2.00** |")  # reference, then ours


def test_a_side_using_half_the_memory_reads_as_ratio_one_half(compare, monkeypatch):
    # Each side's "model" is a buffer of known size with every page written (so resident), measured
    # by the real child code (`--memory-child` and measure_memory_here), run in this process so the
    # stubs apply.
    sizes_mb = {"ref": 200, "ours": 100}
    monkeypatch.setattr(compare, "build_one", lambda side, *a, **k: torch.ones(sizes_mb[side] << 20, dtype=torch.uint8))
    monkeypatch.setattr(compare, "make_train_step", lambda model, *a, **k: lambda: 0)

    def run_child(cmd, **kwargs):
        assert cmd[2] == "--memory-child", cmd
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert compare.main(cmd[2:]) == 0
        return subprocess.CompletedProcess(cmd, 0, out.getvalue(), "")

    monkeypatch.setattr(compare, "subprocess", SimpleNamespace(run=run_child))
    row = compare.memory_pair("memory", "llama", "toy", "train", threads=1)
    assert row.ref == pytest.approx(200, rel=0.1) and row.ours == pytest.approx(100, rel=0.1)
    assert row.ratio == pytest.approx(0.5, abs=0.05)


@pytest.fixture(scope="module")
def efficiency(compare):
    path = ROOT / "benchmarks" / "bench_cpu_efficiency.py"  # imports compare.py: the fixture above's module
    spec = importlib.util.spec_from_file_location("bench_cpu_efficiency", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu_efficiency"] = module
    spec.loader.exec_module(module)
    module.BATCH["toy"] = 2
    return module


@pytest.mark.parametrize("tie", [True, False])
def test_the_flops_count_every_weight_a_token_is_multiplied_by_once(compare, efficiency, tie):
    """N of 6N: every linear layer's weights and the LM head's, a tied head counted once, the input
    embedding (a lookup) not at all when untied; the step's own GEMM shapes add up to the same 6 N
    FLOPs a token."""
    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM

    config = ScratchformerConfig.from_preset("llama", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, tie_word_embeddings=tie)
    model = ScratchformerForCausalLM(config)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    embedding = 0 if tie else model.model.embed_tokens.weight.numel()
    assert efficiency.matmul_weights(model) == sum(p.numel() for p in model.parameters()) - norms - embedding
    tokens = 24
    flops = efficiency.step_flops(model, batch=2, context=12)
    assert flops["matmul"] == 6 * efficiency.matmul_weights(model) * tokens
    assert flops["attention"] == 12 * 2 * 32 * 12 * tokens
    assert sum(2 * m * k * n for m, k, n in efficiency.step_gemm_shapes(model, tokens)) == flops["matmul"]


def test_efficiency_rows_changes_and_profile_run(compare, efficiency):
    peak = efficiency.gemm_peak((32, 64), seconds=0.01)
    assert set(peak["by_size"]) == {32, 64} and peak["peak"] == max(peak["by_size"].values()) > 0
    [row] = efficiency.efficiency_rows("toy", peak["peak"], repeats=1, modes=(False,))
    assert row["ours_fraction"] > 0 and row["ref_fraction"] > 0 and row["ratio"] > 0
    assert row["ours_flops_s"] == pytest.approx(row["ours_tokens_s"] * row["flops_per_step"]["total"] / 32)
    prof = efficiency.profile_step("toy", steps=1)
    assert sum(prof["by_phase"].values()) == pytest.approx(1.0) and set(prof["by_phase"]) <= {
        "forward", "backward", "optimizer"}
    assert sum(prof["by_category"].values()) == pytest.approx(1.0) and prof["by_category"]["matrix products"] > 0
    assert efficiency.to_markdown({"machine": compare.machine(), "threads": 1, "load_average_start": 0.0,
                                   "command": "x", "peak": {"before": peak}, "peak_used": peak["peak"],
                                   "efficiency": [row], "own_gemms": {"toy": 1e9}, "profile": prof}).count("\n") > 10


def test_at_one_thread_the_step_runs_on_the_calling_thread(compare, efficiency, monkeypatch):
    """What lets the benchmark time steps on the thread's CPU clock at one thread (so a shared machine's
    other processes count against no rate): forward, backward and AdamW all run on the calling thread."""
    import time

    monkeypatch.setitem(efficiency.CLOCK, "now", time.thread_time)
    before = dict(efficiency.OTHER_THREADS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, ours = compare.build_pair("llama", "toy")
        rates = efficiency.timed({"ours": efficiency.make_step(ours, 2, 16)}, repeats=3, warmup=1)
    finally:
        torch.set_num_threads(threads)
    assert len(rates["ours"]) == 3 and min(rates["ours"]) > 0
    cpu = efficiency.OTHER_THREADS["cpu_s"] - before["cpu_s"]
    thread = efficiency.OTHER_THREADS["thread_cpu_s"] - before["thread_cpu_s"]
    assert cpu > 0 and thread / cpu > 0.9
