"""What the model has learned to do, measured while it trains: at each evaluation, on fixed probes,

- the head scores of `head_scores` (previous-token, first-token, induction, entropy per head, and the
  in-context score): the summary numbers and the per-head tables;
- the logit lens (nostalgebraist 2020): the final norm and the LM head applied to the residual stream
  after the embeddings and after each block, and the loss (nats per token) each of those readings
  would get on the probe text. The last entry is the model's own loss on it. How fast the curve
  falls from layer to layer shows where the prediction is assembled; over training, it shows layers
  starting to matter one after another;
- an attention snapshot: every head's map on a short fixed text written twice, the picture in which
  previous-token heads (a stripe under the diagonal) and induction heads (a stripe T - 1 tokens to
  the left of the diagonal in the second copy) can be seen forming.

The numbers go into the run's evaluation record (metrics.jsonl and the trackers); the snapshots into
`attention_snapshots.jsonl` beside it, one line per evaluation: about layers x heads x (2T + 1)^2 / 2
weights of up to 7 characters: about 60 KB a line for 4 x 4 heads and T = 16.

Defined once here, so the run, `scratchformer inspect timeline` and the tests read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .head_scores import TEXT_TOKENS, head_scores, text_probe
from .token_labels import token_labels

SNAPSHOT_TOKENS = 16  # T: tokens of the probe text in each copy of the attention snapshot
# On by default while the model has at most this many heads in all (layers x heads): tiny (8), mini
# (16) and small (36); base (144) is off, its snapshot lines would be ~0.5 MB each.
AUTO_MAX_HEADS = 64


def enabled_by_default(num_hidden_layers: int, num_attention_heads: int) -> bool:
    return num_hidden_layers * num_attention_heads <= AUTO_MAX_HEADS


@torch.no_grad()
def logit_lens(model, ids: torch.Tensor) -> list[float]:
    """Loss (nats per token) of the next-token prediction read from the residual stream after the
    embeddings and after each block (final norm, then LM head): [embeddings, block 0, ..., block N-1].
    The last entry is the model's own loss on `ids` ([batch, L])."""
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    # hidden_states: the input of every block, then the final output (already through the final norm).
    residuals = out.hidden_states[1:-1]
    norm, head = model.base_model.norm, model.get_output_embeddings()
    readings = [norm(out.hidden_states[0]), *(norm(x) for x in residuals), out.hidden_states[-1]]
    targets = ids[:, 1:]
    losses = []
    for x_BLC in readings:
        logits_BLV = head(x_BLC[:, :-1]).float()  # position t predicts token t+1
        losses.append(F.cross_entropy(logits_BLV.transpose(1, 2), targets).item())
    return losses


def snapshot_probe(
    tokenizer, tokens: int = SNAPSHOT_TOKENS, limit: int | None = None, token_ids: Sequence[int] | None = None
) -> torch.Tensor:
    """[1, (1) + 2T] ids: the first T tokens of the probe text (or, given `token_ids`, those tokens in
    a fixed shuffled order), written twice (after the tokenizer's <s>). The second copy is what an
    induction head predicts from the first."""
    bos = tokenizer.bos_token_id
    if token_ids is not None:
        body = [token_ids[i] for i in torch.randperm(len(token_ids), generator=torch.Generator().manual_seed(0))]
    else:
        ids = text_probe(tokenizer)[0].tolist()
        body = ids[1:] if bos is not None and ids and ids[0] == bos else ids
    if limit is not None:
        tokens = min(tokens, (limit - (bos is not None)) // 2)
    body = body[:tokens]
    return torch.tensor([([bos] if bos is not None else []) + body + body])


@torch.no_grad()
def attention_snapshot(
    model, tokenizer, tokens: int = SNAPSHOT_TOKENS, token_ids: Sequence[int] | None = None
) -> dict:
    """{"tokens": labels, "maps": [layer][head][query][key <= query]} on `snapshot_probe`: the
    weights of the keys each query may see (the causal future is 0 and left out), rounded to 3
    decimals (a picture needs no more)."""
    ids = snapshot_probe(tokenizer, tokens, getattr(model.config, "max_position_embeddings", None), token_ids)
    ids = ids.to(next(model.parameters()).device)
    out = model(input_ids=ids, output_attentions=True, use_cache=False)
    maps = torch.stack([probs_BHLM[0] for probs_BHLM in out.attentions]).double().cpu().numpy()
    # The causal mask makes everything right of the diagonal an exact 0: row q keeps its q + 1 keys.
    rows = [[[[round(float(w), 3) for w in row[: q + 1]] for q, row in enumerate(head)] for head in layer]
            for layer in maps]  # fmt: skip
    return {"tokens": token_labels(tokenizer, ids[0].tolist()), "maps": rows}


@torch.no_grad()
def mechanism_metrics(model, tokenizer, token_ids: Sequence[int] | None = None) -> tuple[dict, dict]:
    """(numbers for the evaluation record, the attention snapshot) for a causal LM. The model's mode
    is restored; the probes run in eval mode (no dropout). With `token_ids` (a model trained on those
    tokens alone: `--synthetic_data`) every probe is made of them: the text probe is a seeded uniform
    sequence of them."""
    was_training = model.training
    model.eval()
    try:
        ids = probe_text_ids(model, tokenizer, token_ids)
        scores = head_scores(model, tokenizer, token_ids=token_ids, text_ids=ids)
        lens = logit_lens(model, ids.to(next(model.parameters()).device))
        snapshot = attention_snapshot(model, tokenizer, token_ids=token_ids)
    finally:
        model.train(was_training)
    record = {
        **scores.summary(),
        "logit_lens_loss": [round(v, 4) if math.isfinite(v) else None for v in lens],
        "heads": {name: getattr(scores, name) for name in ("previous_token", "first_token", "induction", "entropy")},
        "probe": {"text_tokens": scores.text_tokens, "induction_period": scores.induction_period,
                  "loss_first_copy": scores.loss_first_copy, "loss_repeat": scores.loss_repeat},
    }
    return record, snapshot


def probe_text_ids(model, tokenizer, token_ids: Sequence[int] | None = None) -> torch.Tensor:
    """[1, L] ids the text scores and the logit lens read: the probe text, within the model's positions;
    with `token_ids` (a model trained on those alone) a seeded uniform sequence of them after <s>."""
    limit = getattr(model.config, "max_position_embeddings", None)
    length = min(TEXT_TOKENS, limit or TEXT_TOKENS)
    if token_ids is None:
        return text_probe(tokenizer, max_tokens=length)
    generator = torch.Generator().manual_seed(0)
    body = torch.tensor(token_ids)[torch.randint(len(token_ids), (length,), generator=generator)]
    bos = tokenizer.bos_token_id
    return (body if bos is None else torch.cat([torch.tensor([bos]), body[:-1]]))[None]


def tracker_scalars(record: dict) -> dict[str, float]:
    """A record's numbers as flat scalars for tensorboard/wandb: the per-head tables become
    `heads/induction/L1H2`, the logit lens `logit_lens/after_block_0` (`.../embeddings`)."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[key] = value
        elif key == "logit_lens_loss" and isinstance(value, list):
            for i, v in enumerate(value):
                if v is not None:
                    flat["logit_lens/" + ("embeddings" if i == 0 else f"after_block_{i - 1}")] = v
        elif key == "heads" and isinstance(value, dict):
            for name, table in value.items():
                for layer, row in enumerate(table):
                    for h, v in enumerate(row):
                        flat[f"heads/{name}/L{layer}H{h}"] = v
    return flat


__all__ = [
    "AUTO_MAX_HEADS",
    "SNAPSHOT_TOKENS",
    "attention_snapshot",
    "enabled_by_default",
    "logit_lens",
    "mechanism_metrics",
    "snapshot_probe",
    "tracker_scalars",
]
