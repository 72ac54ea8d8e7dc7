"""Tokenizer benchmark: BPE training throughput, batched encode throughput, compression on held-out
text, and peak memory of the streaming CLI path as the corpus grows.

    .venv/bin/python benchmarks/bench_tokenizer.py            # tinyshakespeare if present, else the default corpus
    .venv/bin/python benchmarks/bench_tokenizer.py --corpus my.txt --vocab-sizes 8192 32000

Writes `tokenizer.json` (every figure) and `tokenizer.md` (a table) under `--out`. The held-out text
is the last 10 % of the corpus file (or the default corpus's validation split), never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tokenizers
import transformers

from scratchformer.tokenization import bytes_per_token, train_bpe
from scratchformer.training.library.data import default_corpus

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
ENCODE_BATCH = 1000  # documents per call, as a data-loading `map(batched=True)` would send them


def load_corpus(path: Path | None) -> tuple[str, list[str], list[str]]:
    """(name, training documents, held-out documents). A file is read as lines with line breaks
    kept (as the CLI reads .txt), split 90/10 by position so the held-out text is contiguous."""
    if path is None:
        return "default corpus (pydoc_data.topics)", list(default_corpus("train")), list(default_corpus("validation"))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = len(lines) * 9 // 10
    return path.name, lines[:cut], lines[cut:]


def mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def best_time(repeats: int, fn) -> tuple[float, object]:
    """Fastest of `repeats` runs (after one warm-up), and the last result. The minimum, not the mean:
    other processes only ever add time, so the fastest run is the closest to the code's own cost."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_vocab(train: list[str], heldout: list[str], vocab_size: int, repeats: int) -> dict:
    seconds, tok = best_time(repeats, lambda: train_bpe(train, vocab_size=vocab_size, show_progress=False))
    batches = [train[i : i + ENCODE_BATCH] for i in range(0, len(train), ENCODE_BATCH)]
    call_s, _ = best_time(repeats, lambda: [tok(b, add_special_tokens=False)["input_ids"] for b in batches])
    backend = tok.backend_tokenizer
    raw_s, _ = best_time(repeats, lambda: [backend.encode_batch(b, add_special_tokens=False) for b in batches])
    return {
        "vocab_size": len(tok),
        "train_seconds": round(seconds, 3),
        "train_mb_per_s": round(mb(train) / seconds, 2),
        "encode_mb_per_s": round(mb(train) / call_s, 2),
        "encode_backend_mb_per_s": round(mb(train) / raw_s, 2),
        "heldout_bytes_per_token": round(bytes_per_token(tok, heldout), 3),
    }


def peak_rss_of_cli(corpus: Path, copies: int, vocab_size: int, workdir: Path) -> dict:
    """Run `train_tokenizer` (the streaming CLI path) in a fresh process on `copies` concatenated
    copies of the corpus and report its peak RSS: flat memory means it does not grow with size."""
    big = workdir / f"x{copies}.txt"
    text = corpus.read_text(encoding="utf-8")
    with open(big, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
    code = (
        "import json, resource, sys\n"
        "from scratchformer.training.tokenizer_cli import train_tokenizer\n"
        f"s = train_tokenizer(sys.argv[1], files=[sys.argv[2]], vocab_size={vocab_size}, show_progress=False)\n"
        "s['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(s))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(workdir / f"tok{copies}"), str(big)],
        check=True,
        capture_output=True,
        text=True,
    )
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "corpus_mb": round(big.stat().st_size / 1e6, 2),
        "peak_rss_mb": round(stats["peak_rss_mb"], 1),
        "end_to_end_mb_per_s": stats["train_mb_per_s"],
        "heldout_bytes_per_token": stats["bytes_per_token"],
    }


def to_markdown(report: dict) -> str:
    machine, versions = report["machine"], report["versions"]
    lines = [
        f"Corpus: {report['corpus']} ({report['train_mb']:.2f} MB train, {report['heldout_mb']:.2f} MB held out). "
        f"{machine['cpus']} CPU cores (load average {machine['load_average_at_start'][0]} at start), "
        f"tokenizers {versions['tokenizers']}, transformers {versions['transformers']}. "
        f"Best of {report['repeats']} runs.",
        "",
        "| vocab | train MB/s | encode MB/s, batched `tok(...)` | encode MB/s, `encode_batch` | held-out bytes/token |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in report["by_vocab"]:
        lines.append(
            f"| {r['vocab_size']} | {r['train_mb_per_s']:.2f} | {r['encode_mb_per_s']:.2f} "
            f"| {r['encode_backend_mb_per_s']:.2f} | {r['heldout_bytes_per_token']:.3f} |"
        )
    if report.get("streaming"):
        lines += [
            "",
            f"Streaming CLI path (`train_tokenizer`, vocab {report['streaming_vocab']}), copies of the corpus:",
            "",
            "| corpus MB | peak RSS MB | end-to-end MB/s |",
            "|---:|---:|---:|",
        ]
        for r in report["streaming"]:
            lines.append(f"| {r['corpus_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['end_to_end_mb_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS if DEFAULT_CORPUS.exists() else None,
        help=f"a UTF-8 text file (default: {DEFAULT_CORPUS} when present, else the embedded default corpus)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, nargs="*", default=[1, 8, 32, 128], help="corpus copies, memory run")
    args = parser.parse_args(argv)

    name, train, heldout = load_corpus(args.corpus)
    report = {
        "corpus": name,
        "train_mb": round(mb(train), 3),
        "heldout_mb": round(mb(heldout), 3),
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other jobs slow every figure
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "by_vocab": [],
    }
    for vocab_size in args.vocab_sizes:
        report["by_vocab"].append(bench_vocab(train, heldout, vocab_size, args.repeats))
        print(report["by_vocab"][-1], flush=True)
    if args.corpus is not None and args.copies:
        report["streaming_vocab"] = 8192
        with tempfile.TemporaryDirectory() as tmp:
            report["streaming"] = [peak_rss_of_cli(args.corpus, n, 8192, Path(tmp)) for n in args.copies]
        print(report["streaming"], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokenizer.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "tokenizer.md").write_text(to_markdown(report), encoding="utf-8")
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
