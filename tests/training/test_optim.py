"""The optimizers and schedules of `scratchformer pretrain`: which parameters Muon moves, what one
--learning_rate means for both of Muon and AdamW, a state that round-trips, the WSD schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.training.library.optim import MuonWithAdamW, build_optimizer, hidden_matrices, lr_at


def tiny(preset: str = "llama", hidden: int = 32, **overrides) -> ScratchformerForCausalLM:
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset(preset, vocab_size=300, num_hidden_layers=2, hidden_size=hidden,
                                             num_attention_heads=4, max_position_embeddings=32, **overrides)
    return ScratchformerForCausalLM(config)


@pytest.mark.parametrize("query_key", ["adamw", "muon"])
@pytest.mark.parametrize("preset", ["llama", "gpt2", "paper"])
def test_muon_moves_the_linear_layers_inside_the_blocks_and_adamw_the_rest(preset, query_key):
    model = tiny(preset)
    every = set(hidden_matrices(model))
    expected = {n for n, p in model.named_parameters()
                if ".layers." in n and n.endswith("proj.weight") and p.ndim == 2}  # fmt: skip
    assert every == expected and len(every) == 2 * (7 if preset == "llama" else 6)
    # By default the query and key projections go to AdamW (their norms set the logits' scale).
    query_key_names = {n for n in every if n.endswith(("q_proj.weight", "k_proj.weight"))}
    assert len(query_key_names) == 4
    hidden = every - query_key_names if query_key == "adamw" else every
    assert set(hidden_matrices(model, skip=("q_proj", "k_proj") if query_key == "adamw" else ())) == hidden
    opt = MuonWithAdamW(model, lr=1e-3, weight_decay=0.1, query_key=query_key)
    muon = [p for g in opt.param_groups if g["optimizer"] == "muon" for p in g["params"]]
    adamw = [p for g in opt.param_groups if g["optimizer"] == "adamw" for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon} == hidden
    # Every other parameter once: the (tied) embedding, learned positions, norms, biases.
    assert sorted(names[id(p)] for p in adamw) == sorted(set(names.values()) - hidden)
    assert "model.embed_tokens.weight" in {names[id(p)] for p in adamw}


def test_an_untied_lm_head_goes_to_adamw():
    model = tiny(tie_word_embeddings=False)
    assert "lm_head.weight" not in hidden_matrices(model)
    opt = MuonWithAdamW(model, lr=1e-3, weight_decay=0.1)
    adamw = {id(p) for g in opt.param_groups if g["optimizer"] == "adamw" for p in g["params"]}
    assert id(model.lm_head.weight) in adamw


def _update_rms(optimizer_name: str, hidden: int) -> dict[str, float]:
    """RMS of the first update of each hidden matrix, in units of the learning rate (no decay)."""
    model = tiny(hidden=hidden)
    opt = build_optimizer(model, optimizer_name, lr=1e-3, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 16 x 32 tokens: a gradient of full rank (a smaller batch's has fewer singular values to orthogonalise)
    ids = torch.randint(0, 300, (16, 32), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return {n: ((p.detach() - before[n]).pow(2).mean().sqrt() / 1e-3).item()
            for n, p in model.named_parameters() if n in hidden_matrices(model)}  # fmt: skip


QUERY_KEY_SUFFIXES = ("q_proj.weight", "k_proj.weight")


def test_one_learning_rate_means_the_same_step_size_for_muon_as_for_adamw():
    # Moonshot's convention: a Muon update is scaled to RMS 0.2 x lr whatever the matrix's shape
    # (width 128: square 128x128 and rectangular 128x352 / 352x128 MLP matrices; 0.17-0.18 measured,
    # five Newton-Schulz steps leave singular values a little under 1). Keller Jordan's original
    # scaling would give about 1/sqrt(max(rows, cols)) x lr here: 0.05-0.09.
    rms = _update_rms("muon", hidden=128)
    muon = {n: r for n, r in rms.items() if not n.endswith(QUERY_KEY_SUFFIXES)}
    assert len(muon) == 2 * 5 and all(0.14 < r < 0.3 for r in muon.values()), muon
    # The query and key projections are AdamW's: a full lr step, whose growth sharpens attention.
    query_key = {n: r for n, r in rms.items() if n.endswith(QUERY_KEY_SUFFIXES)}
    assert len(query_key) == 4 and all(0.9 < r <= 1.0 + 1e-3 for r in query_key.values()), query_key
    # AdamW's first step moves every weight by lr (its update is grad / |grad|): same order.
    adam = _update_rms("adamw", hidden=128)
    assert all(0.9 < r <= 1.0 + 1e-3 for r in adam.values()), adam


def test_the_combined_optimizer_state_round_trips_through_state_dict():
    model = tiny("gpt2")
    opt = MuonWithAdamW(model, lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))

    def step(m, o):
        m(input_ids=ids, labels=ids).loss.backward()
        o.step()
        o.zero_grad()

    for _ in range(2):
        step(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    assert len(saved["param_groups"]) == 3 and len(saved["state"]) == len(list(model.parameters()))
    twin = copy.deepcopy(model)
    twin_opt = MuonWithAdamW(twin, lr=1e-3, weight_decay=0.1)
    twin_opt.load_state_dict(saved)
    # After loading, the inner optimizers use the loaded state (not the fresh one they were built with).
    assert twin_opt.muon.state is twin_opt.state and twin_opt.adamw.state is twin_opt.state
    step(model, opt)
    step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_step_returns_the_closures_loss_as_every_torch_optimizer_does():
    model = tiny("llama")
    opt = MuonWithAdamW(model, lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))

    def closure():
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    before = [p.clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() == pytest.approx(math.log(300), rel=0.1)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and it stepped on its grads
    assert opt.step() is None


def test_an_unknown_optimizer_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="adamw, muon"):
        build_optimizer(tiny(), "sgd", lr=1e-3, weight_decay=0.0)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert all(lr_at(s, **kw) == 1.0 for s in range(10, 89))  # stable until the last 22 steps
    decay = [lr_at(s, **kw) for s in range(88, 111)]
    assert decay[0] == pytest.approx(1.0) and decay[-1] == 0.0
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert steps == pytest.approx([1 / 22] * 22)  # a straight line to zero
    assert lr_at(200, **kw) == 0.0
    # A floor, and a decay longer than what is left after warmup starts right after warmup.
    assert lr_at(109, **{**kw, "min_lr": 0.1}) == pytest.approx(0.1 + 0.9 / 22)
    assert lr_at(10, **{**kw, "decay_fraction": 1.0}) == pytest.approx(1.0)
    assert lr_at(60, **{**kw, "decay_fraction": 1.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cosine, wsd"):
        lr_at(0, **{**kw, "schedule": "linear"})
