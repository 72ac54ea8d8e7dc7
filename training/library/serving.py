"""Serving a checkpoint over HTTP with transformers' own OpenAI-compatible server (`transformers
serve`: /v1/chat/completions, /v1/completions, /v1/models, /health, streaming, continuous batching).
The HTTP code, FastAPI and uvicorn are transformers'; this module only gets a scratchformer
checkpoint through the server's door. `scratchformer serve` is the command on top.

Why the door is stuck (upstream). transformers' server loads a model with
`getattr(transformers, config.architectures[0]).from_pretrained(...)` (`_load_model` in
transformers/cli/serving/model_manager.py, 5.17 to 5.25 at least). It never reads config.json's
`auto_map` nor the classes registered with the Auto classes, so no model outside the transformers
package can be served: `transformers serve runs/mini/model --trust-remote-code` stops with
"module transformers has no attribute ScratchformerForCausalLM". The fix belongs upstream: load
through `AutoModelForCausalLM.from_pretrained`, as pipelines do. Until then,
`resolvable_by_architecture` puts our classes where that line looks (THE line to delete once the
server loads through the Auto classes, with the process dance below).

Why the server runs in a process whose main module is this one. From transformers 5.25 the server
loads the model in a process it spawns: a fresh interpreter, which imports nothing of ours, so a
registration done in the command's process cannot help there. Python imports the parent's main
module in every process it spawns, though; so the server's process runs this module as its main
(`python -m scratchformer.training.library.serving OPTIONS`), and the import below makes the classes
resolvable in the server's process and in each one it spawns, whatever transformers' release.

The stock exports (`scratchformer export --to llama|gpt2`) need none of this: plain
`transformers serve mini-llama` serves them.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from .errors import UserError

# The options `scratchformer serve` passes on, in transformers' Serve's own names.
SERVE_OPTIONS = ("force_model", "host", "port", "continuous_batching", "device", "trust_remote_code",
                 "cb_num_blocks", "cb_max_batch_tokens")  # fmt: skip

# Continuous batching on a CPU: a paged cache for this many requests at the model's whole context, and
# at most this many tokens a forward. Left to itself, transformers sizes the cache to 80-90 % of the
# free memory, which on a CPU is the machine's RAM (5.17 then hangs for minutes filling it).
CPU_BATCHED_REQUESTS = 64
CPU_TOKENS_PER_FORWARD = 1024


def resolvable_by_architecture() -> list[str]:
    """Makes `getattr(transformers, name)` find scratchformer's model classes, as the server looks them
    up (see the module's docstring). Returns the names it set. Delete once transformers' server loads
    models through the Auto classes."""
    # transformers.processing_utils re-executes transformers/__init__.py when first imported, which
    # puts a new module object in sys.modules["transformers"] (direct_transformers_import): names set
    # on the module before that are lost. So that import comes first.
    import transformers.processing_utils  # noqa: F401

    import scratchformer.modeling as ours  # registers the Auto classes too (needed by the config's model_type)

    names = [name for name in ours.__all__ if name.startswith("ScratchformerFor")]
    for name in names:
        setattr(sys.modules["transformers"], name, getattr(ours, name))
    return names


def check_servable(model_dir: str, trust_remote_code: bool = False):
    """The checkpoint's config, after the one gate for model directories (config, complete
    safetensors weights, a tokenizer) and a check that it continues text: the server's chat and
    completions need a causal LM (and, for chat, a tokenizer with a chat template)."""
    from .finetuning import check_model_dir

    config = check_model_dir(model_dir, trust_remote_code=trust_remote_code)
    heads = config.architectures or []
    if not heads or not heads[0].endswith(("ForCausalLM", "LMHeadModel")):
        what = heads[0] if heads else f"a {config.model_type!r} model naming no architecture"
        raise UserError(
            f"{model_dir} holds {what}, and the server answers chat and completions with a causal language model "
            "(...ForCausalLM); serve a pretrained or causal-LM fine-tuned checkpoint"
        )
    if getattr(config, "is_causal", True) is False:
        raise UserError(f"{model_dir} is a bidirectional encoder (is_causal=False): it cannot continue text")
    return config


def serve_options(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    continuous_batching: bool = False,
    device: str = "auto",
    trust_remote_code: bool = False,
    context: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments of transformers' `Serve` (the `transformers serve` command) for one
    checkpoint, loaded at start-up and the only model served. `context`: the model's
    max_position_embeddings, which sizes continuous batching's cache on a CPU."""
    options = {
        "force_model": str(Path(model_dir)),
        "host": host,
        "port": int(port),
        "continuous_batching": bool(continuous_batching),
        "device": device,
        "trust_remote_code": bool(trust_remote_code),
    }
    if continuous_batching and runs_on_cpu(device):
        # Pages of 256 tokens (transformers' default): a request at the whole context needs this many.
        pages_per_request = -(-(context or 2048) // 256)
        options["cb_num_blocks"] = CPU_BATCHED_REQUESTS * pages_per_request
        options["cb_max_batch_tokens"] = CPU_TOKENS_PER_FORWARD
    return options


def runs_on_cpu(device: str) -> bool:
    if device == "auto":
        import torch

        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return device.startswith("cpu")


def server_command(options: dict[str, Any]) -> list[str]:
    """The command line of the server's process (see the module's docstring): this module as the
    main module of the same Python, with the options as JSON."""
    unknown = set(options) - set(SERVE_OPTIONS)
    if unknown:
        raise ValueError(f"not options of transformers' server: {sorted(unknown)}")
    return [sys.executable, "-m", __name__, json.dumps(options)]


def run_server(options: dict[str, Any]) -> None:
    """transformers' own server (`transformers serve`), in this process, until it is stopped (Ctrl-C,
    SIGTERM). Options a release's `Serve` does not take are left out."""
    from huggingface_hub import constants
    from transformers.cli.serve import Serve

    answer_bad_requests_with_400()
    # Before 5.25, /v1/models lists the Hugging Face cache, and answers 500 where its folder is missing.
    Path(constants.HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)
    accepted = inspect.signature(Serve.__init__).parameters
    Serve(**{name: value for name, value in options.items() if name in accepted})


def answer_bad_requests_with_400() -> None:
    """From 5.25 transformers' server answers a request the model refuses (a `ValueError`: a prompt
    longer than the model's positions) with HTTP 400 and the reason; before, with a bare 500 that
    hides it. This gives the older releases' app the same handler, and nothing else: delete it once
    the package requires transformers >= 5.25."""
    from fastapi.responses import JSONResponse
    from transformers.cli.serving import server

    build_server = server.build_server
    if getattr(build_server, "answers_bad_requests", False):
        return

    async def bad_request(request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    def build_server_answering_400(*args, **kwargs):
        app = build_server(*args, **kwargs)
        if ValueError not in app.exception_handlers:
            app.add_exception_handler(ValueError, bad_request)
        return app

    build_server_answering_400.answers_bad_requests = True
    server.build_server = build_server_answering_400  # Serve imports it from there when it runs


# Here, and in every process the server spawns (which imports this main module again).
resolvable_by_architecture()

if __name__ == "__main__":
    run_server(json.loads(sys.argv[1]))
