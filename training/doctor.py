"""`scratchformer doctor`: where a checkpoint runs, one line per tool, before the user finds out.

    scratchformer doctor --model runs/mini/model
    scratchformer doctor --model someone-elses-model --trust_remote_code   # run code that is not ours

Each line is a tool, ✓ or ✗, and the reason: the rules the interop suite measured (exports, GGUF
types, K-quants, vLLM's CPU head widths, transformers' server, the position limit, the transformers
range of the code), plus a live load in a fresh process without scratchformer; "?" marks a check not
run. Exits 1 only when the checkpoint itself is broken (it does not load, or decodes wrongly with this
transformers), 2 on bad input. See `scratchformer.training.library.doctor`.
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.doctor import diagnose


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer doctor",
        description=(
            "Say which tools take a checkpoint (transformers through remote code, the exports, llama.cpp and its "
            "GGUF types, vLLM, transformers serve, TRL, lm-eval), from the rules the interop suite measured, and "
            "load it in a fresh process without scratchformer. Exit status 1 only for a broken checkpoint."
        ),
    )
    p.add("--model", required=True, metavar="DIR", help="a scratchformer checkpoint directory (e.g. runs/NAME/model)")
    p.add("--trust_remote_code", action="store_true",
          help="run the checkpoint's code in the live check even when it is not this scratchformer's")
    return p


@command("doctor")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    diagnosis = diagnose(args.model, live=True, trust_remote_code=args.trust_remote_code)
    print(diagnosis.summary)
    width = max(len(v.tool) for v in diagnosis.verdicts)
    for verdict in diagnosis.verdicts:
        print(f"{verdict.mark} {verdict.tool:<{width}}  {verdict.reason}")
    if diagnosis.broken:
        print(f"{diagnosis.model_dir} is broken here: see the ✗ lines above")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
