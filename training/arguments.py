"""The command line's one vocabulary and its one error boundary.

Every command speaks the names of transformers' example scripts where they have one, and a user who
learned one command guesses right in the next:

    --output_dir       where the command writes its result (a directory)
    --output_file      the one file a command writes (a picture, a .gguf)
    --model            a model directory (a checkpoint); --model_name_or_path is the same flag
    --tokenizer        a tokenizer directory, when it is not the model's
    --train_files      local data files (all of one type); --validation_files beside them
    --dataset_name     a hub dataset or a local dataset folder; --dataset_config_name its configuration
    --text_column      the column holding the text
    --max_train_steps  optimizer steps (--max_steps, Trainer's name, is the same flag)
    --seed             the one seed of a run

Dash and underscore spellings are both accepted everywhere (`--max-train-steps`). Spellings used
before 0.3 (`--out`, `--files`, `--train-file`, `--from`, ...) still work for this release, with a
deprecation line on stderr. An unknown or misspelled flag is one `error:` line naming the closest
existing flag, never a traceback; so is every user error a command raises (`command`).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from scratchformer.training.library.errors import UserError, one_line

REMOVAL = "0.4"  # when the deprecated spellings below go

# Spellings from before the one vocabulary, per command: old flag -> the shared name.
DEPRECATED: dict[str, dict[str, str]] = {
    "tokenizer": {"--out": "--output_dir", "--files": "--train_files", "--dataset": "--dataset_name",
                  "--config": "--dataset_config_name", "--split": "--train_split"},
    "finetune": {"--out": "--output_dir", "--train_file": "--train_files", "--validation_file": "--validation_files",
                 "--dataset": "--dataset_name", "--dataset_config": "--dataset_config_name"},
    "seq2seq": {"--out": "--output_dir", "--train_file": "--train_files", "--eval_file": "--validation_files",
                "--validation_file": "--validation_files", "--epochs": "--num_train_epochs",
                "--batch_size": "--per_device_train_batch_size", "--label_smoothing": "--label_smoothing_factor"},
    "convert": {"--from": "--model", "--out": "--output_dir"},
    "demo": {"--out": "--output_dir", "--files": "--train_files", "--steps": "--max_train_steps"},
    "inspect": {"--out": "--output_file"},
}
# SCRATCHFORMER_SMOKE_TEST=1: every command line runs in seconds, as written, with these flags added
# after the user's (the last spelling of a flag wins), so that a test can run the README's commands
# exactly. The models such runs train are useless; a line on stderr says so.
SMOKE_TEST_ENV = "SCRATCHFORMER_SMOKE_TEST"
SMOKE_TEST_FLAGS: dict[str, list[str]] = {
    "pretrain": ["--max_train_steps", "2"],
    "finetune": ["--max_steps", "2"],
    "seq2seq": ["--max_steps", "2"],
    "generate": ["--max_new_tokens", "4"],
    "demo": ["--quick", "--max_train_steps", "2"],
}


# A pretraining run sized in tokens keeps its kind of length (two length flags are refused), made tiny.
SMOKE_TEST_LENGTHS = {"--tokens_per_parameter": "1e-9", "--max_train_tokens": "1"}


def smoke_test_flags(command: str, argv: Sequence[str] = ()) -> list[str]:
    """The flags SCRATCHFORMER_SMOKE_TEST=1 adds to `command`'s command line (none when unset)."""
    if os.environ.get(SMOKE_TEST_ENV, "") in ("", "0"):
        return []
    flags = SMOKE_TEST_FLAGS.get(command, [])
    if command == "pretrain":
        given = [f for f in SMOKE_TEST_LENGTHS if any(a == f or a.startswith(f + "=") for a in argv)]
        flags = [given[0], SMOKE_TEST_LENGTHS[given[0]]] if given else flags
    if flags:
        print(f"warning: {SMOKE_TEST_ENV} is set: running with {' '.join(flags)} added", file=sys.stderr)
    return flags


# The other usual name of the same thing, accepted quietly: both are the vocabulary.
SYNONYMS: dict[str, dict[str, str]] = {
    "pretrain": {"--max_steps": "--max_train_steps", "--warmup_steps": "--num_warmup_steps"},
    "finetune": {"--max_train_steps": "--max_steps", "--num_warmup_steps": "--warmup_steps",
                 "--model_name_or_path": "--model"},
    "seq2seq": {"--num_warmup_steps": "--warmup_steps", "--model_name_or_path": "--model",
                "--max_train_steps": "--max_steps"},
    "generate": {"--model_name_or_path": "--model"},
    "eval": {"--model_name_or_path": "--model"},
    "convert": {"--model_name_or_path": "--model"},
    "export": {"--model_name_or_path": "--model"},
    "inspect": {"--model_name_or_path": "--model"},
    "upgrade-checkpoint": {"--model_name_or_path": "--model"},
    "doctor": {"--model_name_or_path": "--model"},
}


# Short forms people type from other trainers (nanoGPT, Lightning, fairseq) -> the flags they mean;
# an unknown one is named with its long form, where the command has it.
SHORT_FORMS: dict[str, tuple[str, ...]] = {
    "lr": ("learning_rate",), "learning_rate": ("learning_rate",), "wd": ("weight_decay",),
    "epochs": ("num_train_epochs",), "bs": ("per_device_train_batch_size", "total_batch_size"),
    "batch_size": ("per_device_train_batch_size", "total_batch_size"),
    "steps": ("max_train_steps", "max_steps"), "max_iters": ("max_train_steps", "max_steps"),
    "warmup": ("num_warmup_steps", "warmup_steps"), "warmup_iters": ("num_warmup_steps", "warmup_steps"),
    "grad_accum": ("gradient_accumulation_steps",), "accum": ("gradient_accumulation_steps",),
    "grad_clip": ("max_grad_norm",), "clip": ("max_grad_norm",),
    "n_layer": ("num_hidden_layers",), "layers": ("num_hidden_layers",), "n_head": ("num_attention_heads",),
    "heads": ("num_attention_heads",), "n_embd": ("hidden_size",), "d_model": ("hidden_size",),
    "width": ("hidden_size",), "context": ("block_size",), "seq_len": ("block_size", "max_length"),
    "vocab": ("vocab_size",), "data": ("train_files",), "output": ("output_dir", "output_file"),
    "model_dir": ("model",), "device": ("device", "use_cpu"),
}


def spellings(flag: str) -> list[str]:
    """`--max_train_steps` -> [`--max_train_steps`, `--max-train-steps`]: both are accepted."""
    dashed = "--" + flag[2:].replace("_", "-")
    return [flag] if dashed == flag else [flag, dashed]


def _canonical(flag: str) -> str:
    return "--" + flag[2:].replace("-", "_")


def rewrite(command: str, argv: Sequence[str]) -> list[str]:
    """Old spellings and synonyms of `command`'s flags replaced by their shared names (any dash or
    underscore spelling, and `--flag=value` too); each deprecated one is reported once on stderr."""
    deprecated, synonyms = DEPRECATED.get(command, {}), SYNONYMS.get(command, {})
    out, warned = [], set()
    for arg in argv:
        if arg == "--":
            out.extend(argv[len(out):])
            break
        name, eq, value = arg.partition("=")
        key = _canonical(name) if name.startswith("--") else None
        if key in deprecated:
            new = deprecated[key]
            if key not in warned:
                print(f"warning: {name} is deprecated, use {new} (the old spelling goes in {REMOVAL})", file=sys.stderr)
                warned.add(key)
            arg = new + eq + value
        elif key in synonyms:
            arg = synonyms[key] + eq + value
        out.append(arg)
    return out


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    found = []
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            found += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _option_strings(sub)
    return found


def unknown_flags_message(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """`unknown option --max_step (did you mean --max_train_steps?)`: the closest existing flags."""
    known = sorted(set(_option_strings(parser)))
    parts = []
    for arg in unknown:
        flag = arg.partition("=")[0]
        if not flag.startswith("-"):
            parts.append(f"unexpected argument {arg!r}")
            continue
        names = sorted({_canonical(k) for k in known} - {"--help"})  # never the fix for a misspelled option
        word = _canonical(flag).lstrip("-")
        # The usual short forms first (--lr is --learning_rate: by spelling alone it was "close" to --help),
        # then the names it begins (--temp), then close spellings.
        close = [f"--{k}" for k in SHORT_FORMS.get(word, ()) if f"--{k}" in names]
        close = close or ([k for k in names if k[2:].startswith(word)][:3] if len(word) >= 3 else [])
        close = close or difflib.get_close_matches(_canonical(flag), names, n=3, cutoff=0.6)
        if not close and len(word) >= 4:  # --epochs -> --num_train_epochs: the word inside a longer name
            close = [k for k in names if word in k[2:]][:3]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        parts.append(f"unknown option {flag}{hint}")
    return f"{'; '.join(parts)}; `{parser.prog} --help` lists every option"


class Parser(argparse.ArgumentParser):
    """argparse with the project's manners: `add` registers both spellings of a long option, and a
    bad command line is a `UserError` (one `error:` line from the boundary), with the closest flag
    named, instead of argparse's usage dump and exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--vocab` is a typo to name, not a prefix to guess
        super().__init__(*args, **kwargs)

    def add(self, *flags: str, **kwargs: Any) -> argparse.Action:
        names = [s for f in flags for s in (spellings(f) if f.startswith("--") else [f])]
        return self.add_argument(*names, **kwargs)

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        args, unknown = self.parse_known_args(argv)
        if unknown:
            raise UserError(unknown_flags_message(unknown, self))
        return args

    def error(self, message: str) -> None:  # argparse calls this for every command-line error
        raise UserError(f"{self.prog}: {message}")


def _hf_parser_class() -> type:
    from transformers import HfArgumentParser

    class HfParser(HfArgumentParser):
        """transformers' dataclass parser (it registers both spellings itself) with the same manners."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("allow_abbrev", False)
            super().__init__(*args, **kwargs)

        def parse(self, argv: Sequence[str] | None) -> tuple:
            *dataclasses_, unknown = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
            if unknown:
                raise UserError(unknown_flags_message(unknown, self))
            return tuple(dataclasses_)

        def error(self, message: str) -> None:
            raise UserError(f"{self.prog}: {message}")

    HfParser.__module__ = __name__
    return HfParser


def __getattr__(name: str) -> Any:
    # `HfParser` subclasses transformers' HfArgumentParser, which imports transformers (2 s): it is
    # built when a command first asks for it, so commands that parse with `Parser` (inspect,
    # generate, ...) answer --help without that import.
    if name == "HfParser":
        globals()["HfParser"] = cls = _hf_parser_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value `argv` gives `flag` (`--task seq2seq` or `--task=seq2seq`), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def without_flag(argv: Sequence[str], flag: str, value: str) -> list[str]:
    """`argv` less `flag value` (and `flag=value`), and nothing else: `--output_dir seq2seq` keeps its value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag and argv[i + 1 : i + 2] == [value]:
            i += 2
            continue
        if argv[i] != f"{flag}={value}":
            out.append(argv[i])
        i += 1
    return out


def run_command(name: str, argv: Sequence[str]) -> int:
    """The command `name` (a module under scratchformer.training) on `argv`: how an alias hands over, by
    name as the dispatcher does, so that no command imports another."""
    return int(importlib.import_module(f"scratchformer.training.{name}").main(list(argv)) or 0)


def given_fields(argv: Sequence[str], fields: set[str]) -> set[str]:
    """The dataclass fields a command line sets: `--max-train-steps 5` and `--no_fused_lm_loss` name
    max_train_steps and fused_lm_loss."""
    given = set()
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = _canonical(arg.partition("=")[0])[2:]
            given.add(name[3:] if name.startswith("no_") and name[3:] in fields else name)
    return given


def _before_positionals(args: list[str], flags: list[str]) -> list[str]:
    """`flags` added to `args`: at the end, or before a `--` that ends the options."""
    if not flags:
        return args
    if "--" in args:
        i = args.index("--")
        return args[:i] + flags + args[i:]
    return args + flags


def _user_error_types() -> tuple[type[BaseException], ...]:
    """ValueError and OSError, and datasets' own errors once datasets is loaded (it cannot have raised
    one before): importing datasets here would cost every command a second at start-up."""
    if "datasets" not in sys.modules:
        return (ValueError, OSError)
    from datasets.exceptions import DatasetsError

    return (ValueError, OSError, DatasetsError)


def command(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[Sequence[str] | None], int]]:
    """The one error boundary: wraps a command's `main(argv)`. Old spellings are rewritten first
    (`rewrite`); a user error (`UserError`, any `ValueError` or `OSError`, a datasets error) is one
    `error: ...` line and exit 2 (printed by one process of a multi-process run, not by every one);
    Ctrl-C is exit 130; anything else is a bug and keeps its traceback."""
    def wrap(main: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            args = rewrite(name, list(sys.argv[1:] if argv is None else argv))
            args = _before_positionals(args, smoke_test_flags(name, args))
            try:
                return int(main(args) or 0)
            except _user_error_types() as e:  # UserError is a ValueError
                if os.environ.get("RANK", "0") == "0":
                    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
                return 2
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 130

        return run

    return wrap
