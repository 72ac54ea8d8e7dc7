"""The language-model loss, fused with the head: what a training step of a causal LM computes.

Dimension key: N tokens, flattened (B * L); C model width; V vocabulary; R rows of one loss chunk.

Part of the remote-code payload copied next to every checkpoint: it imports only torch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Rows per chunk: 2**24 float32 logits (64 MiB) at a time, however large the vocabulary.
LOSS_CHUNK_ELEMENTS = 2**24


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(x @ weight.T, labels, reduction="sum") / denominator, without the (N, V) logits.

    The textbook step keeps the float32 logits, their log-softmax and then their gradient: three
    N x V tensors, which at GPT-2's vocabulary outweigh the whole model. But the gradient of the
    loss with respect to the logits is known as soon as the logits are: (softmax - onehot) / denominator.
    So each chunk of R rows is projected, turned into its loss and its gradient, and multiplied
    back into the gradients of x and weight, and the chunk is freed before the next one. Backward
    only hands the stored gradients on (scaled, if the loss was scaled after this function)."""

    @staticmethod
    def forward(ctx, x_NC, weight_VC, labels_N, ignore_index: int, denominator) -> torch.Tensor:
        N, V = x_NC.shape[0], weight_VC.shape[0]
        ctx.in_dtypes = (x_NC.dtype, weight_VC.dtype)
        device = x_NC.device.type
        autocast = torch.amp.is_autocast_available(device)
        if autocast and torch.is_autocast_enabled(device):
            # Do autocast's casts once, here, rather than once per chunk.
            dtype = torch.get_autocast_dtype(device)
            x_NC, weight_VC = x_NC.to(dtype), weight_VC.to(dtype)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid_N = labels_N != ignore_index
        target_N = torch.where(valid_N, labels_N, 0)
        # Each row's share of d loss / d logits: 1 / denominator where it has a label, else 0.
        weight_N = valid_N / denominator
        loss = torch.zeros((), dtype=torch.float32, device=x_NC.device)
        grad_x_NC = torch.empty_like(x_NC) if needs_grad else None
        grad_weight_VC = None  # float32 whatever the weight's dtype: it sums over chunks
        chunks = max(1, -(-N * V // LOSS_CHUNK_ELEMENTS))
        R = -(-N // chunks)
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            for start in range(0, N, R):
                rows = slice(start, start + R)
                x_RC, target_R, valid_R, weight_R = x_NC[rows], target_N[rows], valid_N[rows], weight_N[rows]
                logits_RV = (x_RC @ weight_VC.T).float()  # float32, as transformers' loss upcasts
                target_logit_R = logits_RV.gather(1, target_R[:, None])[:, 0]
                # softmax and logsumexp from one exponential, computed in the logits' own memory
                max_R = logits_RV.amax(dim=-1)
                exp_RV = logits_RV.sub_(max_R[:, None]).exp_()
                sum_R = exp_RV.sum(dim=-1)
                # -log softmax(logits)[target] = logsumexp(logits) - logits[target]
                loss += torch.where(valid_R, max_R + sum_R.log() - target_logit_R, 0.0).sum()
                if not needs_grad:
                    continue
                grad_RV = exp_RV.mul_((weight_R / sum_R)[:, None])  # softmax, weighted
                grad_RV.scatter_add_(1, target_R[:, None], -weight_R[:, None].to(grad_RV.dtype))  # - onehot
                grad_RV = grad_RV.to(x_NC.dtype)
                torch.mm(grad_RV, weight_VC, out=grad_x_NC[rows])
                if grad_weight_VC is None:
                    grad_weight_VC = (grad_RV.T @ x_RC).float()
                elif grad_weight_VC.dtype == x_RC.dtype:
                    grad_weight_VC.addmm_(grad_RV.T, x_RC)
                else:
                    grad_weight_VC += grad_RV.T @ x_RC
        if needs_grad:
            ctx.save_for_backward(grad_x_NC, grad_weight_VC)
        return loss / denominator

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x_NC, grad_weight_VC = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.in_dtypes
        # loss.backward() sends 1: the stored gradients are final. Testing for it reads the value,
        # which is free on CPU; elsewhere that read would be a host sync, so the scaling runs.
        on_cpu = grad_loss.device.type == "cpu" and not torch.compiler.is_compiling()
        if not on_cpu or grad_loss.item() != 1.0:
            grad_x_NC, grad_weight_VC = grad_x_NC * grad_loss.to(grad_x_NC.dtype), grad_weight_VC * grad_loss
        return (
            grad_x_NC.to(x_dtype) if ctx.needs_input_grad[0] else None,
            grad_weight_VC.to(weight_dtype) if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )


def fused_causal_lm_loss(
    x_BLC: torch.Tensor,
    weight_VC: torch.Tensor,
    labels_BL: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (same shift, same ignore_index, same averaging), computed from
    the final hidden states and the head's weight by LinearCrossEntropy."""
    if shift_labels is None:
        # Position t predicts token t+1: the label of position t is the token at t+1, and the last
        # position has none.
        shift_labels = F.pad(labels_BL, (0, 1), value=ignore_index)[:, 1:]
    labels_N = shift_labels.reshape(-1).to(x_BLC.device)
    if num_items_in_batch is None:
        # A mean over the tokens that have a label (nan when none has one, as in transformers).
        denominator = (labels_N != ignore_index).sum()
    else:
        # Gradient accumulation: this micro-batch's sum over the tokens of the whole batch.
        denominator = num_items_in_batch
        if torch.is_tensor(denominator):
            denominator = denominator.to(x_BLC.device)
    x_NC = x_BLC.reshape(-1, x_BLC.shape[-1])
    return LinearCrossEntropy.apply(x_NC, weight_VC, labels_N, ignore_index, denominator)
