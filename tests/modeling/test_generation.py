"""The KV cache changes nothing but speed, and `generate` agrees with itself across cache on/off,
seeds, beams and left-padded batches, for every position type."""

import pytest
import torch
from transformers import DynamicCache

from scratchformer.modeling import ScratchformerForCausalLM

POSITIONS = ["sinusoidal", "learned", "rope"]
V = 97


def prompt(L: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (1, L), generator=torch.Generator().manual_seed(seed))


def greedy(model, input_ids, n: int = 10, **kwargs) -> torch.Tensor:
    return model.generate(input_ids, max_new_tokens=n, do_sample=False, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left-padded"])
@pytest.mark.parametrize("position", POSITIONS)
def test_incremental_forward_with_cache_equals_full_forward(tiny_config, position, padded):
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config(position_embedding=position, num_key_value_heads=2)).eval()
    x = torch.randint(3, V, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    if padded:
        mask[1, :5] = 0
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    full = lm(x, attention_mask=mask, position_ids=position_ids).logits

    cache = DynamicCache(config=lm.config)
    pieces = []
    for start, stop in ((0, 8), (8, 11), (11, 12), (12, 13), (13, 14)):  # a prompt, then chunks and single steps
        out = lm(
            x[:, start:stop],
            attention_mask=mask[:, :stop],
            position_ids=position_ids[:, start:stop],
            past_key_values=cache,
            use_cache=True,
        )
        assert out.past_key_values is cache and cache.get_seq_length() == stop
        pieces.append(out.logits)
    incremental = torch.cat(pieces, dim=1)
    real = mask.bool()
    assert (incremental[real] - full[real]).abs().max() < 1e-5


def test_cache_positions_default_from_cache_length(tiny_config):
    """Without position_ids, a cached step continues at the cache's length (learned positions would
    be off by the prompt length otherwise)."""
    torch.manual_seed(0)
    lm = ScratchformerForCausalLM(tiny_config(position_embedding="learned")).eval()
    x = prompt(10, 2)
    full = lm(x).logits
    out = lm(x[:, :7], use_cache=True)
    step = lm(x[:, 7:], past_key_values=out.past_key_values, use_cache=True).logits
    assert (step - full[:, 7:]).abs().max() < 1e-5


@pytest.mark.parametrize("position", POSITIONS)
def test_greedy_is_the_same_with_and_without_cache(lively_lm, position, assert_same_decoding):
    lm = lively_lm(position_embedding=position)
    x = prompt(6, 3)
    with_cache = assert_same_decoding(lm, lm, x, a_kwargs={"use_cache": True}, b_kwargs={"use_cache": False},
                                      max_new_tokens=12, pad_token_id=0)
    assert with_cache.shape == (1, 18)
    # Greedy really is argmax of the full forward.
    logits = lm(with_cache[:, :-1]).logits
    assert torch.equal(logits[0, 5:].argmax(-1), with_cache[0, 6:])


def test_sampling_is_reproducible_with_a_seed(lively_lm):
    lm = lively_lm()
    x = prompt(5, 4)

    def sample(seed):
        torch.manual_seed(seed)
        return lm.generate(x, do_sample=True, max_new_tokens=20, top_k=0, temperature=1.5, pad_token_id=0)

    first, again, other = sample(0), sample(0), sample(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("position", POSITIONS)
def test_beam_search(lively_lm, position, assert_same_decoding):
    lm = lively_lm(position_embedding=position)
    x = prompt(5, 5)
    kwargs = dict(max_new_tokens=8, num_beams=3, pad_token_id=0)
    with_cache = assert_same_decoding(lm, lm, x, a_kwargs={"use_cache": True}, b_kwargs={"use_cache": False},
                                      atol=1e-4, **kwargs)
    assert with_cache.shape == (1, 13)
    assert torch.equal(with_cache[:, :5], x)
    beams = lm.generate(x, num_return_sequences=3, output_scores=True, return_dict_in_generate=True,
                        do_sample=False, **kwargs)
    assert beams.sequences.shape == (3, 13)
    assert torch.equal(beams.sequences[0], with_cache[0])
    assert len({tuple(s.tolist()) for s in beams.sequences}) == 3
    assert beams.sequences_scores[0] >= beams.sequences_scores[1] >= beams.sequences_scores[2]


@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_batch_generates_like_each_prompt_alone(lively_lm, position):
    lm = lively_lm(position_embedding=position)
    long, short = prompt(7, 6)[0], prompt(4, 7)[0]
    # Left padding by hand, pad id 0: generation appends on the right, so real tokens must end there.
    input_ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    input_ids[0], mask[0] = long, 1
    input_ids[1, 3:], mask[1, 3:] = short, 1

    def run(ids, **kwargs):
        return lm.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, output_logits=True,
                           return_dict_in_generate=True, **kwargs)

    batch = run(input_ids, attention_mask=mask)
    for row, alone in ((0, run(long[None])), (1, run(short[None]))):
        assert torch.equal(batch.sequences[row, 7:], alone.sequences[0, -10:])
        for step, (b, a) in enumerate(zip(batch.logits, alone.logits, strict=True)):
            assert (b[row] - a[0]).abs().max() < 1e-4 * max(1.0, a.abs().max().item()), f"row {row}, step {step}"
        assert len(set(alone.sequences[0, -10:].tolist())) >= 4  # a continuation, not one repeated token
    # Control: the same batch without its mask sees the pads, and the short row's logits move.
    unmasked = run(input_ids, attention_mask=torch.ones_like(mask))
    assert (unmasked.logits[0][1] - batch.logits[0][1]).abs().max() > 1e-2


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_a_prompt_past_the_positions_is_a_value_error_naming_it(lively_lm, position):
    lm = lively_lm(position_embedding=position)
    with pytest.raises(ValueError, match="needs positions up to 64.*max_position_embeddings=64.*Truncate it to 64"):
        lm.generate(prompt(65, 8), max_new_tokens=10, do_sample=False, pad_token_id=0)
