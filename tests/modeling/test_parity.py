"""Parity with transformers' own Llama, Qwen3 and GPT-2: converted weights must give the same numbers."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.modeling.configuration_scratchformer import PRESETS
from scratchformer.training import convert
from scratchformer.training.library.convert import convert_model

V = 101


def random_llama(tie: bool = False, kv_heads: int = 2, attn: str = "sdpa", init: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        initializer_range=init,
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tie,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6,
    )
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    return model


def random_qwen3(tie: bool = False, kv_heads: int = 2, attn: str = "sdpa", init: float = 0.02) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        initializer_range=init, head_dim=16,
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tie,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6,
    )
    model = Qwen3ForCausalLM(config).eval()
    # Every norm starts at unit gains; randomise them, so that a QK-norm applied after rotary, over the
    # whole width, or with the other head's gains cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn_like(p))
    model.set_attn_implementation(attn)
    return model


def random_gpt2(attn: str = "sdpa", init: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
                        initializer_range=init)
    model = GPT2LMHeadModel(config).eval()
    # GPT-2's weights start with zero biases and unit norms; randomise them so a swapped or
    # untransposed tensor cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.set_attn_implementation(attn)
    return model


def batch(seed: int = 1, B: int = 3, L: int = 17) -> torch.Tensor:
    return torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(seed))


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch(2, B=2, L=9)
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = 0, 0  # row 0 is a 5-token prompt, left padded
    return ids, mask


REFERENCES = {
    "llama-gqa": lambda attn, init=0.02: random_llama(kv_heads=2, attn=attn, init=init),
    "llama-mqa-tied": lambda attn, init=0.02: random_llama(tie=True, kv_heads=1, attn=attn, init=init),
    "llama-mha": lambda attn, init=0.02: random_llama(kv_heads=4, attn=attn, init=init),
    "qwen3-gqa": lambda attn, init=0.02: random_qwen3(kv_heads=2, attn=attn, init=init),
    "qwen3-mqa-tied": lambda attn, init=0.02: random_qwen3(tie=True, kv_heads=1, attn=attn, init=init),
    "gpt2": random_gpt2,
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_converted_logits_match_reference(name, attn):
    ref = REFERENCES[name](attn)
    ours = convert_model(ref)
    assert isinstance(ours, ScratchformerForCausalLM)
    assert ours.config._attn_implementation == attn
    ids = batch()
    with torch.no_grad():
        diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 1e-5, f"{name}/{attn}: max abs logit diff {diff:.2e}"


@pytest.mark.parametrize("name", ["llama-gqa", "llama-mqa-tied", "qwen3-gqa"])
def test_training_step_matches_reference(name):
    # A training step through our fused head + loss against Llama's logits + ForCausalLMLoss: the loss
    # and every parameter's gradient (the names are Llama's, so they pair up by name).
    ref = REFERENCES[name]("sdpa").train()
    ours = convert_model(ref).train()
    ours.config.fused_lm_loss = True
    ids = batch()
    labels = ids.clone()
    labels[0, :5] = -100
    ref_loss, our_out = ref(ids, labels=labels).loss, ours(ids, labels=labels)
    assert our_out.logits is None
    torch.testing.assert_close(our_out.loss, ref_loss, rtol=1e-6, atol=1e-6)
    ref_loss.backward()
    our_out.loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert ref_grads.keys() == ours_grads.keys()
    for n, g in ref_grads.items():
        torch.testing.assert_close(ours_grads[n], g, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_converted_logits_match_with_left_padding(name):
    ref = REFERENCES[name]("sdpa")
    ours = convert_model(ref)
    ids, mask = left_padded()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, position_ids=position_ids).logits
        got = ours(ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    assert (want[real] - got[real]).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(REFERENCES))
def test_generate_is_token_identical(name, assert_same_decoding):
    # Initialised with a spread of 0.5: at 0.02 greedy decoding repeats one token on both sides,
    # which would hide a decoding step attending to an empty cache slot or running a position late.
    ref = REFERENCES[name]("sdpa", init=0.5)
    ours = convert_model(ref)
    ids, mask = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    assert_same_decoding(ref, ours, ids, min_distinct=5, **kwargs)
    # Beam search goes through the cache reordering path as well.
    assert_same_decoding(ref, ours, ids, num_beams=3, atol=1e-4, min_distinct=3, **kwargs)


def test_qwen3_converts_to_the_qwen3_preset_and_decodes_alike_with_and_without_cache(assert_same_decoding):
    ref = REFERENCES["qwen3-gqa"]("sdpa", init=0.5)
    ours = convert_model(ref)
    assert {k: getattr(ours.config, k) for k in PRESETS["qwen3"]} == PRESETS["qwen3"]  # QK-norm on
    ids, mask = left_padded()
    for use_cache in (True, False):
        assert_same_decoding(ref, ours, ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0,
                             eos_token_id=None, use_cache=use_cache, min_distinct=5)


def test_sliding_window_qwen3_is_refused():
    ref = Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, head_dim=8, use_sliding_window=True, sliding_window=8,
                                       max_window_layers=1))  # fmt: skip
    with pytest.raises(ValueError, match=r"sliding-window attention in layers \[1\]"):
        convert_model(ref)


def test_tied_llama_stores_embedding_once(tmp_path):
    ours = convert_model(random_llama(tie=True))
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    untied = convert_model(random_llama(tie=False))
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen3-gqa", "gpt2"])
def test_convert_cli_writes_a_loadable_checkpoint(tmp_path, name):
    ref = REFERENCES[name]("sdpa")
    src, out = tmp_path / "ref", tmp_path / "ours"
    ref.save_pretrained(src)
    assert convert.main(["--model", str(src), "--output_dir", str(out)]) == 0
    assert {"config.json", "model.safetensors", "modeling_scratchformer.py", "configuration_scratchformer.py",
            "generation_config.json"} <= {p.name for p in out.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(loaded, ScratchformerForCausalLM)
    ids = batch()
    with torch.no_grad():
        assert (ref(ids).logits - loaded(ids).logits).abs().max().item() < 1e-5
    # No half-written leftovers beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "ref"]


def test_convert_cli_refuses_bad_input(tmp_path, capsys):
    assert convert.main(["--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err

    mistral = tmp_path / "mistral"
    MistralForCausalLM(MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(mistral)
    assert convert.main(["--model", str(mistral), "--output_dir", str(tmp_path / "o")]) == 2
    assert "'mistral'" in capsys.readouterr().err

    src = tmp_path / "ref"
    random_llama().save_pretrained(src)
    (tmp_path / "taken").mkdir()
    assert convert.main(["--model", str(src), "--output_dir", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not list((tmp_path / "taken").iterdir())


def test_convert_refuses_gpt2_with_exact_gelu():
    ref = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, activation_function="gelu",
                                     bos_token_id=1, eos_token_id=2))
    with pytest.raises(ValueError, match="tanh approximation"):
        convert_model(ref)


def qk_norm_pair(attn: str = "sdpa", init: float = 0.02) -> tuple[ScratchformerForCausalLM, torch.nn.Module]:
    """A llama-preset model with `qk_norm=True` and transformers' Qwen3 holding the same weights: the
    same names (Qwen3's `q_norm`/`k_norm`), so the state dict loads strictly. The norms' gains are
    randomised so that a norm applied in the wrong place (after rotary, on the whole width) shows."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    config = ScratchformerConfig.from_preset("llama", qk_norm=True, initializer_range=init, **sizes)
    ours = ScratchformerForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1 + 0.5 * torch.randn_like(p))
    ref = Qwen3ForCausalLM(Qwen3Config(head_dim=16, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1,
                                       eos_token_id=2, **sizes)).eval()  # fmt: skip
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.set_attn_implementation(attn)
    ref.set_attn_implementation(attn)
    return ours, ref


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_qk_norm_is_qwen3s(attn):
    ours, ref = qk_norm_pair(attn)
    ids = batch()
    with torch.no_grad():
        diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 1e-5, f"qk_norm/{attn}: max abs logit diff from Qwen3ForCausalLM {diff:.2e}"


def test_qk_norm_generates_qwen3s_tokens(assert_same_decoding):
    ours, ref = qk_norm_pair(init=0.5)
    ids, mask = left_padded()
    assert_same_decoding(ref, ours, ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=None,
                         min_distinct=5)
