"""What the commands write is readable as the user's other files are: temporary names created with
the umask, not with tempfile's private 0600/0700 modes (which survived the final rename: an exported
GGUF file or model directory was unreadable to anyone but its owner)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training.library.convert import convert_checkpoint
from scratchformer.training.library.evaluation import write_json_atomically
from scratchformer.training.library.export import export_stock
from scratchformer.training.library.files import fresh_sibling, fresh_sibling_file


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = train_bpe(["the cat sat on the mat, the dog ran"] * 20, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), hidden_size=32,
                                             num_hidden_layers=1, num_attention_heads=4)
    ScratchformerForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_temporary_names_take_the_umask(tmp_path, umask_022):
    folder = fresh_sibling(tmp_path / "out")
    fd, file = fresh_sibling_file(tmp_path / "out.json")
    os.close(fd)
    assert (mode(folder), mode(file)) == (0o755, 0o644)
    assert folder.name.startswith(".out.") and file.parent == tmp_path


def test_exports_conversions_and_results_are_readable_by_the_group(model_dir, tmp_path, umask_022):
    """Including the weights: safetensors >= 0.8.1 writes them 0600 (safetensors/safetensors#782)."""
    llama, _ = export_stock(model_dir, "llama", tmp_path / "llama")
    converted = convert_checkpoint(llama, tmp_path / "converted")
    results = write_json_atomically({"eval_loss": 1.0}, tmp_path / "results.json")
    for directory in (llama, converted):
        assert mode(directory) == 0o755, directory
        assert {mode(f) for f in directory.iterdir() if f.is_file()} == {0o644}, directory
    assert mode(results) == 0o644


def test_a_gguf_file_is_readable_by_the_group(model_dir, tmp_path, umask_022):
    pytest.importorskip("gguf")
    from scratchformer.training.library.gguf import write_gguf

    out, _ = write_gguf(model_dir, tmp_path / "m.gguf")
    assert mode(out) == 0o644


def test_a_pretrained_models_weights_are_readable_by_the_group(tmp_path, umask_022):
    from scratchformer.training.library.pretraining import PretrainConfig, train

    tok = tmp_path / "tok"
    train_bpe(["the cat sat on the mat, the dog ran"] * 50, vocab_size=300, show_progress=False).save_pretrained(tok)
    result = train(PretrainConfig(output_dir=str(tmp_path / "run"), tokenizer=str(tok), size="tiny", hidden_size=32,
                                  block_size=16, max_train_steps=1, report_to="none"))
    assert {mode(f) for f in (tmp_path / "run" / "model").iterdir() if f.is_file()} == {0o644}, result
