"""Claims checked against references that do not share our code: transformers' own shifted loss for
validation loss, a hand-built previous-token head for attention maps, the int64 mask for every mask
dtype we accept. Each test uses a model whose outputs vary, so a wrong implementation cannot agree
with the reference by accident (a loss that is ln V for any target, a model that repeats one token)."""

import math

import datasets
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training.library.data import default_corpus
from scratchformer.training.library.metrics import evaluate
from scratchformer.training.library.packing import token_byte_lengths, tokenize_and_pack


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(list(default_corpus("train"))[:30], vocab_size=400)


def test_validation_loss_is_transformers_shifted_loss_on_a_model_that_cares_which_token(tokenizer):
    """evaluate() must score position t on token t+1. On a random model with spread-out logits the
    loss depends on which token is scored (scoring token t itself gave 5.49 vs 6.61 nats), so the
    reference, transformers' own ForCausalLMLoss via `labels=`, pins the shift."""
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=64, initializer_range=0.5)
    model = ScratchformerForCausalLM(config).eval()
    text = "".join(list(default_corpus("validation"))[:2])
    blocks = tokenize_and_pack(datasets.Dataset.from_dict({"text": [text]}), tokenizer, block_size=32)
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(blocks.with_format("torch"), batch_size=5)  # a short last batch
    prepared, loader = accelerator.prepare(model, loader)
    metrics = evaluate(prepared, loader, accelerator, token_byte_lengths(tokenizer))

    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        # Every block has the same number of predicted tokens (L - 1), so the mean of the per-block
        # means is the mean over tokens.
        reference = torch.stack([model(input_ids=b[None], labels=b[None]).loss for b in ids]).mean().item()
        unshifted = torch.nn.functional.cross_entropy(
            model(input_ids=ids).logits.flatten(0, 1), ids.flatten()
        ).item()
    assert abs(reference - unshifted) > 0.1  # the model can tell the difference, so the test can
    assert metrics["eval_loss"] == pytest.approx(reference, abs=1e-5)
    assert metrics["eval_ppl"] == pytest.approx(math.exp(reference), rel=1e-4)
    n_bytes = int(token_byte_lengths(tokenizer)[ids[:, 1:]].sum())
    assert metrics["eval_bpb"] == pytest.approx(reference * ids[:, 1:].numel() / (math.log(2) * n_bytes), rel=1e-5)


def previous_token_head_model(attn: str) -> ScratchformerForCausalLM:
    """One layer, one head, built by hand so that query i matches key i-1 and nothing else:
    token embeddings 0, learned position i = the unit vector e_i, so after the (weightless) RMSNorm
    x_i = sqrt(C) e_i; q_proj shifts e_i to e_(i-1) (times 3), k_proj is the identity. Then
    q_i . k_j = 3 C [j == i-1], and the softmax puts all but ~e^-17 of row i on key i-1."""
    C = 32
    config = ScratchformerConfig.from_preset(
        "llama", vocab_size=16, hidden_size=C, num_hidden_layers=1, num_attention_heads=1,
        max_position_embeddings=C, position_embedding="learned",
    )
    config._attn_implementation = attn
    model = ScratchformerForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_positions.weight.copy_(torch.eye(C))
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        model.model.layers[0].post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        attn_module = model.model.layers[0].self_attn
        attn_module.q_proj.weight.copy_(3.0 * torch.eye(C).roll(-1, dims=0))  # row i-1 reads input i
        attn_module.k_proj.weight.copy_(torch.eye(C))
        attn_module.v_proj.weight.copy_(torch.eye(C))
        attn_module.o_proj.weight.copy_(torch.eye(C))
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_hand_built_previous_token_head_attends_to_the_previous_token(attn):
    model = previous_token_head_model(attn)
    L = 20
    ids = torch.randint(0, 16, (1, L))
    seen = {}
    model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, args, out: seen.update(out=out))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    maps = out.attentions[0][0, 0]  # (query, key)
    assert torch.allclose(maps.sum(-1), torch.ones(L))
    assert maps[0, 0] == 1.0  # the first token can only see itself
    rows = torch.arange(1, L)
    assert torch.equal(maps[1:].argmax(-1), rows - 1)
    assert (maps[rows, rows - 1] > 0.99).all()
    # The head copies each position's predecessor (value and output projections are the identity):
    # the attention output at position i is the normalised input of position i-1, sqrt(C) e_(i-1).
    copied = seen["out"][0, 1:]
    assert torch.allclose(copied, math.sqrt(32) * torch.eye(32)[: L - 1], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.float32])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_every_accepted_mask_dtype_is_honoured_like_int64(dtype, attn):
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset("llama", vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=32, initializer_range=0.5)
    config._attn_implementation = attn
    model = ScratchformerForCausalLM(config).eval()
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    # No position_ids: given ones that restart after the pads, the mask builder would keep the pads
    # apart by itself (it reads them as packed sequences), and a dropped mask would go unseen.
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask.to(dtype)).logits
        ignored = model(ids, attention_mask=torch.ones_like(mask)).logits
    real = mask.bool()
    assert (got[real] - reference[real]).abs().max() < 1e-5
    assert (ignored[1, 4:] - reference[1, 4:]).abs().max() > 1e-2  # a dropped mask would be visible
