"""Turn pytest-gremlins' JSON report into the committed record: benchmarks/results/mutation.json (the
run's settings, score and every surviving mutant) and mutation.md (a table a reader can act on).
Each survivor is quoted with the source line it mutated, so the record reads without the tool.

    python benchmarks/mutation_report.py coverage/gremlins/gremlins.json --seconds 3600 --targets ... --tests ...
(`make mutation` runs it.)"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _source_line(path: str, line: int) -> str:
    p = ROOT / path if not Path(path).is_absolute() else Path(path)
    try:
        return p.read_text(encoding="utf-8").splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--targets", default="")
    parser.add_argument("--tests", default="")
    args = parser.parse_args()

    data = json.loads(args.report.read_text())
    summary = data["summary"]
    survivors = [
        {**{k: r[k] for k in ("gremlin_id", "file_path", "line_number", "operator", "description")},
         "source": _source_line(r["file_path"], r["line_number"])}
        for r in data["results"] if r["status"] == "survived"
    ]
    survivors.sort(key=lambda r: (r["file_path"], r["line_number"]))
    record = {
        "command": "make mutation",
        "tool": f"pytest-gremlins {importlib.metadata.version('pytest-gremlins')}",
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "seconds": args.seconds,
        "targets": args.targets.split(","),
        "tests": args.tests.split(),
        "summary": summary,
        "files": data.get("files", {}),
        "survivors": survivors,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(record, indent=2) + "\n")

    lines = [
        "# Mutation testing of the model code",
        "",
        f"`make mutation` ({record['tool']}, {record['machine']}, {args.seconds // 60} min): every mutant of "
        f"{', '.join(f'`{t}`' for t in record['targets'])} against the tests aimed at it "
        f"({len(record['tests'])} files). Explanations of the survivors are in docs/mutation_testing.md.",
        "",
        "| mutants | zapped (a test failed) | survived | timeout | error | score |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {summary['total']} | {summary['zapped']} | {summary['survived']} | {summary['timeout']} | "
        f"{summary['error']} | {summary['percentage']:.1f} % |",
        "",
        "| file | mutants | survived | score |",
        "|---|---:|---:|---:|",
    ]
    for path, stats in sorted(record["files"].items()):
        lines.append(f"| `{path}` | {stats['total']} | {stats['survived']} | {stats['percentage']:.1f} % |")
    lines += ["", "## Surviving mutants", "", "| where | mutation | line |", "|---|---|---|"]
    for r in survivors:
        code = r["source"].replace("|", "\\|")
        lines.append(f"| `{Path(r['file_path']).name}:{r['line_number']}` | {r['description']} | `{code}` |")
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")
    print(f"mutation score {summary['percentage']:.1f} % ({summary['zapped']} of {summary['total']} zapped, "
          f"{summary['survived']} survived); written to {RESULTS / 'mutation.md'}")


if __name__ == "__main__":
    main()
