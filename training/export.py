"""`scratchformer export`: a scratchformer causal LM as a stock architecture, for the tools that key
on one (serving engines, llama.cpp, TransformerLens):

    scratchformer export --model runs/mini/model --to llama --output_dir mini-llama   # LlamaForCausalLM
    scratchformer export --model runs/gpt2/model --to gpt2 --output_dir mini-gpt2     # GPT2LMHeadModel
    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf    # llama.cpp, Ollama

A config the target cannot represent exactly is refused, naming the field; see
`scratchformer.training.library.export`.
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.export import TARGETS, export_stock


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer export",
        description=(
            "Export a scratchformer causal LM to a stock architecture: --to llama (llama preset -> "
            "LlamaForCausalLM), --to gpt2 (gpt2 preset -> GPT2LMHeadModel), --to gguf (llama preset -> a GGUF "
            "file for llama.cpp and Ollama). Configs the target cannot represent exactly are refused."
        ),
    )
    p.add("--model", required=True, metavar="DIR", help="a scratchformer checkpoint directory (e.g. runs/NAME/model)")
    p.add("--to", required=True, choices=TARGETS, help="the target format")
    p.add("--output_dir", metavar="DIR", help="new directory (--to llama, --to gpt2)")
    p.add("--output_file", metavar="FILE", help="new .gguf file (--to gguf)")
    p.add("--dtype", choices=("f32", "f16"), default="f16",
          help="GGUF tensor type for the matrices (default f16; norms stay f32)")
    return p


@command("export")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    if args.to == "gguf":
        if not args.output_file:
            raise UserError("--to gguf writes one file: give --output_file NAME.gguf")
        from scratchformer.training.library.gguf import write_gguf

        written, notes = write_gguf(args.model, args.output_file, dtype=args.dtype)
    else:
        if not args.output_dir:
            raise UserError(f"--to {args.to} writes a model directory: give --output_dir")
        written, notes = export_stock(args.model, args.to, args.output_dir)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
