"""The model's invariants: the paper's configuration, causality, padding invariance, eager ≡ sdpa,
the Hugging Face output contract, loss scaling and refusing bad input with a ValueError."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchformer.modeling import (
    ScratchformerForCausalLM,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerModel,
)
from scratchformer.modeling import transformer_scratchformer as modeling

POSITIONS = ["sinusoidal", "learned", "rope"]
V = 97


def build(model_class, config, seed: int = 0):
    torch.manual_seed(seed)
    return model_class(config).eval()


def ids(B: int = 2, L: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(seed))


def paper_formula(num_positions: int, d: int) -> torch.Tensor:
    """Section 3.5, written independently of the model: PE(pos, 2i) = sin(pos / 10000^(2i/d)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), in float64."""
    table = torch.empty(num_positions, d, dtype=torch.float64)
    for pos in range(num_positions):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


# ---------------------------------------------------------------------------------------------
# Building blocks against their formulas
# ---------------------------------------------------------------------------------------------


def test_norms_match_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32) * 3 + 1
    ln, rms = modeling.ScratchformerLayerNorm(32, 1e-5), modeling.ScratchformerRMSNorm(32, 1e-6)
    with torch.no_grad():
        for p in (ln.weight, ln.bias, rms.weight):
            p.copy_(torch.randn(32))
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias)
    torch.testing.assert_close(rms(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * rms.weight)


@pytest.mark.parametrize("mlp_type", ["relu", "gelu", "swiglu"])
def test_mlp_matches_its_formula(tiny_config, mlp_type):
    torch.manual_seed(0)
    mlp = modeling.ScratchformerMLP(tiny_config(mlp_type=mlp_type, mlp_bias=True))
    x = torch.randn(2, 3, 32)
    up = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    if mlp_type == "swiglu":
        gate = x @ mlp.gate_proj.weight.T + mlp.gate_proj.bias
        h = gate * torch.sigmoid(gate) * up
    elif mlp_type == "relu":
        h = up.clamp(min=0)
    else:
        h = 0.5 * up * (1 + torch.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up**3)))
    torch.testing.assert_close(mlp(x), h @ mlp.down_proj.weight.T + mlp.down_proj.bias)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_wires_residuals_and_norms_as_documented(tiny_config, norm_position):
    config = tiny_config(position_embedding="learned", norm_type="layernorm", norm_position=norm_position)
    torch.manual_seed(0)
    block = modeling.ScratchformerBlock(config, 0).eval()
    with torch.no_grad():  # norms start as the identity map's cousin (weight 1, bias 0): make them distinct
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 32)
    attn = lambda h: block.self_attn(h, None)[0]  # noqa: E731
    ln1, ln2, mlp = block.input_layernorm, block.post_attention_layernorm, block.mlp
    if norm_position == "post":  # the paper: x = norm(x + sublayer(x))
        h = ln1(x + attn(x))
        expected = ln2(h + mlp(h))
    else:  # GPT-2 / Llama: x = x + sublayer(norm(x))
        h = x + attn(ln1(x))
        expected = h + mlp(ln2(h))
    torch.testing.assert_close(block(x, None)[0], expected)


def test_rotary_makes_scores_depend_on_offset_only(tiny_config):
    """q·k after rotation at positions (m, n) equals that at (m + s, n + s)."""
    config = tiny_config()
    rotary = modeling.ScratchformerRotaryEmbedding(config)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cos_q, sin_q = rotary(q, torch.tensor([[m]]))
        cos_k, sin_k = rotary(k, torch.tensor([[n]]))
        q_rot, _ = modeling.apply_rotary(q, q, cos_q, sin_q)
        _, k_rot = modeling.apply_rotary(k, k, cos_k, sin_k)
        return (q_rot * k_rot).sum()

    torch.testing.assert_close(score(7, 3), score(27, 23))
    assert not torch.allclose(score(7, 3), score(7, 5))


# ---------------------------------------------------------------------------------------------
# The paper's configuration
# ---------------------------------------------------------------------------------------------


def test_sinusoidal_table_is_the_papers_formula(tiny_config):
    model = build(ScratchformerModel, tiny_config(preset="paper"))
    table = model.embed_positions.table
    assert table.shape == (64, 32)
    torch.testing.assert_close(table.double(), paper_formula(64, 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [True, False])
def test_paper_scales_embeddings_by_sqrt_d_model(tiny_config, scale):
    model = build(ScratchformerModel, tiny_config(preset="paper", scale_embeddings=scale))
    x = ids(1, 10)
    first = model(x, output_hidden_states=True).hidden_states[0]  # the input to the first block
    factor = math.sqrt(32) if scale else 1.0
    expected = model.embed_tokens.weight[x] * factor + paper_formula(10, 32).float()
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)


def test_paper_is_post_norm(tiny_config):
    model = build(ScratchformerModel, tiny_config(preset="paper"))
    assert isinstance(model.norm, nn.Identity)
    hidden = model(ids(), output_hidden_states=True).hidden_states
    # Post-norm: every block ends in a LayerNorm (weight 1, bias 0 at init), so each block's output
    # is normalised per token; the input embedding (scaled by sqrt(32), plus sinusoids) is not.
    for h in hidden[1:]:
        torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(h.shape[:2]), atol=1e-3, rtol=0)
    assert not torch.allclose(hidden[0].var(-1, unbiased=False), torch.ones(hidden[0].shape[:2]), atol=0.1)


def test_pre_norm_has_a_final_norm(tiny_config):
    model = build(ScratchformerModel, tiny_config(preset="gpt2"))
    assert isinstance(model.norm, modeling.ScratchformerLayerNorm)
    hidden = model(ids(), output_hidden_states=True).hidden_states
    # The residual stream between pre-norm blocks is not normalised.
    assert not torch.allclose(hidden[1].var(-1, unbiased=False), torch.ones(hidden[1].shape[:2]), atol=0.1)


def test_paper_model_overfits_a_tiny_batch(tiny_config):
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(tiny_config(preset="paper")).train()  # dropout 0.1 stays on
    batch = torch.randint(3, V, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 4.0  # ~ln(97) at init
    assert losses[-1] < 0.3 * losses[0], losses[::5]


# ---------------------------------------------------------------------------------------------
# Causality
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_never_sees_the_future(tiny_config, position, attn):
    model = build(ScratchformerForCausalLM, tiny_config(position_embedding=position))
    model.set_attn_implementation(attn)
    x = ids(1, 12)
    base = model(x).logits
    for t in (0, 4, 10):
        changed = x.clone()
        changed[0, t + 1 :] = torch.randint(3, V, (11 - t,), generator=torch.Generator().manual_seed(t))
        assert not torch.equal(changed, x)
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(logits[:, t + 1 :], base[:, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position", POSITIONS)
def test_encoder_sees_both_sides(tiny_config, position, attn):
    model = build(ScratchformerForMaskedLM, tiny_config(position_embedding=position, is_causal=False))
    model.set_attn_implementation(attn)
    x = ids(1, 12)
    changed = x.clone()
    changed[0, 8:] = (x[0, 8:] - 3 + 1) % (V - 3) + 3
    delta = (model(changed).logits - model(x).logits)[0, :8].abs().amax(-1)
    assert (delta > 1e-5).all(), delta  # every earlier position moved


# ---------------------------------------------------------------------------------------------
# Padding invariance
# ---------------------------------------------------------------------------------------------


def padded_batch(rows: list[torch.Tensor], side: str, pad_id: int = 0):
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        input_ids[i, span], mask[i, span] = r, 1
    # What generate does: positions count real tokens only, pads get a harmless 0.
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return input_ids, mask, position_ids


@pytest.mark.parametrize("is_causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position", POSITIONS)
def test_padding_invariance(tiny_config, position, side, is_causal):
    model = build(ScratchformerModel, tiny_config(position_embedding=position, is_causal=is_causal))
    rows = [ids(1, 9, seed=2)[0], ids(1, 5, seed=3)[0], ids(1, 2, seed=4)[0]]
    input_ids, mask, position_ids = padded_batch(rows, side)
    out = model(input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    for i, row in enumerate(rows):
        alone = model(row[None]).last_hidden_state[0]
        real = out[i][mask[i].bool()]
        torch.testing.assert_close(real, alone, atol=1e-5, rtol=1e-5)
    if side == "left" and position != "rope":
        # Control: without the shifted positions, absolute encodings see the pads' offset.
        wrong = model(input_ids, attention_mask=mask).last_hidden_state[1][mask[1].bool()]
        assert not torch.allclose(wrong, model(rows[1][None]).last_hidden_state[0], atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_classification_pools_the_last_real_token(tiny_config, side):
    model = build(ScratchformerForSequenceClassification, tiny_config(num_labels=3))
    rows = [ids(1, 7, seed=5)[0], ids(1, 4, seed=6)[0]]
    input_ids, mask, position_ids = padded_batch(rows, side)
    pooled = model(input_ids, attention_mask=mask, position_ids=position_ids).logits
    assert pooled.shape == (2, 3)
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        torch.testing.assert_close(pooled[i], alone, atol=1e-5, rtol=1e-5)
    # Without a mask it falls back to the last non-pad token (pad id 0).
    if side == "right":
        torch.testing.assert_close(model(input_ids).logits[1], model(rows[1][None]).logits[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# eager ≡ sdpa
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def eager_calls(monkeypatch):
    """Counts calls of the hand-written eager attention, so a test knows which path ran."""
    calls = []
    original = modeling.eager_attention_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling, "eager_attention_forward", spy)
    return calls


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "padded"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("is_causal", [True, False], ids=["decoder", "encoder"])
def test_eager_equals_sdpa(tiny_config, eager_calls, is_causal, kv_heads, padded):
    config = tiny_config(is_causal=is_causal, num_key_value_heads=kv_heads, position_embedding="rope")
    model = build(ScratchformerModel, config)
    x = ids(3, 11)
    mask = torch.ones_like(x)
    if padded:
        mask[0, :4] = 0  # left padding
        mask[1, 7:] = 0  # right padding
    kwargs = dict(attention_mask=mask) if padded else {}

    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(x, **kwargs).last_hidden_state
    assert not eager_calls
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(x, **kwargs).last_hidden_state
    assert len(eager_calls) == config.num_hidden_layers

    real = mask.bool()  # padded query rows hold no meaningful value
    assert (sdpa[real] - eager[real]).abs().max() < 1e-5


def test_attn_implementation_via_from_pretrained(tmp_path, tiny_config, eager_calls):
    from transformers import AutoModelForCausalLM

    build(ScratchformerForCausalLM, tiny_config()).save_pretrained(tmp_path)
    x = ids()
    logits = {}
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn).eval()
        assert model.config._attn_implementation == attn
        logits[attn] = model(x).logits
    assert len(eager_calls) == 2  # only the eager model's two layers
    assert (logits["sdpa"] - logits["eager"]).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# The output contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [True, False], ids=["decoder", "encoder"])
def test_output_attentions_under_sdpa(tiny_config, is_causal):
    model = build(ScratchformerModel, tiny_config(is_causal=is_causal, num_key_value_heads=2))
    assert model.config._attn_implementation == "sdpa"
    x = ids(2, 8)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    out = model(x, attention_mask=mask, output_attentions=True)
    plain = model(x, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (out.last_hidden_state[real] - plain[real]).abs().max() < 1e-5
    assert len(out.attentions) == 2
    model.set_attn_implementation("eager")
    eager_maps = model(x, attention_mask=mask, output_attentions=True).attentions
    for probs, eager_probs in zip(out.attentions, eager_maps):
        assert probs.shape == (2, 4, 8, 8)
        torch.testing.assert_close(probs, eager_probs)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 8))
        assert (probs[1, :, 3:, :3] == 0).all()  # real queries never look at the pads
        # Above the diagonal, for real queries (a pad's fully masked row is uniform, and unused).
        above = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1) & real[:, None, :, None]
        above = above.expand(2, 4, 8, 8)
        if is_causal:
            assert (probs[above] == 0).all()
        else:
            assert (probs[above] > 0).all()


def test_output_hidden_states(tiny_config):
    model = build(ScratchformerModel, tiny_config(position_embedding="learned"))
    x = ids()
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(
        out.hidden_states[0], model.embed_tokens(x) + model.embed_positions.weight[: x.shape[1]], atol=0, rtol=0
    )
    assert model(x).hidden_states is None and model(x).attentions is None


def test_an_explicit_false_wins_over_the_configs_output_flags(tiny_config):
    model = build(ScratchformerModel, tiny_config(output_hidden_states=True, output_attentions=True))
    x = ids()
    by_config = model(x)
    assert len(by_config.hidden_states) == 3 and len(by_config.attentions) == 2
    refused = model(x, output_hidden_states=False, output_attentions=False)
    assert refused.hidden_states is None and refused.attentions is None


def test_return_dict_false_returns_tuples(tiny_config):
    lm = build(ScratchformerForCausalLM, tiny_config())
    x = ids()
    as_dict = lm(x, labels=x)
    as_tuple = lm(x, labels=x, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss, atol=0, rtol=0)
    torch.testing.assert_close(as_tuple[1], as_dict.logits, atol=0, rtol=0)
    base_tuple = lm.model(x, return_dict=False, use_cache=False)
    assert isinstance(base_tuple, tuple)
    torch.testing.assert_close(base_tuple[0], lm.model(x).last_hidden_state, atol=0, rtol=0)


def test_logits_to_keep(tiny_config):
    lm = build(ScratchformerForCausalLM, tiny_config())
    x = ids()
    full = lm(x).logits
    last = lm(x, logits_to_keep=1).logits
    assert full.shape == (2, 9, V) and last.shape == (2, 1, V)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(lm(x, logits_to_keep=3).logits, full[:, -3:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", ["paper", "llama"])
def test_inputs_embeds_equals_input_ids(tiny_config, preset):
    lm = build(ScratchformerForCausalLM, tiny_config(preset=preset))
    x = ids()
    embeds = lm.get_input_embeddings()(x)
    torch.testing.assert_close(lm(inputs_embeds=embeds).logits, lm(x).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        lm(x, inputs_embeds=embeds)


def test_resize_token_embeddings_grows_vocab_and_keeps_the_tie(tiny_config, tmp_path):
    lm = build(ScratchformerForCausalLM, tiny_config())
    old = lm.model.embed_tokens.weight.detach().clone()
    lm.resize_token_embeddings(120)
    assert lm.config.vocab_size == 120
    assert lm.model.embed_tokens.weight.shape == lm.lm_head.weight.shape == (120, 32)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    torch.testing.assert_close(lm.model.embed_tokens.weight[:V], old, atol=0, rtol=0)
    x = torch.tensor([[5, 110, 119]])
    assert lm(x).logits.shape == (1, 3, 120)
    lm.save_pretrained(tmp_path)
    reloaded = ScratchformerForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert torch.equal(reloaded(x).logits, lm(x).logits)


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_config):
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config()).train()  # dropout 0 by default
    x = ids()

    def loss_and_grads():
        lm.zero_grad()
        loss = lm(x, labels=x).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}

    loss, grads = loss_and_grads()
    lm.gradient_checkpointing_enable()
    assert lm.is_gradient_checkpointing
    checkpointed = []
    for layer in lm.model.layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: checkpointed.append(1) or _f(*a, **k)
    loss_ckpt, grads_ckpt = loss_and_grads()
    assert len(checkpointed) == 2  # each block really went through checkpointing
    torch.testing.assert_close(loss_ckpt, loss, atol=0, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-7, rtol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# Loss and its scaling under gradient accumulation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["causal", "masked", "token"])
def test_num_items_in_batch_reaches_the_loss(tiny_config, head):
    x = ids(2, 8)
    labels = x.clone()
    labels[0, :3] = -100
    if head == "causal":
        model = build(ScratchformerForCausalLM, tiny_config())
        # Position t predicts token t+1.
        logits_of = lambda out: out.logits[:, :-1]  # noqa: E731
        target = labels[:, 1:]
    elif head == "masked":
        model = build(ScratchformerForMaskedLM, tiny_config(is_causal=False))
        logits_of, target = (lambda out: out.logits), labels
    else:
        model = build(ScratchformerForTokenClassification, tiny_config(num_labels=5))
        labels = labels % 5
        labels[0, :3] = -100
        logits_of, target = (lambda out: out.logits), labels
    out = model(x, labels=labels)
    flat_logits = logits_of(out).reshape(-1, out.logits.shape[-1])
    total = F.cross_entropy(flat_logits, target.reshape(-1), ignore_index=-100, reduction="sum")
    n_real = (target != -100).sum()
    torch.testing.assert_close(out.loss, total / n_real)
    # Under gradient accumulation Trainer passes the token count of the whole accumulated batch.
    scaled = model(x, labels=labels, num_items_in_batch=torch.tensor(37)).loss
    torch.testing.assert_close(scaled, total / 37)


def test_sequence_classification_loss(tiny_config):
    model = build(ScratchformerForSequenceClassification, tiny_config(num_labels=3))
    x = ids(2, 6)
    labels = torch.tensor([2, 0])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


# ---------------------------------------------------------------------------------------------
# Bad input is a ValueError that says what to do, never an IndexError or RuntimeError
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [V, V + 50, -1])
@pytest.mark.parametrize("position", POSITIONS)
def test_out_of_vocabulary_ids(tiny_config, position, bad_id):
    lm = build(ScratchformerForCausalLM, tiny_config(position_embedding=position))
    with pytest.raises(ValueError, match="vocabulary"):
        lm(torch.tensor([[5, bad_id, 6]]))


def test_non_integer_ids(tiny_config):
    lm = build(ScratchformerForCausalLM, tiny_config())
    with pytest.raises(ValueError, match="integer"):
        lm(ids().float())


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_too_long_for_absolute_positions(tiny_config, position):
    lm = build(ScratchformerForCausalLM, tiny_config(position_embedding=position))
    assert lm(ids(1, 64)).logits.shape == (1, 64, V)  # exactly max_position_embeddings is fine
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm(ids(1, 65))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm(ids(1, 4), position_ids=torch.tensor([[0, 1, 2, 64]]))


def test_rope_runs_past_max_position_embeddings(tiny_config):
    lm = build(ScratchformerForCausalLM, tiny_config(position_embedding="rope"))
    assert torch.isfinite(lm(ids(1, 80)).logits).all()


@pytest.mark.parametrize("shape", [(2, 8), (3, 9), (9,), (1, 9), (2, 10)])
def test_attention_mask_of_the_wrong_shape(tiny_config, shape):
    lm = build(ScratchformerForCausalLM, tiny_config())
    with pytest.raises(ValueError, match="attention_mask"):
        lm(ids(2, 9), attention_mask=torch.ones(shape, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_empty_batch(tiny_config, shape):
    lm = build(ScratchformerForCausalLM, tiny_config())
    with pytest.raises(ValueError, match="non-empty"):
        lm(torch.zeros(shape, dtype=torch.long))


def test_labels_of_the_wrong_shape(tiny_config):
    x = ids(2, 9)
    with pytest.raises(ValueError, match="labels"):
        build(ScratchformerForCausalLM, tiny_config())(x, labels=x[:, :5])
    with pytest.raises(ValueError, match="labels"):
        build(ScratchformerForCausalLM, tiny_config())(x, labels=x[:1])
    with pytest.raises(ValueError, match="labels"):
        build(ScratchformerForMaskedLM, tiny_config(is_causal=False))(x, labels=x[:, 1:])
    with pytest.raises(ValueError, match="labels"):
        build(ScratchformerForTokenClassification, tiny_config(num_labels=3))(x, labels=torch.zeros(2, 8).long())
    with pytest.raises(ValueError, match="labels"):
        build(ScratchformerForSequenceClassification, tiny_config(num_labels=3))(x, labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bad", [97, -1, -7])
def test_causal_lm_labels_outside_the_vocabulary(tiny_config, train, bad):
    lm = build(ScratchformerForCausalLM, tiny_config()).train(train)
    x = ids(2, 9)
    labels = x.clone()
    labels[1, 3] = bad
    with pytest.raises(ValueError, match=f"labels contain {bad}, outside the vocabulary"):
        lm(x, labels=labels)
    labels[1, 3] = -100  # ignored positions are fine
    assert torch.isfinite(lm(x, labels=labels).loss)


def test_masked_lm_refuses_a_causal_config(tiny_config):
    from transformers import AutoModelForMaskedLM

    with pytest.raises(ValueError, match="is_causal"):
        ScratchformerForMaskedLM(tiny_config(is_causal=True))
    with pytest.raises(ValueError, match="is_causal"):
        AutoModelForMaskedLM.from_config(tiny_config())
