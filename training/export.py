"""`scratchformer export`: a scratchformer causal LM as a stock architecture, for the tools that key
on one (serving engines, llama.cpp, TransformerLens):

    scratchformer export --model runs/mini/model --to llama --output_dir mini-llama   # LlamaForCausalLM
    scratchformer export --model runs/qwen/model --to qwen3 --output_dir mini-qwen3   # Qwen3ForCausalLM
    scratchformer export --model runs/gpt2/model --to gpt2 --output_dir mini-gpt2     # GPT2LMHeadModel
    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf    # llama.cpp, Ollama
    scratchformer export --model runs/mini/model --to gguf --output_file mini-q8.gguf --dtype q8_0

A config the target cannot represent exactly is refused, naming the field; see
`scratchformer.training.library.export`.
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.export import TARGETS, export_stock
from scratchformer.training.library.gguf import DTYPES as GGUF_DTYPES
from scratchformer.training.library.gguf import write_gguf


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer export",
        description=(
            "Export a scratchformer causal LM to a stock architecture: --to llama (llama preset -> "
            "LlamaForCausalLM), --to qwen3 (qwen3 preset -> Qwen3ForCausalLM), --to gpt2 (gpt2 preset -> "
            "GPT2LMHeadModel), --to gguf (llama or qwen3 preset -> a GGUF file for llama.cpp and Ollama). Configs "
            "the target cannot represent exactly are refused."
        ),
    )
    p.add("--model", required=True, metavar="DIR", help="a scratchformer checkpoint directory (e.g. runs/NAME/model)")
    p.add("--to", required=True, choices=TARGETS, help="the target format")
    p.add("--output_dir", metavar="DIR", help="new directory (--to llama, --to qwen3, --to gpt2)")
    p.add("--output_file", metavar="FILE", help="new .gguf file (--to gguf)")
    p.add("--dtype", default="f16", metavar="|".join(GGUF_DTYPES),
          help="GGUF type of the matrices (default f16; norms stay f32; q8_0 ... q4_0 are quantized by the gguf "
               "package, the output matrix kept at q8_0); K-quants: llama.cpp's llama-quantize on the f16 file")
    return p


@command("export")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    if args.to == "gguf":
        if not args.output_file:
            raise UserError("--to gguf writes one file: give --output_file NAME.gguf")
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
