"""ScratchformerConfig: every number the model reads, checked once, in one place.

A handful of fields are *concept* choices a learner compares side by side (where positions come
from, which norm and where it sits, which MLP, causal or not). Everything else is a size. The four
presets name the families those choices come from: the 2017 paper, GPT-2, Llama and Qwen3.

This file is part of the remote-code payload copied next to every checkpoint: it imports only
`transformers`.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

POSITION_EMBEDDINGS = ("sinusoidal", "learned", "rope")
NORM_TYPES = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLP_TYPES = ("relu", "gelu", "swiglu")

# The families a learner meets in the literature. Sizes are left to the caller (or to the
# defaults below); these are only the concept choices and what goes with them.
PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017: sinusoidal positions added to embeddings scaled by sqrt(d_model),
    # post-norm residual blocks with LayerNorm, ReLU feed-forward, biases, dropout 0.1.
    "paper": dict(
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
    # Radford et al. 2019: learned absolute positions, pre-norm LayerNorm, GELU (tanh form), biases.
    "gpt2": dict(
        position_embedding="learned",
        norm_type="layernorm",
        norm_position="pre",
        norm_eps=1e-5,
        mlp_type="gelu",
        attention_bias=True,
        mlp_bias=True,
        scale_embeddings=False,
        tie_word_embeddings=True,
    ),
    # Touvron et al. 2023: rotary positions, pre-norm RMSNorm, SwiGLU, no biases.
    "llama": dict(
        position_embedding="rope",
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=1e-6,
        mlp_type="swiglu",
        attention_bias=False,
        mlp_bias=False,
        scale_embeddings=False,
    ),
    # Qwen3 (Qwen team 2025): Llama's block with QK-norm, RMSNorm on each head's queries and keys
    # (transformers' Qwen3ForCausalLM, llama.cpp's and vLLM's "qwen3").
    "qwen3": dict(
        position_embedding="rope",
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=1e-6,
        mlp_type="swiglu",
        attention_bias=False,
        mlp_bias=False,
        scale_embeddings=False,
        qk_norm=True,
    ),
}


class ScratchformerConfig(PreTrainedConfig):
    r"""Configuration of a scratchformer model.

    Sizes: `vocab_size`, `hidden_size` (C), `num_hidden_layers`, `num_attention_heads` (H),
    `num_key_value_heads` (G; fewer than H is grouped-query attention, 1 is multi-query),
    `intermediate_size` (F; derived from `mlp_type` when left out), `max_position_embeddings`.

    Concepts: `position_embedding` ("sinusoidal" | "learned" | "rope", with `rope_theta`),
    `norm_type` ("layernorm" | "rmsnorm"), `norm_position` ("pre" | "post"), `mlp_type`
    ("relu" | "gelu" | "swiglu"; "gelu" is GPT-2's tanh approximation), `attention_bias`,
    `mlp_bias`, `is_causal` (decoder, or bidirectional encoder for masked-LM), `scale_embeddings`
    (the paper's multiplication of embeddings by sqrt(C)), `qk_norm` (RMSNorm on each head's queries
    and keys, as OLMo 2 and Qwen3 do; on in the qwen3 preset only).

    Speed: `fused_lm_loss=True` computes a training step's LM head and cross-entropy together,
    chunk by chunk, so the (tokens x vocab) float32 logits never exist in full; such a step returns
    `loss` and `logits=None`. Evaluation, generation and `torch.no_grad()` are unchanged. It is off
    by default because some trainers read training logits (TRL's SFTTrainer computes its token
    accuracy from them); `scratchformer pretrain` turns it on for its own loop, and `Trainer` is
    fine with it on.

    Start from a family with `ScratchformerConfig.from_preset("paper" | "gpt2" | "llama" | "qwen3", **sizes)`.
    """

    model_type = "scratchformer"
    # save_pretrained copies this file next to config.json, so remote code can rebuild the config.
    _auto_class = "AutoConfig"
    # Output fields Trainer's prediction loop must not take for logits: the cache, under its name
    # before and after transformers 5.24 renamed it.
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Tensor parallelism (from_pretrained(..., tp_plan="auto"), vLLM) and pipeline parallelism, in
    # Llama's vocabulary, which our module names share: projections into the heads are split by
    # columns (each rank gets whole heads), projections out of them by rows, then summed. QK-norm's
    # gains act on one head's width, which every rank holds whole: they are replicated, and their
    # gradients summed over ranks (Qwen3's plan).
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.q_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.k_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    # GPT-2 style aliases, so code written against GPT2Config reads our config too.
    attribute_map = {
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
    }

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024

    position_embedding: str = "rope"
    rope_theta: float = 10000.0
    norm_type: str = "rmsnorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-6
    mlp_type: str = "swiglu"
    attention_bias: bool = False
    mlp_bias: bool = False
    is_causal: bool = True
    scale_embeddings: bool = False
    qk_norm: bool = False

    embedding_dropout: float = 0.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    mask_token_id: int | None = 4
    tie_word_embeddings: bool = True
    use_cache: bool = True
    fused_lm_loss: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.hidden_size, self.mlp_type)
        if not isinstance(self.fused_lm_loss, bool):
            raise ValueError(f"fused_lm_loss must be True or False, got {self.fused_lm_loss!r}.")
        self._check()
        # Only the gated MLP has a gate_proj to split, and only QK-norm has q_norm/k_norm to replicate.
        absent = ("gate_proj",) * (self.mlp_type != "swiglu") + ("q_norm", "k_norm") * (not self.qk_norm)
        if absent:
            self.base_model_tp_plan = {
                k: v for k, v in type(self).base_model_tp_plan.items() if not k.endswith(absent)
            }
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ScratchformerConfig:
        """A config for one of the named families ("paper", "gpt2", "llama", "qwen3"), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}: choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def _check(self) -> None:
        check_config(
            self,
            size_fields=("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "intermediate_size", "max_position_embeddings"),
            position_embeddings=POSITION_EMBEDDINGS,
            token_fields=("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id"),
        )


def check_config(
    config: PreTrainedConfig,
    *,
    size_fields: tuple[str, ...],
    position_embeddings: tuple[str, ...],
    token_fields: tuple[str, ...],
) -> None:
    """The checks every scratchformer config shares (the encoder-decoder's too): each error names the
    field and the fix, so a bad value never surfaces later as a shape error deep in a forward."""

    def choice(field: str, options: tuple[str, ...]) -> None:
        value = getattr(config, field)
        if value not in options:
            raise ValueError(f"{field}={value!r} is not supported: set {field} to one of {list(options)}.")

    choice("position_embedding", position_embeddings)
    choice("norm_type", NORM_TYPES)
    choice("norm_position", NORM_POSITIONS)
    choice("mlp_type", MLP_TYPES)
    for field in size_fields:
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive integer, got {value!r}.")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size={config.hidden_size} is not divisible by num_attention_heads="
            f"{config.num_attention_heads}: each head gets hidden_size / num_attention_heads channels. "
            f"Pick a head count that divides {config.hidden_size}."
        )
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads={config.num_attention_heads} is not divisible by num_key_value_heads="
            f"{config.num_key_value_heads}: in grouped-query attention each key/value head serves an equal "
            f"group of query heads. Pick a num_key_value_heads that divides {config.num_attention_heads}."
        )
    if config.position_embedding == "rope":
        if config.head_dim % 2:
            raise ValueError(
                f"Rotary embeddings rotate channel pairs, so the head width (hidden_size / "
                f"num_attention_heads = {config.head_dim}) must be even."
            )
        if config.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {config.rope_theta}.")
    if config.position_embedding == "sinusoidal" and config.hidden_size % 2:
        raise ValueError(
            f"Sinusoidal encodings pair sin and cos channels: hidden_size={config.hidden_size} must be even."
        )
    if config.norm_eps <= 0:
        raise ValueError(f"norm_eps must be positive, got {config.norm_eps}.")
    for field in ("embedding_dropout", "hidden_dropout", "attention_dropout"):
        value = getattr(config, field)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{field} must be in [0, 1), got {value}.")
    for field in token_fields:
        value = getattr(config, field)
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and not 0 <= token_id < config.vocab_size:
                raise ValueError(
                    f"{field}={token_id} is outside the vocabulary [0, {config.vocab_size}): set {field} to an "
                    f"id your tokenizer has (e.g. tokenizer.{field}) or None."
                )


def default_intermediate_size(hidden_size: int, mlp_type: str) -> int:
    """4C for a two-matrix MLP (the paper, GPT-2). SwiGLU has three matrices, so Llama takes 2/3 of
    4C to keep the parameter count, rounded up to a multiple of 32 for friendly matrix shapes."""
    if mlp_type == "swiglu":
        return 32 * -(-(8 * hidden_size // 3) // 32)
    return 4 * hidden_size


__all__ = ["ScratchformerConfig", "PRESETS"]
