"""Time to target: which optimizer and schedule reach a given quality soonest, at nanoGPT's budget.

Tiny Shakespeare with nanoGPT's split and character budget (`bench_pretrain_shakespeare.py`: the
model of nanoGPT's CPU recipe, 4 x 128, 4 heads, context 64 tokens, batch 12, BPE 512 whose blocks
span ~122 characters, 1,536,000 training characters). Every recipe trains the same model on the
same blocks in the same order (per seed), evaluating the whole validation split every
`--eval_every` steps, and reports:

- the final validation bits/byte at the budget;
- the steps, training characters, tokens and training time (evaluation excluded) at which
  validation first reaches nanoGPT's final figure, 1.88 nats/char = 2.712 bits/byte;
- bits/byte of the final model on two held-out texts no recipe is tuned on (`heldout.py`: four
  Shakespeare plays absent from Tiny Shakespeare, and Milton's *Paradise Lost*), read once per run;
- what its attention heads do (`scratchformer.training.library.head_scores`): mean normalised
  entropy, the strongest previous-token, first-token and induction heads, and the in-context score,
  on the first 64 tokens of the validation text and on 31 random tokens repeated;

each as mean and spread (min-max) over `--seeds`. Recipes are chosen on validation; the held-out
columns judge the choice. Seeds change the weights, the data order and
dropout-free noise alike. Runs go in parallel processes (`--workers`, one torch thread each):

    .venv/bin/python benchmarks/bench_recipes.py                          # every recipe, 3 seeds
    .venv/bin/python benchmarks/bench_recipes.py --recipes muon-wsd --seeds 1
    .venv/bin/python benchmarks/bench_recipes.py --step_cost 40              # AdamW vs Muon, per step

Writes `recipes_shakespeare.json`, `.md` (the table) and `.png` (validation bits/byte against
training characters, every recipe on one chart, the mean over seeds) under `--out`, merging with
the recipes already there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench_pretrain_shakespeare import split  # nanoGPT's 90/10 split, the same file
from heldout import heldout_texts

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
BUDGET_CHARS = 12 * 64 * 2000  # nanoGPT's CPU recipe: batch x context x iterations
NANOGPT_NATS_PER_CHAR = 1.88
TARGET_BPB = NANOGPT_NATS_PER_CHAR / math.log(2)  # 2.712: the file is ASCII, so bytes are characters

MODEL = dict(preset="llama", num_hidden_layers=4, hidden_size=128, num_attention_heads=4, dropout=0.0,
             per_device_train_batch_size=12, block_size=64, weight_decay=0.1, num_warmup_steps=100)  # fmt: skip
VOCAB = 512
HELDOUT = ("plays", "milton")  # heldout.py's texts
HEAD_KEYS = ("heads_entropy_mean", "heads_previous_token_max", "heads_first_token_max", "heads_induction_max",
             "in_context_score")  # fmt: skip
# name -> the flags that differ between recipes, each spelled out (pretrain's defaults may change:
# adamw-cosine was its default when this benchmark was written, muon-wsd40-2e-3 in 0.3).
MUON_0_3 = dict(optimizer="muon", query_key_optimizer="muon")  # 0.3's Muon: every matrix of the blocks
RECIPES: dict[str, dict] = {
    "adamw-cosine": dict(optimizer="adamw", lr_scheduler_type="cosine", learning_rate=1e-3),
    "adamw-wsd": dict(optimizer="adamw", lr_scheduler_type="wsd", learning_rate=1e-3, lr_decay_fraction=0.2),
    "adamw-cosine-2e-3": dict(optimizer="adamw", lr_scheduler_type="cosine", learning_rate=2e-3),
    "adamw-wsd-2e-3": dict(optimizer="adamw", lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.2),
    "muon-wsd": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=1e-3, lr_decay_fraction=0.2),
    "muon-wsd-2e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.2),
    "muon-wsd-4e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=4e-3, lr_decay_fraction=0.2),
    "muon-cosine-2e-3": dict(**MUON_0_3, lr_scheduler_type="cosine", learning_rate=2e-3),
    "muon-wsd-3e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=3e-3, lr_decay_fraction=0.2),
    "muon-wsd40-2e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.4),
    "muon-wsd40-3e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=3e-3, lr_decay_fraction=0.4),
    "muon-wsd60-2e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.6),
    "adamw-wsd40-2e-3": dict(optimizer="adamw", lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.4),
    "muon-wsd40-2.5e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=2.5e-3, lr_decay_fraction=0.4),
    "muon-wsd40-2e-3-wu50": dict(
        **MUON_0_3, lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.4, num_warmup_steps=50
    ),
    "muon-wsd40-2.5e-3-wu50": dict(
        **MUON_0_3, lr_scheduler_type="wsd", learning_rate=2.5e-3, lr_decay_fraction=0.4, num_warmup_steps=50
    ),
    "muon-wsd50-2.5e-3": dict(**MUON_0_3, lr_scheduler_type="wsd", learning_rate=2.5e-3, lr_decay_fraction=0.5),
    "muon-wsd40-2e-3-wd0": dict(
        **MUON_0_3, lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.4, weight_decay=0.0
    ),
    "muon-wsd40-2.5e-3-wd0": dict(
        **MUON_0_3, lr_scheduler_type="wsd", learning_rate=2.5e-3, lr_decay_fraction=0.4, weight_decay=0.0
    ),    # Since 0.4 Muon leaves the query and key projections to AdamW (the new default); the recipes above pin
    # the earlier split (Muon on every matrix of the blocks) so that their rows stay reproducible.
    "muon-qkadamw-wsd40-2e-3": dict(
        optimizer="muon", query_key_optimizer="adamw", lr_scheduler_type="wsd", learning_rate=2e-3,
        lr_decay_fraction=0.4,
    ),
    # The default split at twice its learning rate: does the recipe's 2e-3 still sit at the optimum once q and k
    # are AdamW's (mini's own sweep, at context 256, found 4e-3)?
    "muon-qkadamw-wsd40-4e-3": dict(
        optimizer="muon", query_key_optimizer="adamw", lr_scheduler_type="wsd", learning_rate=4e-3,
        lr_decay_fraction=0.4,
    ),
    "muon-qknorm-wsd40-2e-3": dict(
        **MUON_0_3, qk_norm=True, lr_scheduler_type="wsd", learning_rate=2e-3,
        lr_decay_fraction=0.4,
    ),
    # The qwen3 preset (Llama's block with QK-norm) under the default recipe's schedule, at its own learning
    # rate: QK-norm is said to take higher ones. q/k adamw is the default split; q/k muon, 0.3's, is the
    # other (with QK-norm the projections' norms no longer set the logits' scale, so Muon may do there).
    **{
        f"qwen3-qk{split}-wsd40-{lr}": dict(
            preset="qwen3", optimizer="muon", query_key_optimizer=split, lr_scheduler_type="wsd",
            learning_rate=float(lr), lr_decay_fraction=0.4,
        )
        for split in ("adamw", "muon") for lr in ("2e-3", "3e-3", "4e-3", "6e-3", "8e-3")
    },
}


PROBE_CHARS = 2000  # the head-score probe: the validation text's start, cut to the model's 64 positions


def judge(model_dir: Path, work: Path) -> dict:
    """The final model's held-out bits/byte and head scores."""
    from transformers import AutoTokenizer

    from scratchformer.modeling import ScratchformerForCausalLM
    from scratchformer.training.library.evaluation import EvalConfig, evaluate_checkpoint
    from scratchformer.training.library.head_scores import head_scores

    heldout = {}
    for name in HELDOUT:
        cfg = EvalConfig(model=str(model_dir), validation_files=[str(work / f"{name}.txt")],
                         block_size=MODEL["block_size"], per_device_eval_batch_size=32)  # fmt: skip
        heldout[name] = evaluate_checkpoint(cfg, device="cpu")["eval_bpb"]
    model = ScratchformerForCausalLM.from_pretrained(model_dir)
    probe = (work / "val.txt").read_text(encoding="utf-8")[:PROBE_CHARS]
    heads = head_scores(model, AutoTokenizer.from_pretrained(model_dir), text=probe)
    return {"heldout_bpb": heldout, "heads": heads.to_dict()}


def run_one(recipe: str, seed: int, work: str, steps: int, chars_per_step: float, eval_every: int,
            threads: int) -> dict:  # fmt: skip
    """One training run in this (worker) process; its validation curve, training time and the
    final model's held-out figures and head scores."""
    import torch

    torch.set_num_threads(threads)
    from scratchformer.training.library.pretraining import PretrainConfig, train

    out = Path(work) / f"run-{recipe}-{seed}"
    cfg = PretrainConfig(
        train_files=[str(Path(work) / "train.txt")], validation_files=[str(Path(work) / "val.txt")],
        tokenizer=str(Path(work) / "tokenizer"), output_dir=str(out), max_train_steps=steps,
        logging_steps=eval_every, eval_steps=eval_every, save_steps=steps, report_to="none", seed=seed,
        **{**MODEL, **RECIPES[recipe]},
    )  # fmt: skip
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Training time up to each evaluation: the logged throughput over each logging interval, so
    # evaluation and saving are left out (they are the same for every recipe).
    seconds, clock, last_step, tokens_per_step = {}, 0.0, 0, 12 * 64
    for r in records:
        if "tokens_per_s" in r and r["tokens_per_s"]:
            clock += (r["step"] - last_step) * tokens_per_step / r["tokens_per_s"]
            last_step = r["step"]
        if "eval_bpb" in r:
            seconds[r["step"]] = clock
    curve = [{"step": r["step"], "chars": round(r["step"] * chars_per_step), "tokens": r["step"] * tokens_per_step,
              "train_seconds": round(seconds[r["step"]], 2), "val_bpb": r["eval_bpb"]}
             for r in records if "eval_bpb" in r]  # fmt: skip
    return {"recipe": recipe, "seed": seed, "steps": steps, "final_val_bpb": result["eval_bpb"],
            "train_seconds": round(clock, 1), "wall_seconds": round(wall, 1), "curve": curve,
            **judge(out / "model", Path(work))}  # fmt: skip


def first_reaching(curve: list[dict], target: float) -> dict | None:
    return next((point for point in curve if point["val_bpb"] <= target), None)


def summarise(runs: list[dict], steps: int) -> dict:
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}

    reached = [first_reaching(r["curve"], TARGET_BPB) for r in runs]
    out = {"seeds": [r["seed"] for r in runs], "final_val_bpb": stats([r["final_val_bpb"] for r in runs]),
           "reached_target": sum(p is not None for p in reached)}  # fmt: skip
    judged = [r for r in runs if "heads" in r]  # runs from before the judges have neither
    if judged:
        out["judged_seeds"] = len(judged)
        for name in HELDOUT:
            out[f"heldout_{name}_bpb"] = stats([r["heldout_bpb"][name] for r in judged])
        for key in HEAD_KEYS:
            out[key] = stats([r["heads"]["summary"][key] for r in judged])
    if all(reached):
        for key in ("step", "chars", "tokens", "train_seconds"):
            out[f"target_{key}"] = stats([p[key] for p in reached])
        out["target_fraction_of_budget"] = stats([p["step"] / steps for p in reached])
    return out


def write_markdown(path: Path, data: dict, command: str) -> None:
    m = data["machine"]
    lines = [
        "# Time to target: optimizers and schedules at nanoGPT's budget (Tiny Shakespeare)",
        "",
        f"Model: 4 layers x 128, 4 heads, Llama family (qwen3-*: the qwen3 preset, Llama's with QK-norm), no "
        f"dropout, BPE {VOCAB} (~{data['chars_per_token']:.2f} "
        f"chars/token), context 64 tokens, batch 12, {data['steps']} steps = {data['budget']:,} training characters "
        "(nanoGPT's CPU budget); 100 warmup steps (wu50: 50); weight decay 0.1; WSD decays linearly to 0 over "
        "the last 20 % (wsd40, wsd60: 40 %, 60 %), "
        f"cosine to 10 % of the peak. Validation (nanoGPT's last 10 %) every {data['eval_every']} steps. Target: "
        f"nanoGPT's final {NANOGPT_NATS_PER_CHAR} nats/char = {TARGET_BPB:.3f} bits/byte. Mean over seeds, "
        "[min, max] in brackets.",
        "",
        "| recipe | optimizer | schedule | peak lr | seeds | final val bits/byte | steps to target | % of budget | "
        "training chars to target | train time to target | train time, full run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(data["summary"].items(), key=lambda kv: kv[1]["final_val_bpb"]["mean"])
    for name, s in rows:
        spec, f = RECIPES.get(name, {}), s["final_val_bpb"]
        final = f"**{f['mean']:.3f}** [{f['min']:.3f}, {f['max']:.3f}]"
        if "target_step" in s:
            st, fr = s["target_step"], s["target_fraction_of_budget"]
            ch, ts = s["target_chars"], s["target_train_seconds"]
            to_target = (f"{st['mean']:.0f} [{st['min']:.0f}, {st['max']:.0f}] | {fr['mean']:.0%} | "
                         f"{ch['mean'] / 1e6:.2f} M | {ts['mean']:.0f} s")  # fmt: skip
        else:
            to_target = f"not reached ({s['reached_target']}/{len(s['seeds'])} seeds) | | |"
        full = statistics.fmean(r["train_seconds"] for r in data["runs"] if r["recipe"] == name)
        lines.append(f"| {name} | {optimizer_label(spec)} | {spec.get('lr_scheduler_type')} | "
                     f"{spec.get('learning_rate'):g} | {len(s['seeds'])} | {final} | {to_target} | "
                     f"{full:.0f} s |")  # fmt: skip
    judged = [(name, s) for name, s in rows if "judged_seeds" in s]
    if judged:
        lines += [
            "",
            "The final models judged on text no recipe was tuned on, and their attention heads (each figure the mean "
            "over the judged seeds, [min, max]; `heldout.py`, `scratchformer.training.library.head_scores`). "
            "Held-out bits/byte: four Shakespeare plays absent from Tiny Shakespeare (Macbeth, Othello, Twelfth "
            "Night, Julius Caesar) and Milton's *Paradise Lost*. Heads, on the first 64 tokens of the validation "
            "text: mean normalised attention entropy (1 = uniform), the strongest previous-token and first-token "
            "heads' scores (a uniform head: 0.06), the strongest induction head (31 random tokens repeated; "
            "uniform: 0.02) and the in-context score (nats gained on the repeat).",
            "",
            "| recipe | seeds | val bits/byte | held-out: plays | held-out: Milton | mean entropy | previous-token "
            "| first-token | induction | in-context |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in sorted(judged, key=lambda kv: kv[1]["heldout_plays_bpb"]["mean"]):
            cells = [_cell(s[key], bold=key.startswith("heldout")) for key in
                     ("final_val_bpb", "heldout_plays_bpb", "heldout_milton_bpb", *HEAD_KEYS)]
            lines.append(f"| {name} | {s['judged_seeds']} | " + " | ".join(cells) + " |")
    cost = data.get("step_cost")
    if cost:
        lines += [
            "",
            f"Cost of a step: {cost['adamw_ms']:.1f} ms with AdamW, {cost['muon_ms']:.1f} ms with Muon (median of "
            f"{cost['steps']} interleaved steps of this model, one thread; Muon / AdamW = "
            f"{cost['muon_over_adamw']:.2f}x per step, the median of paired ratios): the Newton-Schulz "
            "iterations in bfloat16 are extra matrix products per hidden matrix per step.",
        ]
    lines += [
        "",
        "![Validation bits/byte against training characters, every recipe](recipes_shakespeare.png)",
        "",
        "Train time is the training steps alone (evaluation and saving excluded), from the throughput each run "
        f"logged. Machine: {m['cpus']} CPU cores ({m['platform']}), torch {m['torch']}, one torch thread per run, "
        f"{m['workers']} runs at a time; load average {m['load_average']} at the start; the machine was shared, "
        "so times are indicative and steps/characters are the figures to compare.",
        "",
        "Commands (the table merges their runs; a recipe's seeds may come from two of them; the first ran the "
        "eight recipes the script had then):",
        "",
        *[f"    {c}" for c in data.get("commands", [command])],
        "",
    ]
    path.write_text("\n".join(lines))


def optimizer_label(spec: dict) -> str:
    """"muon" for 0.3's Muon (every matrix of the blocks), "muon, q/k adamw" for 0.4's, "+ QK-norm"."""
    label = spec.get("optimizer", "")
    if label == "muon" and spec.get("query_key_optimizer") == "adamw":
        label += ", q/k adamw"
    return label + (" + QK-norm" if spec.get("qk_norm") or spec.get("preset") == "qwen3" else "")


def _cell(figure: dict, bold: bool = False) -> str:
    mean = f"**{figure['mean']:.3f}**" if bold else f"{figure['mean']:.3f}"
    return f"{mean} [{figure['min']:.3f}, {figure['max']:.3f}]" if figure["min"] != figure["max"] else mean


def plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    names = sorted(data["summary"], key=lambda n: data["summary"][n]["final_val_bpb"]["mean"])
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        runs = [r for r in data["runs"] if r["recipe"] == name]
        chars = [p["chars"] for p in runs[0]["curve"]]
        mean = [statistics.fmean(r["curve"][i]["val_bpb"] for r in runs) for i in range(len(chars))]
        several = len(runs) > 1  # the recipes run with every seed stand out; one-seed sweeps stay thin
        ax.plot([c / 1e6 for c in chars], mean, color=colours(i % 20), linewidth=2.2 if several else 0.9,
                alpha=1.0 if several else 0.7, marker="." if several else None,
                label=f"{name} ({len(runs)} seeds, {data['summary'][name]['final_val_bpb']['mean']:.3f})")  # fmt: skip
    ax.axhline(TARGET_BPB, color="grey", linestyle="--", linewidth=1, label=f"nanoGPT's final ({TARGET_BPB:.3f})")
    ax.set_xlabel("training characters (millions)")
    ax.set_ylabel("validation bits per byte (mean over seeds)")
    ax.set_ylim(2.15, 3.3)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Tiny Shakespeare, nanoGPT's budget: validation against training text seen")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def step_cost(steps: int) -> dict:
    """Seconds per training step of the benchmark's model with each optimizer, interleaved in one
    process (one torch thread), so the machine's load falls on both alike; the ratio is the figure."""
    import torch

    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.training.library.optim import build_optimizer

    torch.set_num_threads(1)
    config = ScratchformerConfig.from_preset(
        "llama",
        vocab_size=VOCAB,
        num_hidden_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=64,
        fused_lm_loss=True,
    )
    pairs = {}
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        model = ScratchformerForCausalLM(config).train()
        pairs[name] = (model, build_optimizer(model, name, lr=1e-3, weight_decay=0.1))
    ids = torch.randint(0, VOCAB, (12, 64), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"adamw": [], "muon": []}
    for i in range(steps + 5):
        for name, (model, opt) in pairs.items():
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 5:  # warm-up steps left out
                times[name].append(time.perf_counter() - start)
    ratios = sorted(m / a for a, m in zip(times["adamw"], times["muon"]))
    return {"steps": steps, "adamw_ms": 1e3 * statistics.median(times["adamw"]),
            "muon_ms": 1e3 * statistics.median(times["muon"]), "muon_over_adamw": ratios[len(ratios) // 2]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe: 1337, 1338, ...")
    parser.add_argument("--first_seed", type=int, default=1337, help="add seeds to recipes already run")
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--budget", type=int, default=BUDGET_CHARS, help="training characters (smaller: a smoke run)")
    parser.add_argument("--step_cost", type=int, metavar="STEPS", help="only time AdamW against Muon per step")
    parser.add_argument("--render", action="store_true", help="only redraw the .md and .png from the .json")
    args = parser.parse_args()
    json_path = args.out / "recipes_shakespeare.json"
    if args.step_cost or args.render:
        data = json.loads(json_path.read_text())
        if args.step_cost:
            data["step_cost"] = step_cost(args.step_cost)
        # The summary from the runs themselves, so that run lists merged from two branches render whole.
        names = sorted({r["recipe"] for r in data["runs"]})
        data["summary"] = {n: summarise([r for r in data["runs"] if r["recipe"] == n], data["steps"]) for n in names}
        json_path.write_text(json.dumps(data, indent=1) + "\n")
        write_markdown(args.out / "recipes_shakespeare.md", data, "")
        plot(args.out / "recipes_shakespeare.png", data)
        return

    import torch

    from scratchformer.tokenization import bytes_per_token
    from scratchformer.training.library.tokenizer_training import train_tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    data = json.loads(json_path.read_text()) if json_path.exists() else {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_file, _ = split(args.data, work)
        for name, path in heldout_texts().items():
            shutil.copyfile(path, work / f"{name}.txt")
        train_tokenizer(work / "tokenizer", files=[str(train_file)], vocab_size=VOCAB, max_length=64,
                        show_progress=False, overwrite=True)  # fmt: skip
        from transformers import AutoTokenizer

        chars_per_token = bytes_per_token(AutoTokenizer.from_pretrained(work / "tokenizer"),
                                          [train_file.read_text(encoding="utf-8")])  # fmt: skip
        chars_per_step = MODEL["per_device_train_batch_size"] * (MODEL["block_size"] - 1) * chars_per_token
        steps = math.ceil(args.budget / chars_per_step)
        jobs = [(r, args.first_seed + i) for r in args.recipes for i in range(args.seeds)]
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                   "workers": args.workers, "load_average": round(os.getloadavg()[0], 2)}  # fmt: skip
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_one, r, s, tmp, steps, chars_per_step, args.eval_every, 1) for r, s in jobs]
            for future in futures:
                run = future.result()
                print(f"{run['recipe']} seed {run['seed']}: {run['final_val_bpb']:.4f} bits/byte, "
                      f"{run['train_seconds']:.0f} s", flush=True)  # fmt: skip
                # Re-read before merging: another invocation may have added runs meanwhile.
                data = json.loads(json_path.read_text()) if json_path.exists() else {"runs": []}
                data["runs"] = [r for r in data["runs"] if (r["recipe"], r["seed"]) != (run["recipe"], run["seed"])]
                data["runs"].append(run)
                data.update(steps=steps, budget=args.budget, chars_per_token=chars_per_token,
                            eval_every=args.eval_every,
                            target_bpb=TARGET_BPB, machine=machine)  # fmt: skip
                names = sorted({r["recipe"] for r in data["runs"]})
                data["summary"] = {n: summarise([r for r in data["runs"] if r["recipe"] == n], steps) for n in names}
                json_path.write_text(json.dumps(data, indent=1) + "\n")
                command = " ".join(["python benchmarks/bench_recipes.py"] + [
                    f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
                    if k not in ("data", "out") and v != parser.get_default(k)])  # fmt: skip
                data["commands"] = [c for c in data.get("commands", []) if c != command] + [command]
                json_path.write_text(json.dumps(data, indent=1) + "\n")
                write_markdown(args.out / "recipes_shakespeare.md", data, command)
                plot(args.out / "recipes_shakespeare.png", data)


if __name__ == "__main__":
    main()
