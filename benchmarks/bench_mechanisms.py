"""What the mechanism metrics cost a pretraining run: one call of `mechanisms.mechanism_metrics` (head
scores on the probes, logit lens, attention snapshot) against one training step of the same model,
measured interleaved (steps, metrics, steps, metrics, ...) so both see the same machine, at the
sizes where they are on by default (tiny, mini, small) and at base, where they are off.

    .venv/bin/python benchmarks/bench_mechanisms.py                 # every size, 5 rounds
    .venv/bin/python benchmarks/bench_mechanisms.py --sizes tiny mini --rounds 3

A run evaluates about 20 times (`--eval_steps` unset), so the metrics cost 20 calls per run:
`cost = 20 x metrics / (steps x step)`; the table gives it for the embedded corpus's 400-step run
(every 20 steps) and for a long run evaluated every 200 steps. Writes mechanisms_cost.json and .md
under --out. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training.library.data import default_corpus
from scratchformer.training.library.mechanisms import enabled_by_default, mechanism_metrics
from scratchformer.training.library.optim import build_optimizer
from scratchformer.training.library.pretrain_config import SIZES, PretrainConfig

REPO = Path(__file__).resolve().parent.parent


def measure(size: str, tokenizer, rounds: int, steps_per_round: int, batch: int) -> dict:
    s = SIZES[size]
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset(
        "llama", vocab_size=len(tokenizer), num_hidden_layers=s["num_hidden_layers"], hidden_size=s["hidden_size"],
        num_attention_heads=s["num_attention_heads"], max_position_embeddings=s["block_size"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        fused_lm_loss=True,
    )  # fmt: skip
    model = ScratchformerForCausalLM(config).train()
    cfg = PretrainConfig()
    optimizer = build_optimizer(model, cfg.optimizer, lr=s["learning_rate"], weight_decay=cfg.weight_decay)
    ids = torch.randint(10, len(tokenizer), (batch, s["block_size"]))

    def step() -> None:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    mechanism_metrics(model, tokenizer)  # warm-up: first calls allocate
    step_times, metric_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps_per_round):
            step()
        step_times.append((time.perf_counter() - start) / steps_per_round)
        start = time.perf_counter()
        mechanism_metrics(model, tokenizer)
        metric_times.append(time.perf_counter() - start)
    step_s, metrics_s = statistics.median(step_times), statistics.median(metric_times)
    return {
        "size": size, "heads": s["num_hidden_layers"] * s["num_attention_heads"],
        "on_by_default": enabled_by_default(s["num_hidden_layers"], s["num_attention_heads"]),
        "step_s": round(step_s, 4), "metrics_s": round(metrics_s, 4), "metrics_in_steps": round(metrics_s / step_s, 2),
        "cost_400_steps_every_20": round(100 * metrics_s / (20 * step_s), 2),
        "cost_every_200": round(100 * metrics_s / (200 * step_s), 3),
        "tokens_per_step": batch * s["block_size"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini", "small", "base"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps_per_round", type=int, default=5)
    parser.add_argument("--batch", type=int, default=PretrainConfig().per_device_train_batch_size)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = list(default_corpus("train"))
    tokenizer = train_bpe(texts, vocab_size=PretrainConfig().vocab_size, show_progress=False)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, tokenizer, args.rounds, args.steps_per_round, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    command = "python benchmarks/bench_mechanisms.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k != "out" and v is not None)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mechanisms_cost.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows},
                                                          indent=2) + "\n")  # fmt: skip
    lines = [
        "# The cost of the mechanism metrics", "",
        f"`{command}` on {machine}. One call of `mechanism_metrics` (head scores on the probes, logit lens,",
        "attention snapshot) against one training step of the same model, interleaved, medians of "
        f"{args.rounds} rounds. A run with no `--eval_steps` evaluates about 20 times.", "",
        "| size | heads | on by default | training step | metrics, one call | in steps | cost, 400-step run "
        "(every 20 steps) | cost, every 200 steps |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        default = "yes" if r["on_by_default"] else "no"
        step_ms, metrics_ms = r["step_s"] * 1e3, r["metrics_s"] * 1e3
        lines.append(f"| {r['size']} | {r['heads']} | {default} | {step_ms:.0f} ms | {metrics_ms:.0f} ms"
                     f" | {r['metrics_in_steps']} | {r['cost_400_steps_every_20']} % | {r['cost_every_200']} % |")
    (out / "mechanisms_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'mechanisms_cost.md'}")


if __name__ == "__main__":
    main()
