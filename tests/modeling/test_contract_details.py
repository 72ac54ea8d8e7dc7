"""Details of the Hugging Face contract and of the loss that the mutation run (`make mutation`,
benchmarks/results/mutation.md) showed no test would notice if they broke: embedding accessors that
`resize_token_embeddings` (PEFT, TRL adding chat tokens) relies on, the cache default, Llama's
bias-free heads, last-token pooling, dropout, the loss with a frozen head and in bf16 chunks, the
encoder-decoder's loss average and position limits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchformer.modeling import (
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerSeq2SeqConfig,
)
from scratchformer.modeling import loss_scratchformer as loss_module


def seq2seq_config(**overrides) -> ScratchformerSeq2SeqConfig:
    fields = dict(vocab_size=97, hidden_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=4,
                  max_position_embeddings=16, dropout=0.0)
    return ScratchformerSeq2SeqConfig(**{**fields, **overrides})


@pytest.mark.parametrize("head", ["causal", "masked", "seq2seq"])
def test_resize_token_embeddings_grows_input_and_output_together(tiny_config, head):
    torch.manual_seed(0)
    model = {"causal": lambda: ScratchformerForCausalLM(tiny_config()),
             "masked": lambda: ScratchformerForMaskedLM(tiny_config(is_causal=False)),
             "seq2seq": lambda: ScratchformerForConditionalGeneration(seq2seq_config())}[head]()
    if head != "seq2seq":
        assert model.model.get_input_embeddings() is model.model.embed_tokens
    assert model.get_input_embeddings() is not None and model.get_output_embeddings() is not None
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(105)
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == 105
    assert torch.equal(model.get_input_embeddings().weight[:97], old)
    x = torch.tensor([[1, 100, 104]])
    out = model(input_ids=x) if head == "causal" else model(input_ids=x, decoder_input_ids=x)
    assert out.logits.shape[-1] == 105


def test_the_cache_is_returned_in_eval_and_not_in_training(tiny_config):
    model = ScratchformerForCausalLM(tiny_config())
    x = torch.tensor([[1, 2, 3]])
    assert model.eval()(input_ids=x).past_key_values is not None
    assert model.train()(input_ids=x).past_key_values is None
    assert model.eval()(input_ids=x, use_cache=False).past_key_values is None


def test_heads_are_bias_free_like_llamas(tiny_config):
    """Llama's lm_head and score have no bias: a bias would add keys the Llama export drops."""
    config = tiny_config(num_labels=3)
    for model in (ScratchformerForCausalLM(config), ScratchformerForSequenceClassification(config),
                  ScratchformerForConditionalGeneration(seq2seq_config())):
        assert not [k for k in model.state_dict() if k.endswith(("lm_head.bias", "score.bias"))], type(model)
    masked = ScratchformerForMaskedLM(tiny_config(is_causal=False))
    assert masked.lm_head.bias is None


def test_sequence_classification_pools_the_last_real_token(tiny_config):
    """Right-padded rows are scored at their last real token, found from the attention mask, or
    from the pad id when no mask is given: the same logits as each row alone."""
    torch.manual_seed(0)
    model = ScratchformerForSequenceClassification(tiny_config(num_labels=3, pad_token_id=0)).eval()
    rows = [[5, 6, 7, 8, 9], [5, 6, 7]]
    alone = torch.cat([model(input_ids=torch.tensor([r])).logits for r in rows])
    padded = torch.tensor([rows[0], rows[1] + [0, 0]])
    mask = (padded != 0).long()
    torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(input_ids=padded).logits, alone, rtol=1e-5, atol=1e-5)
    # The mask wins over the pad id: a real token that happens to be id 0 is still the last one.
    ends_in_zero = torch.tensor([[5, 6, 0]])
    torch.testing.assert_close(model(input_ids=ends_in_zero, attention_mask=torch.ones_like(ends_in_zero)).logits,
                               model.score(model.model(input_ids=ends_in_zero).last_hidden_state)[:, -1],
                               rtol=1e-5, atol=1e-5)


def test_dropout_is_applied_in_training_only(tiny_config):
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(tiny_config(hidden_dropout=0.5))
    x = torch.tensor([[1, 2, 3, 4]])
    model.train()
    assert not torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)
    model.eval()
    assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)


def test_the_fused_loss_trains_the_body_under_a_frozen_head():
    """LoRA freezes the head: the loss must still send gradients to the hidden states."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen
    labels = torch.randint(0, 11, (2, 5))
    loss_module.fused_causal_lm_loss(x, weight, labels).backward()
    reference = x.detach().clone().requires_grad_(True)
    logits = reference @ weight.T
    F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1)).backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-5, atol=1e-6)


def test_the_fused_loss_in_bf16_over_several_chunks(monkeypatch):
    """Rows are processed in chunks of LOSS_CHUNK_ELEMENTS logits; in bf16 the weight's gradient is
    summed over chunks in float32. Small chunks here, so the summation path runs."""
    monkeypatch.setattr(loss_module, "LOSS_CHUNK_ELEMENTS", 64)
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(13, 16, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 13, (2, 9))
    loss = loss_module.fused_causal_lm_loss(x, weight, labels)
    loss.backward()
    x32, w32 = x.detach().float().requires_grad_(True), weight.detach().float().requires_grad_(True)
    ref = F.cross_entropy((x32 @ w32.T)[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1))
    ref.backward()
    torch.testing.assert_close(loss.float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad.float(), w32.grad, rtol=5e-2, atol=5e-2)
    assert weight.grad.dtype == torch.bfloat16


def test_the_encoder_decoder_loss_is_the_mean_over_labelled_tokens():
    torch.manual_seed(0)
    model = ScratchformerForConditionalGeneration(seq2seq_config()).eval()
    src = torch.tensor([[5, 6, 7, 8]])
    labels = torch.tensor([[9, 10, 11, -100, -100]])
    out = model(input_ids=src, labels=labels)
    expected = F.cross_entropy(out.logits.reshape(-1, 97), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_the_encoder_decoder_position_limits_are_exact():
    """A 16-position table takes 16 source and 16 target tokens and refuses 17, naming 0..15."""
    model = ScratchformerForConditionalGeneration(seq2seq_config(position_embedding="learned")).eval()
    ok = torch.full((1, 16), 5)
    model(input_ids=ok, decoder_input_ids=ok)
    long = torch.full((1, 17), 5)
    with pytest.raises(ValueError, match=r"source needs positions up to 16, .* positions for 0\.\.15 "):
        model(input_ids=long, decoder_input_ids=ok)
    with pytest.raises(ValueError, match=r"target needs positions up to 16, .* positions for 0\.\.15 "):
        model(input_ids=ok, decoder_input_ids=long)
