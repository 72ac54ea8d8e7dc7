"""The numbers a run reports: validation loss, perplexity and bits per byte for language models;
accuracy and macro-F1 for classifiers, entity-level F1 for BIO taggers (BLEU for translation is in `bleu`)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def evaluate(
    model, loader: DataLoader, accelerator: Accelerator | None, byte_lengths: torch.Tensor, progress: bool = True
) -> dict:
    """Validation loss (nats per token), perplexity and bits per byte over every block of `loader`.
    With no `accelerator` (one process, a plain loader), batches go to `byte_lengths`' device;
    `progress` shows a bar on the main process while it runs (gone when done).

    Bits per byte divides the summed loss by the UTF-8 bytes the predicted tokens spell, so it
    measures the model and tokenizer together and compares across vocabularies; per-token loss
    does not (a bigger vocabulary predicts fewer, harder tokens).
    """
    device = byte_lengths.device if accelerator is None else accelerator.device
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    main = accelerator is None or accelerator.is_local_main_process
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not main or not progress):
            if accelerator is None:
                batch = {k: v.to(device) for k, v in batch.items()}
            ids_BL = batch["input_ids"]
            # Documents kept apart: their own positions, and no target where a document starts (-100).
            labels_BL = batch.get("labels", ids_BL)
            logits_BLV = model(input_ids=ids_BL, position_ids=batch.get("position_ids"), use_cache=False).logits
            # position t predicts token t+1
            targets_BL = labels_BL[:, 1:]
            scored_BL = targets_BL != -100
            nll_BL = F.cross_entropy(logits_BLV[:, :-1].float().transpose(1, 2), targets_BL, reduction="none",
                                     ignore_index=-100)  # fmt: skip
            per_block_B3 = torch.stack(
                [nll_BL.sum(1), scored_BL.sum(1), (byte_lengths[ids_BL[:, 1:]] * scored_BL).sum(1)], dim=1
            ).double()
            # gather_for_metrics drops the blocks repeated to give every process equal batches.
            totals += (per_block_B3 if accelerator is None else accelerator.gather_for_metrics(per_block_B3)).sum(0)
    model.train()
    nats, tokens, n_bytes = totals.tolist()  # host sync: once per evaluation
    loss = nats / tokens
    return {
        "eval_loss": round(loss, 6),
        "eval_ppl": round(math.exp(loss), 4) if loss < 700 else math.inf,
        "eval_bpb": round(nats / (math.log(2) * n_bytes), 6) if n_bytes else math.nan,
        "eval_tokens": int(tokens),
        "eval_bytes": int(n_bytes),
    }


def accuracy_and_macro_f1(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Accuracy, and F1 averaged over classes with equal weight (so a rare class counts as much as a
    common one), over the classes that occur in either array, as scikit-learn's `f1_score(average="macro")`."""
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if references.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    f1s = []
    for c in np.union1d(predictions, references):
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1s))}


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels)


def compute_token_metrics(eval_pred) -> dict[str, float]:
    """Word-level: only the positions that carry a label (each word's first sub-token) count."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    keep = labels != -100
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1)[keep], labels[keep])


logger = logging.getLogger(__name__)

# B-/I-/E-/S- and an entity type ("B-PER"), or the bare tag ("B", as keyphrase or word-segmentation data tag).
_ENTITY_TAG = re.compile(r"[BIES](-.+)?")


def is_entity_tagging(label_names: Sequence[str] | None) -> bool:
    """Whether the labels are chunk tags of the BIO family (IOB1, IOB2, IOBES): each one `O`, or
    `B-`/`I-`/`E-`/`S-` and a type (`B-PER`), or a bare `B`/`I`/`E`/`S`; and not all of them `O`.
    These are the tags seqeval's default mode (CoNLL's conlleval) reads spans from."""
    names = list(label_names or ())
    return any(n != "O" for n in names) and all(n == "O" or _ENTITY_TAG.fullmatch(n) for n in names)


def token_metrics(label_names: Sequence[str] | None = None) -> Callable[[Any], dict[str, float]]:
    """`compute_metrics` for token classification, with the label names the ids index.

    Always word-level `accuracy` and `macro_f1`, as `compute_token_metrics`. When the labels are
    entity tags (`is_entity_tagging`) and seqeval is installed (`pip install "scratchformer[ner]"`),
    also entity-level `precision`, `recall` and `f1`, micro-averaged over entities as seqeval's
    default mode (CoNLL's conlleval) counts them: a predicted entity is right only when its type and
    both ends are. Without seqeval one warning says how to get them, and the token metrics go on
    alone. The function's `entity_level` attribute says which it computes."""
    names = [str(n) for n in label_names or ()]
    scores = None
    if is_entity_tagging(names):
        try:
            from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as scores
        except ImportError:
            logger.warning(
                "the labels are entity tags (B-/I-/O), but entity-level precision/recall/F1 need seqeval: "
                'pip install "scratchformer[ner]"; reporting token accuracy and macro-F1 only'
            )

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        keep = labels != -100  # each word's first sub-token (`tasks.align_word_labels`)
        metrics = accuracy_and_macro_f1(predictions[keep], labels[keep])
        if scores is not None:
            # One sequence per sentence, one tag per word: spans never run across sentences.
            true = [[names[i] for i in row[mask]] for row, mask in zip(labels, keep)]
            pred = [[names[i] for i in row[mask]] for row, mask in zip(predictions, keep)]
            precision, recall, f1, _ = scores(true, pred, average="micro", zero_division=0)
            metrics.update(precision=float(precision), recall=float(recall), f1=float(f1))
        return metrics

    compute.entity_level = scores is not None
    return compute
