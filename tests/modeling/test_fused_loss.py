"""The fused LM-head + cross-entropy of a training step against transformers' own loss.

Model A runs the fused path (`fused_lm_loss=True`); model B is a copy with it off (the default), so
its loss is transformers' `ForCausalLMLoss` over full logits. Same weights, same batch: losses and
every parameter's gradient must agree to float32 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from scratchformer.modeling import ScratchformerForCausalLM, loss_scratchformer


@pytest.fixture
def pair(tiny_config):
    def make(preset: str = "llama", **overrides):
        torch.manual_seed(0)
        fused = ScratchformerForCausalLM(tiny_config(preset=preset, **{"fused_lm_loss": True, **overrides})).train()
        plain = copy.deepcopy(fused)
        plain.config.fused_lm_loss = False
        return fused, plain

    return make


def batch(B: int = 3, L: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (B, L), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt that is not trained on
    labels[2, -3:] = -100
    return ids, labels


def assert_same_step(fused, plain, rtol=1e-5, atol=1e-6, backward=lambda loss: loss.backward(), **kwargs):
    ids, labels = batch()
    out_fused = fused(input_ids=ids, labels=labels, **kwargs)
    out_plain = plain(input_ids=ids, labels=labels, **kwargs)
    assert out_fused.logits is None and out_plain.logits.shape == (3, 20, 97)
    torch.testing.assert_close(out_fused.loss, out_plain.loss, rtol=rtol, atol=atol)
    backward(out_fused.loss)
    backward(out_plain.loss)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert a.grad.dtype == b.grad.dtype, name
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("preset", ["llama", "gpt2", "paper"])
def test_loss_and_gradients_equal_transformers_loss(pair, preset):
    # dropout off, so the two forwards see the same arithmetic
    fused, plain = pair(preset, embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)
    assert_same_step(fused, plain)


@pytest.mark.parametrize("num_items", [torch.tensor(123), 123])
def test_gradient_accumulation_divides_by_the_whole_batch(pair, num_items):
    fused, plain = pair()
    assert_same_step(fused, plain, num_items_in_batch=num_items)


def test_many_uneven_chunks_give_the_same_step(pair, monkeypatch):
    # 60 rows of 97 logits, at most 7 rows a chunk: 9 chunks, the last one short.
    monkeypatch.setattr(loss_scratchformer, "LOSS_CHUNK_ELEMENTS", 97 * 7)
    fused, plain = pair()
    assert_same_step(fused, plain)


def test_given_shift_labels_are_used_as_they_are(pair):
    fused, plain = pair()
    ids, labels = batch()
    shift_labels = torch.roll(labels, 3, dims=1)  # any per-position targets
    a = fused(input_ids=ids, labels=labels, shift_labels=shift_labels).loss
    b = plain(input_ids=ids, labels=labels, shift_labels=shift_labels).loss
    unshifted = plain(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, unshifted)


def test_a_scaled_or_twice_backpropagated_loss_scales_the_gradients(pair):
    fused, plain = pair()
    assert_same_step(fused, plain, backward=lambda loss: (loss * 3).backward())
    fused.zero_grad(), plain.zero_grad()

    def twice(loss):
        loss.backward(retain_graph=True)
        loss.backward()

    assert_same_step(fused, plain, backward=twice)


def test_evaluation_and_no_grad_return_logits(pair):
    fused, plain = pair()
    ids, labels = batch()
    for mode in ("eval", "no_grad"):
        fused.train(mode != "eval")
        with torch.no_grad():
            out = fused(input_ids=ids, labels=labels)
            expected = plain(input_ids=ids, labels=labels)
        assert out.logits is not None, mode
        torch.testing.assert_close(out.logits, expected.logits)
        torch.testing.assert_close(out.loss, expected.loss)


def test_a_watched_head_runs_as_a_module(pair):
    fused, _ = pair()
    seen = []
    fused.lm_head.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    out = fused(input_ids=batch()[0], labels=batch()[1])
    assert seen == [(3, 20, 97)] and out.logits is not None


def test_bfloat16_weights(pair):
    fused, plain = pair()
    fused.to(torch.bfloat16), plain.to(torch.bfloat16)
    # bf16 has 8 mantissa bits; the fused path sums the weight's gradient over chunks in float32
    assert_same_step(fused, plain, rtol=2e-2, atol=2e-3)


def test_bfloat16_autocast(pair):
    fused, plain = pair()
    ids, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = fused(input_ids=ids, labels=labels).loss
        b = plain(input_ids=ids, labels=labels).loss
    a.backward(), b.backward()
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert p.grad.dtype == torch.float32, name
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-3, msg=name)


def test_the_fused_loss_trains(tiny_config):
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(tiny_config(preset="llama", fused_lm_loss=True)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.arange(40).remainder(7).add(3).repeat(4, 1)  # a repeating pattern
    losses = []
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
