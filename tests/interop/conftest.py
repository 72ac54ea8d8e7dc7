"""The interop suite: real external tools that need an environment of their own (`trained_checkpoint`,
the checkpoints they run, is in tests/conftest.py: the gguf read-back and PEFT tests, which need only
the dev set, use it in the main suite).

Run with `make interop-ci` (what CI runs: stock transformers, lm-eval, TRL, ONNX, TransformerLens) or
`make interop` (adds llama.cpp through llama-cpp-python); vLLM has its own `make interop-vllm`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "interop" in item.path.parts:
            item.add_marker(pytest.mark.interop)
