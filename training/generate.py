"""`scratchformer generate`: text from a checkpoint, printed token by token as it is produced.

    scratchformer generate --model runs/mini/model "Once upon a time"
    scratchformer generate --model runs/mini/model --temperature 0 --max_new_tokens 40 "def main():"
    echo "The cat" | scratchformer generate --model runs/mini/model     # one prompt per line of stdin
    scratchformer generate --model sft --chat                          # a conversation: type, Ctrl-D to end

Everything is stock transformers: `AutoModelForCausalLM`, `generate()` with a `GenerationConfig`,
`TextStreamer` for the streaming, and the tokenizer's chat template for `--chat`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch
from transformers import TextStreamer
from transformers.utils import logging as hf_logging

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library import generation
from scratchformer.training.library.errors import UserError

EMPTY_PROMPT = (
    "empty prompt: give the text to continue, as an argument (scratchformer generate --model DIR "
    "'Once upon a time') or on stdin, one prompt per line"
)


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer generate",
        description="Generate text from a causal-LM checkpoint, streaming tokens as they are produced. "
        "With no prompt argument, prompts are read from stdin, one per line.",
    )
    p.add_argument("prompt", nargs="*", help="the text to continue (several words are joined with spaces)")
    p.add("--model", required=True, metavar="DIR", help="checkpoint directory (e.g. runs/mini/model)")
    p.add("--max_new_tokens", type=int, default=100, help="tokens to generate (default: 100)")
    p.add("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy decoding (default: 0.8)")
    p.add("--top_p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add("--top_k", type=int, default=0, help="sample among the k likeliest tokens (default: 0, off)")
    p.add("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1)")
    p.add("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add("--chat", action="store_true", help="format prompts as user turns with the chat template")
    p.add("--system", default=None, help="--chat: a system message opening the conversation")
    p.add("--device", default=None, help="cpu, cuda, mps, ... (default: the best available)")
    p.add("--trust_remote_code", action="store_true", help="allow a non-scratchformer model's own code")
    return p


@command("generate")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the streamed text
    run(args)
    return 0


def prompts_from(words: list[str], stdin=None) -> Iterator[str]:
    """The prompt given as arguments, or else each non-blank line of stdin."""
    if words:
        prompt = " ".join(words)
        if not prompt.strip():
            raise UserError(EMPTY_PROMPT)
        yield prompt
        return
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
    seen = False
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        if line.strip():
            seen = True
            yield line.rstrip("\n")
    if not seen:
        raise UserError(EMPTY_PROMPT)


def run(args: argparse.Namespace, stdin=None) -> None:
    """Each prompt's continuation streamed to stdout (with --chat, a conversation that remembers)."""
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = generation.load(args.model, args.device, args.trust_remote_code)
    if args.chat and not tokenizer.chat_template:
        raise UserError(f"{args.model}'s tokenizer has no chat template; drop --chat")
    gen = generation.generation_config(
        model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, chat=args.chat,
    )
    room = generation.context_room(model, args.max_new_tokens)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    history: list[dict[str, str]] | None = None
    if args.chat:
        history = [{"role": "system", "content": args.system}] if args.system else []
    for prompt in prompts_from(args.prompt, stdin):
        if history is not None:
            history.append({"role": "user", "content": prompt})
        input_ids = generation.prompt_ids(tokenizer, prompt, history)
        if room is not None and input_ids.shape[-1] > room:
            print(f"(prompt cut to its last {room} tokens to fit the {room + args.max_new_tokens}-token context)",
                  file=sys.stderr)  # fmt: skip
        if history is None:
            print(prompt, end="", flush=True)  # the continuation streams right after it
        reply = generation.generate_one(model, tokenizer, gen, input_ids, streamer=streamer)
        if history is not None:
            history.append({"role": "assistant", "content": reply.strip()})
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
