"""The encoder-decoder: caching, padding, save/load, remote code, and two tasks it must learn."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig
from scratchformer.training.library.seq2seq import evaluate_translation, finetune_seq2seq, noam_lr
from scratchformer.training.viz.cross_attention import cross_attention_maps

V = 31


def tiny(**overrides) -> ScratchformerSeq2SeqConfig:
    fields = dict(vocab_size=V, hidden_size=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, embedding_dropout=0.0, hidden_dropout=0.0)
    return ScratchformerSeq2SeqConfig(**{**fields, **overrides})


def model(**overrides) -> ScratchformerForConditionalGeneration:
    torch.manual_seed(0)
    return ScratchformerForConditionalGeneration(tiny(**overrides)).eval()


def src(B=3, S=9, seed=1) -> torch.Tensor:
    return torch.randint(3, V, (B, S), generator=torch.Generator().manual_seed(seed))


def test_paper_preset_is_the_base_model():
    c = ScratchformerSeq2SeqConfig.from_preset("paper", vocab_size=37000)
    assert (c.encoder_layers, c.decoder_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        6, 6, 512, 8, 2048)
    assert (c.position_embedding, c.norm_position, c.mlp_type, c.scale_embeddings, c.tie_word_embeddings) == (
        "sinusoidal", "post", "relu", True, True)
    assert c.is_encoder_decoder and c.decoder_start_token_id is not None
    with pytest.raises(ValueError, match="divisible"):
        ScratchformerSeq2SeqConfig(hidden_size=30, num_attention_heads=4)


def test_one_embedding_for_source_target_and_output():
    m = model()
    assert m.lm_head.weight is m.model.shared.weight
    assert m.model.encoder.embed_tokens is m.model.shared is m.model.decoder.embed_tokens


@pytest.mark.parametrize("overrides", [{}, {"norm_position": "pre", "norm_type": "rmsnorm", "mlp_type": "swiglu",
                                        "position_embedding": "learned", "num_key_value_heads": 2}])
def test_cache_matches_no_cache(overrides, lively_seq2seq, assert_same_decoding):
    m = lively_seq2seq(**overrides)  # trained to reverse its source: decoding varies step by step
    x = src(S=10)
    for kwargs in ({"num_beams": 1}, {"num_beams": 3}):
        assert_same_decoding(m, m, x, a_kwargs={"use_cache": True}, b_kwargs={"use_cache": False},
                             max_new_tokens=8, atol=1e-4, **kwargs)
    # Step by step: logits with the cache equal the full forward's.
    y = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(2))
    full = m(input_ids=x, decoder_input_ids=y).logits
    out = m(input_ids=x, decoder_input_ids=y[:, :3], use_cache=True)
    step = m(encoder_outputs=(out.encoder_last_hidden_state,), decoder_input_ids=y[:, 3:],
             past_key_values=out.past_key_values, use_cache=True).logits
    torch.testing.assert_close(torch.cat([out.logits, step], 1), full, atol=1e-5, rtol=1e-5)


def test_padding_invariance_source_both_sides_and_target():
    m = model()
    x, y = src(B=1, S=7), torch.randint(3, V, (1, 5), generator=torch.Generator().manual_seed(3))
    ref = m(input_ids=x, decoder_input_ids=y).logits
    pad = torch.zeros(1, 4, dtype=torch.long)
    for padded, mask in (
        (torch.cat([x, pad], 1), torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], 1).long()),  # right
        (torch.cat([pad, x], 1), torch.cat([torch.zeros(1, 4), torch.ones(1, 7)], 1).long()),  # left
    ):
        got = m(input_ids=padded, attention_mask=mask, decoder_input_ids=y).logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # Target padded on the right: the causal decoder's real positions never see it.
    y_pad = torch.cat([y, pad], 1)
    got = m(input_ids=x, decoder_input_ids=y_pad,
            decoder_attention_mask=torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1).long()).logits
    torch.testing.assert_close(got[:, :5], ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_maps_are_returned():
    m = model()
    out = m(input_ids=src(S=9), decoder_input_ids=src(S=4, seed=5), output_attentions=True)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 4, 4, 9)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(3, 4, 4))


def test_an_explicit_false_wins_over_the_configs_output_flags():
    """forward(output_hidden_states=False) with a config that says True returns none: the caller's
    choice wins, False included (a `flag or config.flag` would have returned them anyway)."""
    m = model(output_hidden_states=True, output_attentions=True)
    x, y = src(S=9), src(S=4, seed=5)
    by_config = m(input_ids=x, decoder_input_ids=y)
    assert len(by_config.encoder_hidden_states) == len(by_config.decoder_hidden_states) == 3
    maps = (by_config.encoder_attentions, by_config.decoder_attentions, by_config.cross_attentions)
    assert [len(layers) for layers in maps] == [2, 2, 2]
    refused = m(input_ids=x, decoder_input_ids=y, output_hidden_states=False, output_attentions=False)
    for field in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                  "cross_attentions"):  # fmt: skip
        assert getattr(refused, field) is None, field
    torch.testing.assert_close(refused.logits, by_config.logits)  # maps make it run eager, not sdpa
    encoder = m.get_encoder()(input_ids=x, output_hidden_states=False, output_attentions=False)
    assert encoder.hidden_states is None and encoder.attentions is None


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(use_reentrant):
    """With use_reentrant=True, gradients reach only what a checkpointed layer gets positionally: the
    decoder's blocks must get the encoder's output so, or the encoder learns nothing through them."""
    m = model().train()
    x, y = src(S=9), src(S=5, seed=4)

    def loss_and_grads():
        m.zero_grad()
        loss = m(input_ids=x, labels=y).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    loss, grads = loss_and_grads()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in (*m.model.encoder.layers, *m.model.decoder.layers))
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss_ckpt, loss, atol=0, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_save_load_identical_and_remote_code(tmp_path, run_without_scratchformer):
    m = model()
    x = src()
    y = src(S=5, seed=4)
    m.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").glob("*.py")}
    assert files == {"configuration_scratchformer.py", "modeling_scratchformer.py", "transformer_scratchformer.py",
                     "loss_scratchformer.py", "checks_scratchformer.py",
                     "configuration_scratchformer_seq2seq.py", "modeling_scratchformer_seq2seq.py"}
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is ScratchformerForConditionalGeneration
    assert torch.equal(loaded(input_ids=x, decoder_input_ids=y).logits, m(input_ids=x, decoder_input_ids=y).logits)
    expected = m.generate(x, max_new_tokens=6, num_beams=2).tolist()
    (tmp_path / "io.json").write_text(json.dumps({"x": x.tolist(), "expected": expected}))
    result = run_without_scratchformer(
        """
        import json, torch
        from transformers import AutoModelForSeq2SeqLM
        io = json.load(open("io.json"))
        m = AutoModelForSeq2SeqLM.from_pretrained("ckpt", trust_remote_code=True).eval()
        assert type(m).__name__ == "ScratchformerForConditionalGeneration", type(m)
        got = m.generate(torch.tensor(io["x"]), max_new_tokens=6, num_beams=2).tolist()
        assert got == io["expected"], (got, io["expected"])
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_copy_task_is_learned():
    # The Annotated Transformer's first test: copy a random sequence (vocabulary 11, length 9), at
    # width 64 with 2 layers each side. A plain torch loop, since this tests the model, not the
    # trainer. 400 steps of batch 64: 20 steps of linear warm-up to 3e-3, then a linear decay to 0 (a
    # constant 2e-3 left 0.5-5 % of sequences wrong, depending on the seed; the decay settles them).
    # Seeds 0-4 each reached >= 99.8 % exact on 500 held-out sequences. Greedy decoding via generate().
    torch.manual_seed(0)
    cfg = tiny(vocab_size=11, hidden_size=64, intermediate_size=128)
    m = ScratchformerForConditionalGeneration(cfg)
    steps, warmup = 400, 20
    opt = torch.optim.Adam(m.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, (steps - step) / (steps - warmup)))

    def batch(n, g):  # ids 3..10; 0, 1, 2 are pad, bos (the decoder's start) and eos
        x = torch.randint(3, 11, (n, 9), generator=g)
        return x, torch.cat([x, torch.full((n, 1), cfg.eos_token_id)], 1)

    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = batch(64, g)
        loss = m(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    m.eval()
    x, _ = batch(500, torch.Generator().manual_seed(123))
    out = m.generate(x, max_new_tokens=10, do_sample=False)
    # Held to 99 %, not 100 %: the trajectory depends on the CPU's float kernels. On an AMD EPYC
    # seeds 0-4 ended at 100 %; on an Intel Xeon one sequence in 500 missed its eos or one digit.
    stopped = (out[:, 10] == cfg.eos_token_id).float().mean().item()
    accuracy = (out[:, 1:10] == x).all(1).float().mean().item()
    assert stopped >= 0.99, stopped
    assert accuracy >= 0.99, accuracy


# ----------------------------------------------------------------------------------------------
# A small translation task through Seq2SeqTrainer: numbers written out in words -> digits.
# ----------------------------------------------------------------------------------------------

ONES = "zero one two three four five six seven eight nine".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()


def words(n: int) -> str:
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>", *ONES, *TENS[2:], *TEENS]
    vocab += [d for d in "0123456789" if d not in vocab]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders, processors

    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=32)


def test_noam_schedule_equals_inverse_sqrt():
    from transformers.optimization import get_inverse_sqrt_schedule

    warmup, d = 40, 64
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=noam_lr(warmup, d, warmup))
    sched = get_inverse_sqrt_schedule(opt, num_warmup_steps=warmup)
    for step in range(1, 200):  # transformers' step s is the paper's step s (its step 0 has lr 0)
        opt.step()
        sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(noam_lr(step, d, warmup))


def digits(n: int) -> str:  # one token per digit
    return " ".join(str(n))


def test_numbers_in_words_to_digits_with_seq2seq_trainer(tmp_path):
    from datasets import Dataset

    tok = word_tokenizer()
    # Held out: 20 two-word numbers ("forty seven"), which can be composed from parts seen in
    # training. 0-20 and the tens are single words that must each be seen, so all of them train.
    composite = [n for n in range(21, 100) if n % 10]
    random.Random(0).shuffle(composite)
    held_out = composite[:20]
    train_numbers = [n for n in range(100) if n not in held_out]
    train = Dataset.from_dict({"source": [words(n) for n in train_numbers],
                               "target": [digits(n) for n in train_numbers]})
    torch.manual_seed(0)
    cfg = tiny(vocab_size=len(tok), hidden_size=64, intermediate_size=128)
    # The paper's recipe (label smoothing 0.1, inverse-sqrt schedule, Adam 0.98 / 1e-9) with a peak lr
    # and warm-up scaled to 300 steps (60 epochs of 5 batches).
    trainer, metrics = finetune_seq2seq(
        cfg, train, tokenizer=tok, inverse_sqrt_schedule=True, warmup_steps=30,
        training_args=dict(output_dir=str(tmp_path / "out"), num_train_epochs=60, per_device_train_batch_size=16,
                           learning_rate=2e-3, save_strategy="no", logging_steps=1000, use_cpu=True, seed=0,
                           disable_tqdm=True),
    )
    assert metrics["train_loss"] < 1.5  # the mean over the run (0.94 measured), from ln(42) = 3.7 at the start
    sources, references = [words(n) for n in held_out], [digits(n) for n in held_out]
    scores = evaluate_translation(trainer.model, tok, sources, references, max_new_tokens=4)
    # Stated accuracy: seeds 0-4 all reached 95 % exact (19 of the 20 unseen numbers; "ninety nine"
    # came out "9 0"); the assertion leaves one more miss of margin.
    assert scores["exact_match"] >= 90.0, scores
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert evaluate_translation(loaded, tok, sources, references, max_new_tokens=4) == scores
    src_tokens, tgt_tokens, maps = cross_attention_maps(trainer.model, tok, words(47))
    assert tgt_tokens == ["4", "7", "</s>"] and src_tokens == ["forty", "seven", "</s>"]
    assert maps.shape == (2, 4, 3, 3)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)  # a softmax over the source per target token


def copy_strings(n: int, seed: int) -> list[str]:
    """The copy task as text: 3 to 6 random digits, one token each in the word tokenizer."""
    rng = random.Random(seed)
    return [" ".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6))) for _ in range(n)]


@pytest.mark.parametrize("paper_schedule", [False, True], ids=["default", "paper"])
def test_the_default_schedule_trains_a_small_model_in_a_short_run(tmp_path, paper_schedule):
    """200 steps of 32 copies at width 64, 2+2 layers, with nothing given but the step budget. The
    default (the paper's peak lr, 2.0e-3 at this width, after a warm-up of 5 % of the run, then a linear
    decay to 0) copies held-out strings: 99.0, 100, 99.5, 99.0, 99.0 % exact for seeds 0-4 (training
    loss 1.19-1.34, label-smoothed). The paper's schedule, the default before, is still warming up at
    the end (lr 5 % of its peak, 1e-4) and copies none (0 % for every seed, loss 2.9-3.2): its 4000
    warm-up steps were made for 100k-step runs. About 3 s each on one CPU thread."""
    tok = word_tokenizer()
    train = copy_strings(200 * 32, seed=0)
    cfg = tiny(vocab_size=len(tok), hidden_size=64, intermediate_size=256)
    trainer, results = finetune_seq2seq(
        cfg, Dataset.from_dict({"source": train, "target": train}), tokenizer=tok,
        inverse_sqrt_schedule=paper_schedule,
        training_args=dict(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=32,
                           use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1000),
    )  # fmt: skip
    assert trainer.state.global_step == 200
    held_out = copy_strings(200, seed=1)
    scores = evaluate_translation(trainer.model, tok, held_out, held_out, max_new_tokens=8)
    assert scores["exact_match"] <= 5.0 if paper_schedule else scores["exact_match"] >= 95.0, scores
    h = results["hyperparameters"]
    assert h["learning_rate"] == pytest.approx(noam_lr(4000, 64, 4000))  # the same peak: only the schedule differs
    assert h["warmup_steps"] == (4000 if paper_schedule else 10)


def test_targets_are_padded_on_the_right_whatever_the_tokenizer_does(tmp_path):
    """Our BPE tokenizer pads on the left (for prompts). Targets padded so would put padding between
    the decoder's start token and the text, which generation never does: training pads on the right,
    and the saved tokenizer does too; the caller's tokenizer is left as it was."""
    from scratchformer.tokenization import train_bpe
    from scratchformer.training.library.seq2seq import tokenize_pairs

    tok = train_bpe(["one two three four", "1 2 3 4"] * 50, vocab_size=300, show_progress=False)
    assert tok.padding_side == "left"
    pairs = Dataset.from_dict({"source": ["one two three", "four"], "target": ["1 2 3", "4"]})
    trainer, _ = finetune_seq2seq(
        tiny(vocab_size=len(tok)), pairs, tokenizer=tok,
        training_args=dict(output_dir=str(tmp_path / "out"), max_steps=1, use_cpu=True, disable_tqdm=True),
    )  # fmt: skip
    rows = tokenize_pairs(pairs, tok, "source", "target")
    batch = trainer.data_collator([rows[0], rows[1]])
    four = tok("4", add_special_tokens=False)["input_ids"][0]
    assert batch["decoder_input_ids"][1, :2].tolist() == [tok.bos_token_id, four]  # start, then the text
    assert batch["labels"][1, -1] == -100 and batch["labels"][0, -1] == tok.eos_token_id
    assert tok.padding_side == "left" and AutoTokenizer.from_pretrained(tmp_path / "out").padding_side == "right"


@pytest.fixture
def seq2seq_checkpoint(tmp_path):
    """An untrained tiny encoder-decoder saved with the word tokenizer: a directory the CLIs accept."""
    tok = word_tokenizer()
    torch.manual_seed(0)
    ScratchformerForConditionalGeneration(tiny(vocab_size=len(tok))).save_pretrained(tmp_path / "init")
    tok.save_pretrained(tmp_path / "init")
    return tmp_path / "init"


def test_command_line_trains_from_jsonl(tmp_path, seq2seq_checkpoint, capsys):
    help_text = subprocess.run([sys.executable, "-m", "scratchformer.training.seq2seq", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--train_files" in help_text.stdout, help_text.stderr[-2000:]
    rows = [{"source": words(n), "target": digits(n)} for n in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    # The user-facing command: `scratchformer finetune --task seq2seq` dispatches to seq2seq.main.
    from scratchformer.training import finetune

    common = ["--task", "seq2seq", "--model", str(seq2seq_checkpoint), "--train_files", str(tmp_path / "train.jsonl")]
    assert finetune.main([*common, "--validation_files", str(tmp_path / "eval.txt"), "--output_dir",
                         str(tmp_path / "x")]) == 2
    assert "use .jsonl, .json or .csv files" in capsys.readouterr().err
    assert finetune.main([*common, "--validation_files", str(tmp_path / "eval.jsonl"), "--output_dir",
                         str(tmp_path / "out"),
                          "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--warmup-steps", "2"]) == 0
    assert '"bleu"' in capsys.readouterr().out
    trained = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    assert type(trained) is ScratchformerForConditionalGeneration
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    out = trained.generate(**tok(["forty seven"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 5 and out[0, 0] == trained.config.decoder_start_token_id


def test_inspect_cross_attention_command(tmp_path, seq2seq_checkpoint, capsys, tiny_config):
    from scratchformer.modeling import ScratchformerForCausalLM
    from scratchformer.training import inspect

    png = tmp_path / "cross.png"
    args = ["cross-attention", "--model", str(seq2seq_checkpoint), "--source", "forty seven", "--output_file", str(png)]
    assert inspect.main([*args, "--target", "4 7"]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target: 4 7 </s>" in capsys.readouterr().out
    assert inspect.main(args) == 0  # no --target: the model's own greedy output
    assert inspect.main([*args, "--layer", "5"]) == 2
    assert "out of range" in capsys.readouterr().err
    ScratchformerForCausalLM(tiny_config()).save_pretrained(tmp_path / "decoder_only")
    assert inspect.main(["cross-attention", "--model", str(tmp_path / "decoder_only"), "--source", "a"]) == 2
    assert "not an encoder-decoder" in capsys.readouterr().err


def test_targets_end_in_eos_and_do_not_repeat_the_start_token_with_our_tokenizer():
    """With scratchformer's own BPE tokenizer (which frames text `<s> text`), the decoder's labels are
    the target's tokens then `</s>`: it must learn to stop, and its start token is already `<s>`."""
    import datasets

    from scratchformer.tokenization import train_bpe
    from scratchformer.training.library.seq2seq import tokenize_pairs

    tok = train_bpe(["one two three four", "1 2 3 4"] * 50, vocab_size=300)
    ds = datasets.Dataset.from_dict({"source": ["one two", "four"], "target": ["1 2", "4"]})
    rows = tokenize_pairs(ds, tok, "source", "target", max_target_length=3)
    for labels, target in zip(rows["labels"], ["1 2", "4"], strict=True):
        assert labels[-1] == tok.eos_token_id and tok.bos_token_id not in labels
        assert tok.decode(labels[:-1]) == target[: len(tok.decode(labels[:-1]))]
        assert len(labels) <= 3  # truncation keeps room for eos
