"""TransformerLens on the Llama export: the mechanistic-interpretability toolkit keys on stock
architectures, so a scratchformer checkpoint reaches it through `scratchformer export --to llama`.
Its logits and its hooked attention patterns must equal our model's own."""

from __future__ import annotations

import torch

from scratchformer.training.library import export


def test_transformer_bridge_runs_the_llama_export_with_our_numbers(trained_checkpoint, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = trained_checkpoint("llama")
    exported, _ = export.export_stock(source, "llama", tmp_path / "llama")
    bridge = TransformerBridge.boot_transformers(str(exported), device="cpu")
    # The bridge runs attention in eager mode so hooks see the scores: compare with our eager path.
    ours = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer("The for statement runs a block once for each item", return_tensors="pt")["input_ids"]

    logits, cache = bridge.run_with_cache(ids)
    with torch.no_grad():
        reference = ours(ids, output_attentions=True)
    assert (logits - reference.logits).abs().max() < 1e-5
    for layer, ours_BHLM in enumerate(reference.attentions):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == ours_BHLM.shape
        assert (pattern - ours_BHLM).abs().max() < 1e-5, f"layer {layer}"
    # The residual stream TransformerLens users patch is there, one entry per layer.
    assert all(f"blocks.{i}.hook_resid_pre" in cache for i in range(ours.config.num_hidden_layers))
