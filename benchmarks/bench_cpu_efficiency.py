"""How close a CPU training step comes to what the machine can do: the step's achieved FLOP/s against
the matrix-multiply peak of the same threads, measured in the same process, ours and transformers'
Llama side by side.

    python benchmarks/bench_cpu_efficiency.py                      # 1 thread, tiny / baby / baby-50k
    python benchmarks/bench_cpu_efficiency.py --threads 2 --sizes baby
    python benchmarks/bench_cpu_efficiency.py --sections peak efficiency   # skip the change measurements

Every figure is a rate measured beside its reference, so a shared, loaded machine slows both alike. At
one thread the clock is the thread's own CPU time (`time.thread_time`: torch, autograd and compiled
kernels all run on the calling thread then), so the time the scheduler gives to other processes on a
shared machine counts against no rate, the peak's included; with more threads it is the wall clock.
The share of the process's CPU time that was not this thread's is recorded as a check.

- **peak**: fp32 `torch.mm` of square matrices (256 to 2048) at the thread count, the best size's median
  rate, measured before and after the training steps (both printed; the fraction uses their mean). Also
  the rate of *the step's own GEMMs* (every linear layer's forward and two backward products at the
  step's token count, and the LM head's), run back to back: what the step would reach if nothing but
  its matrix products cost time.
- **efficiency**: for each size of compare.py (llama preset; the reference converted, so both hold the
  same weights), training steps (forward, backward, AdamW) of ours and of `LlamaForCausalLM`,
  interleaved, eager and then under `torch.compile`. A step's FLOPs are PaLM's accounting
  (Chowdhery et al. 2022, appendix B): 6 x N x tokens for the matrix products (N: the weights the step
  multiplies by, every linear layer's and the LM head's; the input embedding is a lookup) plus
  12 x layers x width x context x tokens for attention's two products, forward and backward, counted
  whole although a causal kernel may skip the masked half. Fraction = achieved / peak.
- **changes**: what might move the fraction, each as ours-with / ours-without interleaved in one loop:
  `torch.compile`, AdamW's `foreach` and `fused` paths against its default (a Python loop over
  parameters on CPU), and (with `--threads` above 1) one thread against that many.
- **profile**: `torch.profiler` on the size with the lowest fraction: where a step's time goes.

Writes cpu_efficiency[_threadsN].json and .md under --out. Not part of the test suite;
tests/test_benchmark_harness.py runs its functions on toy sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (compare.py beside this file: the same pairs, sizes and interleaving)

SIZES = ("tiny", "baby", "baby-50k")
BATCH = {"tiny": 16, "baby": 2, "baby-50k": 2}  # compare.py's: tiny 2048 tokens a step, baby 512
PEAK_SIZES = (256, 512, 1024, 2048)
SECTIONS = ("peak", "efficiency", "changes", "profile")
CLOCK: dict[str, Callable[[], float]] = {"now": time.perf_counter}  # main() sets time.thread_time at 1 thread


# ----------------------------------------------------------------------------------------------
# The machine's limit
# ----------------------------------------------------------------------------------------------


def gemm_rate(m: int, k: int, n: int, seconds: float = 0.3, trials: int = 5) -> float:
    """FLOP/s of an fp32 (m, k) @ (k, n) product: the median over `trials` of timed batches of about
    `seconds` each (2 m k n FLOPs a product)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    now = CLOCK["now"]
    torch.mm(a, b, out=out)  # warm-up: the BLAS picks its kernel
    start = now()
    torch.mm(a, b, out=out)
    reps = max(1, int(seconds / max(now() - start, 1e-6)))
    rates = []
    for _ in range(trials):
        start = now()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        rates.append(2 * m * k * n * reps / (now() - start))
    return statistics.median(rates)


def gemm_peak(sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 0.3) -> dict:
    """The square products' rates by size and the best of them: the peak this process's threads reach."""
    by_size = {n: gemm_rate(n, n, n, seconds) for n in sizes}
    return {"by_size": by_size, "peak": max(by_size.values())}


def step_gemm_shapes(model: nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product a training step does with the model's weights: for each linear
    layer (in -> out) the forward (tokens, in) @ (in, out), the input gradient (tokens, out) @ (out, in)
    and the weight gradient (out, tokens) @ (tokens, in). The LM head is a linear layer too (tied to
    the embedding or not)."""
    shapes = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            out_f, in_f = module.weight.shape
            shapes += [(tokens, in_f, out_f), (tokens, out_f, in_f), (out_f, tokens, in_f)]
    return shapes


def shapes_rate(shapes: list[tuple[int, int, int]], trials: int = 5) -> float:
    """FLOP/s of running exactly these products back to back (the median of `trials` passes)."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats:  # warm-up
        torch.mm(a, b)
    now, rates = CLOCK["now"], []
    for _ in range(trials):
        start = now()
        for a, b in mats:
            torch.mm(a, b)
        rates.append(flops / (now() - start))
    return statistics.median(rates)


# ----------------------------------------------------------------------------------------------
# The training step's work
# ----------------------------------------------------------------------------------------------


def matmul_weights(model: nn.Module) -> int:
    """N of 6N: the weights a token is multiplied by, each counted once (a tied LM head is the
    embedding, counted as the head; the input embedding itself is a lookup)."""
    seen, n = set(), 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            n += module.weight.numel()
    return n


def step_flops(model: nn.Module, batch: int, context: int) -> dict[str, float]:
    """PaLM's FLOPs of one training step (forward + backward) on (batch, context) tokens."""
    config = model.config
    tokens = batch * context
    matmul = 6 * matmul_weights(model) * tokens
    attention = 12 * config.num_hidden_layers * config.hidden_size * context * tokens
    return {"matmul": float(matmul), "attention": float(attention), "total": float(matmul + attention)}


def make_step(model: nn.Module, batch: int, context: int, compiled: bool = False,
              optimizer: str = "default") -> Callable[[], int]:
    """compare.make_train_step with a choice of AdamW's implementation: "default" (on CPU a Python loop
    over the parameters), "foreach" (one call per operation over all of them) or "fused" (one kernel)."""
    model.train()
    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[optimizer]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **flags)
    ids = torch.randint(3, model.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(1))
    forward = torch.compile(model) if compiled else model

    def step() -> int:
        forward(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * context

    return step


OTHER_THREADS = {"cpu_s": 0.0, "thread_cpu_s": 0.0}  # the process's CPU time outside the timed thread


def timed(steps: dict[str, Callable[[], int]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """compare.interleave's alternation (the order reversed every repeat) on CLOCK: tokens/s per repeat."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    now, names = CLOCK["now"], list(steps)
    rates: dict[str, list[float]] = {name: [] for name in names}
    process, thread = time.process_time(), time.thread_time()
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = now()
            tokens = steps[name]()
            rates[name].append(tokens / (now() - start))
    OTHER_THREADS["cpu_s"] += time.process_time() - process
    OTHER_THREADS["thread_cpu_s"] += time.thread_time() - thread
    return rates


def paired_ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of a's rate / b's rate in the same repeat."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def efficiency_rows(size: str, peak: float, repeats: int, modes: tuple[bool, ...] = (False, True)) -> list[dict]:
    """Ours and the reference, eager and compiled (`modes`): tokens/s, FLOP/s, fraction of `peak`, ratio."""
    batch, context = BATCH[size], compare.SIZES[size]["context"]
    rows = []
    for compiled in modes:
        torch._dynamo.reset()
        ref, ours = compare.build_pair("llama", size)
        flops = step_flops(ours, batch, context)
        assert matmul_weights(ref) == matmul_weights(ours)
        steps = {"ref": make_step(ref, batch, context, compiled), "ours": make_step(ours, batch, context, compiled)}
        rates = timed(steps, repeats, warmup=3 if compiled else 1)
        per_token = flops["total"] / (batch * context)
        row = {"size": size, "compiled": compiled, "batch": batch, "context": context,
               "params": sum(p.numel() for p in ours.parameters()), "matmul_weights": matmul_weights(ours),
               "flops_per_step": flops, "repeats": repeats, "ref_tokens_s_all": rates["ref"],
               "ours_tokens_s_all": rates["ours"], "ratio": paired_ratio(rates, "ours", "ref")}
        for side in ("ref", "ours"):
            tokens_s = statistics.median(rates[side])
            row[f"{side}_tokens_s"] = tokens_s
            row[f"{side}_flops_s"] = tokens_s * per_token
            row[f"{side}_fraction"] = tokens_s * per_token / peak
        rows.append(row)
        print(f"  {size:8} {'compiled' if compiled else 'eager':8} ref {row['ref_fraction']:6.1%} ours "
              f"{row['ours_fraction']:6.1%} of peak, ours/ref {row['ratio']:.2f}", flush=True)
        del ref, ours, steps
    return rows


def change_rows(size: str, repeats: int, threads: int) -> list[dict]:
    """Each change against ours without it, interleaved: compile, AdamW foreach, AdamW fused, threads."""
    batch, context = BATCH[size], compare.SIZES[size]["context"]

    def ours() -> nn.Module:
        return compare.build_pair("llama", size)[1]

    rows = []
    torch._dynamo.reset()
    rates = timed({"eager": make_step(ours(), batch, context),
                   "compiled": make_step(ours(), batch, context, compiled=True)}, repeats, warmup=3)
    rows.append({"size": size, "change": "torch.compile (inductor)", "with": "compiled", "without": "eager",
                 "ratio": paired_ratio(rates, "compiled", "eager"), "rates": rates})
    rates = timed({o: make_step(ours(), batch, context, optimizer=o) for o in ("default", "foreach", "fused")},
                  repeats, warmup=1)
    for o in ("foreach", "fused"):
        rows.append({"size": size, "change": f"AdamW {o}=True", "with": o, "without": "default",
                     "ratio": paired_ratio(rates, o, "default"), "rates": rates})
    if threads > 1:
        model = ours()
        step = make_step(model, batch, context)

        def with_threads(n: int) -> Callable[[], int]:
            def run() -> int:
                torch.set_num_threads(n)
                try:
                    return step()
                finally:
                    torch.set_num_threads(threads)
            return run

        rates = timed({f"{threads} threads": with_threads(threads), "1 thread": with_threads(1)}, repeats, warmup=1)
        rows.append({"size": size, "change": f"{threads} threads", "with": f"{threads} threads",
                     "without": "1 thread", "ratio": paired_ratio(rates, f"{threads} threads", "1 thread"),
                     "rates": rates})
    for row in rows:
        print(f"  {size:8} {row['change']:28} with / without {row['ratio']:.2f}", flush=True)
    return rows


CATEGORIES = (  # (category, substrings of aten op names), first match wins; the optimizer goes by its range
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("norms", ("rms_norm", "layer_norm", "aten::rsqrt", "aten::pow", "aten::mean")),
    ("copies and layout", ("aten::copy_", "aten::clone", "aten::_to_copy", "aten::fill_", "aten::zero_",
                           "aten::empty", "aten::index", "aten::embedding", "aten::gather", "aten::scatter",
                           "aten::cat")),
)


def _phase(event) -> str:
    """"optimizer", "backward" or "forward": the ranges an operator ran under."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        if parent.name.startswith("autograd::engine"):
            return "backward"
        parent = parent.cpu_parent
    return "forward"


def profile_step(size: str, steps: int = 3) -> dict:
    """Self CPU time of eager training steps of ours: by phase (forward, backward, optimizer), by kind of
    operation (CATEGORIES; the optimizer's own operations counted as "optimizer"), and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    batch, context = BATCH[size], compare.SIZES[size]["context"]
    step = make_step(compare.build_pair("llama", size)[1], batch, context)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops)
    by_phase: dict[str, float] = {}
    by_category: dict[str, float] = {}
    by_op: dict[str, float] = {}
    for e in ops:
        share = e.self_cpu_time_total / total
        phase = _phase(e)
        by_phase[phase] = by_phase.get(phase, 0.0) + share
        category = "optimizer (AdamW)" if phase == "optimizer" else next(
            (c for c, names in CATEGORIES if any(n in e.name for n in names)), "elementwise and other")
        by_category[category] = by_category.get(category, 0.0) + share
        by_op[e.name] = by_op.get(e.name, 0.0) + share
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    return {"size": size, "steps": steps, "step_ms": total / 1e3 / steps, "by_phase": by_phase,
            "by_category": by_category, "top_ops": top}


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def to_markdown(data: dict) -> str:
    m, peak = data["machine"], data["peak"]
    before, after = peak["before"], peak.get("after", peak["before"])
    lines = [
        "# CPU training against the machine's limit",
        "",
        f"Machine: {m['cpu']}; torch {m['torch']}, transformers {m.get('transformers')}; **{data['threads']} "
        f"thread(s)**; load average {data['load_average_start']} at the start, {data.get('load_average_end')} "
        f"at the end (the machine is shared: rates are measured beside their reference, on "
        f"{data.get('clock', 'wall')} clock; other threads did {data.get('other_threads_cpu_share', 0):.1%} of the "
        f"timed steps' CPU work). Command: "
        f"`{data['command']}`.",
        "",
        f"**GEMM peak** (fp32 `torch.mm`, square, median rate of the best size): {before['peak'] / 1e9:.1f} "
        f"GFLOP/s before the steps, {after['peak'] / 1e9:.1f} after (by size: "
        + ", ".join(f"{n}: {r / 1e9:.1f}" for n, r in before["by_size"].items())
        + f"). Fractions below are of their mean, {data['peak_used'] / 1e9:.1f} GFLOP/s.",
        "",
    ]
    if data.get("efficiency"):
        lines += [
            "A training step (forward, backward, AdamW at its default) of the llama preset and of "
            "`LlamaForCausalLM` with the same weights, interleaved; FLOPs = 6 x N x tokens + 12 x layers x width x "
            "context x tokens (PaLM's accounting). \"Own GEMMs\": the rate of the step's matrix products alone, "
            "run back to back (what the step would reach if nothing else cost time).",
            "",
            "| size | layers x width, context, batch | N (matmul weights) | GFLOP a step | own GEMMs: GFLOP/s "
            "(of peak) | compiled | Llama: GFLOP/s (of peak) | ours: GFLOP/s (of peak) | ours / Llama |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["efficiency"]:
            s = compare.SIZES[r["size"]]
            own = data["own_gemms"][r["size"]]
            lines.append(
                f"| {r['size']} | {s['layers']} x {s['width']}, {r['context']}, {r['batch']} | "
                f"{r['matmul_weights'] / 1e6:.2f} M | {r['flops_per_step']['total'] / 1e9:.2f} | "
                f"{own / 1e9:.1f} ({own / data['peak_used']:.0%}) | {'yes' if r['compiled'] else 'no'} | "
                f"{r['ref_flops_s'] / 1e9:.1f} ({r['ref_fraction']:.0%}) | "
                f"{r['ours_flops_s'] / 1e9:.1f} (**{r['ours_fraction']:.0%}**) | {r['ratio']:.2f} |")
    if data.get("changes"):
        lines += ["", "**Changes**, each as ours with it / ours without, interleaved in one loop (median of "
                  "per-repeat ratios; > 1 is faster):", "", "| size | change | with / without |", "|---|---|---|"]
        for r in data["changes"]:
            lines.append(f"| {r['size']} | {r['change']} (vs {r['without']}) | **{r['ratio']:.2f}** |")
    prof = data.get("profile")
    if prof:
        lines += ["", f"**Profile** of the lowest fraction ({prof['size']}, ours, eager; `torch.profiler`, self CPU "
                  f"time of the aten operators over {prof['steps']} steps, {prof['step_ms']:.0f} ms a step under the "
                  "profiler). By phase: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(
                      prof["by_phase"].items(), key=lambda kv: -kv[1])) + ".", "",
                  "| where the time goes | share |", "|---|---|"]
        for category, share in sorted(prof["by_category"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {category} | {share:.1%} |")
        lines += ["", "| operator | share |", "|---|---|"]
        for key, share in prof["top_ops"]:
            lines.append(f"| `{key}` | {share:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", choices=list(compare.SIZES), default=list(SIZES))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    CLOCK["now"] = time.thread_time if args.threads == 1 else time.perf_counter
    command = "python benchmarks/bench_cpu_efficiency.py" + "".join(
        f" --{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k != "out" and v != parser.get_default(k))
    data: dict = {"command": command, "threads": args.threads, "machine": compare.machine(),
                  "load_average_start": round(os.getloadavg()[0], 2)}
    print(f"GEMM peak at {args.threads} thread(s)...", flush=True)
    data["peak"] = {"before": gemm_peak()}
    data["own_gemms"] = {}
    for size in args.sizes:
        _, ours = compare.build_pair("llama", size)
        data["own_gemms"][size] = shapes_rate(step_gemm_shapes(ours, BATCH[size] * compare.SIZES[size]["context"]))
    if "efficiency" in args.sections:
        data["efficiency"] = [row for size in args.sizes for row in efficiency_rows(
            size, data["peak"]["before"]["peak"], args.repeats)]
    if "changes" in args.sections:
        data["changes"] = [row for size in args.sizes for row in change_rows(size, args.repeats, args.threads)]
    data["peak"]["after"] = gemm_peak()
    data["peak_used"] = (data["peak"]["before"]["peak"] + data["peak"]["after"]["peak"]) / 2
    for row in data.get("efficiency", []):  # against the mean of the two peak measurements
        for side in ("ref", "ours"):
            row[f"{side}_fraction"] = row[f"{side}_flops_s"] / data["peak_used"]
    if "profile" in args.sections and data.get("efficiency"):
        lowest = min((r for r in data["efficiency"] if not r["compiled"]), key=lambda r: r["ours_fraction"])
        data["profile"] = profile_step(lowest["size"])
    data["load_average_end"] = round(os.getloadavg()[0], 2)
    data["clock"] = "thread CPU time" if args.threads == 1 else "wall"
    data["other_threads_cpu_share"] = 1 - OTHER_THREADS["thread_cpu_s"] / max(OTHER_THREADS["cpu_s"], 1e-9)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("cpu_efficiency" + (f"_threads{args.threads}" if args.threads != 1 else ""))
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(data))
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
