"""Fixtures of the pretraining tests: a slice of the embedded corpus and a tokenizer trained on it
(module-scoped: each test module trains its own, as before)."""

from pathlib import Path

import pytest
from pretrain_runs import write_corpus, write_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> str:
    return write_tokenizer(corpus, tmp_path_factory.mktemp("tok"))
