"""Byte-level BPE tokenizers trained with `tokenizers`, returned as stock `PreTrainedTokenizerFast`."""

from scratchformer.tokenization.bpe import (
    ASSISTANT_ID,
    BOS_ID,
    DEFAULT_CHAT_TEMPLATE,
    END_ID,
    EOS_ID,
    MASK_ID,
    MIN_VOCAB_SIZE,
    PAD_ID,
    SPECIAL_TOKENS,
    SYSTEM_ID,
    UNK_ID,
    USER_ID,
    bytes_per_token,
    check_bpe_args,
    train_bpe,
)

__all__ = [
    "ASSISTANT_ID",
    "BOS_ID",
    "DEFAULT_CHAT_TEMPLATE",
    "END_ID",
    "EOS_ID",
    "MASK_ID",
    "MIN_VOCAB_SIZE",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "SYSTEM_ID",
    "UNK_ID",
    "USER_ID",
    "bytes_per_token",
    "check_bpe_args",
    "train_bpe",
]
