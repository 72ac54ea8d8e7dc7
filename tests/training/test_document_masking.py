"""Documents kept apart in a packed block: the second document of a block gets exactly the logits and
the per-token losses it gets alone, for every preset and every attention implementation that runs on
a CPU, through the very blocks pretraining makes (`tokenize_and_pack(document_masking=True)` and
`collate_blocks`). A boundary moved by one position, or a label left on the `</s> -> <s>` step,
fails these checks (the mutation tests at the end)."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import BOS_ID, EOS_ID, train_bpe
from scratchformer.training.library import packing
from scratchformer.training.library.data import default_corpus
from scratchformer.training.library.packing import collate_blocks, tokenize_and_pack

DOCS = [d[:300] for d in list(default_corpus("train"))[:8]]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS, vocab_size=300, show_progress=False)


def two_documents(tokenizer) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One packed block holding a whole first document and a whole second one, as the collator
    hands it to the model; and each document's ids alone (`<s> text </s>`)."""
    first, second = (torch.tensor(tokenizer(t)["input_ids"] + [EOS_ID]) for t in ("A short note.", DOCS[1][:200]))
    blocks = tokenize_and_pack(datasets.Dataset.from_dict({"text": ["A short note.", DOCS[1][:200]]}), tokenizer,
                               block_size=len(first) + len(second), document_masking=True)  # fmt: skip
    assert len(blocks) == 1
    batch = collate_blocks(list(blocks.with_format("torch")))
    assert torch.equal(batch["input_ids"][0], torch.cat([first, second]))
    return batch, first, second


def model_for(preset: str, attn: str, vocab: int) -> ScratchformerForCausalLM:
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset(
        preset, vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, hidden_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
        initializer_range=0.2, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )  # fmt: skip
    config._attn_implementation = attn
    return ScratchformerForCausalLM(config).eval()


def per_token_nll(logits_LV: torch.Tensor, labels_L: torch.Tensor) -> torch.Tensor:
    # position t predicts label t+1; -100 is no target
    return F.cross_entropy(logits_LV[:-1], labels_L[1:], reduction="none", ignore_index=-100)


def assert_second_document_as_if_alone(model, batch, first, second) -> None:
    """The second document's logits and per-token losses in the block equal those of the document
    alone; the first one's too (it starts the block); and the block's loss is the mean over both
    documents' own targets, the `</s> -> <s>` step between them not among them."""
    n = len(first)
    with torch.no_grad():
        out = model(**batch)
        logits_LV = out.logits[0]
        alone_a, alone_b = (model(ids[None], labels=ids[None]) for ids in (first, second))
    torch.testing.assert_close(logits_LV[n:], alone_b.logits[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(logits_LV[:n], alone_a.logits[0], rtol=0, atol=2e-5)
    nll = per_token_nll(logits_LV, batch["labels"][0])
    torch.testing.assert_close(nll[n:], per_token_nll(alone_b.logits[0], second), rtol=0, atol=2e-5)
    assert nll[n - 1] == 0  # </s> of the first document predicting <s> of the second: ignored
    expected = (alone_a.loss * (len(first) - 1) + alone_b.loss * (len(second) - 1)) / (len(first) + len(second) - 2)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("preset", ["paper", "gpt2", "llama"])
def test_the_second_document_of_a_block_is_computed_and_scored_as_if_alone(tokenizer, preset, attn):
    batch, first, second = two_documents(tokenizer)
    model = model_for(preset, attn, len(tokenizer))
    assert_second_document_as_if_alone(model, batch, first, second)
    # Control: the same block under one causal mask (no positions) lets the second document read the first.
    with torch.no_grad():
        joined = model(input_ids=batch["input_ids"]).logits[0, len(first) :]
        alone = model(second[None]).logits[0]
    assert (joined - alone).abs().max() > 1e-3


def _varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                      softmax_scale=None, causal=False):  # fmt: skip
    """flash_attn_varlen_func's contract in plain torch: (total, heads, dim) rows, one causal
    attention per [cu_seqlens[i], cu_seqlens[i+1]) segment, nothing across segments."""
    out = torch.empty_like(q)
    for s, e in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        ks, vs = (x.repeat_interleave(qs.shape[0] // x.shape[0], dim=0) for x in (ks, vs))
        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=softmax_scale).transpose(0, 1)
    return out


def _flash_reference(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_func's contract: (batch, length, heads, dim), one attention over each whole row."""
    B, L = q.shape[:2]
    cu = torch.arange(0, (B + 1) * L, L)
    flat = [x.reshape(B * L, *x.shape[2:]) for x in (q, k, v)]
    return _varlen_reference(*flat, cu, cu, L, L, softmax_scale=softmax_scale, causal=causal).view(q.shape)


@pytest.mark.parametrize("preset", ["paper", "gpt2", "llama"])
def test_flash_attention_keeps_documents_apart_through_transformers_packed_path(tokenizer, preset, monkeypatch):
    """flash_attention_2 has no mask: transformers' `_flash_attention_forward` finds packed documents
    in the position_ids the model hands to the attention function and calls the varlen kernel per
    document. The kernels are replaced by their contract in plain torch (no GPU here); everything
    between the model and them is transformers' own code."""
    from transformers import modeling_flash_attention_utils as fa

    monkeypatch.setattr(fa, "_lazy_imports", lambda *a, **k: (_flash_reference, _varlen_reference, None, None, None))
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    batch, first, second = two_documents(tokenizer)
    model = model_for(preset, "sdpa", len(tokenizer))
    model.config._attn_implementation = "flash_attention_2"  # after init, which would look for the package
    assert_second_document_as_if_alone(model, batch, first, second)
    monkeypatch.setattr(fa, "_loaded_implementation", None)


def test_flex_attention_masks_every_pair_across_documents(tokenizer):
    """flex_attention applies the mask function transformers builds from the position_ids (running
    its kernel on a CPU compiles for minutes, so the mask itself is read here, pair by pair)."""
    from transformers.masking_utils import create_causal_mask

    batch, first, second = two_documents(tokenizer)
    model = model_for("llama", "flex_attention", len(tokenizer))
    L = batch["input_ids"].shape[1]
    embeds = model.model.embed_tokens(batch["input_ids"])
    block_mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None,
                                    **{"past_key_values": None}, position_ids=batch["position_ids"])  # fmt: skip
    q, kv = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    allowed = block_mask.mask_mod(torch.zeros_like(q), torch.zeros_like(q), q, kv)
    same_document = (q < len(first)) == (kv < len(first))
    assert torch.equal(allowed, (kv <= q) & same_document)


# -- mutations: a wrong implementation fails the checks above ------------------------------------


def test_a_boundary_moved_by_one_position_fails_the_check(tokenizer, monkeypatch):
    """The second document's `<s>` counted as the first one's last token: the second document's
    tokens no longer see their `<s>`, and the first one's `</s>` target comes back."""
    real = packing.document_positions

    def leaky(starts_NL):
        late = starts_NL.copy()
        late[:, 1:], late[:, 0] = starts_NL[:, :-1], False  # every start one token later
        return real(late)

    monkeypatch.setattr(packing, "document_positions", leaky)
    batch, first, second = two_documents(tokenizer)
    with pytest.raises(AssertionError):
        assert_second_document_as_if_alone(model_for("llama", "sdpa", len(tokenizer)), batch, first, second)


def test_a_label_left_on_the_step_between_documents_fails_the_check(tokenizer):
    batch, first, second = two_documents(tokenizer)
    batch["labels"] = batch["input_ids"]  # `</s> -> <s>` trained again
    with pytest.raises(AssertionError):
        assert_second_document_as_if_alone(model_for("gpt2", "eager", len(tokenizer)), batch, first, second)
