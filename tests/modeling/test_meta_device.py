"""Large models are built on the meta device and materialised later (accelerate's init_empty_weights,
FSDP2's `to_empty`). Every head must survive `to_empty()` + `init_weights()`, and the rotary angles
must keep float32 precision whatever dtype the model is cast to."""

import math

import pytest
import torch

from scratchformer.modeling import (
    ScratchformerConfig,
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerModel,
    ScratchformerSeq2SeqConfig,
    ScratchformerSeq2SeqModel,
)

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
HEADS = [
    ScratchformerModel,
    ScratchformerForCausalLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerForMaskedLM,
]


def materialised_from_meta(cls, config):
    with torch.device("meta"):
        model = cls(config)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    return model.eval()


def first_output(model, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, (ScratchformerSeq2SeqModel, ScratchformerForConditionalGeneration)):
        return model(input_ids=x, decoder_input_ids=x[:, :5])[0]
    return model(x)[0]


def decoder_only(preset: str, cls) -> ScratchformerConfig:
    return ScratchformerConfig.from_preset(preset, **TINY, is_causal=cls is not ScratchformerForMaskedLM)


def seq2seq(preset: str) -> ScratchformerSeq2SeqConfig:
    return ScratchformerSeq2SeqConfig.from_preset(
        preset, vocab_size=97, hidden_size=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )


CASES = [(preset, cls, decoder_only) for preset in ("paper", "gpt2", "llama", "qwen3") for cls in HEADS] + [
    ("paper", cls, lambda preset, _: seq2seq(preset))
    for cls in (ScratchformerSeq2SeqModel, ScratchformerForConditionalGeneration)
]


@pytest.mark.parametrize(
    ("preset", "cls", "make_config"), CASES, ids=[f"{p}-{c.__name__}" for p, c, _ in CASES]
)
def test_to_empty_then_init_weights_gives_a_working_model(preset, cls, make_config):
    config = make_config(preset, cls)
    torch.manual_seed(0)
    reference = cls(config).eval()
    model = materialised_from_meta(cls, config)
    x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))

    # init_weights ran for real: no meta tensors, no uninitialised memory, the usual initial values.
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        if name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
    assert torch.isfinite(first_output(model, x)).all()
    if hasattr(model, "lm_head"):  # tying survives to_empty (which makes new parameters)
        assert model.lm_head.weight is model.get_input_embeddings().weight

    # Non-persistent buffers (the paper's sinusoid table) are not in the state dict: with the
    # reference's weights loaded, only a rebuilt buffer gives the reference's outputs.
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    assert torch.equal(first_output(model, x), first_output(reference, x))


def test_linear_init_after_to_empty_has_the_configured_spread():
    config = ScratchformerConfig.from_preset("llama", **{**TINY, "hidden_size": 128, "initializer_range": 0.02})
    model = materialised_from_meta(ScratchformerForCausalLM, config)
    q = model.model.layers[0].self_attn.q_proj.weight
    o = model.model.layers[0].self_attn.o_proj.weight  # residual projection: std / sqrt(2 * layers)
    assert q.std().item() == pytest.approx(0.02, rel=0.1)
    assert o.std().item() == pytest.approx(0.02 / math.sqrt(2 * config.num_hidden_layers), rel=0.1)


def test_rotary_angles_keep_float32_precision_in_a_bf16_model():
    """model.to(bfloat16) must not round the rotary frequencies: at position 4000 a frequency rounded
    to 8 mantissa bits is off by whole radians. Compared with the formula in float64."""
    config = ScratchformerConfig.from_preset("llama", **{**TINY, "max_position_embeddings": 8192})
    model = ScratchformerForCausalLM(config).to(torch.bfloat16)
    positions = torch.arange(4000, 4016)
    cos, sin = model.model.rotary_emb(torch.zeros(1, 16, 32, dtype=torch.bfloat16), positions[None])
    K = config.head_dim
    inv_freq = torch.tensor([config.rope_theta ** (-2 * i / K) for i in range(K // 2)], dtype=torch.float64)
    angles = torch.cat([positions[:, None].double() * inv_freq] * 2, dim=-1)
    assert cos.dtype == torch.bfloat16
    # bf16 rounding of a value in [-1, 1] is at most 2^-8; a rounded frequency would be off by ~1.
    assert (cos[0].double() - angles.cos()).abs().max() < 2**-8
    assert (sin[0].double() - angles.sin()).abs().max() < 2**-8
    # Control: the same angles from bf16-rounded frequencies are far off, so the test can tell.
    rounded = torch.cat([positions[:, None].double() * inv_freq.bfloat16().double()] * 2, dim=-1)
    assert (rounded.cos() - angles.cos()).abs().max() > 0.1
