"""ScratchformerSeq2SeqConfig: the numbers of the paper's own model, an encoder-decoder.

The concept fields mean what they mean in `ScratchformerConfig` (norm type and position, MLP type,
biases, embedding scale, dropouts), so the building blocks of `transformer_scratchformer.py` read
this config unchanged. What is new is the shape of the thing: two stacks (`encoder_layers`,
`decoder_layers`) and the token the decoder starts from (`decoder_start_token_id`).

This file is part of the remote-code payload copied next to every checkpoint: it imports only
`transformers` and its sibling `configuration_scratchformer.py`.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .configuration_scratchformer import check_config

# Rotary positions are a decoder-only idea here: the paper's model adds its positions to the embeddings.
POSITION_EMBEDDINGS = ("sinusoidal", "learned")

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, table 3 "base": N=6 encoder and 6 decoder layers, d_model=512, h=8,
    # d_ff=2048, sinusoidal positions, post-norm LayerNorm, ReLU, dropout 0.1, one embedding matrix
    # shared by source, target and the pre-softmax projection (section 3.4), scaled by sqrt(d_model).
    "paper": dict(
        hidden_size=512,
        encoder_layers=6,
        decoder_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        position_embedding="sinusoidal",
        norm_type="layernorm",
        norm_position="post",
        norm_eps=1e-5,
        mlp_type="relu",
        attention_bias=True,
        mlp_bias=True,
        scale_embeddings=True,
        embedding_dropout=0.1,
        hidden_dropout=0.1,
        attention_dropout=0.0,
        tie_word_embeddings=True,
    ),
}


class ScratchformerSeq2SeqConfig(PreTrainedConfig):
    r"""Configuration of a scratchformer encoder-decoder.

    Sizes: `vocab_size` (one vocabulary shared by source and target, as in the paper),
    `hidden_size` (C, the paper's d_model), `encoder_layers`, `decoder_layers`,
    `num_attention_heads` (H), `num_key_value_heads` (G), `intermediate_size` (F, d_ff),
    `max_position_embeddings`.

    Concepts (as in `ScratchformerConfig`): `position_embedding` ("sinusoidal" | "learned"),
    `norm_type`, `norm_position`, `mlp_type`, `attention_bias`, `mlp_bias`, `scale_embeddings`, `qk_norm`.

    `ScratchformerSeq2SeqConfig.from_preset("paper", vocab_size=...)` is the paper's base model.
    """

    model_type = "scratchformer-seq2seq"
    _auto_class = "AutoConfig"
    # Output fields Trainer's prediction loop must not take for logits: the cache, under its name
    # before and after transformers 5.24 renamed it.
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # transformers' generic code (cache construction, gradient-checkpointing helpers) asks for
    # `num_hidden_layers`; the decoder's count is the one a key/value cache needs.
    attribute_map = {"d_model": "hidden_size", "num_hidden_layers": "decoder_layers"}

    vocab_size: int = 8192
    hidden_size: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 512

    position_embedding: str = "sinusoidal"
    norm_type: str = "layernorm"
    norm_position: str = "post"
    norm_eps: float = 1e-5
    mlp_type: str = "relu"
    attention_bias: bool = True
    mlp_bias: bool = True
    scale_embeddings: bool = True
    qk_norm: bool = False

    embedding_dropout: float = 0.1
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    # The decoder's first input, "start translating". T5 and BART reuse pad / eos for it; we use
    # bos, which the decoder never has to predict.
    decoder_start_token_id: int | None = 1
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._check()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ScratchformerSeq2SeqConfig:
        """The named family ("paper": the base model of Vaswani et al. 2017), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}: choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def _check(self) -> None:
        check_config(
            self,
            size_fields=("vocab_size", "hidden_size", "encoder_layers", "decoder_layers", "num_attention_heads",
                         "num_key_value_heads", "intermediate_size", "max_position_embeddings"),
            position_embeddings=POSITION_EMBEDDINGS,
            token_fields=("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"),
        )
        if self.decoder_start_token_id is None:
            raise ValueError("decoder_start_token_id must be set: the decoder needs a first token to read.")


__all__ = ["ScratchformerSeq2SeqConfig", "PRESETS"]
