"""Bring a saved checkpoint's code up to date: `scratchformer upgrade-checkpoint DIR`.

Every checkpoint carries the model's Python files (the remote code that `trust_remote_code=True`
runs) as they were on the day it was saved. When transformers changes an interface those files
rely on, the weights stay right and only the code goes stale: transformers 5.24 renamed the KV
cache argument of `forward()`, and checkpoints saved by scratchformer 0.1 generate one repeated
token there. This command replaces the code files with the installed scratchformer's (the files a
fresh `save_pretrained` would write) and points `config.json`'s `auto_map` at them. It never
touches the weights, the tokenizer or anything else, and writes each file under a temporary name
before renaming it into place, so an interruption leaves every file either old or new, never torn.

    scratchformer upgrade-checkpoint runs/mini/model            # rewrite, and say what changed
    scratchformer upgrade-checkpoint runs/mini/model --dry_run  # only say what would change
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import write_atomically
from .model_dir import read_config

CONFIG_FILE = "config.json"


@dataclass
class Change:
    """One file of the checkpoint's code: `action` is "added", "updated" or "unchanged"."""

    file: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<9} {self.file}" + (f"  ({self.detail})" if self.detail else "")


def _payload(model_type: str) -> tuple[dict[str, str], list[Path]]:
    """(auto_map, code files) that a fresh save_pretrained writes for this model type: the module of
    every auto-mapped class and everything it imports relatively, as transformers' custom_object_save
    collects them."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from scratchformer.modeling import (
        ScratchformerConfig,
        ScratchformerSeq2SeqConfig,
        modeling_scratchformer,
        modeling_scratchformer_seq2seq,
    )

    auto_maps = {
        ScratchformerConfig.model_type: modeling_scratchformer.AUTO_MAP,
        ScratchformerSeq2SeqConfig.model_type: modeling_scratchformer_seq2seq.AUTO_MAP,
    }
    if model_type not in auto_maps:
        raise UserError(
            f"model_type {model_type!r} is not a scratchformer model ({' or '.join(auto_maps)}); "
            "upgrade-checkpoint rewrites only the code that scratchformer ships inside its checkpoints"
        )
    auto_map = dict(auto_maps[model_type])
    package = Path(modeling_scratchformer.__file__).parent
    files: dict[str, Path] = {}
    for reference in auto_map.values():
        module_file = package / f"{reference.split('.')[0]}.py"
        for path in [module_file, *map(Path, get_relative_import_files(module_file))]:
            files[path.name] = path
    return auto_map, [files[name] for name in sorted(files)]


def _check_config_loads(path: Path, model_type: str) -> None:
    """The current code must accept the checkpoint's config, or new code would not load it either."""
    from scratchformer.modeling import ScratchformerConfig, ScratchformerSeq2SeqConfig

    config_class = ScratchformerConfig if model_type == ScratchformerConfig.model_type else ScratchformerSeq2SeqConfig
    try:
        config_class.from_pretrained(path)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(
            f"{path / CONFIG_FILE} cannot be loaded by this scratchformer, so its code was left as it is: "
            f"{' '.join(str(e).split())}. Fix that field in config.json (or upgrade scratchformer), then run "
            "upgrade-checkpoint again"
        ) from None


def upgrade_checkpoint(path: str | os.PathLike, dry_run: bool = False) -> list[Change]:
    """Replace the code files of the scratchformer checkpoint at `path` with the installed ones and
    update `auto_map` in its config.json; returns what changed (nothing is written with `dry_run`)."""
    path = Path(path)
    config = read_config(path)
    model_type = config.get("model_type")
    auto_map, files = _payload(model_type)
    _check_config_loads(path, model_type)

    changes: list[Change] = []
    writes: list[tuple[Path, bytes]] = []
    for source in files:
        new = source.read_bytes()
        target = path / source.name
        if not target.exists():
            changes.append(Change(source.name, "added"))
        elif target.read_bytes() != new:
            old_lines = len(target.read_bytes().splitlines())
            changes.append(Change(source.name, "updated", f"{old_lines} -> {len(new.splitlines())} lines"))
        else:
            changes.append(Change(source.name, "unchanged"))
            continue
        writes.append((target, new))

    # Keep auto_map entries of the user's own (other Auto classes); ours point at the current files.
    new_auto_map = {**(config.get("auto_map") or {}), **auto_map}
    if new_auto_map != config.get("auto_map"):
        changes.append(Change(CONFIG_FILE, "updated", "auto_map"))
        text = json.dumps({**config, "auto_map": new_auto_map}, indent=2, sort_keys=True) + "\n"
        writes.append((path / CONFIG_FILE, text.encode("utf-8")))

    if not dry_run:
        for target, data in writes:
            write_atomically(target, data)
    return changes
