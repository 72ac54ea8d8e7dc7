"""`scratchformer generate`: text from a checkpoint, printed token by token as it is produced.

    scratchformer generate --model runs/mini/model "Once upon a time"
    scratchformer generate --model runs/mini/model --temperature 0 --max_new_tokens 40 "def main():"
    echo "The cat" | scratchformer generate --model runs/mini/model     # one prompt per line of stdin
    scratchformer generate --model sft --chat                          # a conversation: type, Ctrl-D to end

Everything is stock transformers: `AutoModelForCausalLM`, `generate()` with a `GenerationConfig`,
`TextStreamer` for the streaming, and the tokenizer's chat template for `--chat`.
"""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.generation import run


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


if __name__ == "__main__":
    raise SystemExit(main())
