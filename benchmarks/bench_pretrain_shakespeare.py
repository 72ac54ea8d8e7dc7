"""Pretraining benchmark: Tiny Shakespeare with nanoGPT's split and nanoGPT's character budget.

nanoGPT's CPU recipe (its README, "I only have a macbook"): 4 layers, width 128, 4 heads, context
64, batch 12, 2000 iterations, i.e. 12 x 64 x 2000 = 1,536,000 training characters; it reaches a
validation loss of about 1.88 nats per character. Here every configuration gets the same budget of
training characters (the text its blocks cover), trains with `scratchformer.training.pretrain.train`
on the first 90 % of the file, and is scored on the last 10 %: validation bits per byte (the file
is ASCII, so bytes are characters and nats/char = bpb x ln 2), and wall time.

    .venv/bin/python benchmarks/bench_pretrain_shakespeare.py                  # every configuration
    .venv/bin/python benchmarks/bench_pretrain_shakespeare.py --only bpe1024   # one of them

Writes `pretrain_shakespeare.json` (every figure) and `pretrain_shakespeare.md` (a table) under
`--out`, merging with results already there, so configurations can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from scratchformer.tokenization import MIN_VOCAB_SIZE, bytes_per_token
from scratchformer.training.library.pretraining import PretrainConfig, train
from scratchformer.training.library.tokenizer_training import train_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
BUDGET_CHARS = 12 * 64 * 2000  # nanoGPT's CPU recipe: batch x context x iterations
NANOGPT_NATS_PER_CHAR = 1.88

# The model of nanoGPT's recipe throughout (4 x 128, 4 heads, Llama family, no dropout); what
# varies is the vocabulary, hence how many characters a 64-token block spans.
MODEL = dict(
    preset="llama",
    num_hidden_layers=4,
    hidden_size=128,
    num_attention_heads=4,
    dropout=0.0,
    per_device_train_batch_size=12,
    learning_rate=1e-3,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    # The recipe these figures were measured with (pretrain's default until Muon + WSD measured better:
    # bench_recipes.py), kept so the committed table stays reproducible.
    optimizer="adamw",
    lr_scheduler_type="cosine",
)
CONFIGS = {
    # 265 tokens = the 256 bytes + special tokens, no merges: a character-level model, as nanoGPT's.
    "char": dict(vocab_size=MIN_VOCAB_SIZE, block_size=64),
    "bpe512": dict(vocab_size=512, block_size=64),
    "bpe1024": dict(vocab_size=1024, block_size=64),
}


def split(data: Path, work: Path) -> tuple[Path, Path]:
    """nanoGPT's split: the first 90 % of the characters train, the last 10 % validate."""
    text = data.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_file, val_file = work / "train.txt", work / "val.txt"
    train_file.write_text(text[:cut], encoding="utf-8")
    val_file.write_text(text[cut:], encoding="utf-8")
    return train_file, val_file


def run(name: str, train_file: Path, val_file: Path, work: Path, budget: int) -> dict:
    spec = {**MODEL, **CONFIGS[name]}
    tok_dir = work / f"tokenizer-{name}"
    start = time.perf_counter()
    stats = train_tokenizer(
        tok_dir,
        files=[str(train_file)],
        vocab_size=spec["vocab_size"],
        max_length=spec["block_size"],
        show_progress=False,
        overwrite=True,
    )
    tokenizer_seconds = time.perf_counter() - start
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    chars_per_token = bytes_per_token(tok, [train_file.read_text(encoding="utf-8")])  # ASCII: bytes = chars
    # A block is <s> plus block_size - 1 tokens of text (.txt is running text), so a step of `batch`
    # blocks covers batch x (block_size - 1) x chars_per_token characters.
    chars_per_step = spec["per_device_train_batch_size"] * (spec["block_size"] - 1) * chars_per_token
    steps = math.ceil(budget / chars_per_step)
    cfg = PretrainConfig(
        train_files=[str(train_file)],
        validation_files=[str(val_file)],
        tokenizer=str(tok_dir),
        output_dir=str(work / f"run-{name}"),
        max_train_steps=steps,
        num_warmup_steps=100,
        logging_steps=100,
        eval_steps=steps,
        save_steps=steps,
        report_to="none",
        seed=1337,
        **{k: v for k, v in spec.items() if k != "vocab_size"},
    )
    result = train(cfg)
    return {
        "config": name,
        "vocab_size": len(tok),
        "chars_per_token": round(chars_per_token, 4),
        "block_size": spec["block_size"],
        "context_chars": round((spec["block_size"] - 1) * chars_per_token, 1),
        "batch_size": spec["per_device_train_batch_size"],
        "steps": steps,
        "training_chars": round(steps * chars_per_step),
        "parameters": result["parameters"],
        "val_bits_per_byte": result["eval_bpb"],
        "val_nats_per_char": round(result["eval_bpb"] * math.log(2), 4),
        "val_loss_per_token": result["eval_loss"],
        "val_tokens_scored": result["eval_tokens"],
        "val_bytes_scored": result["eval_bytes"],
        "train_wall_seconds": result["train_seconds"],
        "tokenizer_wall_seconds": round(tokenizer_seconds, 2),
        "tokenizer_stats": {k: stats[k] for k in ("vocab_size", "bytes_per_token")},
        "settings": {k: v for k, v in spec.items()},
    }


def write_markdown(path: Path, results: dict, machine: dict, command: str) -> None:
    rows = sorted(results.values(), key=lambda r: r["val_bits_per_byte"])
    lines = [
        "# Pretraining on Tiny Shakespeare, nanoGPT's character budget",
        "",
        f"Split: first 90 % of `tinyshakespeare.txt` trains, last 10 % validates (nanoGPT's). Budget: "
        f"{BUDGET_CHARS:,} training characters (nanoGPT's CPU recipe, 12 x 64 x 2000, which reaches "
        f"{NANOGPT_NATS_PER_CHAR} nats/char). Model: 4 layers x 128, 4 heads, Llama family, batch 12, "
        "context 64 tokens, AdamW lr 1e-3 with 100 warmup steps and a cosine to 1e-4.",
        "",
        "| config | vocab | chars/token | context (chars) | steps | params | val bits/byte | val nats/char | "
        "wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['vocab_size']} | {r['chars_per_token']:.2f} | {r['context_chars']:.0f} | "
            f"{r['steps']} | {r['parameters']:,} | **{r['val_bits_per_byte']:.3f}** | {r['val_nats_per_char']:.3f} | "
            f"{r['train_wall_seconds']:.0f} s |"
        )
    lines += [
        "",
        "Wall time is `train()` end to end (tokenize, train, evaluate, save), after the tokenizer is trained.",
        f"Machine: {machine['cpus']} CPU cores ({machine['platform']}), torch {machine['torch']}, "
        f"{machine['threads']} torch threads; the machine was shared with other jobs, so times are indicative.",
        "",
        f"Command: `{command}`",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--budget", type=int, default=BUDGET_CHARS, help="training characters per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "pretrain_shakespeare.json"
    saved = json.loads(json_path.read_text()) if json_path.exists() else {}
    results = saved.get("results", {})
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_file, val_file = split(args.data, work)
        for name in args.only:
            results[name] = run(name, train_file, val_file, work, args.budget)
            print(json.dumps(results[name], indent=2), flush=True)
            best = min(results.values(), key=lambda r: r["val_bits_per_byte"])
            command = "python benchmarks/bench_pretrain_shakespeare.py" + (
                f" --threads {args.threads}" if args.threads else ""
            )
            json_path.write_text(
                json.dumps(
                    {
                        "budget_chars": args.budget,
                        "nanogpt_nats_per_char": NANOGPT_NATS_PER_CHAR,
                        "machine": machine,
                        "best": best["config"],
                        "results": results,
                    },
                    indent=2,
                )
                + "\n"
            )
            write_markdown(args.out / "pretrain_shakespeare.md", results, machine, command)


if __name__ == "__main__":
    main()
