"""Property-based: random configs, shapes, ids, masks and strings drive the model and tokenizer.
Whatever comes in, the result is either correct in shape or one of our documented errors (a
ValueError that says what to do), never an IndexError, RuntimeError or other internal error."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization.bpe import train_bpe

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw) -> ScratchformerConfig:
    """Any valid config, small enough to run in milliseconds."""
    heads_kv = draw(st.sampled_from([1, 2]))
    heads = heads_kv * draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return ScratchformerConfig(
        vocab_size=draw(st.integers(5, 50)),
        hidden_size=heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 2)),
        num_attention_heads=heads,
        num_key_value_heads=heads_kv,
        max_position_embeddings=draw(st.integers(4, 16)),
        position_embedding=draw(st.sampled_from(["sinusoidal", "learned", "rope"])),
        norm_type=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        norm_position=draw(st.sampled_from(["pre", "post"])),
        mlp_type=draw(st.sampled_from(["gelu", "relu", "swiglu"])),
        is_causal=draw(st.booleans()),
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        mask_token_id=None,
    )


@SETTINGS
@given(config=configs(), data=st.data())
def test_model_forward_is_right_or_refuses_with_a_value_error(config, data):
    model = ScratchformerForCausalLM(config).eval() if config.is_causal else None
    if model is None:
        from scratchformer.modeling import ScratchformerModel

        model = ScratchformerModel(config).eval()
    V, P = config.vocab_size, config.max_position_embeddings
    B = data.draw(st.integers(0, 3), label="batch")
    L = data.draw(st.integers(0, P + 4), label="length")
    ids = data.draw(st.lists(st.integers(-3, V + 3), min_size=B * L, max_size=B * L), label="ids")
    ids_BL = torch.tensor(ids, dtype=torch.long).reshape(B, L)
    mask_shape = data.draw(st.sampled_from([None, (B, L), (B, L + 1), (max(B, 1), 1), (L,)]), label="mask shape")
    kwargs = {}
    if mask_shape is not None:
        mask = torch.ones(mask_shape, dtype=torch.long)
        if mask.numel() and mask.dim() == 2 and mask.shape[1] > 1:
            mask[:, 0] = data.draw(st.integers(0, 1), label="first token masked")
        kwargs["attention_mask"] = mask
    if config.is_causal and data.draw(st.booleans(), label="labels"):
        kwargs["labels"] = ids_BL[:, : data.draw(st.integers(0, L), label="labels length")].clamp(0, V - 1)

    valid = (
        B > 0
        and L > 0
        and all(0 <= i < V for i in ids)
        and (config.position_embedding == "rope" or L <= P)
        and mask_shape in (None, (B, L))
        and ("labels" not in kwargs or kwargs["labels"].shape == ids_BL.shape)
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids_BL, **kwargs)
    except ValueError as e:
        assert not valid, f"a valid input was refused: {e}"
        assert len(str(e)) > 20  # says what is wrong, not just a name
        return
    assert valid, "an invalid input was accepted"
    if config.is_causal:
        assert out.logits.shape == (B, L, V)
        if "labels" in kwargs and L > 1:
            assert torch.isfinite(out.loss)
    else:
        assert out.last_hidden_state.shape == (B, L, config.hidden_size)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the cat sat on the mat", "ünïcödé and emoji 🐈", "code: def f(x): return x**2", "数字 123"] * 10
    return train_bpe(texts, vocab_size=300, show_progress=False, model_max_length=64)


@pytest.fixture(scope="module")
def lm(tokenizer):
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    return ScratchformerForCausalLM(config).eval()


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_string_round_trips_and_runs_through_the_model(tokenizer, lm, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text  # byte-level BPE: nothing is lost, nothing is unknown
    assert all(0 <= i < len(tokenizer) for i in ids)
    assume(ids)
    ids_BL = torch.tensor([ids[:64]])
    with torch.no_grad():
        logits = lm(ids_BL).logits
    assert logits.shape == (1, ids_BL.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


@SETTINGS
@given(text=st.text(max_size=300))
def test_truncated_batches_of_any_strings_fit_the_model(tokenizer, lm, text):
    batch = tokenizer([text, text[: len(text) // 2]], truncation=True, max_length=64, padding=True, return_tensors="pt")
    assume(batch.input_ids.shape[1] > 0)
    with torch.no_grad():
        out = lm(**batch)
    assert out.logits.shape[:2] == batch.input_ids.shape
