"""Temporary names beside an output, for writes that appear complete or not at all. Created with the
user's umask (0644 files, 0755 folders by default), unlike `tempfile.mkstemp`'s 0600 and
`tempfile.mkdtemp`'s 0700, which would survive the rename and leave exported models unreadable to
the user's group (a shared model directory, a web server serving a GGUF file)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fresh_sibling(out: Path, kind: str = "tmp") -> Path:
    """A new hidden folder beside `out` (same file system, so the final rename is atomic)."""
    while True:
        path = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.{kind}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def fresh_sibling_file(out: Path, kind: str = "tmp") -> tuple[int, Path]:
    """(an open file descriptor, its path): a new hidden file beside `out`, opened for writing."""
    while True:
        path = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.{kind}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_weights_readable(directory: Path) -> None:
    """Give the `*.safetensors` files in `directory` the mode any new file gets (0644 under umask
    022). safetensors >= 0.8.1 writes through a private temporary file and renames it, so weights
    come out 0600 while config.json beside them is 0644 (safetensors/safetensors#782, open): another
    user, a container or a serving engine then cannot read the model."""
    mode = 0o666 & ~umask()
    for path in Path(directory).glob("*.safetensors"):
        if path.is_file() and (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) at `path`, written under a temporary name beside it and renamed into place, so a
    reader never opens half a page (the folder is created if missing)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = fresh_sibling_file(out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
