"""Pretraining end to end on a slice of the default corpus, with a tiny model: the artifact loads in
stock transformers (registered, and by remote code in a process that cannot import scratchformer),
resuming after a real kill reproduces the uninterrupted run, gradient accumulation is invisible in
the losses, Ctrl-C saves cleanly, and bad input fails with a message."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from pretrain_runs import as_flags, logged_losses, run_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.tokenization import END_ID
from scratchformer.training.library.pretraining import train
from scratchformer.training.pretrain import PICTURES, main

# -- one run, looked at from every side -----------------------------------------------------------


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """16 steps from text alone: the tokenizer is trained first, tensorboard logs, and the pictures the
    command draws (the library draws none itself: the command passes viz's functions, PICTURES)."""
    out = tmp_path_factory.mktemp("run")
    cfg = run_config(
        out, corpus, vocab_size=320, max_train_steps=16, eval_steps=8, save_steps=8, report_to="tensorboard"
    )
    return cfg, train(cfg, **PICTURES)  # what `scratchformer pretrain` passes


def test_loss_decreases_and_metrics_are_logged(run):
    cfg, result = run
    losses = logged_losses(Path(cfg.output_dir))
    assert sorted(losses) == list(range(1, 17))
    assert losses[16] < losses[1] - 0.5
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [8, 16]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert result["eval_loss"] == evals[1]["eval_loss"] and result["steps"] == 16
    assert result["tokens_seen"] == 16 * 8 * 32
    assert 0 < result["eval_bpb"] < 8 and result["eval_ppl"] > 1
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    assert list((Path(cfg.output_dir) / "logs").rglob("events.out.tfevents*"))  # tensorboard wrote


def test_output_is_a_hub_style_directory(run):
    cfg, result = run
    model_dir = Path(result["output_dir"])
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "configuration_scratchformer.py",
        "modeling_scratchformer.py",
        "README.md",
        "training_args.json",
        "loss_curve.png",
        "timeline.png",
    ):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratchformer.ScratchformerForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_scratchformer.ScratchformerConfig"
    generation = json.loads((model_dir / "generation_config.json").read_text())
    # It ends a text at </s> and a chat turn at <|end|> (the server's and the pipeline's chats end there).
    assert generation["do_sample"] is True and generation["eos_token_id"] == [config["eos_token_id"], END_ID]
    # The length a caller that names none gets is the context; no max_new_tokens, which would override a
    # caller's own limit (lm-eval's max_gen_toks, passed as max_length).
    assert "max_new_tokens" not in generation and generation["max_length"] == config["max_position_embeddings"]
    args = json.loads((model_dir / "training_args.json").read_text())
    assert args["max_train_steps"] == 16 and args["hidden_size"] == 32 and args["num_processes"] == 1
    card = (model_dir / "README.md").read_text()
    assert "library_name: transformers" in card
    assert f"{result['eval_bpb']:.4f}" in card and f"{result['parameters']:,}" in card
    assert "16 of 16" in card and f"{16 * 8 * 32:,}" in card and "trust_remote_code=True" in card
    assert "](timeline.png)" in card and "](loss_curve.png)" in card
    assert "## Where it runs" in card and "| export --to llama | ✓ |" in card  # doctor's table (test_doctor.py)
    # Checkpoints: the last two kept, none left under a temporary name.
    checkpoints = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").iterdir())
    assert checkpoints == ["step-000008", "step-000016"]


def test_output_loads_with_auto_classes_and_generates(run):
    _, result = run
    model = AutoModelForCausalLM.from_pretrained(result["output_dir"])
    tokenizer = AutoTokenizer.from_pretrained(result["output_dir"])
    assert isinstance(model, ScratchformerForCausalLM)
    inputs = tokenizer("The", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8
    assert isinstance(tokenizer.decode(out[0]), str)


def test_output_loads_by_remote_code_without_the_package(run, run_without_scratchformer, tmp_path):
    _, result = run
    ids = [[1, 17, 42, 99, 5, 250]]
    code = f"""
        import json
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({result["output_dir"]!r}, trust_remote_code=True)
        AutoTokenizer.from_pretrained({result["output_dir"]!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(torch.tensor({ids})).logits
        generated = model.generate(torch.tensor({ids}), max_new_tokens=4, do_sample=False)
        print(json.dumps({{"logits": logits.tolist(), "generated": generated.tolist()}}))
    """
    proc = run_without_scratchformer(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    model = AutoModelForCausalLM.from_pretrained(result["output_dir"])
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, rtol=1e-5, atol=1e-5)
    assert remote["generated"] == model.generate(torch.tensor(ids), max_new_tokens=4, do_sample=False).tolist()


# -- equivalences ---------------------------------------------------------------------------------


def test_gradient_accumulation_matches_a_full_batch(corpus, tokenizer_dir, tmp_path):
    common = dict(tokenizer=tokenizer_dir, max_train_steps=6, eval_steps=100, save_steps=100)
    full = train(run_config(tmp_path / "full", corpus, **common, per_device_train_batch_size=8))
    accumulated = train(
        run_config(tmp_path / "accum", corpus, **common, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    )
    a, b = logged_losses(tmp_path / "full"), logged_losses(tmp_path / "accum")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    assert accumulated["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)


def test_the_fused_loss_is_this_loops_choice_and_not_saved(corpus, tokenizer_dir, tmp_path, monkeypatch):
    from scratchformer.modeling import modeling_scratchformer as msf

    calls = []
    real = msf.fused_causal_lm_loss
    monkeypatch.setattr(msf, "fused_causal_lm_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = dict(tokenizer=tokenizer_dir, max_train_steps=4, eval_steps=100, save_steps=100)
    fused = train(run_config(tmp_path / "fused", corpus, **common))
    assert len(calls) == 4  # the default: every training step went through the fused head + loss
    plain = train(run_config(tmp_path / "plain", corpus, **common, fused_lm_loss=False))
    assert len(calls) == 4
    a, b = logged_losses(tmp_path / "fused"), logged_losses(tmp_path / "plain")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    assert fused["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    # Whoever loads the model gets stock outputs: a training step with labels returns logits.
    assert json.loads((Path(fused["output_dir"]) / "config.json").read_text())["fused_lm_loss"] is False


def test_a_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    corpus, tokenizer_dir, tmp_path, monkeypatch
):
    real_forward = ScratchformerForCausalLM.forward
    calls = []

    def forward_going_bad(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls.append(1)
        if out.loss is not None and len(calls) > 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ScratchformerForCausalLM, "forward", forward_going_bad)
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=20, save_steps=4, eval_steps=100)
    with pytest.raises(FloatingPointError, match=r"nan by step 6.*step-000004.*kept"):
        train(cfg)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]
    assert not (tmp_path / "model").exists()


def test_streaming_reads_lazily_and_holds_out_leading_rows(corpus, tokenizer_dir, tmp_path):
    cfg = run_config(
        tmp_path,
        corpus,
        tokenizer=tokenizer_dir,
        train_files=[str(corpus["text"])],
        validation_files=None,
        streaming=True,
        streaming_holdout_documents=40,
        max_train_steps=4,
        eval_steps=100,
        save_steps=100,
    )
    result = train(cfg)
    assert result["steps"] == 4 and result["eval_tokens"] > 0
    args = json.loads((Path(result["output_dir"]) / "training_args.json").read_text())
    assert args["validation_data"] == "the first 40 rows of the training source, held out"


def test_an_earlier_model_directory_is_moved_aside_not_deleted(corpus, tokenizer_dir, tmp_path):
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, eval_steps=100, save_steps=100)
    train(cfg)
    (tmp_path / "model" / "my-notes.txt").write_text("mine")
    train(dataclasses.replace(cfg, max_train_steps=3, resume="auto"))
    aside = list(tmp_path.glob("model.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "my-notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "model" / "training_args.json").read_text())["max_train_steps"] == 3


def test_documents_are_kept_apart_by_default_and_joined_with_no_document_masking(run, corpus, tokenizer_dir,
                                                                                 tmp_path):  # fmt: skip
    cfg, result = run
    args = json.loads((Path(result["output_dir"]) / "training_args.json").read_text())
    assert args["document_masking"] and args["document_masking_applied"]
    assert "kept apart (position_ids restart" in (Path(result["output_dir"]) / "README.md").read_text()
    flags = as_flags(tokenizer=tokenizer_dir, train_files=str(corpus["train"]), output_dir=str(tmp_path),
                     validation_files=str(corpus["validation"]), max_train_steps=1, size="tiny", hidden_size=32,
                     block_size=32, per_device_train_batch_size=8, report_to="none")  # fmt: skip
    assert main([*flags, "--no_document_masking"]) == 0
    args = json.loads((tmp_path / "model" / "training_args.json").read_text())
    assert not args["document_masking"] and not args["document_masking_applied"]
    assert "joined into blocks under one causal mask" in (tmp_path / "model" / "README.md").read_text()


# -- runs sized by compute ------------------------------------------------------------------------


def test_a_run_sized_in_tokens_or_tokens_per_parameter_derives_its_steps(corpus, tokenizer_dir, tmp_path):
    """8 blocks of 32 tokens a step: 600 tokens take 3 steps (rounded up to whole steps); R tokens per
    non-embedding parameter take ceil(R N / 256). The card states what was seen and the 6ND FLOPs."""
    common = dict(tokenizer=tokenizer_dir, eval_steps=100, save_steps=100, logging_steps=1)
    by_tokens = train(run_config(tmp_path / "tokens", corpus, max_train_tokens=600, **common))
    assert (by_tokens["steps"], by_tokens["tokens_seen"]) == (3, 768)
    records = [json.loads(line) for line in (tmp_path / "tokens" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["tokens_seen"], r["tokens_planned"]) for r in records if "loss" in r] == [(256, 768), (512, 768),
                                                                                        (768, 768)]  # fmt: skip

    model = AutoModelForCausalLM.from_pretrained(by_tokens["output_dir"])
    tables = model.model.embed_tokens.weight.numel() + sum(
        p.numel() for n, p in model.named_parameters() if "embed_positions" in n)  # fmt: skip
    n = sum(p.numel() for p in model.parameters()) - tables  # the tied head is the embedding
    assert by_tokens["non_embedding_parameters"] == n
    card = (tmp_path / "tokens" / "model" / "README.md").read_text()
    assert "| tokens seen | 768 |" in card and f"{6 * n * 768:.3g} FLOPs" in card
    assert f"{768 / n:.1f} (tokens seen / {n:,} non-embedding parameters" in card

    ratio = 700 / n  # about 700 tokens: 3 steps
    by_ratio = train(run_config(tmp_path / "ratio", corpus, tokens_per_parameter=ratio, **common))
    assert by_ratio["steps"] == math.ceil(ratio * n / 256) == 3
    assert by_ratio["training_flops"] == 6 * n * 768


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (dict(block_size=64, max_position_embeddings=32), ValueError, "longer than the model's positions"),
        (dict(total_batch_size=12), ValueError, "not a multiple of"),
        (dict(per_device_train_batch_size=0), ValueError, "positive integer"),
        (dict(streaming=True, max_train_steps=None), ValueError, "--max_train_steps, --max_train_tokens or"),
        (dict(max_train_tokens=1000), ValueError, "--max_train_steps and --max_train_tokens each set the run's"),
        (dict(max_train_steps=None, max_train_tokens=10, tokens_per_parameter=20), ValueError, "give one of them"),
        (dict(max_train_steps=None, tokens_per_parameter=0), ValueError, "--tokens_per_parameter must be positive"),
        (dict(max_train_steps=None, max_train_tokens=0), ValueError, "--max_train_tokens must be a positive"),
        (dict(train_files=["no/such/file.txt"]), FileNotFoundError, "no such file"),
        (dict(per_device_train_batch_size=4096), ValueError, "fewer than one optimizer step"),
        (dict(block_size=65536, max_position_embeddings=65536), ValueError, "training text holds fewer than 65536"),
    ],
)
def test_bad_input_fails_with_a_clear_message(corpus, tokenizer_dir, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        train(run_config(tmp_path / "out", corpus, **{"tokenizer": tokenizer_dir, "max_train_steps": 2, **overrides}))
    assert not (tmp_path / "out" / "model").exists()


def test_an_unwritable_output_dir_is_refused_before_any_work(corpus, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot write to --output_dir"):
        train(run_config(tmp_path / "a-file" / "out", corpus))


def test_cli_reports_errors_in_one_line_without_a_traceback(corpus, tmp_path, capsys):
    code = main(as_flags(output_dir=tmp_path, train_files=str(tmp_path / "missing.txt"), report_to="none"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no such file") and "Traceback" not in err


def test_checkpoints_of_a_tied_model_log_one_line_each_and_no_shared_tensor_warning(corpus, tokenizer_dir, tmp_path,
                                                                                      caplog):
    """accelerate logged "Removed shared tensor {'lm_head.weight'} while saving" and a line per file at
    every checkpoint (and at every resume) of a model with tied embeddings: noise that hid the run's
    own lines. The run logs one line per checkpoint; resuming from it still works."""
    import logging

    caplog.set_level(logging.INFO)
    cfg = run_config(tmp_path, corpus, tokenizer=tokenizer_dir, max_train_steps=2, save_steps=1, eval_steps=100)
    train(cfg)
    assert ScratchformerForCausalLM.from_pretrained(tmp_path / "model").config.tie_word_embeddings
    train(dataclasses.replace(cfg, max_train_steps=3, resume="auto"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Removed shared tensor" not in text
    assert not [r for r in caplog.records if r.name.startswith("accelerate.") and r.levelno < logging.WARNING], text
    assert text.count("checkpoint saved: ") == 3, text
    assert "resuming from" in text and sorted(logged_losses(tmp_path)) == [1, 2, 3]
