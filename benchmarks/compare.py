"""Side-by-side speed and memory: scratchformer against transformers' own Llama and GPT-2.

    python benchmarks/compare.py --suite cpu [--quick] [--out benchmarks/results]
    python benchmarks/compare.py --suite gpu            # needs CUDA; bf16, adds 124M and MFU

Every comparison builds the reference (`LlamaForCausalLM` for the llama preset, `GPT2LMHeadModel`
for gpt2) and converts it with `training.convert.convert_model`, so both hold identical weights.
Shared machines are noisy, so a lone time means little: runs alternate reference/ours (swapping
the order every repeat), each side's median is kept, and the headline number is the median of the
per-repeat ratios ours/reference (> 1 means scratchformer is faster, or for memory, uses more).

Peak memory is measured in a fresh subprocess per model and task (CPU: peak resident memory above
the process's size after imports, i.e. what the model, its optimizer and activations added; GPU:
`torch.cuda.max_memory_allocated`), so one model's allocations never hide the other's.

Writes compare_<suite>.json (every number), .md (the table) and .png (the plot) under --out.
Not part of the test suite; tests/test_benchmark_harness.py runs its functions on toy sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.training.library.convert import (
    convert_model,
    gpt2_config_to_scratchformer,
    llama_config_to_scratchformer,
)

# (layers, width, heads, context, vocab). The 124M size is GPT-2 small; it only runs on GPU.
SIZES = {
    "tiny": dict(layers=4, width=128, heads=4, context=128, vocab=8192),
    "baby": dict(layers=6, width=384, heads=6, context=256, vocab=8192),
    # baby with GPT-2's vocabulary: where the LM head and its loss are most of a training step.
    "baby-50k": dict(layers=6, width=384, heads=6, context=256, vocab=50304),
    "124m": dict(layers=12, width=768, heads=12, context=1024, vocab=50304),
}
PRESETS = ("llama", "gpt2")
# Dense bf16 tensor-core peak, for model FLOPs utilisation; override with --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# ----------------------------------------------------------------------------------------------
# Building the pair
# ----------------------------------------------------------------------------------------------


def reference_config(preset: str, size: str, context: int | None = None):
    s = SIZES[size]
    ctx = max(context or 0, s["context"])
    if preset == "llama":
        return LlamaConfig(
            vocab_size=s["vocab"], hidden_size=s["width"], intermediate_size=32 * -(-(8 * s["width"] // 3) // 32),
            num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
            max_position_embeddings=ctx, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    return GPT2Config(
        vocab_size=s["vocab"], n_embd=s["width"], n_layer=s["layers"], n_head=s["heads"], n_positions=ctx,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        # Dropout off on both sides: we time the arithmetic, not the random masks.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def build_reference(preset: str, size: str, context: int | None = None):
    config = reference_config(preset, size, context)
    return (LlamaForCausalLM if preset == "llama" else GPT2LMHeadModel)(config)


def build_pair(preset: str, size: str, attn: str = "sdpa", dtype=torch.float32, device="cpu", context=None,
               fused: bool = True):
    """The reference and its scratchformer conversion: same sizes, same weights, same attention kernel.
    `fused`: our training steps use the fused LM head + loss, as `scratchformer pretrain` trains
    (False: the config's default, whose training outputs carry logits like the reference's)."""
    torch.manual_seed(0)
    ref = build_reference(preset, size, context)
    ref.set_attn_implementation(attn)
    ours = convert_model(ref)
    ours.config.fused_lm_loss = fused
    ours.set_attn_implementation(attn)
    return ref.to(device=device, dtype=dtype), ours.to(device=device, dtype=dtype)


def build_one(side: str, preset: str, size: str, attn: str, dtype, device, context=None, fused: bool = True):
    """One side only (for memory): ours is built straight from the converted config, so the
    reference's weights never count against it."""
    torch.manual_seed(0)
    config = reference_config(preset, size, context)
    if side == "ref":
        model = (LlamaForCausalLM if preset == "llama" else GPT2LMHeadModel)(config)
    else:
        to_ours = llama_config_to_scratchformer if preset == "llama" else gpt2_config_to_scratchformer
        ours_config = to_ours(config)
        ours_config.fused_lm_loss = fused
        model = ScratchformerForCausalLM(ours_config)
    model.set_attn_implementation(attn)
    return model.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The work being timed
# ----------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_train_step(model, batch: int, context: int, device: str, compile_: bool = False) -> Callable[[], int]:
    """Forward + backward + AdamW on one (batch, context) block; returns the tokens processed."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    ids = torch.randint(3, model.config.vocab_size, (batch, context), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))
    forward = torch.compile(model) if compile_ else model

    def step() -> int:
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * context

    return step


def _generate(model, prompt, new_tokens: int):
    return model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, pad_token_id=0, eos_token_id=2,
    )


def make_prefill(model, batch: int, context: int, device: str) -> Callable[[], int]:
    """generate() of one token from a `context`-long prompt: the prompt's forward pass dominates."""
    model.eval()
    prompt = torch.randint(3, model.config.vocab_size, (batch, context), device=device,
                           generator=torch.Generator(device=device).manual_seed(2))

    @torch.no_grad()
    def step() -> int:
        _generate(model, prompt, 1)
        return batch * context

    return step


def make_decode(model, batch: int, new_tokens: int, device: str, prompt_len: int = 8) -> Callable[[], int]:
    """generate() of `new_tokens` greedy tokens from a short prompt, through the KV cache."""
    model.eval()
    prompt = torch.randint(3, model.config.vocab_size, (batch, prompt_len), device=device,
                           generator=torch.Generator(device=device).manual_seed(3))

    @torch.no_grad()
    def step() -> int:
        _generate(model, prompt, new_tokens)
        return batch * new_tokens

    return step


# ----------------------------------------------------------------------------------------------
# Interleaved timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    preset: str
    size: str
    task: str
    attn: str
    compiled: bool
    batch: int
    context: int
    unit: str = "tokens/s"
    ref: float = 0.0
    ours: float = 0.0
    ratio: float = 0.0  # ours / ref, median over repeats
    ref_all: list = field(default_factory=list)
    ours_all: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def interleave(steps: dict[str, Callable[[], int]], repeats: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Alternate the two sides, reversing the order every repeat so slow drifts hit both equally.
    Returns each side's tokens/s per repeat."""
    for _ in range(warmup):
        for name in steps:
            steps[name]()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            tokens = steps[name]()
            sync(device)
            rates[name].append(tokens / (time.perf_counter() - start))
    return rates


def summarise(row: Row, rates: dict[str, list[float]]) -> Row:
    row.ref_all, row.ours_all = rates["ref"], rates["ours"]
    row.ref, row.ours = statistics.median(rates["ref"]), statistics.median(rates["ours"])
    row.ratio = statistics.median(o / r for o, r in zip(rates["ours"], rates["ref"]))
    return row


def time_pair(section, preset, size, task, *, attn="sdpa", compiled=False, batch=1, context=None, new_tokens=32,
              repeats=5, warmup=1, device="cpu", dtype=torch.float32, peak_tflops=None, fused=True) -> Row:
    context = context or SIZES[size]["context"]
    ref, ours = build_pair(preset, size, attn, dtype, device, context, fused)
    makers = {
        "train": lambda m: make_train_step(m, batch, context, device, compiled),
        "prefill": lambda m: make_prefill(m, batch, context, device),
        "decode": lambda m: make_decode(m, batch, new_tokens, device),
    }
    steps = {"ref": makers[task](ref), "ours": makers[task](ours)}
    # Compiling is a one-off cost: give it more warm-up so recompiles stay out of the timing.
    rates = interleave(steps, repeats, warmup + (2 if compiled else 0), device)
    row = summarise(Row(section, preset, size, task, attn, compiled, batch,
                        context if task != "decode" else new_tokens), rates)
    if task == "train" and peak_tflops:
        s = SIZES[size]
        n_params = sum(p.numel() for p in ours.parameters())
        # PaLM's accounting: 6N per token for the matmuls, plus 12 * layers * width * context for attention.
        flops_per_token = 6 * n_params + 12 * s["layers"] * s["width"] * context
        row.extra = {f"mfu_{k}": getattr(row, k) * flops_per_token / (peak_tflops * 1e12) for k in ("ref", "ours")}
    return row


# ----------------------------------------------------------------------------------------------
# Peak memory, one fresh process per side
# ----------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory_here(side, preset, size, task, attn, batch, context, device, dtype_name, fused=True) -> float:
    """Runs in the child: MB that building `side` and running `task` twice added on top of the process
    as it stood after imports. CPU: peak resident memory, sampled every millisecond by a thread
    (ru_maxrss alone cannot tell the model's peak from the import's); GPU: max_memory_allocated."""
    import threading

    dtype = getattr(torch, dtype_name)
    cuda = device.startswith("cuda")
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_one(side, preset, size, attn, dtype, device, context, fused)
    step = {
        "train": lambda: make_train_step(model, batch, context, device),
        "prefill": lambda: make_prefill(model, batch, context, device),
        "decode": lambda: make_decode(model, batch, 16, device),
    }[task]()
    for _ in range(2):
        step()
    sync(device)
    done.set()
    sampler.join()
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return max(peak[0], _rss_mb()) - base


def memory_pair(section, preset, size, task, *, attn="sdpa", batch=1, context=None, device="cpu",
                dtype_name="float32", threads=2, fused=True) -> Row:
    context = context or SIZES[size]["context"]
    values = {}
    for side in ("ref", "ours"):
        spec = json.dumps(dict(side=side, preset=preset, size=size, task=task, attn=attn, batch=batch,
                               context=context, device=device, dtype_name=dtype_name, threads=threads,
                               fused=fused))
        out = subprocess.run([sys.executable, __file__, "--memory-child", spec], capture_output=True, text=True,
                             check=True)
        values[side] = json.loads(out.stdout.strip().splitlines()[-1])["mb"]
    row = Row(section, preset, size, task, attn, False, batch, 16 if task == "decode" else context, unit="MB peak")
    row.ref, row.ours = values["ref"], values["ours"]
    row.ratio = values["ours"] / values["ref"]
    return row


# ----------------------------------------------------------------------------------------------
# Suites
# ----------------------------------------------------------------------------------------------


def plan(suite: str, quick: bool) -> list[tuple[Callable, tuple, dict]]:
    """Every measurement of a suite, as (function, args, kwargs)."""
    gpu = suite == "gpu"
    dev = dict(device="cuda", dtype=torch.bfloat16) if gpu else dict(device="cpu")
    # Headline rows carry the targets: more repeats, so one noisy repeat cannot move the median.
    reps = dict(repeats=3 if quick else 9)
    sweep = dict(repeats=3 if quick else 5)
    mem = dict(device="cuda", dtype_name="bfloat16") if gpu else dict(device="cpu")
    jobs: list[tuple[Callable, tuple, dict]] = []
    heads = ["baby", "124m"] if gpu and not quick else ["baby"]
    attns = ["eager", "sdpa", "flash_attention_2"] if gpu else ["eager", "sdpa"]
    if gpu:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            attns.remove("flash_attention_2")
    for preset in PRESETS:
        # Headline: the sizes the targets are stated for.
        for size in heads:
            train_batch = 8 if gpu else 2
            jobs.append((time_pair, ("headline", preset, size, "train"), dict(batch=train_batch, **dev, **reps)))
            jobs.append((time_pair, ("headline", preset, size, "prefill"), dict(batch=1, **dev, **reps)))
            for b in (1, 8):
                jobs.append((time_pair, ("headline", preset, size, "decode"),
                             dict(batch=b, new_tokens=8 if quick else 16, **dev, **reps)))
            if not quick:  # our config's default: training outputs carry the full logits, as the reference's do
                jobs.append((time_pair, ("unfused", preset, size, "train"),
                             dict(batch=train_batch, fused=False, **dev, **sweep)))
        if quick:
            continue
        # Growth with context length (fixed tokens per step, so tokens/s compare across rows) and batch.
        contexts = [128, 512, 2048, 8192] if gpu else [128, 512, 2048]
        tokens = 16384 if gpu else 2048
        for ctx in contexts:
            jobs.append((time_pair, ("context", preset, "tiny", "train"),
                         dict(batch=max(1, tokens // ctx), context=ctx, **dev, **sweep)))
            jobs.append((time_pair, ("context", preset, "tiny", "prefill"),
                         dict(batch=1, context=ctx, **dev, **sweep)))
            jobs.append((memory_pair, ("context-memory", preset, "tiny", "train"),
                         dict(batch=max(1, tokens // ctx), context=ctx, **mem)))
        for b in (1, 16):
            jobs.append((time_pair, ("batch", preset, "tiny", "train"), dict(batch=b, **dev, **sweep)))
        if not gpu:  # on GPU the 124M rows have this vocabulary already
            jobs.append((time_pair, ("vocab", preset, "baby-50k", "train"), dict(batch=2, **dev, **sweep)))
        # Attention kernels, eager and compiled. On CPU only llama, and compiled only with sdpa:
        # inductor takes about a minute per model there.
        if preset == "llama" or gpu:
            for attn in attns:
                for compiled in (False, True) if gpu or attn == "sdpa" else (False,):
                    jobs.append((time_pair, ("kernels", preset, "tiny", "train"),
                                 dict(attn=attn, compiled=compiled, batch=4, **dev, **sweep)))
    for preset in PRESETS:
        for size in heads:
            jobs.append((memory_pair, ("memory", preset, size, "train"), dict(batch=8 if gpu else 2, **mem)))
            if not quick:
                jobs.append((memory_pair, ("memory", preset, size, "decode"), dict(batch=8, **mem)))
                jobs.append((memory_pair, ("unfused", preset, size, "train"),
                             dict(batch=8 if gpu else 2, fused=False, **mem)))
        if not gpu and not quick:
            jobs.append((memory_pair, ("vocab", preset, "baby-50k", "train"), dict(batch=2, **mem)))
    return jobs


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = f"{names[0]} ({os.cpu_count()} cores visible)" if names else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def to_markdown(rows: list[Row], info: dict, command: str) -> str:
    lines = [
        f"Machine: {info.get('gpu') or info['cpu']}; torch {info['torch']}, transformers {info.get('transformers')},"
        f" {info['threads']} threads. Command: `{command}`.",
        "",
        "ratio = ours / reference (median of per-repeat ratios; speed: > 1 is faster, memory: < 1 is smaller).",
        "Our training rows use the fused LM head + loss, as `scratchformer pretrain` trains; the `unfused` rows "
        "use the config's default (`fused_lm_loss=False`: training outputs carry the full logits, as the "
        "reference's do).",
        "",
        "| section | preset | size | task | attn | compiled | batch | context / new tokens | unit | reference | "
        "scratchformer | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = "".join(f" ({k} {v:.1%})" for k, v in r.extra.items())
        lines.append(
            f"| {r.section} | {r.preset} | {r.size} | {r.task} | {r.attn} | {'yes' if r.compiled else 'no'} | "
            f"{r.batch} | {r.context} | {r.unit} | {r.ref:,.0f} | {r.ours:,.0f} | **{r.ratio:.2f}**{extra} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    # 1. Headline ratios against their targets.
    head = [r for r in rows if r.section in ("headline", "memory", "vocab")]
    memory = [r.unit == "MB peak" for r in head]
    labels = [f"{r.preset} {r.size}\n{r.task}" + (f" b{r.batch}" if r.task == "decode" else "")
              + (" mem" if m else "") for r, m in zip(head, memory)]
    targets = [1.15 if r.task == "train" and not m else 1.0 for r, m in zip(head, memory)]
    colors = []
    for r, t, m in zip(head, targets, memory):
        met = r.ratio <= 1.0 if m else r.ratio >= t
        colors.append("tab:green" if met else "tab:red")
    ax = axes[0]
    ax.barh(range(len(head)), [r.ratio for r in head], color=colors)
    ax.scatter(targets, range(len(head)), marker="|", s=300, color="black", zorder=3, label="target")
    for y, r in enumerate(head):
        ax.text(0.02, y, f"{r.ratio:.2f}", va="center", fontsize=8, color="white", weight="bold")
    ax.set_yticks(range(len(head)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("scratchformer / reference (memory: lower is better)")
    ax.set_title("Headline ratios (green = target met)")
    ax.legend(loc="lower right", fontsize=8)
    # 2 and 3. Growth with context (training and prefill tokens/s), both sides.
    for ax, task in zip(axes[1:], ("train", "prefill")):
        for preset, style in zip(PRESETS, ("o", "s")):
            pts = sorted((r.context, r.ref, r.ours) for r in rows
                         if r.section == "context" and r.preset == preset and r.task == task)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], style + "--", color="tab:blue", label=f"{preset} reference")
            ax.plot(xs, [p[2] for p in pts], style + "-", color="tab:orange", label=f"{preset} scratchformer")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tiny size, fixed tokens per step)")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{task} throughput vs context")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured in this run (--quick)", ha="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_suite(suite: str, quick: bool, out: Path, threads: int = 2, peak_tflops: float | None = None,
              jobs: list | None = None, command: str = "", sections: list[str] | None = None) -> list[Row]:
    torch.set_num_threads(threads)
    if suite == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs CUDA; use --suite cpu here.")
    if suite == "gpu" and peak_tflops is None:
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    jobs = plan(suite, quick) if jobs is None else jobs
    if sections:  # a part of the suite, written beside the full one (compare_cpu_unfused.md, ...)
        jobs = [job for job in jobs if job[1][0] in sections]
    rows: list[Row] = []
    start = time.perf_counter()
    for i, (fn, args, kwargs) in enumerate(jobs):
        if fn is time_pair and suite == "gpu" and args[2] == "124m" and args[3] == "train":
            kwargs = {**kwargs, "peak_tflops": peak_tflops}
        if fn is memory_pair:
            kwargs = {**kwargs, "threads": threads}
        row = fn(*args, **kwargs)
        rows.append(row)
        print(f"[{i + 1}/{len(jobs)} {time.perf_counter() - start:5.0f}s] {row.section:8} {row.preset:5} {row.size:4} "
              f"{row.task:7} {row.attn:5} c={int(row.compiled)} b={row.batch:<2} L={row.context:<4} "
              f"ref {row.ref:10,.0f} ours {row.ours:10,.0f} {row.unit:8} ratio {row.ratio:.2f}", flush=True)
    info = machine()
    info["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compare_{suite}{'_quick' if quick else ''}{''.join('_' + x for x in sections or [])}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "command": command, "rows": [asdict(r) for r in rows]}, indent=1))
    stem.with_suffix(".md").write_text(to_markdown(rows, info, command))
    plot(rows, stem.with_suffix(".png"), f"scratchformer vs transformers, {suite} suite, "
                                         f"{info.get('gpu') or info['cpu']}, {threads} threads")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="headline rows only, fewer repeats (~2 min on CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak, for MFU")
    parser.add_argument("--replot", type=Path, help="redraw the .md and .png of an existing results .json")
    parser.add_argument("--sections", nargs="+", help="only these sections of the suite (e.g. headline unfused)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        spec = json.loads(args.memory_child)
        torch.set_num_threads(spec.pop("threads"))
        print(json.dumps({"mb": measure_memory_here(**spec)}))
        return 0
    if args.replot:
        data = json.loads(args.replot.read_text())
        rows = [Row(**r) for r in data["rows"]]
        info = data["machine"]
        args.replot.with_suffix(".md").write_text(to_markdown(rows, info, data["command"]))
        plot(rows, args.replot.with_suffix(".png"), f"scratchformer vs transformers, {args.replot.stem}, "
                                                    f"{info.get('gpu') or info['cpu']}, {info['threads']} threads")
        return 0
    command = "python benchmarks/compare.py --suite " + args.suite + (" --quick" if args.quick else "")
    if args.threads != 2:
        command += f" --threads {args.threads}"
    if args.sections:
        command += " --sections " + " ".join(args.sections)
    run_suite(args.suite, args.quick, args.out, args.threads, args.peak_tflops, command=command,
              sections=args.sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
