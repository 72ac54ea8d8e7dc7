"""Generation ends cleanly where the positions end. Learned and sinusoidal positions are a table of
max_position_embeddings rows: generate(), a pipeline with its defaults (256 new tokens) and
continuous batching stop where it ends, with a warning giving the numbers, instead of failing half way
through a reply. Rotary positions go on, with a warning that the model runs past its context."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig, pipeline

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe

V = 97  # conftest's TINY vocabulary; max_position_embeddings 64
LOGGER = "scratchformer.modeling.modeling_scratchformer"


def prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V, (1, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    return model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("preset", ["gpt2", "paper"])
def test_generate_stops_where_the_position_table_ends_with_the_numbers(lively_lm, preset, caplog):
    model = lively_lm(preset, num_key_value_heads=4)
    ids = prompt(50)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = greedy(model, ids, 40)  # 50 + 40 would need positions up to 89
    assert out.shape == (1, 64)
    # The same tokens as asking for exactly what fits: stopping early changes nothing before it.
    assert torch.equal(out, greedy(model, ids, 14))
    (message,) = warnings_of(caplog)[:1]
    kind = {"gpt2": "learned", "paper": "sinusoidal"}[preset]
    assert f"stopped at 64 tokens (a 50-token prompt and 14 new): this model's {kind} positions end there" in message
    assert "(max_position_embeddings=64)" in message and "at most 14 new tokens (max_new_tokens)" in message


def test_a_generation_that_fits_says_nothing(lively_lm, caplog):
    model = lively_lm("gpt2", num_key_value_heads=4)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert greedy(model, prompt(10), 20).shape == (1, 30)
    assert warnings_of(caplog) == []


def test_a_left_padded_batch_stops_at_the_table_too(lively_lm):
    model = lively_lm("gpt2", num_key_value_heads=4)
    ids = torch.cat([prompt(60, 1), torch.cat([torch.zeros(1, 20, dtype=torch.long), prompt(40, 2)], 1)])
    mask = (ids != 0).long()
    mask[0] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 64)


def test_a_rotary_model_goes_on_and_says_it_runs_past_its_context(lively_lm, caplog):
    model = lively_lm("llama", num_key_value_heads=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = greedy(model, prompt(50), 30)
    assert out.shape == (1, 80)
    (message,) = warnings_of(caplog)
    assert "past 64 tokens, the context this rotary model was trained for (max_position_embeddings=64)" in message
    assert "at most 14 new tokens (max_new_tokens)" in message


def test_the_encoder_decoder_stops_where_the_decoders_table_ends(lively_seq2seq, caplog):
    model = lively_seq2seq()  # max_position_embeddings 64
    source = torch.randint(3, 31, (1, 10), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = model.generate(source, max_new_tokens=100, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 64)
    assert "this model's sinusoidal positions end there" in warnings_of(caplog)[0]


def batching_config() -> ContinuousBatchingConfig:
    return ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64)


def test_continuous_batching_ends_each_request_where_generate_does(lively_lm, caplog):
    model = lively_lm("gpt2", num_key_value_heads=4)
    prompts = [prompt(58, 3)[0].tolist(), prompt(20, 4)[0].tolist(), prompt(64, 5)[0].tolist()]
    gen = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=-1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        results = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=batching_config())
    for p, output in zip(prompts, results.values(), strict=True):
        assert output.error is None, output.error
        alone = greedy(model, torch.tensor([p]), 30)[0, len(p):].tolist()
        assert output.generated_tokens == alone
    assert [len(r.generated_tokens) for r in results.values()] == [6, 30, 1]  # a full prompt still gets its token
    assert any("positions end there" in m for m in warnings_of(caplog))


def test_continuous_batching_refuses_a_prompt_past_the_table_as_it_arrives(lively_lm):
    """The batcher's forward would fail for every request in the batch: the prompt is refused alone."""
    model = lively_lm("gpt2", num_key_value_heads=4)
    gen = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=-1)
    with model.continuous_batching_context_manager(generation_config=gen,
                                                   continuous_batching_config=batching_config()) as manager:
        with pytest.raises(ValueError, match="The prompt has 70 tokens.*learned positions end at 64"):
            manager.add_request(prompt(70)[0].tolist())
        request = manager.add_request(prompt(10)[0].tolist())  # the batcher goes on serving the others
        output = manager.get_result(request_id=request, timeout=60)
    assert output is not None and output.error is None and len(output.generated_tokens) == 5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint of each preset, saved as users save one (save_pretrained, its tokenizer beside it)."""
    tmp = tmp_path_factory.mktemp("positions")
    tokenizer = train_bpe(["the cat sat on the mat", "the dog ate the bone"] * 20, vocab_size=280,
                          show_progress=False, model_max_length=32)  # fmt: skip
    out = {}
    for preset in ("llama", "gpt2", "paper"):
        config = ScratchformerConfig.from_preset(preset, vocab_size=len(tokenizer), hidden_size=32,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 max_position_embeddings=32, initializer_range=0.2,
                                                 eos_token_id=None)  # fmt: skip
        torch.manual_seed(0)
        ScratchformerForCausalLM(config).save_pretrained(tmp / preset)
        tokenizer.save_pretrained(tmp / preset)
        out[preset] = str(tmp / preset)
    return out


@pytest.mark.parametrize("preset", ["llama", "gpt2", "paper"])
def test_the_text_generation_pipeline_with_its_defaults_returns_text(checkpoints, preset):
    """Its default is 256 new tokens; the model has 32 positions and never ends a text (no eos)."""
    generator = pipeline("text-generation", model=checkpoints[preset])
    torch.manual_seed(0)
    (result,) = generator("the cat")
    assert result["generated_text"].startswith("the cat") and len(result["generated_text"]) > len("the cat")
    (chat,) = generator([{"role": "user", "content": "the dog?"}])
    assert chat["generated_text"][-1]["role"] == "assistant"


# -- the two guards one call at a time: the boundaries, and what the batcher is handed ---------------


def test_a_rotary_model_warns_from_the_first_token_past_its_context_not_at_it(tiny_config, caplog):
    from scratchformer.modeling.modeling_scratchformer import PositionLimit

    guard = PositionLimit(tiny_config(preset="llama"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not guard(prompt(64), None).any()  # the 64th position is the context's last: silence
        assert warnings_of(caplog) == []
        assert not guard(prompt(65), None).any()  # past it: goes on, and says so once
        assert not guard(prompt(66), None).any()
    assert len(warnings_of(caplog)) == 1


class _Manager:
    """What `requests_within_positions` wraps: a continuous batching manager's add_request."""

    def __init__(self, max_new_tokens: int | None):
        self.generation_config = GenerationConfig(max_new_tokens=max_new_tokens)
        self.asked = []

    def add_request(self, input_ids, request_id=None, max_new_tokens=None):
        self.asked.append((len(input_ids), max_new_tokens))
        return request_id


def test_continuous_batching_requests_are_bounded_by_the_table_at_its_exact_edge(tiny_config, caplog):
    from scratchformer.modeling.modeling_scratchformer import requests_within_positions

    config = tiny_config(preset="gpt2")  # learned positions, 64 rows
    manager = requests_within_positions(_Manager(max_new_tokens=None), config)
    assert requests_within_positions(manager, config) is manager  # handed back again: wrapped once
    wrapped = manager.add_request
    assert requests_within_positions(manager, config).add_request is wrapped
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        manager.add_request(list(range(13)), "fits", max_new_tokens=51)  # 13 + 51 = 64: exactly the table
        assert warnings_of(caplog) == []
        manager.add_request(list(range(11)), "over", max_new_tokens=54)  # 11 + 54 = 65: one too many
        manager.add_request(list(range(17)), "unbounded")  # the batcher's default: no limit
    assert manager.asked == [(13, 51), (11, 53), (17, 47)]
    assert warnings_of(caplog)[0].startswith(
        "Generation stopped at 64 tokens (a 11-token prompt and 53 new): this model's learned positions end there "
        "(max_position_embeddings=64). Ask for at most 53 new tokens"
    )
    with pytest.raises(ValueError) as refused:
        manager.add_request(list(range(65)), "too long")
    assert str(refused.value) == (
        "The prompt has 65 tokens, but this model's learned positions end at 64 (max_position_embeddings): shorten "
        "it to at most 63 tokens, leaving room for the reply."
    )


def test_continuous_batching_warns_a_rotary_model_only_past_its_context(tiny_config, caplog):
    from scratchformer.modeling.modeling_scratchformer import requests_within_positions

    manager = requests_within_positions(_Manager(max_new_tokens=None), tiny_config(preset="llama"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        manager.add_request(list(range(19)), "fits", max_new_tokens=45)  # 19 + 45 = 64: the context exactly
        assert warnings_of(caplog) == []
        manager.add_request(list(range(23)), "over", max_new_tokens=42)  # 23 + 42 = 65
        (message,) = warnings_of(caplog)
        assert "Ask for at most 41 new tokens (max_new_tokens) after this 23-token prompt" in message
        manager.add_request(list(range(29)), "unbounded")
        assert "after this 29-token prompt" in warnings_of(caplog)[1]
    assert manager.asked == [(19, 45), (23, 42), (29, None)]  # rotary positions go on: nothing is cut
