"""`scratchformer convert`: a saved `LlamaForCausalLM`, `Qwen3ForCausalLM` or `GPT2LMHeadModel` as a
scratchformer checkpoint, so you can read GPT-2, a small Llama or a small Qwen3 in this code (the parity
tests use it too).

    scratchformer convert --model path/to/llama-qwen3-or-gpt2 --output_dir converted
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.convert import convert_checkpoint


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer convert",
        description="Convert a saved LlamaForCausalLM, Qwen3ForCausalLM or GPT2LMHeadModel directory into a "
        "scratchformer checkpoint.",
    )
    p.add("--model", required=True, metavar="DIR", help="directory written by save_pretrained (Llama, Qwen3 or GPT-2)")
    p.add("--output_dir", required=True, metavar="DIR", help="new directory for the scratchformer checkpoint")
    return p


@command("convert")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    print(f"wrote {convert_checkpoint(args.model, args.output_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
