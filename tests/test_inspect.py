"""`scratchformer inspect`: the numbers behind the pictures are right, and the pictures get written."""

import json
import re

import numpy as np
import pytest
import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM, ScratchformerModel
from scratchformer.tokenization import train_bpe
from scratchformer.training import inspect

TEXT = "The cat sat on the mat.\nThe dog sat on the log."


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [TEXT, "A cat and a dog. Ünïcödé, 日本語 and tabs\there."] * 20
    return train_bpe(corpus, vocab_size=300, model_max_length=64, show_progress=False)


def tiny(tokenizer, **overrides):
    torch.manual_seed(0)
    config = ScratchformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        **overrides,
    )
    return ScratchformerForCausalLM(config) if config.is_causal else ScratchformerModel(config)


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tiny(tokenizer, position_embedding="learned").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    return data


@pytest.mark.parametrize("overrides", [
    dict(position_embedding="rope", num_key_value_heads=2),  # grouped-query: still one map per query head
    dict(position_embedding="learned", attn_implementation="sdpa"),  # maps come from the eager path anyway
    dict(position_embedding="sinusoidal", norm_position="post", hidden_dropout=0.5),  # dropout must be off
])
def test_decoder_attention_rows_sum_to_one_and_are_causal(tokenizer, overrides):
    model = tiny(tokenizer, **overrides).train()
    tokens, maps = inspect.attention_maps(model, tokenizer, TEXT)
    L = len(tokens)
    assert maps.shape == (2, 4, L, L)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0.0)
    assert np.all(np.diagonal(maps, axis1=-2, axis2=-1) > 0)
    assert model.training  # the caller's mode is restored
    np.testing.assert_array_equal(maps, inspect.attention_maps(model, tokenizer, TEXT)[1])


def test_encoder_attention_is_bidirectional(tokenizer):
    model = tiny(tokenizer, is_causal=False)
    _, maps = inspect.attention_maps(model, tokenizer, TEXT, max_tokens=10)
    assert maps.shape[-1] == 10
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    rows, cols = np.triu_indices(10, k=1)
    assert np.all(maps[..., rows, cols] > 0)  # every token sees the ones after it


def test_encoder_decoder_shows_its_encoder(tokenizer):
    from scratchformer.modeling import ScratchformerSeq2SeqConfig, ScratchformerSeq2SeqModel

    config = ScratchformerSeq2SeqConfig(vocab_size=len(tokenizer), hidden_size=32, encoder_layers=2, decoder_layers=1,
                                        num_attention_heads=4, max_position_embeddings=64)
    model = ScratchformerSeq2SeqModel(config)
    tokens, maps = inspect.attention_maps(model, tokenizer, "The cat sat")
    assert maps.shape == (2, 4, len(tokens), len(tokens)) and not inspect._is_causal(maps)
    assert inspect.position_encodings(model).shape == (64, 32)


def test_token_labels_show_whitespace_and_bytes(tokenizer):
    tokens, _ = inspect.attention_maps(tiny(tokenizer), tokenizer, " The cat\n日")
    assert tokens[0] == "<s>"
    assert "␣cat" in tokens and "↵" in "".join(tokens)
    assert not any("Ġ" in t or "Ċ" in t for t in tokens)


def test_nearest_neighbour_of_a_token_is_itself(tokenizer):
    model = tiny(tokenizer)
    neighbours = inspect.nearest_tokens(model, tokenizer, "cat", k=5)
    assert len(neighbours) == 5
    assert neighbours[0][0] == "␣cat"
    assert neighbours[0][1] == pytest.approx(1.0, abs=1e-5)
    sims = [s for _, s in neighbours]
    assert sims == sorted(sims, reverse=True) and all(s < 1.0 - 1e-4 for s in sims[1:])
    assert inspect.nearest_tokens(model, tokenizer, "␣cat", k=1) == neighbours[:1]
    with pytest.raises(ValueError, match="not a single token"):
        inspect.nearest_tokens(model, tokenizer, "catdogmatlog", k=3)


def test_embedding_pca_is_centred_and_ordered(tokenizer):
    labels, coords, explained = inspect.embedding_pca(tiny(tokenizer), tokenizer, ["cat", "dog", "mat", "log", "cat"])
    assert labels == ["␣cat", "␣dog", "␣mat", "␣log"]
    assert coords.shape == (4, 2)
    np.testing.assert_allclose(coords.mean(0), 0.0, atol=1e-6)
    assert 1.0 >= explained[0] >= explained[1] >= 0.0


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "rope"])
def test_position_encodings_and_their_picture(tokenizer, kind):
    model = tiny(tokenizer, position_embedding=kind)
    table = inspect.position_encodings(model)
    base = model.model
    if kind == "rope":
        assert table.shape == (64, 8)
        # The formula, head width K = 8 (theta 10000 by default): not the model's own helper.
        inv_freq = np.array([10000.0 ** (-2 * i / 8) for i in range(4)])
        angles = np.arange(64)[:, None] * inv_freq
        np.testing.assert_allclose(table[:, 0::2], np.sin(angles), atol=1e-6)
    else:
        expected = base.embed_positions.table if kind == "sinusoidal" else base.embed_positions.weight
        np.testing.assert_array_equal(table, expected.detach().numpy())
    distances, mean, low, high = inspect.similarity_by_distance(table)
    assert mean[0] == pytest.approx(1.0, abs=1e-5)
    if kind != "learned":  # fixed clocks: the similarity depends on the distance alone
        np.testing.assert_allclose(low, high, atol=1e-4)
    assert inspect.plot_positions(model, num_positions=32).axes


def test_html_is_self_contained(tokenizer):
    tokens, maps = inspect.attention_maps(tiny(tokenizer), tokenizer, "The cat </script><b>")
    page = inspect.attention_html(tokens, maps, title="<cat>")
    assert not re.search(r"https?:|//[\w.-]+\.\w|\bsrc\s*=|<link|@import|url\(", page, re.IGNORECASE)
    assert page.count("</script>") == 2 and "<b>" not in page and "&lt;cat&gt;" in page
    data = page.split('id="data">')[1].split("</script>")[0]
    payload = json.loads(data)
    assert payload["tokens"] == tokens and payload["causal"] is True
    assert np.asarray(payload["maps"]).shape == maps.shape


def test_cli_writes_pictures(checkpoint, tmp_path, capsys):
    grid, one, page = tmp_path / "grid.png", tmp_path / "one.png", tmp_path / "a.html"
    assert inspect.main(["attention", "--model", str(checkpoint), TEXT, "--out", str(grid), "--html", str(page)]) == 0
    assert inspect.main(["attention", "--model", str(checkpoint), "the cat", "--layer", "-1", "--head", "1",
                         "--out", str(one)]) == 0
    emb, pos = tmp_path / "emb.png", tmp_path / "pos.png"
    assert inspect.main(["embeddings", "--model", str(checkpoint), "--token", "cat", "--k", "4",
                         "--words", "dog,mat", "--out", str(emb)]) == 0
    assert inspect.main(["positions", "--model", str(checkpoint), "--out", str(pos)]) == 0
    for path in (grid, one, emb, pos):
        _png(path)
    assert "<html" in page.read_text("utf-8")
    assert "+1.000  ␣cat" in capsys.readouterr().out


def test_cli_errors_are_one_clear_line(checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare"
    ScratchformerForCausalLM.from_pretrained(checkpoint).save_pretrained(bare)
    assert inspect.main(["attention", "--model", str(bare), "hi"]) == 2
    assert "--tokenizer DIR" in capsys.readouterr().err
    assert inspect.main(["attention", "--model", str(bare), "--tokenizer", str(checkpoint), "hi",
                         "--out", str(tmp_path / "ok.png")]) == 0
    assert inspect.main(["attention", "--model", str(checkpoint), "hi", "--layer", "7"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_plot_run_tolerates_a_log_being_written(tmp_path):
    # The keys `scratchformer pretrain` logs; grad_norm is None when it was not measured.
    lines = [json.dumps({"step": s, "loss": 5.0 / (s + 1), "lr": 1e-3 * min(1, s / 3), "tokens_per_s": 1e4,
                         "grad_norm": None}) for s in range(1, 61)]
    lines[5] = json.dumps({"step": 6, "eval_loss": 2.5, "eval_ppl": 12.2})  # evaluation lines carry other keys
    lines.insert(3, "not json")
    lines.append('{"step": 20, "loss": 0.2')  # the writer is mid-line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n[1, 2]\n\n", "utf-8")
    records = inspect.read_run_log(tmp_path)
    assert len(records) == 60
    fig = inspect.plot_run(tmp_path, tmp_path / "curves.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [inspect.RUN_PANELS[panel][1] for panel in ("loss", "lr", "throughput")]
    _png(tmp_path / "curves.png")
    assert inspect.main(["run", str(tmp_path)]) == 0
    _png(tmp_path / "training_curves.png")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n', "utf-8")
    with pytest.raises(ValueError, match="no metrics"):
        inspect.plot_run(tmp_path)
