"""ScratchformerConfig: every concept value builds a working model, every inconsistent value is refused
with a message naming the field, the presets are what the docs say, and save → load keeps everything."""

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from scratchformer.modeling import PRESETS, ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.modeling.configuration_scratchformer import (
    MLP_TYPES,
    NORM_POSITIONS,
    NORM_TYPES,
    POSITION_EMBEDDINGS,
)
from scratchformer.modeling.transformer_scratchformer import (
    ScratchformerLayerNorm,
    ScratchformerRMSNorm,
    ScratchformerRotaryEmbedding,
    ScratchformerSinusoidalEmbedding,
)


def test_concept_choices_are_the_documented_ones():
    assert POSITION_EMBEDDINGS == ("sinusoidal", "learned", "rope")
    assert NORM_TYPES == ("layernorm", "rmsnorm")
    assert NORM_POSITIONS == ("pre", "post")
    assert MLP_TYPES == ("relu", "gelu", "swiglu")


# The full product is 36 tiny models; each builds, runs forward and backward in a few milliseconds.
@pytest.mark.parametrize(
    "position, norm_type, norm_position, mlp_type",
    list(itertools.product(POSITION_EMBEDDINGS, NORM_TYPES, NORM_POSITIONS, MLP_TYPES)),
)
def test_every_concept_combination_builds_runs_and_trains(tiny_config, position, norm_type, norm_position, mlp_type):
    config = tiny_config(
        position_embedding=position, norm_type=norm_type, norm_position=norm_position, mlp_type=mlp_type
    )
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(config)
    inner = model.model

    # The structure is what the config asked for.
    positions = {
        "sinusoidal": (ScratchformerSinusoidalEmbedding, "embed_positions"),
        "learned": (nn.Embedding, "embed_positions"),
        "rope": (ScratchformerRotaryEmbedding, "rotary_emb"),
    }[position]
    assert isinstance(getattr(inner, positions[1]), positions[0])
    norm_class = ScratchformerLayerNorm if norm_type == "layernorm" else ScratchformerRMSNorm
    block = inner.layers[0]
    assert isinstance(block.input_layernorm, norm_class) and isinstance(block.post_attention_layernorm, norm_class)
    assert isinstance(inner.norm, nn.Identity if norm_position == "post" else norm_class)
    assert hasattr(block.mlp, "gate_proj") == (mlp_type == "swiglu")
    assert block.mlp.up_proj.out_features == config.intermediate_size

    ids = torch.randint(3, config.vocab_size, (2, 9))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 9, config.vocab_size)
    assert torch.isfinite(logits).all()
    torch.manual_seed(0)
    out = model(ids, labels=ids)  # a training step, as stock transformers does it: loss and logits
    assert out.logits.shape == (2, 9, config.vocab_size)
    assert 3.0 < out.loss.item() < 6.0  # ~ln(97) = 4.57 at initialisation
    model.config.fused_lm_loss = True
    torch.manual_seed(0)  # the same dropout masks
    out = model(ids, labels=ids)  # the fused head + loss: the same loss, no logits
    assert out.logits is None
    assert 3.0 < out.loss.item() < 6.0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"


@pytest.mark.parametrize("bias", [True, False])
def test_bias_switches(tiny_config, bias):
    config = tiny_config(attention_bias=bias, mlp_bias=bias, mlp_type="swiglu")
    model = ScratchformerForCausalLM(config)
    block = model.model.layers[0]
    linears = [block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
               block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj]
    assert all((lin.bias is not None) == bias for lin in linears)
    names = [n for n, _ in model.named_parameters() if n.endswith("proj.bias")]
    assert len(names) == (7 * config.num_hidden_layers if bias else 0)
    ids = torch.randint(3, 97, (1, 5))
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("is_causal", [True, False])
def test_is_causal_reaches_every_attention_layer(tiny_config, is_causal):
    model = ScratchformerForCausalLM(tiny_config(is_causal=is_causal))
    assert [layer.self_attn.is_causal for layer in model.model.layers] == [is_causal] * 2
    ids = torch.randint(3, 97, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 3) % 94 + 3
    # The first position sees the last token only in an encoder.
    first_moves = not torch.allclose(model(ids).logits[0, 0], model(changed).logits[0, 0])
    assert first_moves == (not is_causal)


def test_gqa_shapes(tiny_config):
    model = ScratchformerForCausalLM(tiny_config(num_key_value_heads=1))
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == attn.v_proj.out_features == 8  # one head of width 32 / 4
    assert attn.q_proj.out_features == 32 and attn.num_key_value_groups == 4


def test_derived_defaults(tiny_config):
    assert tiny_config().num_key_value_heads == 4
    assert tiny_config(mlp_type="relu").intermediate_size == 128
    assert tiny_config(mlp_type="gelu").intermediate_size == 128
    # SwiGLU: 2/3 of 4C, rounded up to a multiple of 32 (8 * 32 / 3 = 85.3 -> 96).
    assert tiny_config(mlp_type="swiglu").intermediate_size == 96
    assert tiny_config(intermediate_size=40).intermediate_size == 40
    assert tiny_config().head_dim == 8


# ---------------------------------------------------------------------------------------------
# Inconsistent values: ValueError, and the message names the field to fix.
# ---------------------------------------------------------------------------------------------

BAD = [
    (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(num_attention_heads=4, num_key_value_heads=8), "num_key_value_heads"),
    (dict(position_embedding="alibi"), "position_embedding"),
    (dict(position_embedding="Rope"), "position_embedding"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(norm_position="sandwich"), "norm_position"),
    (dict(mlp_type="geglu"), "mlp_type"),
    (dict(pad_token_id=97), "pad_token_id"),
    (dict(bos_token_id=-1), "bos_token_id"),
    (dict(eos_token_id=200), "eos_token_id"),
    (dict(eos_token_id=[2, 97]), "eos_token_id"),
    (dict(mask_token_id=1000), "mask_token_id"),
    # Rotary needs an even head width: 36 / 12 = 3.
    (dict(hidden_size=36, num_attention_heads=12, position_embedding="rope"), "head width"),
    (dict(hidden_size=33, num_attention_heads=3, position_embedding="sinusoidal"), "hidden_size"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(hidden_dropout=1.0), "hidden_dropout"),
    (dict(attention_dropout=-0.1), "attention_dropout"),
    (dict(embedding_dropout=1.5), "embedding_dropout"),
]
SIZES = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "intermediate_size", "max_position_embeddings"]
BAD += [(dict([(field, value)]), field) for field in SIZES for value in (0, -4)]
BAD += [(dict(hidden_size=32.0), "hidden_size"), (dict(num_hidden_layers=True), "num_hidden_layers")]


@pytest.mark.parametrize("overrides, field", BAD, ids=[f"{f}={list(o.values())}" for o, f in BAD])
def test_inconsistent_values_raise_naming_the_field(tiny_config, overrides, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        tiny_config(**overrides)


def test_odd_head_width_is_fine_without_rope(tiny_config):
    # The same 36 / 12 = 3 head width is legal for learned positions: only rotary pairs channels.
    config = tiny_config(hidden_size=36, num_attention_heads=12, position_embedding="learned")
    assert config.head_dim == 3
    assert ScratchformerForCausalLM(config)(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 97)


def test_token_ids_may_be_none(tiny_config):
    config = tiny_config(pad_token_id=None, bos_token_id=None, eos_token_id=None, mask_token_id=None)
    assert config.pad_token_id is None and config.eos_token_id is None


def test_positional_arguments_rejected():
    with pytest.raises((TypeError, ValueError)):
        ScratchformerConfig(97)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

EXPECTED_PRESETS = {
    "paper": dict(position_embedding="sinusoidal", norm_type="layernorm", norm_position="post", mlp_type="relu",
                  attention_bias=True, mlp_bias=True, scale_embeddings=True, hidden_dropout=0.1,
                  embedding_dropout=0.1, tie_word_embeddings=True, is_causal=True),
    "gpt2": dict(position_embedding="learned", norm_type="layernorm", norm_position="pre", mlp_type="gelu",
                 attention_bias=True, mlp_bias=True, scale_embeddings=False, tie_word_embeddings=True, norm_eps=1e-5),
    "llama": dict(position_embedding="rope", norm_type="rmsnorm", norm_position="pre", mlp_type="swiglu",
                  attention_bias=False, mlp_bias=False, scale_embeddings=False, norm_eps=1e-6, qk_norm=False),
    "qwen3": dict(position_embedding="rope", norm_type="rmsnorm", norm_position="pre", mlp_type="swiglu",
                  attention_bias=False, mlp_bias=False, scale_embeddings=False, norm_eps=1e-6, qk_norm=True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_presets_give_the_documented_choices(tiny_config, name):
    assert set(PRESETS) == set(EXPECTED_PRESETS)
    config = tiny_config(preset=name)
    for field, value in EXPECTED_PRESETS[name].items():
        assert getattr(config, field) == value, field
    assert config.hidden_size == 32  # sizes come from the caller


def test_gpt2_preset_uses_tanh_gelu(tiny_config):
    act = ScratchformerForCausalLM(tiny_config(preset="gpt2")).model.layers[0].mlp.act
    x = torch.linspace(-3, 3, 13)
    tanh_gelu = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    torch.testing.assert_close(act(x), tanh_gelu)


def test_preset_overrides_and_unknown_preset(tiny_config):
    config = tiny_config(preset="llama", norm_position="post", hidden_size=64)
    assert config.norm_position == "post" and config.hidden_size == 64 and config.norm_type == "rmsnorm"
    with pytest.raises(ValueError, match="preset"):
        ScratchformerConfig.from_preset("bert")


# ---------------------------------------------------------------------------------------------
# Save → load
# ---------------------------------------------------------------------------------------------

# A value different from the default for every field scratchformer declares.
NON_DEFAULT = dict(
    vocab_size=101, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
    intermediate_size=72, max_position_embeddings=80, position_embedding="learned", rope_theta=500.0,
    norm_type="layernorm", norm_position="post", norm_eps=1e-4, mlp_type="gelu", attention_bias=True,
    mlp_bias=True, is_causal=False, scale_embeddings=True, qk_norm=True, embedding_dropout=0.05, hidden_dropout=0.1,
    attention_dropout=0.15, initializer_range=0.05, pad_token_id=3, bos_token_id=5, eos_token_id=[6, 7],
    mask_token_id=8, tie_word_embeddings=False, use_cache=False, fused_lm_loss=True,
)


def test_save_load_keeps_every_field(tmp_path):
    declared = set(ScratchformerConfig.__annotations__)
    assert declared == set(NON_DEFAULT), "a new config field needs a value in NON_DEFAULT"
    defaults = {f.name: f.default for f in dataclasses.fields(ScratchformerConfig) if f.name in declared}
    for field, value in NON_DEFAULT.items():
        assert defaults[field] != value, f"pick a non-default value for {field}"

    config = ScratchformerConfig(**NON_DEFAULT, id2label={0: "neg", 1: "neu", 2: "pos"})
    config.save_pretrained(tmp_path)
    loaded = ScratchformerConfig.from_pretrained(tmp_path)
    for field, value in NON_DEFAULT.items():
        assert getattr(loaded, field) == value, field
    assert loaded.id2label == {0: "neg", 1: "neu", 2: "pos"} and loaded.num_labels == 3
    assert loaded.to_dict() == config.to_dict()


def test_auto_config_round_trip_and_aliases(tmp_path, tiny_config):
    from transformers import AutoConfig

    config = tiny_config(use_cache=False, tie_word_embeddings=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ScratchformerConfig
    assert loaded.use_cache is False and loaded.tie_word_embeddings is False
    # GPT-2 aliases read (and write) the canonical fields.
    assert (loaded.n_embd, loaded.n_layer, loaded.n_head, loaded.n_positions) == (32, 2, 4, 64)
