"""The optimizer and the learning rate: which parameters decay, which optimizer moves which
parameters, and the learning rate at each step.

The schedule is a pure function of the step, so it can be tested and plotted alone, and a resumed
run needs nothing but the step counter to be back on it (no scheduler state to save).

    --optimizer adamw   AdamW on every parameter (GPT-2, nanoGPT, Llama)
    --optimizer muon    Muon (torch.optim.Muon) on the hidden matrices: the linear layers inside the
                        transformer blocks that map hidden states to hidden states (attention's value and
                        output projections; the MLP's up, gate, down); AdamW on the rest: the query and
                        key projections (see below), token and position embeddings, the LM head (tied
                        to the embeddings or not), norms and biases.

Why the query and key projections go to AdamW (`--query_key_optimizer`, measured in
benchmarks/results/recipes_shakespeare.md): an attention logit is q . k / sqrt(K), so the norms of
W_q and W_k set how sharp attention can be. Muon's update is an orthogonalised matrix, which raises a
weight's largest singular value by at most about 0.2 x sqrt(width) x lr per step; after the few hundred
steps of a small run W_q's stays near 1 (AdamW's reaches 2.5 to 3.5) and every head attends almost
uniformly. With q and k under AdamW (modded-nanogpt and nanochat reach the same end with QK-norm
instead, `qk_norm=True`, which changes the architecture) the heads sharpen as under AdamW, and
validation improves as well.

Muon's learning rate follows Moonshot's convention (`adjust_lr_fn="match_rms_adamw"`: each matrix's
update is scaled to the RMS an AdamW update has, 0.2 x sqrt(max(rows, cols))), so one
`--learning_rate` means the same step size for both optimizers and the AdamW value carries over
(Liu et al. 2025, "Muon is Scalable for LLM Training"). `--weight_decay` is decoupled in both.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")
QUERY_KEY = ("q_proj", "k_proj")  # the projections whose norms set the attention logits' scale
SCHEDULES = ("cosine", "wsd")


def lr_at(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    schedule: Literal["cosine", "wsd"] = "cosine",
    decay_fraction: float = 0.4,
) -> float:
    """The learning rate for optimizer step `step` (0-based): a linear warmup to `max_lr`, then

    - `cosine`: a half-cosine down to `min_lr` at `total_steps` (Loshchilov & Hutter 2017); most of
      the budget is spent well below the peak;
    - `wsd` (warmup-stable-decay): `max_lr` held until the last `decay_fraction` of the run, then a
      straight line down to `min_lr` (Hu et al. 2024, MiniCPM; Hägele et al. 2024). The stable
      phase can be extended and decayed from at any point, and trains at the peak for longer.

    Held at `min_lr` after `total_steps`. The first warmup step is already non-zero, so no step is
    wasted; warmup lets Adam's second-moment estimates settle before the largest updates.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return max_lr
        remaining = (total_steps - step) / (total_steps - decay_start)
        return min_lr + (max_lr - min_lr) * remaining
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every parameter group, for the coming step."""
    for group in optimizer.param_groups:
        group["lr"] = lr


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


def hidden_matrices(model: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the parameters Muon moves: the weight of every `nn.Linear` inside a transformer block
    (the classes the model names in `_no_split_modules`) but those named in `skip` (`QUERY_KEY`, by
    default of the optimizer). Embeddings are lookups, not maps between hidden states, and the LM
    head is the embedding matrix itself (or plays its role): those, like norms and biases, go to AdamW."""
    block_types = set(getattr(model, "_no_split_modules", None) or ())
    if not block_types:
        raise ValueError(f"{type(model).__name__} names no transformer block class (_no_split_modules)")
    shared = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    names = []
    for prefix, module in model.named_modules():
        if type(module).__name__ not in block_types:
            continue
        for sub, linear in module.named_modules():
            if sub.rpartition(".")[2] in skip:
                continue
            if isinstance(linear, nn.Linear) and linear.weight.requires_grad and id(linear.weight) not in shared:
                names.append(f"{prefix}.{sub}.weight" if sub else f"{prefix}.weight")
    return names


class MuonWithAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` on the hidden matrices and `torch.optim.AdamW` on every other parameter, as
    one `torch.optim.Optimizer`.

    One object, not two, because everything around an optimizer expects one per model: accelerate
    saves and shards optimizer state per model (under FSDP, a second optimizer has no model to be
    saved with), and the loop sets one learning rate on `param_groups`. The two inner optimizers
    do all the arithmetic; this class only shares its `param_groups` (Muon's groups first, then
    AdamW's, each group tagged `"optimizer"`) and its `state` with them, so `state_dict` /
    `load_state_dict` (accelerate's checkpoints, torch.distributed.checkpoint under FSDP) see one
    ordinary optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.95),
        momentum: float = 0.95,
        query_key: str = "adamw",
    ) -> None:
        if query_key not in OPTIMIZERS:
            raise ValueError(f"--query_key_optimizer {query_key!r} is not one of {', '.join(OPTIMIZERS)}")
        hidden = set(hidden_matrices(model, skip=QUERY_KEY if query_key == "adamw" else ()))
        params = dict(model.named_parameters())  # tied weights appear once
        muon_params = [p for n, p in params.items() if n in hidden]
        rest = [p for n, p in params.items() if n not in hidden and p.requires_grad]
        self.muon = torch.optim.Muon(
            [{"params": muon_params, "optimizer": "muon"}],
            lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(
            [
                {"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay, "optimizer": "adamw"},
                {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0, "optimizer": "adamw"},
            ],
            lr=lr, betas=betas,
        )
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {"lr": lr})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (after construction, and after
        `load_state_dict`, which replaces both)."""
        self.muon.param_groups = [g for g in self.param_groups if g["optimizer"] == "muon"]
        self.adamw.param_groups = [g for g in self.param_groups if g["optimizer"] == "adamw"]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    query_key: str = "adamw",
) -> torch.optim.Optimizer:
    """`--optimizer`: AdamW on everything (matrices decayed), or Muon with AdamW (see the module);
    `query_key` (`--query_key_optimizer`) says which of the two moves the query and key projections
    under Muon."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)
    if name == "muon":
        return MuonWithAdamW(model, lr=lr, weight_decay=weight_decay, betas=betas, query_key=query_key)
    raise ValueError(f"--optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
