"""save_pretrained → from_pretrained gives back the same model, bit for bit, for every head, through
the Auto classes: tied weights stored once, non-persistent buffers rebuilt, shards and bf16 too."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from scratchformer.modeling import (
    ScratchformerForCausalLM,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerModel,
)

V = 97
LABELS = {0: "negative", 1: "neutral", 2: "positive"}

HEADS = {
    "base": (ScratchformerModel, AutoModel, {}),
    "causal": (ScratchformerForCausalLM, AutoModelForCausalLM, {}),
    "sequence": (ScratchformerForSequenceClassification, AutoModelForSequenceClassification, dict(id2label=LABELS)),
    "token": (ScratchformerForTokenClassification, AutoModelForTokenClassification, dict(num_labels=3)),
    "masked": (ScratchformerForMaskedLM, AutoModelForMaskedLM, dict(is_causal=False)),
}


def ids(B: int = 2, L: int = 9) -> torch.Tensor:
    return torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(1))


def output(model, x, **kwargs) -> torch.Tensor:
    out = model(x, **kwargs)
    return out.last_hidden_state if isinstance(model, ScratchformerModel) else out.logits


def randomise(model) -> None:
    """Norm weights start at 1 and biases at 0: make every tensor distinct, so a weight that is not
    saved (or is loaded into the wrong place) cannot hide behind its initial value."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def safetensors_keys(directory) -> set[str]:
    keys = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            keys |= set(f.keys())
    return keys


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_round_trips_through_its_auto_class(tmp_path, tiny_config, head, position):
    model_class, auto_class, overrides = HEADS[head]
    config = tiny_config(position_embedding=position, attention_bias=True, norm_type="layernorm", **overrides)
    torch.manual_seed(0)
    model = model_class(config).eval()
    randomise(model)
    x = ids()
    model.save_pretrained(tmp_path)

    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    assert torch.equal(output(reloaded, x), output(model, x))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    assert torch.equal(output(reloaded, x, attention_mask=mask), output(model, x, attention_mask=mask))
    saved, loaded = model.config.to_dict(), reloaded.config.to_dict()
    assert saved.pop("_name_or_path") == "" and loaded.pop("_name_or_path") == str(tmp_path)
    assert loaded == saved
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [model_class.__name__]
    if head == "sequence":
        assert reloaded.config.id2label == LABELS and reloaded.config.num_labels == 3
        assert output(reloaded, x).shape == (2, 3)


def test_a_causal_checkpoint_loads_into_the_base_model(tmp_path, tiny_config):
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config()).eval()
    randomise(lm)
    lm.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is ScratchformerModel
    x = ids()
    assert torch.equal(base(x).last_hidden_state, lm.model(x).last_hidden_state)


@pytest.mark.parametrize("head", ["causal", "masked"])
def test_tied_embeddings_are_stored_once(tmp_path, tiny_config, head):
    model_class, auto_class, overrides = HEADS[head]
    model = model_class(tiny_config(**overrides)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    keys = safetensors_keys(tmp_path)
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    reloaded = auto_class.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    x = ids()
    assert torch.equal(reloaded(x).logits, model(x).logits)


def test_untied_embeddings_are_both_stored_and_stay_apart(tmp_path, tiny_config):
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config(tie_word_embeddings=False)).eval()
    assert lm.lm_head.weight is not lm.model.embed_tokens.weight
    lm.save_pretrained(tmp_path)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= safetensors_keys(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings is False
    assert not torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)
    assert torch.equal(reloaded.lm_head.weight, lm.lm_head.weight)
    assert torch.equal(reloaded.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    x = ids()
    assert torch.equal(reloaded(x).logits, lm(x).logits)


def test_non_persistent_buffers_are_rebuilt_on_load(tmp_path, tiny_config):
    """from_pretrained builds on the meta device; a non-persistent buffer not recreated in
    _init_weights would hold uninitialised memory (HF_V5_NOTES §0.5)."""
    sin_dir, rope_dir = tmp_path / "sinusoidal", tmp_path / "rope"
    ScratchformerForCausalLM(tiny_config(position_embedding="sinusoidal")).save_pretrained(sin_dir)
    ScratchformerForCausalLM(tiny_config(position_embedding="rope", rope_theta=500.0)).save_pretrained(rope_dir)
    for directory in (sin_dir, rope_dir):
        assert not any("table" in k or "inv_freq" in k for k in safetensors_keys(directory))

    # Computed here from the formulas, not with the model's helpers.
    positions = torch.arange(64, dtype=torch.float64)[:, None]
    inv = torch.tensor([10000 ** (-2 * i / 32) for i in range(16)], dtype=torch.float64)
    table = torch.stack([(positions * inv).sin(), (positions * inv).cos()], dim=-1).reshape(64, 32)
    inv_freq = torch.tensor([1 / 500.0 ** (2 * i / 8) for i in range(4)], dtype=torch.float64)

    for _ in range(2):  # twice: fresh memory from the allocator must not happen to hold the right values
        sin_model = AutoModelForCausalLM.from_pretrained(sin_dir)
        torch.testing.assert_close(sin_model.model.embed_positions.table.double(), table, atol=1e-5, rtol=0)
        rope_model = AutoModelForCausalLM.from_pretrained(rope_dir)
        assert math.isclose(rope_model.model.rotary_emb.theta, 500.0)
        # The rotation the loaded model applies, against the formula (frequencies for K/2 pairs, Llama's halves).
        cos, sin = rope_model.model.rotary_emb(torch.zeros(1, 64, 32), torch.arange(64)[None])
        angles = torch.cat([positions * inv_freq] * 2, dim=-1)
        torch.testing.assert_close(cos[0].double(), angles.cos(), atol=1e-5, rtol=0)
        torch.testing.assert_close(sin[0].double(), angles.sin(), atol=1e-5, rtol=0)


def test_sharded_checkpoint_reloads_identically(tmp_path, tiny_config):
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config(tie_word_embeddings=False)).eval()
    randomise(lm)
    lm.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(lm.state_dict())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids()
    assert torch.equal(reloaded(x).logits, lm(x).logits)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_bf16_round_trip(tmp_path, tiny_config, position):
    fp32_dir, bf16_dir = tmp_path / "fp32", tmp_path / "bf16"
    torch.manual_seed(0)
    ScratchformerForCausalLM(tiny_config(position_embedding=position)).save_pretrained(fp32_dir)
    model = AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    model.save_pretrained(bf16_dir)
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(bf16_dir / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16

    reloaded = AutoModelForCausalLM.from_pretrained(bf16_dir).eval()  # dtype="auto" is the v5 default
    assert reloaded.dtype == torch.bfloat16
    for (name, p), q in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert p.dtype == q.dtype and torch.equal(p, q), name
    x = ids()
    assert torch.equal(reloaded(x).logits, model(x).logits)
    assert reloaded(x).logits.dtype == torch.bfloat16


def test_to_bf16_then_round_trip_rope(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(tiny_config(position_embedding="rope")).to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for (name, buffer), loaded in zip(model.named_buffers(), reloaded.buffers()):
        assert buffer.dtype == loaded.dtype and torch.equal(buffer, loaded), name
    x = ids(2, 60)
    assert torch.equal(reloaded(x).logits, model(x).logits)


def test_auto_config_from_a_model_directory(tmp_path, tiny_config):
    ScratchformerForCausalLM(tiny_config(pad_token_id=3, bos_token_id=5, eos_token_id=6)).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (3, 5, 6)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["bos_token_id"], generation["eos_token_id"]) == (3, 5, 6)
