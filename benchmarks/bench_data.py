"""Data-preparation benchmark: tokenizing and packing a .txt corpus into training blocks, against
the tokenizer's own batch encode on the same lines; workers, peak memory as the corpus grows, and
the time to ready when the cache is warm.

    .venv/bin/python benchmarks/bench_data.py                       # ~20 MB and ~200 MB of tinyshakespeare
    .venv/bin/python benchmarks/bench_data.py --sizes_mb 20 --repeats 3

Every cell runs in a fresh subprocess (so peak RSS is that measurement's own) with a fresh
`HF_DATASETS_CACHE`, except the warm-cache cell, which reuses the cache its cold run left. The
corpora are copies of `--data` end to end, in a temporary folder; the tokenizer is a byte-level
BPE of vocabulary 8192 trained once on `--data`. Writes `data_pipeline.json` and
`data_pipeline.md` under `--out`. Not part of the test suite: it takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from itertools import chain
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
BLOCK_SIZE = 512
ENCODE_BATCH = 1000  # lines per `encode_batch` call in the reference, as `map(batched=True)` sends them


# -- the OLD implementation (training/library/packing.py before this benchmark), kept for the ratio --


def old_tokenize_and_pack(ds, tokenizer, block_size, *, rows_are_documents=True, num_proc=None, split="train"):
    """OLD: `tokenizer(texts)` into Python lists, `chain` + per-batch slicing; each batch of rows
    drops its last partial block. Copied verbatim (less the docstring) from the previous packing.py."""
    pack_rows = {"documents": 1_000, "lines": 10_000}
    streaming = False
    mode = "documents" if rows_are_documents else "lines"
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if not rows_are_documents and bos is None:
        bos = eos

    def tokenize(batch):
        texts = [t for t in batch["text"] if t]
        if rows_are_documents:
            ids = tokenizer(texts, verbose=False)["input_ids"]
            ids = [x + [eos] if eos is not None and x[-1:] != [eos] else x for x in ids]
        else:
            ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": ids}

    step = block_size if rows_are_documents or bos is None else block_size - 1

    def pack(batch):
        stream = list(chain.from_iterable(batch["input_ids"]))
        cut = len(stream) // step * step
        blocks = [stream[i : i + step] for i in range(0, cut, step)]
        if step < block_size:
            blocks = [[bos] + b for b in blocks]
        return {"input_ids": blocks}

    parallel = {} if streaming else {"num_proc": num_proc, "desc": f"Tokenizing {split}"}
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], **parallel)
    parallel["desc"] = f"Packing {split} into blocks of {block_size}"
    return ds.map(pack, batched=True, batch_size=pack_rows[mode], **parallel)


# -- one measurement, in a child process ------------------------------------------------------------


class PeakAnon:
    """Samples this process's anonymous resident memory (heap, not the page cache of memory-mapped
    files, which the kernel can drop at will) every 20 ms and keeps the peak."""

    def __init__(self) -> None:
        self.peak_kb, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak_kb / 1024


def child(spec: dict) -> dict:
    """Run one cell: `spec` names the path, the corpus, the tokenizer and the workers."""
    from transformers import AutoTokenizer

    from scratchformer.training.library.data import load_text_dataset
    from scratchformer.training.library.packing import tokenize_and_pack

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    corpus = spec["corpus"]
    anon = PeakAnon()
    out: dict = {}
    start = time.perf_counter()
    if spec["path"] in ("encode_batch", "encode_batch_fast"):
        backend = tokenizer.backend_tokenizer
        encode = getattr(backend, spec["path"])
        tokens, batch = 0, []
        with open(corpus, encoding="utf-8") as f:  # streamed: the reference holds one batch at a time
            for line in chain(f, [None]):
                if line is not None:
                    batch.append(line)
                if len(batch) == ENCODE_BATCH or (line is None and batch):
                    tokens += sum(len(e.ids) for e in encode(batch, add_special_tokens=False))
                    batch = []
        out["tokens"] = tokens
        out["prepare_s"] = time.perf_counter() - start
    else:
        pack = old_tokenize_and_pack if spec["path"] == "old" else tokenize_and_pack
        text = load_text_dataset(files=[corpus])
        loaded = time.perf_counter()
        blocks = pack(text, tokenizer, BLOCK_SIZE, rows_are_documents=False, num_proc=spec["workers"])
        out["blocks"] = len(blocks)
        out["load_s"] = loaded - start
        out["prepare_s"] = time.perf_counter() - loaded
    out["total_s"] = time.perf_counter() - start
    out["peak_anon_mb"] = anon.stop()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def measure(spec: dict, cache: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, specs: list[dict], work: Path) -> list[dict]:
    """For each spec, the fastest of `repeats` cold runs, each with an empty cache. The runs go
    round-robin over the specs, so a burst of load from another user of the machine hits one run of
    several cells rather than every run of one cell; the minimum is kept because other processes
    only ever add time. Peak memory is the largest seen."""
    runs: list[list[dict]] = [[] for _ in specs]
    for i in range(repeats):
        for spec, seen in zip(specs, runs, strict=True):
            cache = work / f"cache-{i}"
            shutil.rmtree(cache, ignore_errors=True)
            seen.append(measure(spec, cache))
            shutil.rmtree(cache, ignore_errors=True)
    bests = []
    for seen in runs:
        best = dict(min(seen, key=lambda r: r["prepare_s"]))
        for key in ("peak_rss_mb", "peak_anon_mb", "workers_peak_rss_mb"):
            best[key] = max(r[key] for r in seen)
        best["runs_s"] = [round(r["prepare_s"], 2) for r in seen]
        bests.append(best)
    return bests


def warm_start(spec: dict, work: Path) -> dict:
    """Seconds to ready on the second run: one cold run fills a cache, then the measured run."""
    cache = work / "warm"
    shutil.rmtree(cache, ignore_errors=True)
    measure(spec, cache)
    result = measure(spec, cache)
    shutil.rmtree(cache, ignore_errors=True)
    return result


# -- the whole benchmark --------------------------------------------------------------------------------


def build_corpus(data: Path, target_mb: float, work: Path) -> Path:
    text = data.read_text(encoding="utf-8")
    copies = max(1, round(target_mb * 1e6 / len(text.encode("utf-8"))))
    path = work / f"corpus-{copies}x.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
    return path


def machine() -> dict:
    import datasets
    import numpy
    import pyarrow
    import tokenizers
    import transformers

    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": numpy.__version__,
            "transformers": transformers.__version__,
        },
    }


def to_markdown(report: dict) -> str:
    m = report["machine_at_start"]
    lines = [
        f"Corpus: copies of {report['data']} (line per row, `.txt` mode), byte-level BPE of vocabulary "
        f"{report['vocab_size']}, blocks of {report['block_size']}. {m['cpus']} CPU cores, load average "
        f"{m['load_average']} at start and {report['machine_at_end']['load_average']} at end (1, 5, 15 min; "
        "the machine is shared). "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Best of {report['repeats']} runs per cell at the smallest size and of "
        f"{report.get('repeats_above', 1)} above it, each in a fresh process with an empty datasets cache.",
        "",
        f"Command: `{report['command']}`",
        "",
        "MB/s counts the corpus's bytes over the time to tokenize and pack (after `load_text_dataset`, whose "
        "own time is the *load s* column); the reference is `tokenizers`' batch encode over the same lines "
        f"in batches of {ENCODE_BATCH}, all cores, ids discarded.",
        "",
        "| corpus MB | path | workers | MB/s | × encode_batch | load s | blocks | peak RSS MB | peak anon MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["cells"]:
        ratio = f"{r['ratio_to_encode_batch']:.2f}" if r.get("ratio_to_encode_batch") else ""
        mbps = f"{r['mb_per_s']:.2f}" if r.get("mb_per_s") else ""
        load = f"{r['load_s']:.1f}" if "load_s" in r else ""
        lines.append(
            f"| {r['corpus_mb']:.0f} | {r['label']} | {r.get('workers') or 1} | {mbps} | {ratio} | {load} "
            f"| {r.get('blocks', '')} | {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} |"
        )
    warm = [r for r in report["cells"] if r["path"] == "warm"]
    if warm:
        lines += ["", "Warm cache (second run, same tokenizer and file): seconds from start to the blocks ready, "
                  "load included: " + ", ".join(f"{r['corpus_mb']:.0f} MB: {r['total_s']:.1f} s" for r in warm)
                  + "."]  # fmt: skip
    return "\n".join(lines + ["", NOTES]) + "\n"


NOTES = """\
How to read it:

- **Peak anon MB** is the process's own memory (heap: Python, numpy, Arrow buffers), sampled every
  20 ms; **peak RSS MB** (`ru_maxrss`) adds the pages of memory-mapped files it touched: the Arrow
  caches of the text and of the tokens, clean page cache that the kernel drops under pressure. The
  anonymous peak is what must stay flat, and it does within tens of MB from 20 to 200 MB; of it, about
  236 MB is the interpreter with torch, transformers and tokenizers imported (the reference rows). The
  RSS grows with the corpus only by those mapped cache pages.
- **1 worker** is one process whose `encode_batch_fast` runs on every core (Rust threads), while the
  Python share of each batch (Arrow strings to `str`, ids to numpy, writing Arrow) runs on one.
  **2 workers** are two processes of one core each (`TOKENIZERS_PARALLELISM=false` in them), so every
  part runs in parallel. On 2 cores shared with other work the two come out close; the round-robin
  minimum is the fairest figure such a machine gives.
- **On 32 cores**, expect `--preprocessing_num_workers 32` to scale the tokenizing pass nearly
  linearly: the rows split into 32 contiguous shards that share nothing, each tokenized on one core
  at this table's per-core rate (the 2-worker figure over 2 on an idle machine), so roughly 16x the
  2-worker rate, until the disk write of the int32 tokens (4 bytes per ~3.5 bytes of text) or the
  sequential pack pass (numpy `reshape` over the token stream, hundreds of MB/s) caps it. One worker
  on 32 cores scales much less: its Python share per batch stays on one core (Amdahl), so it is
  bounded by a few times the 1-core rate. The reference `encode_batch` also uses all cores, so the
  ratio to it on 32 cores is best judged against the 32-worker figure.
- Every ratio is to the reference `encode_batch` measured at the same size, in the same round-robin
  (a rate should not depend on size, but the machine's load between sizes does).
- The old path's blocks differ by a few: it dropped the tail of every 10,000-line batch; the new one
  drops only the corpus's last partial block, for any number of workers.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help="only rewrite the .md beside this data_pipeline.json")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"a UTF-8 text file (default {DEFAULT_DATA})")
    parser.add_argument("--sizes_mb", "--sizes-mb", type=float, nargs="+", default=[20, 200])
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell at the smallest size")
    parser.add_argument("--repeats_above", type=int, default=2, help="runs per cell above the smallest size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.render:
        args.render.with_suffix(".md").write_text(to_markdown(json.loads(args.render.read_text())))
        return 0

    from scratchformer.training.library.tokenizer_training import train_tokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_data-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "data": args.data.name,
        "vocab_size": 8192,
        "block_size": BLOCK_SIZE,
        "repeats": args.repeats,
        "repeats_above": args.repeats_above,
        "command": " ".join(["python benchmarks/bench_data.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_at_start": machine(),
        "cells": [],
    }
    tok = work / "tokenizer-8192"
    if not (tok / "tokenizer.json").exists():
        train_tokenizer(tok, files=[str(args.data)], vocab_size=8192, show_progress=False, overwrite=True)
    try:
        for size in args.sizes_mb:
            corpus = build_corpus(args.data, size, work)
            corpus_mb = corpus.stat().st_size / 1e6
            smallest = size == min(args.sizes_mb)
            base = {"tokenizer": str(tok), "corpus": str(corpus), "workers": None}
            cells = []
            # The reference at every size, in the same round-robin as the cells it is the ratio for
            # (the machine's load moves between sizes); the fast reference and the old path once.
            cells = [("encode_batch", "reference: `encode_batch`", None)]
            if smallest:
                cells += [("encode_batch_fast", "reference: `encode_batch_fast`", None),
                          ("old", "OLD `tokenize_and_pack`", None)]  # fmt: skip
            cells += [("new", "new, cold cache", w) for w in args.workers]
            specs = [{**base, "path": path, "workers": workers} for path, _, workers in cells]
            repeats = args.repeats if smallest else args.repeats_above
            results = best_of(repeats, specs, work)
            reference_mb_per_s = corpus_mb / results[0]["prepare_s"]
            for (path, label, workers), r in zip(cells, results, strict=True):
                r.update(path=path, label=label, workers=workers, corpus_mb=corpus_mb, repeats=repeats)
                r["mb_per_s"] = corpus_mb / r["prepare_s"]
                if path != "encode_batch":
                    r["ratio_to_encode_batch"] = r["mb_per_s"] / reference_mb_per_s
                report["cells"].append(r)
                print(json.dumps(r), flush=True)
            w = warm_start({**base, "path": "new", "workers": args.workers[0]}, work)
            w.update(path="warm", label="new, warm cache", workers=args.workers[0], corpus_mb=corpus_mb)
            report["cells"].append(w)
            print(json.dumps(w), flush=True)
            corpus.unlink()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["machine_at_end"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "data_pipeline.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
