"""`scratchformer serve`: a checkpoint behind transformers' own OpenAI-compatible server.

    scratchformer serve --model runs/mini/model                          # http://127.0.0.1:8000/v1
    scratchformer serve --model runs/mini/model --port 8080 --continuous_batching

It is `transformers serve MODEL --host ... --port ... [--continuous-batching]`, run so that the
server can find scratchformer's classes (upstream's server looks models up by architecture name in
the transformers package only; see `scratchformer.training.library.serving`). The process becomes
the server: its PID is the server's, and SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import os
import sys

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.serving import check_servable, serve_options, server_command


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer serve",
        description="Serve a causal-LM checkpoint with transformers' OpenAI-compatible server (chat and text "
        "completions, streaming, /v1/models, /health) until stopped (Ctrl-C or SIGTERM).",
    )
    p.add("--model", required=True, metavar="DIR", help="checkpoint directory (e.g. runs/mini/model)")
    p.add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add("--continuous_batching", action="store_true",
          help="batch requests as they come, over a paged KV cache (transformers' continuous batching)")
    p.add("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: auto, the best available)")
    p.add("--trust_remote_code", action="store_true", help="allow a non-scratchformer model's own code")
    return p


@command("serve")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    config = check_servable(args.model, args.trust_remote_code)
    options = serve_options(args.model, args.host, args.port, args.continuous_batching, args.device,
                            args.trust_remote_code, getattr(config, "max_position_embeddings", None))  # fmt: skip
    batching = "continuous batching" if args.continuous_batching else "one request at a time"
    print(f"serving {args.model} ({config.architectures[0]}, {batching}) at http://{args.host}:{args.port}/v1 "
          "with transformers' server; Ctrl-C stops it", flush=True)  # fmt: skip
    sys.stderr.flush()
    argv = server_command(options)
    os.execv(argv[0], argv)  # this process becomes the server: same PID, signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
