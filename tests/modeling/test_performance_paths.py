"""The code paths the GPU benchmarks depend on, checked on the CPU (CI has no GPU).

- No host syncs: a training step or a decoding step that reads a tensor's value (`.item()`,
  `int(t)`, `bool(t.all())`) stalls an accelerator's launch queue every call. Running the step on the
  meta device, which has shapes but no values, turns every such read into an error; the input checks
  that read values on CPU are skipped off the CPU, as on a GPU.
- No graph breaks: `torch.compile(fullgraph=True)` refuses any Python the compiler cannot trace.
  The "eager" backend traces without generating kernels, so this costs seconds, not minutes.
- Static cache: the fixed-shape KV cache that compiled decoding needs gives the tokens the dynamic
  cache gives.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache, StaticCache

from scratchformer.modeling import (
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerSeq2SeqConfig,
)

PRESETS = ["llama", "qwen3", "gpt2", "paper"]


def lm(tiny_config, preset: str, **overrides) -> ScratchformerForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(preset=preset, num_key_value_heads=2 if preset in ("llama", "qwen3") else 4, **overrides)
    return ScratchformerForCausalLM(config).eval()


def ids(B: int, L: int, device="cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (B, L), generator=g).to(device)


@pytest.mark.parametrize("fused_lm_loss", [True, False])
@pytest.mark.parametrize("preset", PRESETS)
def test_training_step_reads_no_tensor_values(tiny_config, preset, fused_lm_loss):
    with torch.device("meta"):
        model = lm(tiny_config, preset, fused_lm_loss=fused_lm_loss).train()
    x = ids(2, 16, "meta")
    out = model(input_ids=x, labels=x)
    out.loss.backward()  # raises "Tensor.item() cannot be called on meta tensors" on any host sync
    assert (out.logits is None) == fused_lm_loss
    assert model.lm_head.weight.grad.shape == (97, 32)


@pytest.mark.parametrize("preset", PRESETS)
def test_decoding_step_reads_no_tensor_values(tiny_config, preset):
    with torch.device("meta"):
        model = lm(tiny_config, preset)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids(2, 5, "meta"), past_key_values=cache, use_cache=True)
        out = model(input_ids=ids(2, 1, "meta"), past_key_values=cache, use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (2, 1, 97)
    assert cache.get_seq_length() == 6


def test_encoder_decoder_step_reads_no_tensor_values():
    config = ScratchformerSeq2SeqConfig(
        vocab_size=97, hidden_size=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    with torch.device("meta"):
        model = ScratchformerForConditionalGeneration(config).train()
    src, tgt = ids(2, 12, "meta"), ids(2, 7, "meta")
    # No attention_mask: given one, transformers' mask builder checks it for padding (one read, as
    # in every transformers model), to drop the mask when nothing is padded.
    out = model(input_ids=src, labels=tgt)
    out.loss.backward()
    model.eval()
    cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    with torch.no_grad():
        model(input_ids=src, decoder_input_ids=tgt[:, :1], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_training_forward_and_backward_compile_as_one_graph(tiny_config, preset):
    torch._dynamo.reset()
    # Dropout off (the paper preset has it): the two runs must see the same arithmetic.
    model = lm(tiny_config, preset, hidden_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0).train()
    x = ids(2, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # a graph break raises here
    loss_compiled = compiled(input_ids=x, labels=x).loss
    loss_compiled.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    # The same arithmetic up to float32 rounding: on transformers 5.17 the compiled graph orders one
    # reduction differently (1 ulp, 1.5e-8, in 7 % of a gradient's entries).
    torch.testing.assert_close(loss_compiled, loss, rtol=1e-6, atol=0)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_decoding_step_with_a_static_cache_compiles_as_one_graph(tiny_config, preset):
    torch._dynamo.reset()
    model = lm(tiny_config, preset)
    x = ids(2, 6)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    logits = {}
    for name, forward in (("eager", model), ("compiled", compiled)):
        cache = StaticCache(config=model.config, max_cache_len=16)
        with torch.no_grad():
            forward(input_ids=x, past_key_values=cache, use_cache=True)
            step = forward(input_ids=x[:, :1], past_key_values=cache, use_cache=True,
                           cache_position=torch.tensor([6]), position_ids=torch.tensor([[6], [6]]))
        logits[name] = step.logits
    # Equal to float32 rounding: dynamo may pick another kernel for the same op (on some CPUs the
    # compiled step differs from eager by 1 ulp), which is no graph break and no wrong cache slot.
    torch.testing.assert_close(logits["compiled"], logits["eager"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_static_cache_step_without_a_mask_sees_only_the_written_slots(tiny_config, preset):
    """A static cache holds max_cache_len slots, most of them still empty: a decoding step given no
    attention mask must still attend to the written ones only, i.e. equal the full forward. (A step
    that skipped its mask when none was given read 10 empty slots: logits off by ~0.9.)"""
    model = lm(tiny_config, preset)
    x, nxt = ids(2, 6), ids(2, 1, seed=5)
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        model(input_ids=x, past_key_values=cache, use_cache=True)
        step = model(input_ids=nxt, past_key_values=cache, use_cache=True,
                     cache_position=torch.tensor([6]), position_ids=torch.tensor([[6], [6]]))
        full = model(input_ids=torch.cat([x, nxt], dim=1))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["llama", "gpt2", "paper"])
def test_static_cache_generates_the_tokens_the_dynamic_cache_does(lively_lm, preset, assert_same_decoding):
    model = lively_lm(preset, num_key_value_heads=2 if preset == "llama" else 4)
    x = ids(3, 7, seed=1)
    mask = torch.ones_like(x)
    x[0, :3], mask[0, :3] = 0, 0  # one left-padded row
    kwargs = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    static = assert_same_decoding(model, model, x, a_kwargs={"cache_implementation": "static"}, **kwargs)
    assert static.shape == (3, 19)


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_a_causal_step_without_padding_builds_no_mask(tiny_config, preset, monkeypatch):
    # Without padding, causality is the kernel's own is_causal path: no (L, L) mask is built, so
    # SDPA may pick its fastest kernel. A padded batch must still get a mask.
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        seen.append((attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = lm(tiny_config, preset).train()
    x = ids(2, 16)
    model(input_ids=x, labels=x).loss.backward()
    assert seen == [(True, True)] * model.config.num_hidden_layers
    seen.clear()
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    model(input_ids=x, attention_mask=mask, labels=x)
    assert seen == [(False, False)] * model.config.num_hidden_layers
