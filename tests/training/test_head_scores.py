"""The head scores mean what their papers mean: hand-set heads (uniform, previous-token, first-token,
induction) give the known values, and a head that does something else does not pass for them."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.training.library.head_scores import (
    chance_previous_token,
    entropy_scores,
    first_token_scores,
    head_scores,
    induction_probe,
    induction_scores,
    previous_token_scores,
)

L = 12


def causal_uniform(length: int = L) -> np.ndarray:
    rows = np.tril(np.ones((length, length)))
    return rows / rows.sum(-1, keepdims=True)


def one_hot_head(targets: list[int]) -> np.ndarray:
    """A head whose query q looks only at key targets[q]."""
    maps = np.zeros((len(targets), len(targets)))
    maps[np.arange(len(targets)), targets] = 1.0
    return maps


def as_model(*heads: np.ndarray) -> np.ndarray:
    """[layers=1, heads, L, L] from single heads."""
    return np.stack(heads)[None]


def test_a_uniform_head_has_entropy_one_and_chance_scores():
    maps = as_model(causal_uniform())
    assert entropy_scores(maps)[0, 0] == pytest.approx(1.0)
    chance = chance_previous_token(L)
    assert previous_token_scores(maps)[0, 0] == pytest.approx(chance)
    assert first_token_scores(maps)[0, 0] == pytest.approx(chance)
    assert chance == pytest.approx(sum(1 / (q + 1) for q in range(1, L)) / (L - 1))


def test_a_previous_token_head_scores_one_and_has_no_entropy():
    maps = as_model(one_hot_head([0] + list(range(L - 1))))
    assert previous_token_scores(maps)[0, 0] == pytest.approx(1.0)
    assert entropy_scores(maps)[0, 0] == pytest.approx(0.0)
    # Row 1's previous token is also the first: one of L - 1 rows.
    assert first_token_scores(maps)[0, 0] == pytest.approx(1 / (L - 1))


def test_a_first_token_head_is_a_sink_not_a_previous_token_head():
    maps = as_model(one_hot_head([0] * L))
    assert first_token_scores(maps)[0, 0] == pytest.approx(1.0)
    assert previous_token_scores(maps)[0, 0] == pytest.approx(1 / (L - 1))
    assert entropy_scores(maps)[0, 0] == pytest.approx(0.0)


def test_a_self_attending_head_scores_zero_on_previous_and_first():
    maps = as_model(one_hot_head(list(range(L))))
    assert previous_token_scores(maps)[0, 0] == 0.0
    assert first_token_scores(maps)[0, 0] == 0.0


def test_entropy_is_normalised_by_the_keys_each_row_may_see():
    # Half the weight on the diagonal, half on the key before: entropy log 2 in every row from 1 on,
    # i.e. 1 for row 1 (2 keys) and log 2 / log(q + 1) after.
    maps = np.zeros((L, L))
    maps[0, 0] = 1
    for q in range(1, L):
        maps[q, q] = maps[q, q - 1] = 0.5
    expected = np.mean([np.log(2) / np.log(q + 1) for q in range(1, L)])
    assert entropy_scores(as_model(maps))[0, 0] == pytest.approx(expected)


def test_a_bidirectional_head_is_normalised_by_every_key():
    full = np.full((L, L), 1 / L)
    assert entropy_scores(as_model(full))[0, 0] == pytest.approx(1.0)


def induction_head(period: int, offset: int = 1) -> np.ndarray:
    """Queries of the second copy look at the token after their first occurrence; others at themselves."""
    n = offset + 2 * period
    targets = list(range(n))
    for k in range(period - 1):
        targets[offset + period + k] = offset + k + 1
    return one_hot_head(targets)


def duplicate_token_head(period: int, offset: int = 1) -> np.ndarray:
    """Queries of the second copy look at their own first occurrence: not induction (one position early)."""
    n = offset + 2 * period
    targets = list(range(n))
    for k in range(period):
        targets[offset + period + k] = offset + k
    return one_hot_head(targets)


@pytest.mark.parametrize("offset", [0, 1])
def test_an_induction_head_scores_one_and_a_duplicate_token_head_zero(offset):
    T = 10
    maps = np.stack([induction_head(T, offset), duplicate_token_head(T, offset), causal_uniform(offset + 2 * T)])[None]
    scores = induction_scores(maps, T, offset)[0]
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == 0.0
    # Uniform: mean of 1 / (q + 1) over the stripe's queries.
    q = offset + T + np.arange(T - 1)
    assert scores[2] == pytest.approx(np.mean(1 / (q + 1)))
    # A batch of probes averages to the same.
    assert induction_scores(np.stack([maps, maps]), T, offset)[0, 0] == pytest.approx(1.0)


def test_the_induction_probe_repeats_distinct_tokens_after_bos():
    ids = induction_probe(vocab_size=50, period=20, sequences=3, bos_token_id=1, exclude=(0, 1, 2, 3), seed=5)
    assert ids.shape == (3, 41)
    assert (ids[:, 0] == 1).all()
    assert torch.equal(ids[:, 1:21], ids[:, 21:])
    for row in ids[:, 1:21]:
        assert len(set(row.tolist())) == 20
        assert not set(row.tolist()) & {0, 1, 2, 3}
    assert torch.equal(ids, induction_probe(50, 20, 3, 1, (0, 1, 2, 3), seed=5))
    with pytest.raises(ValueError, match="distinct"):
        induction_probe(vocab_size=10, period=20)


class CopyingModel(nn.Module):
    """A stand-in decoder that predicts the repeat perfectly by copying from context (an ideal
    induction circuit), and knows nothing on the first copy: logits uniform there. Its attention is
    an exact induction head in layer 0 and a previous-token head in layer 1."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=512, position_embedding="rope")
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, output_attentions=False, use_cache=False):
        B, n = input_ids.shape
        logits = torch.zeros(B, n, self.vocab)
        seen: list[dict[int, int]] = [{} for _ in range(B)]
        induction = torch.zeros(B, 1, n, n)
        for b in range(B):
            for t in range(n):
                token = int(input_ids[b, t])
                if token in seen[b] and seen[b][token] + 1 < n:
                    nxt = seen[b][token] + 1
                    logits[b, t, int(input_ids[b, nxt])] = 50.0
                    induction[b, 0, t, nxt] = 1.0
                else:
                    induction[b, 0, t, t] = 1.0
                seen[b].setdefault(token, t)
        previous = torch.zeros(B, 1, n, n)
        previous[:, 0, 0, 0] = 1
        previous[:, 0, torch.arange(1, n), torch.arange(n - 1)] = 1
        return SimpleNamespace(logits=logits, attentions=(induction, previous))


class FakeTokenizer:
    bos_token_id = 1
    all_special_ids = [0, 1, 2, 3]

    def __len__(self) -> int:
        return 60

    def __call__(self, text, return_tensors="pt", verbose=True):
        ids = [1] + [4 + (ord(c) % 50) for c in text]
        return {"input_ids": torch.tensor([ids])}


def test_head_scores_read_the_loss_and_the_stripe_where_the_repeat_is():
    model = CopyingModel(vocab=60)
    scores = head_scores(model, FakeTokenizer(), text="a probe text", period=12, sequences=2)
    assert scores.induction[0][0] == pytest.approx(1.0)
    assert scores.previous_token[1][0] == pytest.approx(1.0)
    # The first copy is uniform over the vocabulary; the repeat is copied (loss ~0).
    assert scores.loss_first_copy == pytest.approx(np.log(60), abs=1e-3)
    assert scores.loss_repeat == pytest.approx(0.0, abs=1e-3)
    assert scores.in_context == pytest.approx(np.log(60), abs=1e-3)
    layer, head, value = scores.best("induction")
    assert (layer, head, value) == (0, 0, pytest.approx(1.0))
    assert scores.summary()["heads_previous_token_layer"] == 1


def test_head_scores_of_a_real_model_fit_its_shape_and_positions(tiny_config):
    torch.manual_seed(0)
    config = tiny_config(preset="gpt2", max_position_embeddings=40)
    model = ScratchformerForCausalLM(config).train()
    tokenizer = FakeTokenizer()
    scores = head_scores(model, tokenizer, text="x" * 100)
    assert model.training  # mode restored
    assert np.asarray(scores.entropy).shape == (2, 4)
    assert scores.text_tokens == 40  # cut to the learned position table
    assert scores.induction_period == 19  # (40 - 1) // 2
    # An untrained model attends almost uniformly.
    assert np.mean(scores.entropy) > 0.9
