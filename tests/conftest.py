"""Shared fixtures: a tiny config factory and a subprocess runner that cannot import scratchformer.

Other test files use these through pytest fixtures only (tests/ is not a package)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformer.modeling import ScratchformerConfig

# Tests run tiny models under `pytest -n 2` on two cores. One intra-op thread per worker: with more,
# OpenMP threads spin-wait between millisecond-sized ops, which measured 3x the CPU time for the same
# tests (and worse when the two workers oversubscribe the cores).
torch.set_num_threads(1)

# Width 32, 2 layers, 4 heads: every test runs in milliseconds on a CPU. 97 is prime, so a vocabulary
# index can never be confused with a width or a length in a shape error.
TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


@pytest.fixture
def tiny_config() -> Callable[..., ScratchformerConfig]:
    """`tiny_config(**overrides)`, or `tiny_config(preset="paper", **overrides)` for a named family."""

    def make(preset: str | None = None, **overrides) -> ScratchformerConfig:
        fields = {**TINY, **overrides}
        if preset is not None:
            return ScratchformerConfig.from_preset(preset, **fields)
        return ScratchformerConfig(**fields)

    return make


# Prepended to every script run by `run_without_scratchformer`. A `None` entry in sys.modules makes
# any later `import scratchformer` raise ImportError, whatever the installed editable finder would do,
# so the script sees only what a checkpoint directory ships.
_BLOCK_SCRATCHFORMER = """\
import sys
sys.modules["scratchformer"] = None
try:
    import scratchformer  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("scratchformer is importable; this subprocess must not see it")
"""


def _run_without_scratchformer(code: str, cwd: str | os.PathLike, timeout: float = 180) -> subprocess.CompletedProcess:
    cwd = Path(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME", "TRANSFORMERS_CACHE")}
    # A private HF_HOME: remote code is copied into $HF_HOME/modules, so nothing cached by an earlier
    # run (or another test) can stand in for the checkpoint's own files. Offline: no Hub lookups.
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    script = cwd / "run_without_scratchformer.py"
    script.write_text(_BLOCK_SCRATCHFORMER + textwrap.dedent(code))
    # cwd is the caller's tmp dir, never the repo root, so no bare `modeling/` folder is on sys.path.
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_without_scratchformer() -> Callable[..., subprocess.CompletedProcess]:
    """`run_without_scratchformer(code, cwd)` runs `code` in a fresh interpreter (cwd=`cwd`, a tmp dir)
    where `import scratchformer` raises ImportError, HF_HOME points inside `cwd` and the Hub is offline.
    Returns the CompletedProcess (text stdout/stderr); assert on `returncode` yourself."""
    return _run_without_scratchformer
