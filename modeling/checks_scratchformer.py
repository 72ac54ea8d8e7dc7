"""Input checks shared by the decoder-only model and the encoder-decoder: each bad input is refused
with a ValueError that names it and the fix, instead of surfacing as an IndexError deep in
nn.Embedding (or a device-side assert on GPU).

Reading a tensor's values is free on CPU but a host sync on an accelerator, stalling the launch
queue every forward, so there only the checks that need no values run and the embedding's
device-side assert stays the guard. They are also skipped when compiling, where data-dependent
Python branches would break the graph.

Part of the remote-code payload copied next to every checkpoint: it imports only torch and the
standard library.
"""

from __future__ import annotations

import copy

import torch


def id_outside_vocabulary(ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None) -> int | None:
    """An id of `ids` outside [0, vocab_size) (entries equal to `ignore_index` aside), or None. Values
    are read only where that is free: on CPU and not while compiling; on an accelerator the read
    would be a host sync every forward, so there the embedding's device-side assert is the guard."""
    if ids.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    if ids.numel() == 0:
        return None
    low, high = (int(v) for v in torch.aminmax(ids))
    return low if low < 0 else high if high >= vocab_size else None


def check_one_input(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> None:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor, got {input_ids.dtype}.")
    bad = id_outside_vocabulary(input_ids, vocab_size)
    if bad is not None:
        raise ValueError(
            f"{name} contain {bad}, outside the vocabulary [0, {vocab_size}). "
            "Use the tokenizer the model was trained with, or resize_token_embeddings(len(tokenizer)) "
            "after adding tokens."
        )


def check_embeddings(x_BLC: torch.Tensor) -> None:
    if x_BLC.dim() != 3 or x_BLC.shape[0] == 0 or x_BLC.shape[1] == 0:
        raise ValueError(f"Expected a non-empty batch of shape (batch, length[, width]), got {tuple(x_BLC.shape)}.")


def check_positions(config, position_ids: torch.Tensor, highest: int | None, where: str = "input") -> None:
    """Learned and sinusoidal tables end at max_position_embeddings - 1 (rotary angles never end).

    `highest` is the largest position when the shapes tell it (positions the model made: a range
    from the cache length, free to check on any device). None means only the values tell: positions
    a caller gave may restart inside a row, as vLLM and padding-free collators pack several sequences
    into one, so a row longer than the table can be fine. Those are read on CPU; on an accelerator
    the read would be a host sync every forward, so there the embedding's device-side assert guards."""
    if config.position_embedding == "rope" or torch.compiler.is_compiling():
        return
    if highest is None:
        if position_ids.device.type != "cpu":
            return
        lowest, highest = (int(v) for v in torch.aminmax(position_ids))
        if lowest < 0:
            raise ValueError(f"position_ids contain {lowest}: positions count from 0 in every sequence.")
    limit = config.max_position_embeddings
    if highest >= limit:
        raise ValueError(
            f"The {where} needs positions up to {highest}, but this model has {config.position_embedding} "
            f"positions for 0..{limit - 1} (max_position_embeddings={limit}). Truncate it to {limit} tokens "
            f"(tokenizer(..., truncation=True, max_length={limit}))."
        )


def check_attention_mask(
    attention_mask: torch.Tensor | None,
    batch: int,
    total_length: int,
    name: str = "attention_mask",
    length: str = "past + new tokens",
) -> None:
    if attention_mask is None or attention_mask.dim() == 4:
        return  # 4-D masks are the caller's own, already in kernel form
    if attention_mask.shape != (batch, total_length):
        raise ValueError(
            f"{name} has shape {tuple(attention_mask.shape)}, expected (batch, {length}) = "
            f"({batch}, {total_length}): one 1/0 entry per token, 1 for tokens to attend to."
        )
    if attention_mask.is_floating_point() or attention_mask.dtype == torch.bool:
        return
    if attention_mask.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{name} must hold 0/1 integers or booleans, got {attention_mask.dtype}.")


def check_labels(labels: torch.Tensor, expected: torch.Size, what: str) -> None:
    if tuple(labels.shape) != tuple(expected):
        raise ValueError(f"{what} {tuple(expected)}, got {tuple(labels.shape)} (use -100 for positions to ignore).")


def check_label_ids(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    bad = id_outside_vocabulary(labels, vocab_size, ignore_index)
    if bad is not None:
        raise ValueError(
            f"labels contain {bad}, outside the vocabulary [0, {vocab_size}): labels are token ids, "
            f"or {ignore_index} for positions that carry no loss."
        )


def eager_mask_config(config, output_attentions: bool):
    """The config to build masks with. Masks are built once for all layers, in the form the chosen
    kernel wants: None when a fused kernel can apply causality itself, a boolean/additive tensor
    otherwise. The eager path, which is the one that returns attention maps, always needs an
    explicit tensor."""
    if output_attentions and config._attn_implementation != "eager":
        config = copy.copy(config)
        config._attn_implementation = "eager"
    return config
