"""Fixtures for the interop suite: real scratchformer checkpoints, trained for a few hundred steps on
the embedded corpus so that their text is not noise, built once per session.

Run with `make interop-ci` (what CI runs: stock transformers, gguf, lm-eval, TRL, PEFT, ONNX) or
`make interop` (adds llama.cpp through llama-cpp-python); vLLM has its own `make interop-vllm`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "interop" in item.path.parts:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """`trained_checkpoint(preset)` -> the model/ directory of a `scratchformer pretrain` run of that
    preset ("llama", "gpt2" or "paper"): size tiny (2 layers x 64, context 128), a 512-token BPE
    tokenizer, 300 steps on the embedded corpus. Built on first use, shared by the session."""
    from scratchformer.training.library.pretraining import PretrainConfig, train

    built: dict[str, Path] = {}

    def make(preset: str) -> Path:
        if preset not in built:
            out = tmp_path_factory.mktemp(f"pretrain-{preset}")
            train(PretrainConfig(
                output_dir=str(out), preset=preset, size="tiny", vocab_size=512, max_train_steps=300,
                learning_rate=3e-3, report_to="none", seed=0, logging_steps=100, eval_steps=300, save_steps=300,
            ))
            built[preset] = out / "model"
        return built[preset]

    return make
