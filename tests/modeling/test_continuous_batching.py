"""Continuous batching (`generate_batch`, `init_continuous_batching`, what `transformers serve
--continuous-batching` runs): many requests packed into one row over a paged KV cache give each
request the tokens, and the per-step log-probabilities, that `generate()` gives it alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig

V = 97  # conftest's TINY vocabulary
NEW_TOKENS = 12


def prompts(*lengths: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=g).tolist() for n in lengths]


def batching_config(pages: int, page_tokens: int = 8, batch_tokens: int = 8) -> ContinuousBatchingConfig:
    """A paged cache of `pages` pages of `page_tokens` tokens, and at most `batch_tokens` tokens a forward.
    The page's size was `block_size` up to transformers 5.22, `page_size` since."""
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    size = {"page_size" if "page_size" in fields else "block_size": page_tokens}
    return ContinuousBatchingConfig(num_blocks=pages, max_batch_tokens=batch_tokens, return_logprobs=True, **size)


def lively(lively_lm, preset: str):
    # Llama and Qwen3 with grouped-query attention (2 key/value heads for 4 query heads), as the other
    # tests that compare decoders ask for these models (conftest builds each once per process).
    # Qwen3 (QK-norm) with conftest's 0.2 spread still loops on one prompt after 300 steps; 0.1 learns.
    spread = {"initializer_range": 0.1} if preset == "qwen3" else {}
    return lively_lm(preset, num_key_value_heads=2 if preset in ("llama", "qwen3") else 4, **spread)


def greedy() -> GenerationConfig:
    # The lively models have no end-of-sequence token: every request runs its NEW_TOKENS.
    return GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1)


def assert_same_as_generate_alone(model, prompt: list[int], output, atol: float = 1e-5) -> None:
    """`output` (a continuous-batching result) holds the tokens greedy `generate()` gives `prompt` alone,
    and each step's log-probability of its token equals that step's logits' (log-softmax) to `atol`.
    The continuation must vary (>= 4 distinct tokens): a model repeating one token would hide a cache
    that lost its context."""
    assert output.error is None, output.error
    with torch.no_grad():
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                               output_logits=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    tokens = alone.sequences[0, len(prompt) :].tolist()
    assert output.generated_tokens == tokens, f"prompt {prompt}: {output.generated_tokens} != {tokens}"
    expected = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(alone.logits, tokens)]
    assert len(output.logprobs) == len(expected)
    worst = max(abs(a - b) for a, b in zip(output.logprobs, expected))
    assert worst <= atol, f"prompt {prompt}: a step's log-probability differs by {worst:.2e}"
    assert len(set(tokens)) >= 4, f"degenerate continuation {tokens}: liven the model"


@pytest.mark.parametrize("preset", ["llama", "qwen3", "gpt2", "paper"])
def test_generate_batch_gives_each_request_what_generate_gives_it_alone(lively_lm, preset):
    model = lively(lively_lm, preset)
    # Up to 12 + 12 tokens: the length the lively models learned their task at.
    batch = prompts(4, 12, 7, 10, 5, 11, 9, 6)
    # 7 pages of 8 tokens hold 56 tokens, and a request needs up to 3 pages: at most 2 or 3 of the 8 run
    # at once, the others wait for freed pages (which still hold another request's keys). 8 tokens a
    # forward: the longer prompts are prefilled in chunks.
    results = model.generate_batch(batch, generation_config=greedy(), continuous_batching_config=batching_config(7))
    assert len(results) == len(batch)
    for prompt, output in zip(batch, results.values(), strict=True):
        assert output.prompt_ids == prompt
        assert_same_as_generate_alone(model, prompt, output)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_each_attention_implementation_serves_the_paged_cache(lively_lm, attn_implementation):
    """transformers runs eager attention over a paged cache with its own `paged|eager` kernel, sdpa as is."""
    model = lively(lively_lm, "llama")
    original = model.config._attn_implementation
    model.set_attn_implementation(attn_implementation)
    try:
        batch = prompts(4, 11, 6, seed=2)
        results = model.generate_batch(batch, generation_config=greedy(), continuous_batching_config=batching_config(8))
        for prompt, output in zip(batch, results.values(), strict=True):
            assert_same_as_generate_alone(model, prompt, output)
    finally:
        model.set_attn_implementation(original)


def test_requests_arriving_while_others_decode(lively_lm):
    model = lively(lively_lm, "gpt2")
    first, *later = prompts(8, 12, 4, 10, seed=3)
    with model.continuous_batching_context_manager(
        generation_config=greedy(), continuous_batching_config=batching_config(8)
    ) as manager:
        first_id = manager.add_request(first, max_new_tokens=NEW_TOKENS, streaming=True)
        # Wait until the first request is decoding (its first tokens are out), then add the others.
        partial = manager.get_result(request_id=first_id, timeout=60)
        assert partial is not None and 0 < len(partial.generated_tokens) < NEW_TOKENS
        later_ids = [manager.add_request(p, max_new_tokens=NEW_TOKENS) for p in later]
        finished = {}
        while len(finished) < 1 + len(later):
            output = manager.get_result(timeout=60)
            assert output is not None, f"no result within 60 s; finished so far: {sorted(finished)}"
            if output.is_finished():
                finished[output.request_id] = output
    for request_id, prompt in zip([first_id, *later_ids], [first, *later], strict=True):
        assert_same_as_generate_alone(model, prompt, finished[request_id])


def test_the_encoder_decoder_refuses_continuous_batching_by_name():
    """transformers' batcher packs prompts into one decoder row and has no place for an encoder's
    output (no encoder-decoder of transformers' own supports it either): a clear error, at once."""
    config = ScratchformerSeq2SeqConfig.from_preset("paper", vocab_size=V, hidden_size=32, encoder_layers=1,
                                                    decoder_layers=1, num_attention_heads=4, intermediate_size=64)
    model = ScratchformerForConditionalGeneration(config).eval()
    with pytest.raises(NotImplementedError, match="decoder-only.*generate\\(\\)"):
        model.generate_batch([[5, 6, 7]], generation_config=greedy())
