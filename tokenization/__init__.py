"""Byte-level BPE tokenizers trained with `tokenizers`, returned as stock `PreTrainedTokenizerFast`."""
