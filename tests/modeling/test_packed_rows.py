"""Several sequences in one row, told apart by position_ids that restart at 0: how vLLM batches
requests and how transformers' padding-free collator (DataCollatorWithFlattening) trains. The row may
be longer than the position table; each sequence must be computed exactly as if it were alone."""

import pytest
import torch
from transformers import DataCollatorWithFlattening

from scratchformer.modeling import ScratchformerForCausalLM

V = 97
LENGTHS = (30, 23, 27)  # 80 tokens in one row, more than max_position_embeddings=64


def lm(tiny_config, preset: str, attn: str) -> ScratchformerForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(preset, hidden_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
                         initializer_range=0.2)
    config._attn_implementation = attn
    return ScratchformerForCausalLM(config).eval()


def sequences() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, V, (n,), generator=g) for n in LENGTHS]


def packed(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat(seqs)[None], torch.cat([torch.arange(len(s)) for s in seqs])[None]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("preset", ["paper", "gpt2", "llama"])
def test_a_packed_row_equals_its_sequences_alone(tiny_config, preset, attn):
    model = lm(tiny_config, preset, attn)
    seqs = sequences()
    ids, position_ids = packed(seqs)
    assert ids.shape[1] > model.config.max_position_embeddings
    with torch.no_grad():
        together = model(ids, position_ids=position_ids).logits[0]
        alone = torch.cat([model(s[None]).logits[0] for s in seqs])
        # Control: the same row without its positions is one long sequence, which these tables
        # cannot even hold (and rope would let the later sequences see the earlier ones).
        if preset == "llama":
            run_on = model(ids).logits[0]
            assert (run_on - alone).abs().max() > 1e-3
    assert (together - alone).abs().max() < 1e-5, f"{preset}/{attn}"


@pytest.mark.parametrize("preset", ["paper", "gpt2"])
def test_a_row_longer_than_the_table_without_positions_is_refused(tiny_config, preset):
    model = lm(tiny_config, preset, "sdpa")
    ids, _ = packed(sequences())
    with pytest.raises(ValueError, match=r"positions up to 79.*max_position_embeddings=64"):
        model(ids)


def test_given_positions_past_the_table_are_refused_by_value(tiny_config):
    model = lm(tiny_config, "gpt2", "sdpa")
    ids = torch.randint(3, V, (1, 10))
    with pytest.raises(ValueError, match="positions up to 70"):
        model(ids, position_ids=torch.arange(61, 71)[None])
    with pytest.raises(ValueError, match="contain -1"):
        model(ids, position_ids=torch.arange(-1, 9)[None])


@pytest.mark.parametrize("preset", ["paper", "gpt2", "llama"])
def test_padding_free_training_batch_gives_the_per_sequence_loss(tiny_config, preset):
    """transformers' DataCollatorWithFlattening packs a batch into one row with position_ids and
    -100 at each sequence's first label: the loss is the mean over the sequences' own tokens."""
    model = lm(tiny_config, preset, "sdpa")
    seqs = sequences()
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": s.tolist()} for s in seqs])
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
        # Each sequence alone, summed over its predicted tokens, then averaged over all of them.
        total = sum(model(s[None], labels=s[None]).loss * (len(s) - 1) for s in seqs)
    expected = total / sum(n - 1 for n in LENGTHS)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
