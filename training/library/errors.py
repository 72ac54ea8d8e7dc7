"""The one error a user can act on. Library code raises `UserError` (or lets a `ValueError` or
`OSError` through) with a message that names the problem and the fix; the commands' one boundary
(`scratchformer.training.arguments.command`) prints it as a single `error: ...` line and exits 2.
Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix (a flag, a file, a model directory); the message says how."""


def one_line(e: BaseException) -> str:
    """An exception as one line: whitespace collapsed, the type's name when it has no message."""
    return " ".join(str(e).split()) or type(e).__name__
