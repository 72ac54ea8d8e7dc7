"""ONNX export of a real scratchformer causal LM with torch.onnx's dynamo exporter, run by onnxruntime.

The export takes `input_ids` and `attention_mask` with dynamic batch and sequence axes, no KV cache
(`use_cache=False`), and returns the logits; one exported file must then serve inputs of other
shapes than the example it was traced with, padded rows included, with PyTorch's logits.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import scratchformer.modeling  # noqa: F401  (registers the Auto classes)

# |logits_onnx - logits_torch| over real (unpadded) tokens, each within ATOL + RTOL x |logit|:
# float32 logits of magnitude ~10 round at ~1e-6, and onnxruntime's fused kernels add and multiply
# in another order, a few ulps more; larger logits (a model trained further) round proportionally.
ATOL, RTOL = 1e-5, 1e-6


class CausalLMLogits(nn.Module):
    """The graph to export: ids and mask in, logits out; no cache, no output dataclass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def inputs(batch: int, length: int, vocab_size: int, seed: int, pad_row: int | None = None) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(9, vocab_size, (batch, length), generator=generator)  # 9: past the special tokens
    mask = torch.ones_like(ids)
    if pad_row is not None:
        # Left padding, as the tokenizer pads for generation.
        ids[pad_row, : length // 3] = 0
        mask[pad_row, : length // 3] = 0
    return ids, mask


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_dynamo_export_matches_pytorch(preset, trained_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(trained_checkpoint(preset)).eval()
    wrapper = CausalLMLogits(model).eval()
    vocab, context = model.config.vocab_size, model.config.max_position_embeddings
    # Positions beyond the context have no learned embedding (gpt2): the axis is bounded by it.
    batch_dim, seq_dim = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=context)
    program = torch.onnx.export(
        wrapper,
        inputs(2, 16, vocab, seed=0),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch_dim, 1: seq_dim}, "attention_mask": {0: batch_dim, 1: seq_dim}},
    )
    path = tmp_path / f"{preset}.onnx"
    program.save(str(path))

    # The saved graph's inputs really are symbolic in both axes (a traced-in 2 x 16 would be ints).
    graph = onnx.load(str(path)).graph
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.HasField("dim_param") for d in dims] == [True, True], (tensor.name, dims)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    report = []
    for batch, length, pad_row in ((1, 7, None), (3, 45, 1)):
        ids, mask = inputs(batch, length, vocab, seed=length, pad_row=pad_row)
        with torch.no_grad():
            expected = wrapper(ids, mask)
        (got,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        assert got.shape == (batch, length, vocab)
        # Padded positions are left out: no token attends to them and their own outputs are never
        # read (each runtime fills a fully masked attention row its own way).
        real = mask.bool().numpy()
        delta, scale = np.abs(got - expected.numpy())[real], np.abs(expected.numpy())[real]
        diff = float(delta.max())
        report.append(f"{batch}x{length}: {diff:.2e} (|logits| up to {scale.max():.1f})")
        assert (delta <= ATOL + RTOL * scale).all(), f"{preset} {batch}x{length}: max |logits diff| {diff:.2e}"
    print(f"ONNX {preset} max |delta| " + ", ".join(report))
