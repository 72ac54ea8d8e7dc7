"""Put one mutant back by hand and run the tests that should notice it: the check behind every
"killed since" row of docs/mutation_testing.md.

    python benchmarks/mutant_check.py training/library/packing.py 437 '>= self.limit' '> self.limit' \
        -- tests/training/test_packing.py

replaces the first `OLD` on line `LINE` of the file with `NEW` (LINE 0: the one line that holds `OLD`,
which outlives edits above it), runs the tests (the fast ones of the files given, or exactly the tests
named with `file::test`, stopping at the first failure) and prints KILLED (a test failed), SURVIVED
(all passed) or ERROR, with the failing test. The file is restored afterwards, whatever happens.
A list of checks can be kept one per line (the arguments as above) and run with `--from FILE`:
benchmarks/results/mutant_checks.txt is the list of the last round, with the verdicts it printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(path: str, line: int, old: str, new: str, tests: list[str], timeout: int = 600) -> str:
    """One mutant: its verdict line. The source file is always restored."""
    file = ROOT / path
    text = file.read_text(encoding="utf-8")
    lines = text.split("\n")
    if line == 0:
        holding = [i + 1 for i, ln in enumerate(lines) if old in ln]
        if len(holding) != 1:
            return f"ERROR {path}: {old!r} is on lines {holding}, not on one; give the line"
        line = holding[0]
    if old not in lines[line - 1]:
        return f"ERROR {path}:{line}: {old!r} is not on that line: {lines[line - 1].strip()!r}"
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    start = time.time()
    try:
        file.write_text("\n".join(lines), encoding="utf-8")
        # Fast tests only, unless the tests are named one by one (a slow test named is meant to run).
        marks = [] if all("::" in t for t in tests) else ["-m", "not slow and not long"]
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0", *marks, *tests],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        verdict = {0: "SURVIVED", 1: "KILLED"}.get(run.returncode, f"ERROR(rc={run.returncode})")
        failed = [ln.split(" ", 1)[1] for ln in run.stdout.splitlines() if ln.startswith("FAILED ")]
        detail = f" by {failed[0].split(' - ')[0]}" if failed else ""
    except subprocess.TimeoutExpired:
        verdict, detail = "KILLED", f" (the tests hung past {timeout} s)"
    finally:
        file.write_text(text, encoding="utf-8")
    return f"{verdict} {path}:{line} {old!r} -> {new!r}{detail} ({time.time() - start:.0f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="listing", help="a file of checks, one per line (PATH LINE OLD NEW -- TESTS)")
    parser.add_argument("spec", nargs=argparse.REMAINDER, help="PATH LINE OLD NEW -- TESTS...")
    args = parser.parse_args()
    specs = [args.spec] if args.spec else []
    if args.listing:
        specs += [shlex.split(ln) for ln in Path(args.listing).read_text().splitlines() if ln.strip() and ln[0] != "#"]
    if not specs:
        parser.error("give a check (PATH LINE OLD NEW -- TESTS...) or --from FILE")
    for spec in specs:
        if "--" not in spec or spec.index("--") != 4:
            parser.error(f"expected PATH LINE OLD NEW -- TESTS..., got {shlex.join(spec)}")
        path, line, old, new = spec[:4]
        print(check(path, int(line), old, new, spec[5:]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
