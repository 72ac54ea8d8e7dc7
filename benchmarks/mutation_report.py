"""Turn pytest-gremlins' JSON report into the committed record: benchmarks/results/mutation.json (per
file: its part, score, the run that measured it and every surviving mutant) and mutation.md (tables a
reader can act on). Each survivor is quoted with the source line it mutated, so the record reads
without the tool.

A run replaces the records of the files it mutated and keeps every other file's, so the two parts
(model: modeling/; library: training/library/) and the library's pieces are kept side by side, each
with the run (commit, date, seconds, workers, tests) that measured it.

    python benchmarks/mutation_report.py coverage/gremlins/gremlins.json --part library --seconds 600 \
        --workers 1 --targets ... --tests ...
(`make mutation` runs it.)"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARTS = {"model": "the model (`modeling/`)", "library": "the training library (`training/library/`)"}
COUNTS = ("total", "zapped", "survived", "timeout", "error")


def _source_line(path: str, line: int) -> str:
    p = ROOT / path if not Path(path).is_absolute() else Path(path)
    try:
        return p.read_text(encoding="utf-8").splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def _relative(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else path


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return ""


def _score(counts: dict) -> float:
    return 100.0 * counts["zapped"] / counts["total"] if counts["total"] else 0.0


def load(path: Path) -> dict:
    """The record, in the per-file layout (a record of the older single-run layout is converted)."""
    if not path.exists():
        return {"files": {}}
    record = json.loads(path.read_text())
    if "summary" not in record:
        return record
    run = {k: record.get(k) for k in ("seconds", "targets", "tests")} | {"commit": "e12cc26", "date": "2026-11-29",
                                                                          "workers": 2}  # fmt: skip
    files = {}
    for name, stats in record["files"].items():
        files[name] = {"part": "model", **{k: stats.get(k, 0) for k in COUNTS}, "run": run,
                       "survivors": [s for s in record["survivors"] if s["file_path"] == name]}  # fmt: skip
    return {"tool": record["tool"], "machine": record["machine"], "files": files}


def merge(record: dict, report: dict, part: str, run: dict) -> dict:
    """`record` with the files of this gremlins `report` replaced by what it measured."""
    per_file: dict[str, dict] = {}
    for target in run["targets"]:
        per_file[target] = {"part": part, **dict.fromkeys(COUNTS, 0), "run": run, "survivors": []}
    for r in report["results"]:
        name = _relative(r["file_path"])
        entry = per_file.setdefault(name, {"part": part, **dict.fromkeys(COUNTS, 0), "run": run, "survivors": []})
        entry["total"] += 1
        if r["status"] in COUNTS:
            entry[r["status"]] += 1
        if r["status"] == "survived":
            entry["survivors"].append({**{k: r[k] for k in ("gremlin_id", "line_number", "operator", "description")},
                                       "file_path": name, "source": _source_line(name, r["line_number"])})  # fmt: skip
    for entry in per_file.values():
        entry["survivors"].sort(key=lambda s: s["line_number"])
    record["files"] = {**record["files"], **per_file}
    record["tool"] = f"pytest-gremlins {importlib.metadata.version('pytest-gremlins')}"
    record["machine"] = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    record["command"] = "make mutation (PART=model|library, FILES=... for pieces of the library)"
    return record


def totals(files: dict, part: str) -> dict:
    counts = {k: sum(f[k] for f in files.values() if f["part"] == part) for k in COUNTS}
    return {**counts, "percentage": _score(counts)}


def render(record: dict) -> str:
    files = record["files"]
    lines = [
        "# Mutation testing",
        "",
        f"`make mutation` ({record['tool']}, {record['machine']}): every mutant of each file against the fast",
        "in-process tests aimed at it (`.ci/mutation` lists them). Each file's row says which run measured it",
        "(commit, date, that run's minutes and workers; a run may cover several files). Explanations of the",
        "survivors, and the ones killed since, are in docs/mutation_testing.md.",
    ]
    for part, title in PARTS.items():
        if not any(f["part"] == part for f in files.values()):
            continue
        t = totals(files, part)
        lines += ["", f"## {title[0].upper()}{title[1:]}", "",
                  "| mutants | zapped (a test failed) | survived | timeout | error | score |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {t['total']} | {t['zapped']} | {t['survived']} | {t['timeout']} | {t['error']} | "
                  f"{t['percentage']:.1f} % |", "",
                  "| file | mutants | survived | timeout | score | run (commit, date, minutes, workers) |",
                  "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, f in sorted(files.items()):
            if f["part"] != part:
                continue
            run = f["run"]
            score = f"{_score(f):.1f} %" if f["total"] else "no mutants"
            lines.append(f"| `{name}` | {f['total']} | {f['survived']} | {f['timeout']} | {score} | "
                         f"{run.get('commit')}, {run.get('date')}, {run.get('seconds', 0) / 60:.0f} min, "
                         f"{run.get('workers')} |")  # fmt: skip
    lines += ["", "## Surviving mutants", "", "| where | mutation | line |", "|---|---|---|"]
    for name, f in sorted(files.items(), key=lambda kv: (kv[1]["part"] != "model", kv[0])):
        for s in f["survivors"]:
            code = s["source"].replace("|", "\\|")
            lines.append(f"| `{name}:{s['line_number']}` | {s['description']} | `{code}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--targets", default="")
    parser.add_argument("--tests", default="")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of mutation.{json,md}")
    args = parser.parse_args()

    run = {"commit": _commit(), "date": datetime.date.today().isoformat(), "seconds": args.seconds,
           "workers": args.workers, "targets": [t for t in args.targets.split(",") if t],
           "tests": args.tests.split()}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    record = merge(load(args.results / "mutation.json"), json.loads(args.report.read_text()), args.part, run)
    (args.results / "mutation.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.results / "mutation.md").write_text(render(record))
    for part in PARTS:
        t = totals(record["files"], part)
        if t["total"]:
            print(f"{part}: mutation score {t['percentage']:.1f} % ({t['zapped']} of {t['total']} zapped, "
                  f"{t['survived']} survived); written to {args.results / 'mutation.md'}")


if __name__ == "__main__":
    main()
