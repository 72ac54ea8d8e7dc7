"""The optimizer's two small decisions as pure functions: which parameters decay, and the learning
rate at each step. Pure so they can be tested and plotted alone, and so a resumed run needs nothing
but the step counter to be back on schedule (no scheduler state to save)."""

from __future__ import annotations

import math

from torch import nn


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warmup to `max_lr`, then a
    half-cosine down to `min_lr` at `total_steps`, held there after.

    Warmup lets Adam's second-moment estimates settle before the largest updates are taken; the
    cosine spends most of the budget near the peak and lands softly (Loshchilov & Hutter 2017).
    The first warmup step is already non-zero so no step is wasted.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups with weight decay on matrices only (linear weights, embeddings).

    Decay pulls weights towards zero; on a bias or a norm's gain that fights the one number the
    layer has for shifting or scaling, so those (every tensor with fewer than two dimensions) are
    left alone, as in GPT-2, nanoGPT and Llama. Tied weights appear once: `parameters()`
    de-duplicates shared tensors.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
