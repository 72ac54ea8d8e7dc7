"""Documents kept apart, or not: which way of packing documents into training blocks trains the
better model on a corpus of many documents, and what keeping them apart costs per step.

Three ways of making the same model's training blocks from the same documents (`<s> text </s>`):

- `joined`: documents end to end, cut into blocks, one causal mask over each block (pretrain's
  behaviour before --document_masking): a token may attend into the previous, unrelated document,
  and `</s> -> <s>` is a target;
- `masked`: the same blocks with position_ids restarting at each document (`--document_masking`):
  no attention across a boundary, no loss on the step from one document to the next;
- `bestfit`: nanochat's BOS-aligned best-fit rows: every row starts at a document's `<s>`, whole
  documents are fitted in (the largest that still fits, from a buffer), and when none fits the
  shortest is cropped to fill the row; a document longer than a row is cropped to it. One causal
  mask per row, as nanochat trains (no row starts mid-document; the cropped tokens are lost).

The corpus is built offline from the Python that runs it: the help topics of the default corpus
(`pydoc_data.topics`) and the docstrings of the public classes and functions of a fixed list of
standard-library modules of at least 200 characters, one document each (about 570 documents of a
few hundred bytes to tens of KB). Every 10th document (in name order) is validation. Validation is scored per
document: each validation document packed alone into blocks (`--document_masking`'s blocks), so
no model is helped or hurt by its neighbours, in bits per byte. Every variant trains the same model
(Llama family, 4 x 128, 4 heads, context 128, batch 16, Muon + WSD at pretrain's defaults) for the
same steps, 3 seeds each, in one process (one torch thread), and the step time of `masked` against
`joined` is measured interleaved, forward and backward on the same ids, in one process:

    .venv/bin/python benchmarks/bench_documents.py     # the committed run: 3 seeds x 3 variants, 200 steps
    .venv/bin/python benchmarks/bench_documents.py --steps 20 --seeds 1    # a smoke run

The committed run took 27 minutes on a shared 2-core machine (one torch thread).

Writes `document_masking.json` and `.md` under `--out`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("joined", "masked", "bestfit")
MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest", "email.message", "enum",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "mailbox", "math", "mimetypes", "multiprocessing", "operator", "optparse", "os", "pathlib",
    "pdb", "pickle", "pickletools", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zoneinfo",
)  # fmt: skip
MODEL = dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4)
BLOCK, BATCH, VOCAB, LR = 128, 16, 2048, 2e-3


def corpus() -> dict[str, list[str]]:
    """{"train": [...], "validation": [...]}: help topics and docstrings, one document each."""
    from pydoc_data.topics import topics

    docs = {f"topic:{k}": v.strip() for k, v in topics.items() if v.strip()}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= 200:
                docs.setdefault(f"{name}.{attr}", doc)
    names = sorted(docs)
    return {
        "train": [docs[n] for i, n in enumerate(names) if i % 10 != 9],
        "validation": [docs[n] for i, n in enumerate(names) if i % 10 == 9],
    }


def bestfit_rows(token_docs: list[list[int]], row: int, seed: int, buffer: int = 1000) -> list[list[int]]:
    """nanochat's BOS-aligned best-fit packing: each row opens with a document's first token; the
    largest buffered document that fits the space left goes in next; when none fits, the shortest
    is cropped to fill the row (its rest is dropped). Documents are drawn in a seeded order."""
    import random

    order = list(range(len(token_docs)))
    random.Random(seed).shuffle(order)
    pending = [token_docs[i][:row] for i in order]
    rows, pool = [], []
    while pending or pool:
        while pending and len(pool) < buffer:
            pool.append(pending.pop())
        current: list[int] = []
        while len(current) < row and pool:
            space = row - len(current)
            fitting = [i for i, d in enumerate(pool) if len(d) <= space]
            if fitting:
                current += pool.pop(max(fitting, key=lambda i: len(pool[i])))
            else:
                current += pool.pop(min(range(len(pool)), key=lambda i: len(pool[i])))[:space]
        if len(current) == row:
            rows.append(current)
    return rows


def blocks_for(variant: str, train, tokenizer, seed: int):
    """The variant's training blocks as a list of collated-ready dicts of tensors."""
    import datasets
    import torch

    from scratchformer.training.library.packing import tokenize_and_pack

    if variant == "bestfit":
        eos = tokenizer.eos_token_id
        token_docs = [tokenizer(t)["input_ids"] + [eos] for t in train]
        return [{"input_ids": torch.tensor(r)} for r in bestfit_rows(token_docs, BLOCK, seed)]
    packed = tokenize_and_pack(datasets.Dataset.from_dict({"text": train}), tokenizer, BLOCK,
                               document_masking=variant == "masked")  # fmt: skip
    return list(packed.with_format("torch"))


def run_one(variant: str, seed: int, steps: int, train, validation, tokenizer) -> dict:
    import datasets
    import torch
    from torch.utils.data import DataLoader

    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.training.library.metrics import evaluate
    from scratchformer.training.library.optim import build_optimizer, lr_at
    from scratchformer.training.library.packing import collate_blocks, token_byte_lengths, tokenize_and_pack

    blocks = blocks_for(variant, train, tokenizer, seed)
    torch.manual_seed(seed)
    config = ScratchformerConfig.from_preset(
        "llama", vocab_size=len(tokenizer), max_position_embeddings=BLOCK, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, fused_lm_loss=True, **MODEL,
    )  # fmt: skip
    model = ScratchformerForCausalLM(config).train()
    optimizer = build_optimizer(model, "muon", lr=LR, weight_decay=0.1)
    schedule = dict(max_lr=LR, warmup_steps=round(0.05 * steps), total_steps=steps, schedule="wsd",
                    decay_fraction=0.4)  # fmt: skip
    order = torch.Generator().manual_seed(seed)
    queue: list[int] = []
    start = time.perf_counter()
    for step in range(steps):
        if len(queue) < BATCH:
            queue += torch.randperm(len(blocks), generator=order).tolist()
        batch = collate_blocks([blocks[i] for i in queue[:BATCH]])
        del queue[:BATCH]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, **schedule)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    val = tokenize_and_pack(datasets.Dataset.from_dict({"text": validation}), tokenizer, BLOCK, document_masking=True)
    loader = DataLoader(val.with_format("torch"), batch_size=BATCH, collate_fn=collate_blocks)
    scores = evaluate(model, loader, None, token_byte_lengths(tokenizer), progress=False)
    return {"variant": variant, "seed": seed, "steps": steps, "train_blocks": len(blocks),
            "train_tokens_distinct": sum(int(b["input_ids"].numel()) for b in blocks),
            "val_bpb": scores["eval_bpb"], "val_loss": scores["eval_loss"], "val_tokens": scores["eval_tokens"],
            "train_seconds": round(seconds, 1)}  # fmt: skip


def step_cost(tokenizer, train, reps: int) -> dict:
    """Forward + backward of the same blocks, joined and masked, alternating in one process: the
    machine's load falls on both alike, and the median of the per-pair ratios is the figure."""
    import torch

    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.training.library.packing import collate_blocks

    masked = blocks_for("masked", train, tokenizer, 0)
    g = torch.Generator().manual_seed(0)
    out = {}
    for attn in ("sdpa", "eager"):
        config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), max_position_embeddings=BLOCK,
                                                 fused_lm_loss=True, **MODEL)  # fmt: skip
        config._attn_implementation = attn
        torch.manual_seed(0)
        model = ScratchformerForCausalLM(config).train()
        times: dict[str, list[float]] = {"joined": [], "masked": []}
        for i in range(reps + 3):
            picks = torch.randint(len(masked), (BATCH,), generator=g).tolist()
            with_positions = collate_blocks([masked[j] for j in picks])
            plain = {"input_ids": with_positions["input_ids"], "labels": with_positions["input_ids"]}
            for name, batch in (("joined", plain), ("masked", with_positions)):
                start = time.perf_counter()
                model(**batch).loss.backward()
                model.zero_grad(set_to_none=True)
                if i >= 3:  # warm-up left out
                    times[name].append(time.perf_counter() - start)
        ratios = sorted(m / j for j, m in zip(times["joined"], times["masked"]))
        out[attn] = {"joined_ms": round(1e3 * statistics.median(times["joined"]), 2),
                     "masked_ms": round(1e3 * statistics.median(times["masked"]), 2),
                     "masked_over_joined": round(ratios[len(ratios) // 2], 4), "pairs": reps}  # fmt: skip
    return out


def write_markdown(path: Path, data: dict) -> None:
    m, summary = data["machine"], data["summary"]
    lines = [
        "# Documents kept apart: joined blocks, masked blocks, nanochat's best-fit rows",
        "",
        f"Corpus: {data['corpus']['train_documents']:,} training and {data['corpus']['validation_documents']:,} "
        f"validation documents ({data['corpus']['train_bytes'] / 1e6:.2f} MB / "
        f"{data['corpus']['validation_bytes'] / 1e3:.0f} KB), the help topics and the standard-library docstrings "
        "of Python "
        f"{m['python']} (built offline by the benchmark). Model: Llama family 4 x 128, 4 heads, context {BLOCK}, "
        f"batch {BATCH}, BPE {VOCAB}, Muon + WSD, peak lr {LR}, {data['steps']} steps "
        f"({data['steps'] * BATCH * BLOCK:,} training tokens). Validation: every validation document scored alone "
        "(bits per byte, lower is better). Mean over seeds, [min, max] in brackets.",
        "",
        f"| variant | seeds | validation bits/byte, per document | vs {next(iter(summary))} (paired by seed) | "
        "distinct training tokens (share of the corpus) |",
        "|---|---|---|---|---|",
    ]
    total = data["corpus"]["train_tokens"]
    for v in VARIANTS:
        if v not in summary:
            continue
        s, d, n = summary[v]["val_bpb"], summary[v]["vs_first"], summary[v]["train_tokens_distinct"]
        lines.append(f"| {v} | {summary[v]['seeds']} | {s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}] | "
                     f"{d['mean']:+.4f} [{d['min']:+.4f}, {d['max']:+.4f}] | {n:,} ({n / total:.0%}) |")  # fmt: skip
    lines += ["", "Step time, forward + backward of the same 16 blocks, masked (position_ids) against joined, "
              "interleaved in one process (median of per-pair ratios):", "",
              "| attention | joined ms | masked ms | masked / joined |", "|---|---|---|---|"]  # fmt: skip
    for attn, c in data["step_cost"].items():
        lines.append(f"| {attn} | {c['joined_ms']} | {c['masked_ms']} | {c['masked_over_joined']:.3f} |")
    lines += ["", f"Machine: {m['cpus']} CPU cores ({m['platform']}), torch {m['torch']}, one torch thread, "
              f"load average {m['load_average']} at the start and {m['load_average_end']} at the end "
              "(the machine was shared; the runs are interleaved so its load falls on every variant alike).", "",
              f"Wall time: {data['seconds'] / 60:.1f} minutes.", "",
              f"Command: `{data['command']}`", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--step_cost_pairs", type=int, default=20)
    args = parser.parse_args()

    import torch

    from scratchformer.tokenization import train_bpe

    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    texts = corpus()
    tokenizer = train_bpe(texts["train"], vocab_size=VOCAB, show_progress=False)
    runs = []
    for seed in range(1337, 1337 + args.seeds):
        for variant in args.variants:  # interleaved, so the machine's load changes fall on all alike
            runs.append(run_one(variant, seed, args.steps, texts["train"], texts["validation"], tokenizer))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    first = {r["seed"]: r["val_bpb"] for r in runs if r["variant"] == args.variants[0]}
    for v in args.variants:
        values = [r["val_bpb"] for r in runs if r["variant"] == v]
        paired = [r["val_bpb"] - first[r["seed"]] for r in runs if r["variant"] == v]
        distinct = next(r["train_tokens_distinct"] for r in runs if r["variant"] == v)
        summary[v] = {
            "seeds": len(values),
            "train_tokens_distinct": distinct,
            "val_bpb": {"mean": statistics.fmean(values), "min": min(values), "max": max(values)},
            "vs_first": {"mean": statistics.fmean(paired), "min": min(paired), "max": max(paired)},
        }
    cost = step_cost(tokenizer, texts["train"], args.step_cost_pairs)
    data = {
        "command": "python benchmarks/bench_documents.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_average": load_start,
                    "load_average_end": round(os.getloadavg()[0], 2)},
        "corpus": {"train_documents": len(texts["train"]), "validation_documents": len(texts["validation"]),
                   "train_bytes": sum(len(t.encode()) for t in texts["train"]),
                   "validation_bytes": sum(len(t.encode()) for t in texts["validation"]),
                   "train_tokens": sum(len(ids) + 1 for ids in tokenizer(texts["train"])["input_ids"])},
        "steps": args.steps, "runs": runs, "summary": summary,
        "step_cost": cost, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "document_masking.json").write_text(json.dumps(data, indent=1) + "\n")
    write_markdown(args.out / "document_masking.md", data)
    print((args.out / "document_masking.md").read_text())
    assert math.isfinite(summary[args.variants[0]]["val_bpb"]["mean"])


if __name__ == "__main__":
    main()
