"""The library behind `scratchformer serve` (the server itself is tested in tests/cli/test_serve.py):
our classes where transformers' server looks them up, its options, the server process's command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.training.library import serving

pytest.importorskip("fastapi", reason="the serve extra (transformers[serving]) is not installed")


@pytest.mark.slow
def test_the_server_finds_our_classes_where_it_looks_them_up(tmp_path):
    """transformers' model manager runs `getattr(transformers, config.architectures[0])`, in a process
    that imports the server's main module first: this one, as `python -m` runs it (and as a process
    the server spawns imports it). transformers.processing_utils replaces sys.modules['transformers']
    when first imported: the names must be set after that, or they are lost."""
    code = (
        "import runpy, sys\n"
        "runpy.run_module('scratchformer.training.library.serving', run_name='__mp_main__')\n"  # as spawn does
        "import transformers.cli.serve, transformers.cli.serving.model_manager as manager\n"
        "import transformers.processing_utils\n"
        "assert sys.modules['transformers'] is manager.transformers\n"
        "print(manager.transformers.ScratchformerForCausalLM.__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ScratchformerForCausalLM.__module__


def test_options_are_transformers_serves_and_size_the_paged_cache_on_a_cpu():
    options = serving.serve_options("runs/mini/model", port=8123, continuous_batching=True, device="cpu",
                                    context=600)  # fmt: skip
    assert options["force_model"] == "runs/mini/model" and options["host"] == "127.0.0.1" and options["port"] == 8123
    assert options["cb_num_blocks"] == serving.CPU_BATCHED_REQUESTS * 3  # 600 tokens: 3 pages of 256
    assert options["cb_max_batch_tokens"] == serving.CPU_TOKENS_PER_FORWARD
    assert "cb_num_blocks" not in serving.serve_options("m", continuous_batching=False, device="cpu")
    assert "cb_num_blocks" not in serving.serve_options("m", continuous_batching=True, device="cuda")
    argv = serving.server_command(options)
    assert argv[:3] == [sys.executable, "-m", "scratchformer.training.library.serving"]
    with pytest.raises(ValueError, match="not options"):
        serving.server_command({**options, "api_key": "x"})


def test_run_server_passes_only_what_the_installed_serve_takes(monkeypatch, tmp_path):
    import transformers.cli.serve
    from huggingface_hub import constants

    seen = {}

    class Serve:
        def __init__(self, force_model=None, host="localhost", port=8000, continuous_batching=False):
            seen.update(force_model=force_model, host=host, port=port, continuous_batching=continuous_batching)

    monkeypatch.setattr(transformers.cli.serve, "Serve", Serve)
    monkeypatch.setattr(serving, "answer_bad_requests_with_400", lambda: None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    serving.run_server(serving.serve_options("m", port=9, continuous_batching=True, device="cpu", context=64))
    assert seen == {"force_model": "m", "host": "127.0.0.1", "port": 9, "continuous_batching": True}
    assert (tmp_path / "hub").is_dir()  # before 5.25, /v1/models answers 500 without it


def test_a_refused_request_is_a_400_on_every_release(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from transformers.cli.serving import server

    def build_server(*args, **kwargs):
        app = FastAPI()

        @app.get("/refuse")
        def refuse():
            raise ValueError("The prompt has 99 tokens")

        return app

    monkeypatch.setattr(server, "build_server", build_server)
    serving.answer_bad_requests_with_400()
    response = TestClient(server.build_server(), raise_server_exceptions=False).get("/refuse")
    assert response.status_code == 400 and response.json() == {"detail": "The prompt has 99 tokens"}
