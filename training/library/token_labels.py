"""Readable token labels: what a picture, a caption or a log shows for a token id. A byte-level BPE
vocabulary stores " the" as "Ġthe"; a learner should read "␣the"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Whitespace made visible in labels: a token " the" is drawn "␣the".
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}


def _byte_to_unicode_inverse() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable stand-in character -> the byte it means.
    Printable bytes stand for themselves; the others (space, control bytes, ...) were shifted to
    256 + n, which is why a byte-level vocabulary shows a space as 'Ġ' (256 + 32)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    inverse = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            inverse[chr(256 + shifted)] = b
            shifted += 1
    return inverse


_BYTES_OF = _byte_to_unicode_inverse()


def visible(text: str) -> str:
    """Whitespace and control characters made visible ('\\n' -> '↵', ' ' -> '␣')."""
    return "".join(VISIBLE.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 32 else ch) for ch in text)


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One readable label per token id, decoded on its own, with whitespace made visible
    (' the' -> '␣the', '\\n' -> '↵'). A byte-level token that holds only part of a multi-byte
    character shows its bytes ('<e2 80>'); special tokens show as themselves ('<s>')."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    labels = []
    for token_id, piece in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if token_id in special or piece is None:
            labels.append(str(piece))
        elif all(ch in _BYTES_OF for ch in piece):
            raw = bytes(_BYTES_OF[ch] for ch in piece)
            try:
                labels.append(visible(raw.decode("utf-8")))
            except UnicodeDecodeError:
                labels.append("<" + " ".join(f"{b:02x}" for b in raw) + ">")
        else:  # not a byte-level vocabulary: let the tokenizer decode it
            labels.append(visible(tokenizer.decode([token_id])))
    return labels
