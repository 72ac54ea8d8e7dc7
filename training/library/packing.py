"""Text to training blocks: tokenize, join, cut into `block_size` chunks; and the byte count of
every token, which makes validation loss comparable across tokenizers (bits per byte).

Two maps rather than one, so the tokenized corpus is cached on its own and a new `block_size`
re-uses it. Both run through `datasets.map(batched=True)`: parallel with `num_proc`, cached on
disk next to file-backed datasets, and lazy (nothing cached) on a streaming `IterableDataset`.
"""

from __future__ import annotations

from itertools import chain

import datasets
import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Rows per `map` batch when packing. Each batch drops its last partial block, so short rows (lines
# of a text file) get bigger batches to keep that waste near 0.1 %; documents are long enough
# that 1000 (Hugging Face's run_clm value) wastes as little while keeping memory per worker flat.
PACK_ROWS = {"documents": 1_000, "lines": 10_000}


def tokenize_and_pack(
    ds: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    rows_are_documents: bool = True,
    num_proc: int | None = None,
    split: str = "train",
) -> datasets.Dataset | datasets.IterableDataset:
    """Rows of column "text" -> rows of `block_size` token ids (column "input_ids"), every block full.

    Rows that are documents (JSON lines, CSV, Parquet, hub datasets, the default corpus) become
    `<s> text </s>` as the tokenizer frames them for inference (its post-processor adds `<s>`;
    the packer adds `</s>`), then are joined end to end, so a block may hold the end of one
    document and the start of the next: no padding, every position trains.

    Rows that are lines of running text (`.txt` files, read one row per line with line breaks
    kept) are joined with nothing between them, which gives back the file's text exactly; each
    block then opens with `<s>` so the model still sees the token every prompt starts with, in the
    one position that is never a target.
    """
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2: a block predicts its tokens 1..L-1")
    streaming = isinstance(ds, datasets.IterableDataset)
    mode = "documents" if rows_are_documents else "lines"
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if not rows_are_documents and bos is None:
        bos = eos  # a tokenizer without <s> (GPT-2's): its end-of-text token is also its separator

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch["text"] if t]
        if rows_are_documents:
            ids = tokenizer(texts, verbose=False)["input_ids"]
            ids = [x + [eos] if eos is not None and x[-1:] != [eos] else x for x in ids]
        else:
            ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": ids}

    step = block_size if rows_are_documents or bos is None else block_size - 1

    def pack(batch: dict[str, list]) -> dict[str, list]:
        stream = list(chain.from_iterable(batch["input_ids"]))
        cut = len(stream) // step * step
        blocks = [stream[i : i + step] for i in range(0, cut, step)]
        if step < block_size:
            blocks = [[bos] + b for b in blocks]
        return {"input_ids": blocks}

    parallel = {} if streaming else {"num_proc": num_proc, "desc": f"Tokenizing {split}"}
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], **parallel)
    if not streaming:
        parallel["desc"] = f"Packing {split} into blocks of {block_size}"
    return ds.map(pack, batched=True, batch_size=PACK_ROWS[mode], **parallel)


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """How many UTF-8 bytes of text each token id spells, as a `[len(tokenizer)]` int64 tensor.

    Summed over the tokens a model predicted, this is the exact byte count of the text it
    predicted, so `nll_nats / (ln 2 * bytes)` is bits per byte: comparable across vocabularies,
    unlike per-token loss. Special tokens spell no text and count 0 bytes (predicting `</s>` is
    charged to the bytes around it, a slight penalty, never a discount).

    Exact for byte-level BPE (ours, GPT-2's, Llama 3's), whose token strings map character for
    character to bytes through GPT-2's byte alphabet. For other tokenizers a token's length is
    that of its decoded text, close but not exact (SentencePiece's leading-space marker, say).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    for token, i in tokenizer.get_vocab().items():
        if i in special or i >= len(lengths):
            continue
        if byte_level and all(ch in byte_of for ch in token):
            lengths[i] = len(token)  # one alphabet character per byte
        else:
            lengths[i] = len(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
    return lengths
