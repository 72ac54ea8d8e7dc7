"""The `scratchformer` command: one entry point, one module per subcommand.

Each subcommand module exposes `main(argv) -> int`, wrapped by the one error boundary
(`arguments.command`), and owns its own parser, so `scratchformer pretrain --help` is exactly that
module's help. Modules are imported only when their subcommand runs, which keeps
`scratchformer --help` instant (no torch import).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import sys

# subcommand -> (module under scratchformer.training, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the whole story on the embedded corpus: tokenizer, pretrain, reload, generate, fine-tune"),
    "tokenizer": ("tokenizer", "train a byte-level BPE tokenizer on your text"),
    "pretrain": ("pretrain", "pretrain a model with accelerate (one CPU or many GPUs), resumable"),
    "finetune": ("finetune", "fine-tune a checkpoint with transformers.Trainer"),
    "seq2seq": ("seq2seq", "train an encoder-decoder on (source, target) pairs (= finetune --task seq2seq)"),
    "generate": ("generate", "generate text from a checkpoint, streaming tokens"),
    "serve": ("serve", "an OpenAI-compatible HTTP endpoint for a checkpoint: transformers' own server"),
    "eval": ("eval", "score a checkpoint on text: loss, perplexity, bits per byte (lm-eval tasks too)"),
    "inspect": ("inspect", "pictures: attention and cross-attention maps, embeddings, positions, training curves"),
    "convert": ("convert", "convert a LlamaForCausalLM or GPT2LMHeadModel directory to scratchformer"),
    "export": ("export", "export to a stock LlamaForCausalLM / GPT2LMHeadModel directory or a GGUF file"),
    "upgrade-checkpoint": ("upgrade", "replace a checkpoint's model code with this version's (weights untouched)"),
    "doctor": ("doctor", "which tools take a checkpoint (exports, llama.cpp, vLLM, TRL, ...), and does it load"),
}


def version() -> str:
    return importlib.metadata.version("scratchformer")


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: scratchformer <command> [options]", "       scratchformer --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run `scratchformer <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        import torch
        import transformers

        print(f"scratchformer {version()} (transformers {transformers.__version__}, torch {torch.__version__})")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}; `scratchformer --help` lists them", file=sys.stderr)
        return 2
    module = importlib.import_module(f"scratchformer.training.{SUBCOMMANDS[name][0]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
