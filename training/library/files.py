"""Temporary names beside an output, for writes that appear complete or not at all. Created with the
user's umask (0644 files, 0755 folders by default), unlike `tempfile.mkstemp`'s 0600 and
`tempfile.mkdtemp`'s 0700, which would survive the rename and leave exported models unreadable to
the user's group (a shared model directory, a web server serving a GGUF file)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, exclusive: bool = False) -> Iterator[Path]:
    """The one way this package writes a file that a reader may open at any moment: yields a new
    temporary file beside `path` (created with the umask, closed) for the caller to write by name;
    when the block ends without an error it is flushed to disk and renamed over `path`, so `path`
    holds the old content or the new, never half of it. On an error the temporary file is removed.
    With `exclusive`, a `path` that appeared meanwhile is never replaced (FileExistsError)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = fresh_sibling_file(out)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        if exclusive and out.exists():
            raise FileExistsError(f"{out} already exists: choose a new name or remove it first")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_output` for a directory: yields a new hidden folder beside `path` to fill; when the
    block ends without an error its weights are made readable and it is renamed to `path`, which
    must not exist by then (someone's directory is never replaced); otherwise it is removed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(out)
    try:
        yield tmp
        if out.exists():  # appeared while we wrote
            raise FileExistsError(f"{out} already exists: choose a new --output_dir or remove it first")
        make_weights_readable(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """`data` at `path` (text as UTF-8) through `atomic_output`; the folder is created if missing."""
    with atomic_output(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) at `path`, so a reader never opens half a page (`write_atomically` for text)."""
    return write_atomically(path, text)


def move_into(staging: Path, out: Path) -> None:
    """Renames each entry of `staging` into `out` (same file system: each rename is atomic),
    replacing what an earlier attempt left there, then removes `staging`."""
    make_weights_readable(staging)
    for entry in sorted(staging.iterdir()):
        dest = out / entry.name
        if entry.is_dir() and dest.is_dir():
            shutil.rmtree(dest)  # e.g. the adapter of a finished earlier attempt
        os.replace(entry, dest)
    staging.rmdir()


def has_files_besides(directory: Path, *ignored: str) -> bool:
    """Whether `directory` holds anything but the entries named `ignored`."""
    return any(p.name not in ignored for p in directory.iterdir())
