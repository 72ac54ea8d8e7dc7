"""Mechanism metrics while a model trains: the logit lens reads what it says it reads, the head scores
logged are head_scores' own, the snapshot is the model's attention, and a run logs all of it beside
its loss (metrics.jsonl, tensorboard) by default at small sizes, and not when told not to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pretrain_runs import run_config

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.training.library.head_scores import head_scores, text_probe
from scratchformer.training.library.mechanisms import (
    attention_snapshot,
    enabled_by_default,
    logit_lens,
    mechanism_metrics,
    snapshot_probe,
    tracker_scalars,
)
from scratchformer.training.library.model_dir import load_tokenizer_dir
from scratchformer.training.library.pretraining import train


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer_dir(tokenizer_dir)


def model_for(tokenizer, preset="llama", **overrides):
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset(preset, vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3,
                                             num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
                                             **overrides)
    model = ScratchformerForCausalLM(config)
    with torch.no_grad():  # sharper than an initialisation, so layers and heads differ
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.mlp.down_proj.weight.mul_(20.0)
    return model.eval()


@pytest.mark.parametrize("preset", ["llama", "paper"])  # pre-norm (a final norm) and post-norm (none)
def test_logit_lens_reads_each_layers_residual_stream(tokenizer, preset):
    model = model_for(tokenizer, preset)
    ids = text_probe(tokenizer, max_tokens=40)
    lens = logit_lens(model, ids)
    assert len(lens) == 1 + 3
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids).loss.item()
        # The reference: run the blocks by hand and read each residual stream through norm + head.
        base = model.model
        out = base(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states
    assert lens[-1] == pytest.approx(own, abs=1e-5)  # the last reading is the model itself
    # hidden[i] is the input of block i: the embeddings, then the output of block i - 1.
    for reading in range(3):
        logits = model.lm_head(base.norm(hidden[reading]))[:, :-1]
        expected = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:]).item()
        assert lens[reading] == pytest.approx(expected, abs=1e-5)
    # A lens that read the wrong stream (every reading the final one) would make the curve flat.
    assert len({round(v, 3) for v in lens}) == 4


def test_the_snapshot_is_the_models_attention_on_a_text_written_twice(tokenizer):
    model = model_for(tokenizer)
    ids = snapshot_probe(tokenizer, 10)
    assert ids.shape == (1, 21) and ids[0, 0] == tokenizer.bos_token_id
    assert ids[0, 1:11].tolist() == ids[0, 11:].tolist()
    snapshot = attention_snapshot(model, tokenizer, tokens=10)
    assert len(snapshot["tokens"]) == 21 and snapshot["tokens"][1:11] == snapshot["tokens"][11:]
    with torch.no_grad():
        maps = torch.stack(model(input_ids=ids, output_attentions=True).attentions)[:, 0].numpy()
    for layer in range(3):
        for head in range(4):
            rows = snapshot["maps"][layer][head]
            assert [len(r) for r in rows] == list(range(1, 22))  # only what each query may see
            for q, row in enumerate(rows):
                np.testing.assert_allclose(row, maps[layer, head, q, : q + 1], atol=5e-4)
                assert sum(row) == pytest.approx(1.0, abs=5e-4 * len(row))


def test_the_record_carries_head_scores_own_numbers(tokenizer):
    model = model_for(tokenizer).train()
    record, _ = mechanism_metrics(model, tokenizer)
    assert model.training  # the caller's mode is restored
    scores = head_scores(model, tokenizer)
    assert {k: record[k] for k in scores.summary()} == scores.summary()
    for name in ("previous_token", "first_token", "induction", "entropy"):
        assert record["heads"][name] == getattr(scores, name)
    assert record["probe"]["loss_repeat"] == scores.loss_repeat
    json.dumps(record, allow_nan=False)  # a metrics.jsonl line


def test_tracker_scalars_name_every_head_and_layer():
    record = {"step": 3, "eval_loss": 2.0, "heads_induction_max": 0.5, "logit_lens_loss": [9.0, 4.0, None],
              "heads": {"induction": [[0.1, 0.2], [0.3, 0.4]]}, "probe": {"text_tokens": 5}, "flag": True}
    assert tracker_scalars(record) == {
        "eval_loss": 2.0, "heads_induction_max": 0.5, "logit_lens/embeddings": 9.0, "logit_lens/after_block_0": 4.0,
        "heads/induction/L0H0": 0.1, "heads/induction/L0H1": 0.2, "heads/induction/L1H0": 0.3,
        "heads/induction/L1H1": 0.4,
    }  # fmt: skip


def test_on_by_default_up_to_size_small():
    assert enabled_by_default(2, 4) and enabled_by_default(4, 4) and enabled_by_default(6, 6)  # tiny, mini, small
    assert not enabled_by_default(12, 12)  # base


@pytest.fixture(scope="module")
def watched_run(corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("watched")
    cfg = run_config(out, corpus, tokenizer=tokenizer_dir, max_train_steps=6, eval_steps=3, save_steps=100,
                     report_to="tensorboard")  # fmt: skip
    return cfg, train(cfg)


def test_a_run_logs_mechanisms_beside_its_loss_by_default(watched_run):
    cfg, result = watched_run
    out = Path(cfg.output_dir)
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert 0.0 <= r["heads_induction_max"] <= 1.0 and 0.0 < r["heads_entropy_mean"] <= 1.0
        assert len(r["logit_lens_loss"]) == 1 + 2 and len(r["heads"]["induction"]) == 2
        assert r["logit_lens_loss"][-1] > 0
    snapshots = [json.loads(line) for line in (out / "attention_snapshots.jsonl").read_text().splitlines()]
    assert [s["step"] for s in snapshots] == [3, 6]
    last_row = snapshots[0]["maps"][0][0][-1]
    assert sum(last_row) == pytest.approx(1.0, abs=5e-4 * len(last_row))  # each weight rounded to 3 decimals
    args = json.loads((out / "model" / "training_args.json").read_text())
    assert args["mechanism_metrics"] is True and args["eval_steps"] == 3
    # tensorboard got one scalar per head
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (out / "logs").rglob("events.out.tfevents*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"heads/induction/L1H3", "logit_lens/after_block_1", "in_context_score", "eval_loss"} <= tags


def test_off_when_told(corpus, tokenizer_dir, tmp_path):
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, eval_steps=2, save_steps=100,
                     mechanism_metrics=False)  # fmt: skip
    train(cfg)
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert evals and not any("heads" in r or "logit_lens_loss" in r for r in evals)
    assert not (tmp_path / "attention_snapshots.jsonl").exists()


def test_a_short_run_evaluates_about_twenty_times():
    from scratchformer.training.library.pretrain_config import PretrainConfig, eval_interval

    assert eval_interval(PretrainConfig(), 400) == 20  # the embedded corpus's default run: 20 points, not 2
    assert eval_interval(PretrainConfig(), 10) == 1
    assert eval_interval(PretrainConfig(), 100_000) == 200  # long runs: as before
    assert eval_interval(PretrainConfig(eval_steps=7), 400) == 7
