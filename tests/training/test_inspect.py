"""`scratchformer inspect`: the numbers behind the pictures are right, and the pictures get written."""

import json
import re

import numpy as np
import pytest
import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM, ScratchformerModel
from scratchformer.tokenization import train_bpe
from scratchformer.training import inspect, viz
from scratchformer.training.viz.attention import _is_causal
from scratchformer.training.viz.curves import RUN_PANELS

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


def assert_self_contained(page: str) -> None:
    """Nothing a browser would fetch: no URL but the SVG namespace (an identifier, never requested; the
    browser test checks that no request is made), no src=, <link>, @import or url()."""
    page = page.replace('"http://www.w3.org/2000/svg"', '""')
    assert not re.search(r"https?:|//[\w.-]+\.\w|\bsrc\s*=|<link|@import|url\(", page, re.IGNORECASE)


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
    tokens, maps = viz.attention_maps(model, tokenizer, TEXT)
    L = len(tokens)
    assert maps.shape == (2, 4, L, L)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0.0)
    assert np.all(np.diagonal(maps, axis1=-2, axis2=-1) > 0)
    assert model.training  # the caller's mode is restored
    np.testing.assert_array_equal(maps, viz.attention_maps(model, tokenizer, TEXT)[1])


def test_encoder_attention_is_bidirectional(tokenizer):
    model = tiny(tokenizer, is_causal=False)
    _, maps = viz.attention_maps(model, tokenizer, TEXT, max_tokens=10)
    assert maps.shape[-1] == 10
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    rows, cols = np.triu_indices(10, k=1)
    assert np.all(maps[..., rows, cols] > 0)  # every token sees the ones after it


def test_encoder_decoder_shows_its_encoder(tokenizer):
    from scratchformer.modeling import ScratchformerSeq2SeqConfig, ScratchformerSeq2SeqModel

    config = ScratchformerSeq2SeqConfig(vocab_size=len(tokenizer), hidden_size=32, encoder_layers=2, decoder_layers=1,
                                        num_attention_heads=4, max_position_embeddings=64)
    model = ScratchformerSeq2SeqModel(config)
    tokens, maps = viz.attention_maps(model, tokenizer, "The cat sat")
    assert maps.shape == (2, 4, len(tokens), len(tokens)) and not _is_causal(maps)
    assert viz.position_encodings(model).shape == (64, 32)


def test_cross_attention_maps_are_the_models_own_layer_by_layer(tokenizer):
    """`inspect cross-attention` draws what the decoder's cross-attention computed, every layer in
    its place (maps of reversed layers passed: only a PNG was checked)."""
    from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig

    torch.manual_seed(0)
    config = ScratchformerSeq2SeqConfig(vocab_size=len(tokenizer), hidden_size=32, encoder_layers=1, decoder_layers=3,
                                        num_attention_heads=4, max_position_embeddings=64)
    model = ScratchformerForConditionalGeneration(config).eval()
    src, tgt, maps = viz.cross_attention_maps(model, tokenizer, "The cat sat on the mat", "A dog ran")
    enc = tokenizer("The cat sat on the mat", return_tensors="pt")
    target = torch.tensor([tokenizer("A dog ran", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        out = model(**enc, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(target),
                    output_attentions=True)
    assert maps.shape == (3, 4, len(tgt), len(src)) == (3, 4, target.shape[1], enc["input_ids"].shape[1])
    for layer, probs in enumerate(out.cross_attentions):
        np.testing.assert_allclose(maps[layer], probs[0].numpy(), atol=1e-6)
    assert not np.allclose(maps[0], maps[-1], atol=1e-3)  # the layers differ, so their order is checked
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)


def test_token_labels_show_whitespace_and_bytes(tokenizer):
    tokens, _ = viz.attention_maps(tiny(tokenizer), tokenizer, " The cat\n日")
    assert tokens[0] == "<s>"
    assert "␣cat" in tokens and "↵" in "".join(tokens)
    assert not any("Ġ" in t or "Ċ" in t for t in tokens)


def test_nearest_neighbour_of_a_token_is_itself(tokenizer):
    model = tiny(tokenizer)
    neighbours = viz.nearest_tokens(model, tokenizer, "cat", k=5)
    assert len(neighbours) == 5
    assert neighbours[0][0] == "␣cat"
    assert neighbours[0][1] == pytest.approx(1.0, abs=1e-5)
    sims = [s for _, s in neighbours]
    assert sims == sorted(sims, reverse=True) and all(s < 1.0 - 1e-4 for s in sims[1:])
    assert viz.nearest_tokens(model, tokenizer, "␣cat", k=1) == neighbours[:1]
    with pytest.raises(ValueError, match="not a single token"):
        viz.nearest_tokens(model, tokenizer, "catdogmatlog", k=3)


def test_embedding_projection_is_fitted_on_a_fixed_background(tokenizer):
    """The axes are the vocabulary's (a fixed background of ordinary tokens), not the few tokens drawn:
    a token lands at the same place whichever others are drawn beside it, and the projection is of the
    unit vectors the cosine ranking reads."""
    from scratchformer.training.viz.embeddings import background_ids

    model = tiny(tokenizer)
    labels, coords, explained = viz.embedding_pca(model, tokenizer, ["cat", "dog", "mat", "log", "cat"])
    assert labels == ["␣cat", "␣dog", "␣mat", "␣log"]
    assert coords.shape == (4, 2)
    assert 1.0 >= explained[0] >= explained[1] >= 0.0
    _, alone, _ = viz.embedding_pca(model, tokenizer, ["cat", "dog"])
    np.testing.assert_allclose(alone, coords[:2], atol=1e-12)  # other tokens do not move the axes
    # The reference: PCA of the background's unit vectors, by numpy's own eigendecomposition.
    emb = viz.embedding_matrix(model).astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    background = unit[background_ids(tokenizer, len(emb))]
    assert tokenizer.pad_token_id not in background_ids(tokenizer, len(emb))
    values, vectors = np.linalg.eigh(np.cov(background.T, bias=True))
    top = vectors[:, ::-1][:, :2]
    ids = [tokenizer.get_vocab()[t] for t in ("Ġcat", "Ġdog", "Ġmat", "Ġlog")]
    expected = (unit[ids] - background.mean(0)) @ top
    np.testing.assert_allclose(np.abs(coords), np.abs(expected), atol=1e-8)  # an axis's sign is arbitrary
    np.testing.assert_allclose(explained, values[::-1][:2] / values.sum(), atol=1e-8)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "rope"])
def test_position_encodings_and_their_picture(tokenizer, kind):
    model = tiny(tokenizer, position_embedding=kind)
    table = viz.position_encodings(model)
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
    distances, mean, low, high = viz.similarity_by_distance(table)
    assert mean[0] == pytest.approx(1.0, abs=1e-5)
    if kind != "learned":  # fixed clocks: the similarity depends on the distance alone
        np.testing.assert_allclose(low, high, atol=1e-4)
    assert viz.plot_positions(model, num_positions=32).axes


def test_html_is_self_contained(tokenizer):
    tokens, maps = viz.attention_maps(tiny(tokenizer), tokenizer, "The cat </script><b>")
    page = viz.attention_html(tokens, maps, title="<cat>")
    assert_self_contained(page)
    assert page.count("</script>") == 3 and "<b>" not in page and "&lt;cat&gt;" in page
    data = page.split('id="data">')[1].split("</script>")[0]
    payload = json.loads(data)
    assert payload["tokens"] == tokens and payload["causal"] is True
    assert np.asarray(payload["maps"]).shape == maps.shape


def test_cli_writes_pictures(checkpoint, tmp_path, capsys):
    grid, one, page = tmp_path / "grid.png", tmp_path / "one.png", tmp_path / "a.html"
    assert inspect.main(["attention", "--model", str(checkpoint), TEXT, "--output_file", str(grid), "--html",
                        str(page)]) == 0
    assert inspect.main(["attention", "--model", str(checkpoint), "the cat", "--layer", "-1", "--head", "1",
                         "--output_file", str(one)]) == 0
    emb, pos = tmp_path / "emb.png", tmp_path / "pos.png"
    assert inspect.main(["embeddings", "--model", str(checkpoint), "--token", "cat", "--k", "4",
                         "--words", "dog,mat", "--output_file", str(emb)]) == 0
    assert inspect.main(["positions", "--model", str(checkpoint), "--output_file", str(pos)]) == 0
    for path in (grid, one, emb, pos):
        _png(path)
    assert "<html" in page.read_text("utf-8")
    assert "+1.000  ␣cat" in capsys.readouterr().out


@pytest.fixture(scope="module")
def peaked_checkpoint(tokenizer, tmp_path_factory):
    """A rotary, grouped-query checkpoint whose queries and keys are scaled up, so its heads attend
    sharply and differently: a freshly initialised model's maps are all close to uniform, and a
    wrong layer, head or row would pass an approximate comparison with them."""
    path = tmp_path_factory.mktemp("peaked")
    model = tiny(tokenizer, position_embedding="rope", num_key_value_heads=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _models_own_maps(checkpoint, text):
    """The maps the model itself returns with output_attentions=True, loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = AutoTokenizer.from_pretrained(checkpoint)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    return torch.stack([a[0] for a in attentions]).numpy()


def test_cli_draws_the_models_own_attention_maps(peaked_checkpoint, tmp_path, monkeypatch):
    expected = _models_own_maps(peaked_checkpoint, TEXT)
    L = expected.shape[-1]
    future = np.triu(np.ones((L, L), bool), k=1)
    # Not near-uniform: in most rows the strongest weight is over twice 1/(number of keys seen).
    assert np.mean(expected.max(-1) > 2.0 / np.arange(1, L + 1)) > 0.5
    figures = []
    monkeypatch.setattr(viz.common, "save", lambda fig, path, **kw: figures.append(fig) or path)
    page = tmp_path / "a.html"
    assert inspect.main(["attention", "--model", str(peaked_checkpoint), TEXT, "--html", str(page)]) == 0
    assert inspect.main(["attention", "--model", str(peaked_checkpoint), TEXT, "--layer", "-1", "--head", "2"]) == 0

    grid, single = figures
    panels = [ax for ax in grid.axes if ax.images]
    assert len(panels) == 2 * 4  # every layer and every query head (4 of them over 2 key/value heads)
    for ax in panels:
        layer, head = map(int, re.fullmatch(r"layer (\d+), head (\d+)", ax.get_title()).groups())
        drawn = ax.images[0].get_array()
        # The future is masked (drawn grey); every visible cell is the model's own weight, bit for bit.
        np.testing.assert_array_equal(np.ma.getmaskarray(drawn), future)
        np.testing.assert_array_equal(drawn.filled(0.0), expected[layer, head])
    (one,) = [ax for ax in single.axes if ax.images]
    np.testing.assert_array_equal(one.images[0].get_array().filled(0.0), expected[-1, 2])

    payload = json.loads(page.read_text("utf-8").split('id="data">')[1].split("</script>")[0])
    np.testing.assert_allclose(payload["maps"], expected, atol=5e-5)  # the page rounds to 4 decimals


def test_cli_names_each_heads_scores(peaked_checkpoint, tmp_path, capsys):
    """`inspect attention` prints every head's previous-token / first-token / entropy scores on the text
    and names the strongest previous-token head; `inspect heads` prints and saves the probe scores.
    The numbers are head_scores' own, on the model's own maps."""
    from transformers import AutoModelForCausalLM

    from scratchformer.training.library.head_scores import (
        entropy_scores,
        first_token_scores,
        head_scores,
        previous_token_scores,
    )
    from scratchformer.training.viz.common import load_model

    expected = _models_own_maps(peaked_checkpoint, TEXT)
    prev, first, entropy = previous_token_scores(expected), first_token_scores(expected), entropy_scores(expected)
    assert inspect.main(["attention", "--model", str(peaked_checkpoint), TEXT, "--output_file",
                         str(tmp_path / "a.png")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rows = re.findall(r"layer (\d): (.*)", printed)
    assert len(rows) == 2
    for layer, cells in rows:
        for head, p, f, e in re.findall(r"h(\d) ([0-9.]+)/([0-9.]+)/([0-9.]+)", cells):
            l, h = int(layer), int(head)
            assert (float(p), float(f), float(e)) == pytest.approx((prev[l, h], first[l, h], entropy[l, h]), abs=0.006)
    layer, head = divmod(int(prev.argmax()), prev.shape[1])
    assert f"strongest previous-token head: layer {layer}, head {head} ({prev.max():.2f}" in printed

    saved = tmp_path / "heads.json"
    assert inspect.main(["heads", "--model", str(peaked_checkpoint), "--output_file", str(saved)]) == 0
    printed = capsys.readouterr().out
    scores = head_scores(*load_model(str(peaked_checkpoint), auto_class=AutoModelForCausalLM))
    assert json.loads(saved.read_text())["induction"] == scores.induction
    for name, label in (("previous_token", "previous-token"), ("induction", "induction")):
        layer, head, value = scores.best(name)
        assert f"strongest {label} head: layer {layer}, head {head} ({value:.2f})" in printed
    assert f"{scores.loss_first_copy:.2f} nats on the first copy" in printed


# Every `scratchformer inspect` error the user can reach: exit 2 and one line naming the problem
# and the fix. {ckpt}, {bare} and {tmp} are filled in by the test.
CLI_ERRORS = [
    (["attention", "--model", "{tmp}", "hi"], "{tmp} has no config.json, so it is not a Hugging Face model directory"),
    (["attention", "--model", "{tmp}/modle", "hi"], "{tmp}/modle: no such directory here"),
    (["attention", "--model", "{bare}", "hi"],
     "No tokenizer in {bare} (a model saved on its own has none). Pass --tokenizer DIR"),
    (["attention", "--model", "{ckpt}", "hi", "--layer", "7"],
     "--layer 7 is out of range: this model has 2 layers (0..1)."),
    (["attention", "--model", "{ckpt}", "hi", "--head", "-5"],
     "--head -5 is out of range: this model has 4 heads (0..3)."),
    (["embeddings", "--model", "{ckpt}", "--token", "catdogmatlog"],
     "'catdogmatlog' is not a single token in this vocabulary; it splits into"),
    (["embeddings", "--model", "{ckpt}", "--token", "cat", "--k", "0"], "k must be at least 1, got 0."),
    (["embeddings", "--model", "{ckpt}", "--token", "cat", "--k", "1"],
     "A projection needs at least two distinct tokens."),
    (["run", "{tmp}/nowhere"], "{tmp}/nowhere does not exist: pass a pretraining run's output directory"),
    (["run", "{bare}"], "No *.jsonl metrics log in {bare}: is it the output directory of `scratchformer pretrain`?"),
    (["run", "{tmp}/empty.jsonl"], "{tmp}/empty.jsonl has no metrics to plot (looked for loss, train_loss,"),
    (["cross-attention", "--model", "{ckpt}", "--source", "hi"],
     "{ckpt} is not an encoder-decoder: cross-attention needs a source and a target."),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", CLI_ERRORS, ids=[f"{i}-{a[0]}" for i, (a, _) in enumerate(CLI_ERRORS)])
def test_cli_errors_are_one_clear_line(checkpoint, tmp_path, capsys, argv, message):
    bare = tmp_path / "bare"
    ScratchformerForCausalLM.from_pretrained(checkpoint).save_pretrained(bare)
    (tmp_path / "empty.jsonl").write_text('{"step": 1}\n', "utf-8")
    where = dict(ckpt=checkpoint, bare=bare, tmp=tmp_path)
    capsys.readouterr()
    assert inspect.main([a.format(**where) for a in argv]) == 2
    err = capsys.readouterr().err
    # One error line from the commands' one boundary, no traceback.
    (line,) = [line for line in err.split("\n") if "error" in line.lower()]
    assert line.startswith("error: ") and "Traceback" not in err, err
    assert message.format(**where) in line, err


def test_a_checkpoint_without_a_tokenizer_works_with_tokenizer_given(checkpoint, tmp_path):
    bare = tmp_path / "bare"
    ScratchformerForCausalLM.from_pretrained(checkpoint).save_pretrained(bare)
    assert inspect.main(["attention", "--model", str(bare), "--tokenizer", str(checkpoint), "hi",
                         "--output_file", str(tmp_path / "ok.png")]) == 0
    _png(tmp_path / "ok.png")


def test_plot_run_tolerates_a_log_being_written(tmp_path):
    # The keys `scratchformer pretrain` logs; grad_norm is None when it was not measured.
    lines = [json.dumps({"step": s, "loss": 5.0 / (s + 1), "lr": 1e-3 * min(1, s / 3), "tokens_per_s": 1e4,
                         "grad_norm": None}) for s in range(1, 61)]
    lines[5] = json.dumps({"step": 6, "eval_loss": 2.5, "eval_ppl": 12.2})  # evaluation lines carry other keys
    lines.insert(3, "not json")
    lines.append('{"step": 20, "loss": 0.2')  # the writer is mid-line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n[1, 2]\n\n", "utf-8")
    records = viz.read_run_log(tmp_path)
    assert len(records) == 60
    fig = viz.plot_run(tmp_path, tmp_path / "curves.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [RUN_PANELS[panel][1] for panel in ("loss", "lr", "throughput")]
    _png(tmp_path / "curves.png")
    # The run's own picture is redrawn in place: no second file with the same curves beside it.
    before = sorted(p.name for p in tmp_path.iterdir())
    assert inspect.main(["run", str(tmp_path)]) == 0
    _png(tmp_path / "loss_curve.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "loss_curve.png"})
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n', "utf-8")
    with pytest.raises(ValueError, match="no metrics"):
        viz.plot_run(tmp_path)


def test_long_text_keeps_thinned_labels_and_says_it_was_cut(checkpoint, tmp_path, capsys, monkeypatch):
    figures = []
    monkeypatch.setattr(viz.common, "save", lambda fig, path, **kw: figures.append(fig) or path)
    text = " ".join(["The cat sat on the mat and the dog sat on the log."] * 6)
    page = tmp_path / "a.html"
    assert inspect.main(["attention", "--model", str(checkpoint), text, "--max_tokens", "60", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    total = len(tokenizer_of(checkpoint)(text)["input_ids"])
    note = f"The text is {total} tokens; the first 60 are drawn (the limit: --max_tokens)."
    assert total > 60 and note in out
    (grid,) = figures
    assert "first 60 of" in grid.get_suptitle()
    bottom_left = [ax for ax in grid.axes if ax.images and ax.get_xticklabels() and ax.get_yticklabels()]
    labels = [t.get_text() for t in bottom_left[0].get_yticklabels()]
    assert 20 <= len([t for t in labels if t]) <= 40  # every other token of 60, none lost entirely
    payload = json.loads(page.read_text("utf-8").split('id="data">')[1].split("</script>")[0])
    assert payload["truncated"] == note and len(payload["tokens"]) == 60
    assert f"Attention: {text}" in page.read_text("utf-8")  # the whole text in the title, not 60 characters


def tokenizer_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_the_page_opens_on_the_most_specialised_head_not_a_sink():
    L = 10
    uniform = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
    sink = np.zeros((L, L))
    sink[:, 0] = 1.0
    previous = np.zeros((L, L))
    previous[0, 0] = 1.0
    previous[np.arange(1, L), np.arange(L - 1)] = 1.0
    half = 0.5 * uniform + 0.5 * previous
    maps = np.stack([np.stack([sink, uniform, uniform]), np.stack([uniform, half, previous])])
    layer, head, why = viz.most_specialised_head(maps)
    assert (layer, head) == (1, 2) and "lowest entropy (0.00" in why  # the sink has entropy 0 too, and loses
    tokens = [f"t{i}" for i in range(L)]
    payload = json.loads(viz.attention_html(tokens, maps).split('id="data">')[1].split("</script>")[0])
    assert payload["start"]["layer"] == 1 and payload["start"]["head"] == 2
    assert payload["scores"]["previous_token"][1][2] == 1.0 and payload["scores"]["first_token"][0][0] == 1.0
    sinks = np.stack([np.stack([sink, 0.9 * sink + 0.1 * uniform])])
    assert viz.most_specialised_head(sinks)[:2] == (0, 0)


@pytest.mark.parametrize("kind", ["sinusoidal", "rope"])
def test_fixed_positions_say_training_cannot_change_them(tokenizer, kind):
    model = tiny(tokenizer, position_embedding=kind)
    assert "fixed by the config" in viz.positions_note(model)
    assert "fixed by the config" in viz.plot_positions(model, num_positions=16).get_suptitle()
    assert viz.initial_encodings(model) is None


def test_learned_positions_are_drawn_against_their_initialisation(tokenizer):
    model = tiny(tokenizer, position_embedding="learned")
    initial = viz.initial_encodings(model)
    assert initial.shape == (64, 32)
    assert initial.std() == pytest.approx(model.config.initializer_range, rel=0.1)
    fig = viz.plot_positions(model, num_positions=32)
    (distance,) = [ax for ax in fig.axes if ax.get_title().startswith("Similarity vs distance")]
    labels = distance.get_legend_handles_labels()[1]
    assert any("initialisation" in label for label in labels)
    note = viz.positions_note(model)
    rms = float(np.sqrt(np.mean(viz.position_encodings(model) ** 2)))
    assert f"RMS {rms:.3f} against {model.config.initializer_range:.3f}" in note
