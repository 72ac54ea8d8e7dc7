"""A transformer written from scratch, in Hugging Face's clothes.

Dimension key (shape suffixes on every activation):
    B  batch          L  query length        M  key/value length (cache + new tokens)
    C  model width    H  query heads         G  key/value heads (grouped-query attention)
    K  head width     F  feed-forward width  V  vocabulary         P  positions
    N  tokens, flattened (B * L)                 R  rows of one loss chunk

The file reads bottom-up, as the model is built: norms, positional encodings, attention, MLP,
block, then the pretrained-model plumbing, the model, and the task heads. Every concept choice
comes from `ScratchformerConfig`; the three presets reproduce the 2017 paper, GPT-2 and Llama.

This file is the remote-code payload copied next to every checkpoint: it imports only torch,
transformers and its sibling configuration file.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple, logging

from .configuration_scratchformer import ScratchformerConfig

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------
# The KV cache's name, which transformers changed in 5.24
# ----------------------------------------------------------------------------------------------
# Up to 5.23, generate() hands the KV cache to forward() as `past_key_values=`, the output classes
# hold it in a field of that name and create_causal_mask() takes it so. 5.24 renamed all three to
# `cache` (the old names work until 5.40, with a warning). This file is frozen into every saved
# checkpoint and must run on both sides of the rename: inside, the model calls it `cache`; at the
# boundary it speaks the installed release's name, decided here, once.
CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def accepts_past_key_values(forward: Callable) -> Callable:
    """Lets a `forward(..., cache=...)` also be called with `past_key_values=`, the name generate()
    passes up to 5.23 and that users' code still spells."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if "past_key_values" in kwargs:
            old = kwargs.pop("past_key_values")
            if old is not None and kwargs.get("cache") is not None:
                raise ValueError("Pass the KV cache once, as cache= (past_key_values= before transformers 5.24).")
            kwargs["cache"] = old if old is not None else kwargs.get("cache")
        return forward(self, *args, **kwargs)

    return wrapper


def cache_field(cache: Cache | None) -> dict[str, Cache | None]:
    """The cache as a keyword of transformers' output classes, under the installed release's name."""
    return {CACHE_NAME: cache}


def cache_of(output) -> Cache | None:
    """The cache held by one of transformers' output classes (the field named CACHE_NAME)."""
    return getattr(output, CACHE_NAME)


def causal_mask(
    config, x_BLC: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None, position_ids=None
):
    """transformers' create_causal_mask, with the cache passed under the installed release's name."""
    return create_causal_mask(
        config=config, inputs_embeds=x_BLC, attention_mask=attention_mask, position_ids=position_ids,
        **cache_field(cache),
    )



# ----------------------------------------------------------------------------------------------
# Norms
# ----------------------------------------------------------------------------------------------


class ScratchformerLayerNorm(nn.Module):
    """LayerNorm (Ba et al. 2016): y = (x - mean) / sqrt(var + eps) * weight + bias, over the channels.

    Written with F.layer_norm, which computes exactly that formula in one fused kernel."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x_BLC, x_BLC.shape[-1:], self.weight, self.bias, self.eps)


class ScratchformerRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * weight. No centring, no bias:
    cheaper than LayerNorm and, in practice, as good. Computed in float32 because squaring bf16
    activations loses the small ones; the result is cast back before the weight, as in Llama.

    Written with F.rms_norm, which computes exactly x * rsqrt(mean(x^2) + eps) (bit for bit on CPU,
    in one fused kernel on GPU, where the formula spelled out is five kernels and four tensors)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        normed_BLC = F.rms_norm(x_BLC.float(), x_BLC.shape[-1:], eps=self.eps)
        return self.weight * normed_BLC.to(x_BLC.dtype)


def make_norm(config: ScratchformerConfig) -> nn.Module:
    if config.norm_type == "layernorm":
        return ScratchformerLayerNorm(config.hidden_size, config.norm_eps)
    return ScratchformerRMSNorm(config.hidden_size, config.norm_eps)


# ----------------------------------------------------------------------------------------------
# Positional encodings
# ----------------------------------------------------------------------------------------------


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The paper's encoding (section 3.5): PE(pos, 2i) = sin(pos / 10000^(2i/d)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). Each channel pair is a clock at its own frequency, so
    PE(pos + k) is a fixed rotation of PE(pos): relative offsets are linear functions of the table."""
    pos_P1 = torch.arange(num_positions, dtype=torch.float32)[:, None]
    inv_freq_D = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angle_PD = pos_P1 * inv_freq_D
    table_PC = torch.empty(num_positions, dim)
    table_PC[:, 0::2] = angle_PD.sin()
    table_PC[:, 1::2] = angle_PD.cos()
    return table_PC


class ScratchformerSinusoidalEmbedding(nn.Module):
    """A fixed (not learned) table of sinusoids, added to the token embeddings."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        # Non-persistent: it is a function of the config, not a weight. It is rebuilt in
        # `_init_weights`, because from_pretrained builds modules on the meta device and would
        # otherwise leave uninitialised memory here.
        self.register_buffer("table", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, position_ids_BL: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids_BL]


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/K) for the K/2 channel pairs (Su et al. 2021), in float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


class ScratchformerRotaryEmbedding(nn.Module):
    """Rotary position embedding: instead of adding a position vector, rotate each (query, key)
    channel pair by an angle proportional to the position. The dot product of a query at position
    m and a key at position n then depends on m - n only, which is what attention should see.

    The frequencies are computed from the config at every forward instead of kept in a buffer. A
    buffer would be rounded by model.to(torch.bfloat16) (8 mantissa bits: position x rounded
    frequency drifts by whole radians at long contexts), and would hold garbage after
    from_pretrained or to_empty() (meta-device construction, FSDP) until rebuilt. K/2 numbers, once
    per forward for all layers, cost nothing measurable."""

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__()
        self.head_dim, self.theta = config.head_dim, config.rope_theta

    @torch.no_grad()
    def forward(self, x_BLC: torch.Tensor, position_ids_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq_D = rope_inv_freq(self.head_dim, self.theta, device=x_BLC.device)
        # Angles in float32: position * frequency loses whole radians in bf16 at long contexts.
        freqs_BLD = position_ids_BL[..., None].float() * inv_freq_D
        # Llama's layout: the first half of the head's channels pairs with the second half.
        angle_BLK = torch.cat((freqs_BLD, freqs_BLD), dim=-1)
        return angle_BLK.cos().to(x_BLC.dtype), angle_BLK.sin().to(x_BLC.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1): a 90 degree turn of every channel pair (i, i + K/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q_BHLK: torch.Tensor, k_BGLK: torch.Tensor, cos_BLK: torch.Tensor, sin_BLK: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos_B1LK, sin_B1LK = cos_BLK[:, None], sin_BLK[:, None]
    q_BHLK = q_BHLK * cos_B1LK + rotate_half(q_BHLK) * sin_B1LK
    k_BGLK = k_BGLK * cos_B1LK + rotate_half(k_BGLK) * sin_B1LK
    return q_BHLK, k_BGLK


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def repeat_kv(x_BGMK: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: each of the G key/value heads serves H/G query heads."""
    if groups == 1:
        return x_BGMK
    B, G, M, K = x_BGMK.shape
    return x_BGMK[:, :, None].expand(B, G, groups, M, K).reshape(B, G * groups, M, K)


def eager_attention_forward(
    module: nn.Module,
    q_BHLK: torch.Tensor,
    k_BGMK: torch.Tensor,
    v_BGMK: torch.Tensor,
    mask_B1LM: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(K) + mask) V, written out: the reference every fused kernel must match.

    The 1/sqrt(K) (`scaling`) is the paper's: dot products of K-dimensional vectors with unit-variance
    entries have variance K, and without the scaling large logits push softmax into saturation where
    its gradient vanishes. The mask is additive (0 where allowed, the dtype's minimum where not) so
    that masked scores vanish after the exponential without a branch."""
    k_BHMK = repeat_kv(k_BGMK, module.num_key_value_groups)
    v_BHMK = repeat_kv(v_BGMK, module.num_key_value_groups)
    scores_BHLM = torch.matmul(q_BHLK, k_BHMK.transpose(2, 3)) * scaling
    if mask_B1LM is not None:
        scores_BHLM = scores_BHLM + mask_B1LM[:, :, :, : k_BHMK.shape[-2]]
    # Softmax in float32: bf16 sums of many small probabilities round badly.
    probs_BHLM = F.softmax(scores_BHLM, dim=-1, dtype=torch.float32).to(q_BHLK.dtype)
    probs_BHLM = F.dropout(probs_BHLM, p=dropout, training=module.training)
    out_BHLK = torch.matmul(probs_BHLM, v_BHMK)
    # Fused kernels return (B, L, H, K); so does the reference, so callers need not care which ran.
    return out_BHLK.transpose(1, 2).contiguous(), probs_BHLM


class ScratchformerAttention(nn.Module):
    """Multi-head self-attention with optional grouped key/value heads and rotary positions."""

    def __init__(self, config: ScratchformerConfig, layer_idx: int, is_causal: bool | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.H, self.G, self.K = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_key_value_groups = self.H // self.G
        self.scaling = self.K**-0.5
        self.attention_dropout = config.attention_dropout
        # Read by transformers' sdpa/flash kernels: a decoder's causal mask may be left to the kernel.
        # The config decides, unless the caller says (the encoder-decoder has one stack of each).
        self.is_causal = config.is_causal if is_causal is None else is_causal
        C, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(C, self.H * self.K, bias=bias)
        self.k_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.v_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.o_proj = nn.Linear(self.H * self.K, C, bias=bias)
        self.o_proj.is_residual_projection = True

    def forward(
        self,
        x_BLC: torch.Tensor,
        mask_B1LM: torch.Tensor | None,
        rotary_BLK: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, L, _ = x_BLC.shape
        # -1 where H or G stands: under tensor parallelism (base_model_tp_plan) each rank holds
        # H/n query and G/n key/value heads of the projections, and computes attention for those.
        q_BHLK = self.q_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
        k_BGLK = self.k_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
        v_BGLK = self.v_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
        if rotary_BLK is not None:
            q_BHLK, k_BGLK = apply_rotary(q_BHLK, k_BGLK, *rotary_BLK)
        if cache is not None:
            # The cache appends this step's keys/values and returns all M of them.
            k_BGMK, v_BGMK = cache.update(k_BGLK, v_BGLK, self.layer_idx)
        else:
            k_BGMK, v_BGMK = k_BGLK, v_BGLK

        # One seam for every implementation; the hand-written eager path is the fallback and the
        # only one that materialises the attention matrix, so maps always come from it.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out_BLHK, probs_BHLM = attention(
            self,
            q_BHLK,
            k_BGMK,
            v_BGMK,
            mask_B1LM,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        out_BLC = out_BLHK.reshape(B, L, -1)
        return self.o_proj(out_BLC), probs_BHLM


# ----------------------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------------------


class ScratchformerMLP(nn.Module):
    """The position-wise feed-forward network: C -> F -> C, applied to every token alone.

    relu (the paper) and gelu (GPT-2, tanh form) are two matrices: down(act(up(x))).
    swiglu (Shazeer 2020, Llama) adds a gate: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__()
        C, F_, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gated = config.mlp_type == "swiglu"
        if self.gated:
            self.gate_proj = nn.Linear(C, F_, bias=bias)
        self.up_proj = nn.Linear(C, F_, bias=bias)
        self.down_proj = nn.Linear(F_, C, bias=bias)
        self.down_proj.is_residual_projection = True
        self.act = {
            "relu": nn.ReLU(),
            "gelu": nn.GELU(approximate="tanh"),
            "swiglu": nn.SiLU(),
        }[config.mlp_type]

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h_BLF = self.act(self.gate_proj(x_BLC)) * self.up_proj(x_BLC)
        else:
            h_BLF = self.act(self.up_proj(x_BLC))
        return self.down_proj(h_BLF)


# ----------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------


def make_dropout(p: float) -> nn.Module:
    # At p = 0 (the GPT-2 and Llama presets) an Identity: a Dropout module would still cost a Python
    # call per use, which shows in small models' per-token decoding time.
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ScratchformerBlock(GradientCheckpointingLayer):
    """Attention then MLP, each wrapped in a residual connection and a norm.

    post-norm (the paper): x = norm(x + sublayer(x)). pre-norm (GPT-2, Llama):
    x = x + sublayer(norm(x)); the residual stream is never normalised, so gradients reach early
    layers unattenuated and deep stacks train without warm-up tricks."""

    def __init__(self, config: ScratchformerConfig, layer_idx: int, is_causal: bool | None = None) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = ScratchformerAttention(config, layer_idx, is_causal)
        self.mlp = ScratchformerMLP(config)
        self.input_layernorm = make_norm(config)
        self.post_attention_layernorm = make_norm(config)
        # The paper's residual dropout: on each sub-layer's output, before it joins the residual.
        self.dropout = make_dropout(config.hidden_dropout)

    def forward(
        self,
        x_BLC: torch.Tensor,
        mask_B1LM: torch.Tensor | None = None,
        rotary_BLK: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            attn_BLC, probs_BHLM = self.self_attn(
                self.input_layernorm(x_BLC), mask_B1LM, rotary_BLK, cache, output_attentions, **kwargs
            )
            x_BLC = x_BLC + self.dropout(attn_BLC)
            x_BLC = x_BLC + self.dropout(self.mlp(self.post_attention_layernorm(x_BLC)))
        else:
            attn_BLC, probs_BHLM = self.self_attn(
                x_BLC, mask_B1LM, rotary_BLK, cache, output_attentions, **kwargs
            )
            x_BLC = self.input_layernorm(x_BLC + self.dropout(attn_BLC))
            x_BLC = self.post_attention_layernorm(x_BLC + self.dropout(self.mlp(x_BLC)))
        return x_BLC, probs_BHLM


# ----------------------------------------------------------------------------------------------
# Hugging Face plumbing
# ----------------------------------------------------------------------------------------------

# Every Auto class a scratchformer checkpoint can be loaded with, written into each saved
# config.json, so that one directory serves all of them through remote code.
AUTO_MAP = {
    "AutoConfig": "configuration_scratchformer.ScratchformerConfig",
    "AutoModel": "modeling_scratchformer.ScratchformerModel",
    "AutoModelForCausalLM": "modeling_scratchformer.ScratchformerForCausalLM",
    "AutoModelForSequenceClassification": "modeling_scratchformer.ScratchformerForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_scratchformer.ScratchformerForTokenClassification",
    "AutoModelForMaskedLM": "modeling_scratchformer.ScratchformerForMaskedLM",
}


class ScratchformerPreTrainedModel(PreTrainedModel):
    config_class = ScratchformerConfig
    config: ScratchformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchformerBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]  # both names: see CACHE_NAME
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # A decoding step with a static cache compiles as one graph (tests/test_performance_paths.py), so
    # generate() may compile it by itself (compile_config / cache_implementation="static").
    _can_compile_fullgraph = True
    # With `_auto_class` set, save_pretrained copies this file and its sibling config next to the
    # weights; the full AUTO_MAP (set in __init__) makes every head loadable from one directory.
    _auto_class = "AutoModel"

    def __init__(self, config: ScratchformerConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        config.auto_map = {**AUTO_MAP, **(getattr(config, "auto_map", None) or {})}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear) and getattr(module, "is_residual_projection", False):
            # GPT-2's scaled init: each block adds two projections to the residual stream, so
            # shrinking them by sqrt(2 * layers) keeps the stream's variance flat with depth.
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))
        elif isinstance(module, ScratchformerSinusoidalEmbedding):
            init.copy_(module.table, sinusoidal_table(*module.table.shape))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class ScratchformerModel(ScratchformerPreTrainedModel):
    """Embeddings, positions, the stack of blocks and the final norm: hidden states, no head."""

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__(config)
        C = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, C)
        if config.position_embedding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, C)
        elif config.position_embedding == "sinusoidal":
            self.embed_positions = ScratchformerSinusoidalEmbedding(config.max_position_embeddings, C)
        else:
            self.rotary_emb = ScratchformerRotaryEmbedding(config)
        # The paper multiplies embeddings by sqrt(C) so that they are not drowned by the
        # unit-amplitude sinusoids they are added to.
        self.embed_scale = math.sqrt(C) if config.scale_embeddings else 1.0
        self.dropout = make_dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ScratchformerBlock(config, i) for i in range(config.num_hidden_layers))
        # Pre-norm leaves the residual stream unnormalised, so it needs one last norm; post-norm
        # blocks already end in one.
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        )
        # A cache only pays off when generating; training and scoring never reuse it.
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; turning it off.")
            use_cache = False

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            self._check_token_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] == 0 or inputs_embeds.shape[1] == 0:
            raise ValueError(
                f"Expected a non-empty batch of shape (batch, length[, width]), got {tuple(inputs_embeds.shape)}."
            )
        B, L, _ = inputs_embeds.shape

        # A cache made here starts empty: the mask builder is not shown it, which changes nothing for
        # the mask but lets it recognise packed rows (it looks for them only when there is no cache).
        cache_for_mask = cache
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        past = cache.get_seq_length() if cache is not None else 0
        # Caller-given positions may restart inside a row (packed documents); the mask builder reads
        # them to keep documents apart, which costs a host sync. Positions made here are one plain
        # range, so the mask builder is not shown them and the training step stays sync-free.
        given_position_ids = position_ids
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=inputs_embeds.device)[None]
        check_positions(config, position_ids, highest=past + L - 1 if given_position_ids is None else None)
        self._check_attention_mask(attention_mask, B, past + L)

        x_BLC = inputs_embeds * self.embed_scale if self.embed_scale != 1.0 else inputs_embeds
        rotary_BLK = None
        if config.position_embedding == "rope":
            rotary_BLK = self.rotary_emb(x_BLC, position_ids)
        else:
            x_BLC = x_BLC + self.embed_positions(position_ids)
        x_BLC = self.dropout(x_BLC)

        # The mask is built once for all layers, in the form the chosen kernel wants: None when a
        # fused kernel can apply causality itself, a boolean/additive tensor otherwise. The
        # eager path (and so output_attentions) always needs an explicit mask.
        mask_config = config
        if output_attentions and config._attn_implementation != "eager":
            mask_config = copy.copy(config)
            mask_config._attn_implementation = "eager"
        if config.is_causal:
            mask_B1LM = causal_mask(mask_config, x_BLC, attention_mask, cache_for_mask, position_ids=given_position_ids)
        else:
            mask_B1LM = create_bidirectional_mask(
                config=mask_config, inputs_embeds=x_BLC, attention_mask=attention_mask
            )

        all_hidden_states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attentions: tuple[torch.Tensor, ...] | None = () if output_attentions else None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states += (x_BLC,)
            x_BLC, probs_BHLM = layer(
                x_BLC,
                mask_B1LM=mask_B1LM,
                rotary_BLK=rotary_BLK,
                cache=cache,
                output_attentions=bool(output_attentions),
                **kwargs,
            )
            if all_attentions is not None:
                all_attentions += (probs_BHLM,)
        x_BLC = self.norm(x_BLC)
        if all_hidden_states is not None:
            all_hidden_states += (x_BLC,)

        return BaseModelOutputWithPast(
            last_hidden_state=x_BLC,
            **cache_field(cache if use_cache else None),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

    # Input checks. An out-of-range id would otherwise surface as an IndexError deep in
    # nn.Embedding (or a device-side assert on GPU). Reading a tensor's values is free on CPU but a
    # host sync on an accelerator, stalling the launch queue every forward, so there only the
    # checks that need no values run and the embedding's device-side assert stays the guard. They
    # are also skipped when compiling, where data-dependent Python branches would break the graph.

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}.")
        bad = id_outside_vocabulary(input_ids, self.config.vocab_size)
        if bad is not None:
            raise ValueError(
                f"input_ids contain {bad}, outside the vocabulary [0, {self.config.vocab_size}). "
                "Use the tokenizer the model was trained with, or resize_token_embeddings(len(tokenizer)) "
                "after adding tokens."
            )

    @staticmethod
    def _check_attention_mask(attention_mask: torch.Tensor | None, batch: int, total_length: int) -> None:
        if attention_mask is None or attention_mask.dim() == 4:
            return  # 4-D masks are the caller's own, already in kernel form
        if attention_mask.shape != (batch, total_length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, past + new tokens) = "
                f"({batch}, {total_length}): one 1/0 entry per token, 1 for tokens to attend to."
            )
        if attention_mask.is_floating_point() or attention_mask.dtype == torch.bool:
            return
        if attention_mask.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"attention_mask must hold 0/1 integers or booleans, got {attention_mask.dtype}.")


# ----------------------------------------------------------------------------------------------
# The language-model loss, fused with the head
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------


class ScratchformerForCausalLM(ScratchformerPreTrainedModel, GenerationMixin):
    """Next-token prediction: the language model head on top of the decoder."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Tensor and pipeline parallelism in Llama's vocabulary (the body's plans are on the config).
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__(config)
        self.model = ScratchformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _fuses_loss(self) -> bool:
        """The fused loss serves training steps only (evaluation and metrics want logits), and only a
        plain bias-free head: a head that PEFT wrapped or a hook watches must run as a module."""
        head = self.lm_head
        return (
            self.config.fused_lm_loss
            and self.training
            and torch.is_grad_enabled()
            and type(head) is nn.Linear
            and head.bias is None
            and not (head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook"))
        )

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        x_BLC = out.last_hidden_state
        loss, logits_BLV = None, None
        if labels is not None:
            _check_labels(labels, x_BLC.shape[:2], "labels must have the shape of input_ids")
            _check_label_ids(labels, self.config.vocab_size, kwargs.get("ignore_index", -100))
        if labels is not None and self._fuses_loss():
            # A training step: head and loss in one, chunk by chunk (see LinearCrossEntropy); the
            # full logits are never built, so none are returned.
            loss = fused_causal_lm_loss(x_BLC, self.lm_head.weight, labels, **kwargs)
        else:
            # Generation needs only the last position's logits: skip the V-wide projection elsewhere.
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits_BLV = self.lm_head(x_BLC[:, keep, :])
            if labels is not None:
                # Position t predicts token t+1: the shift happens inside loss_function. **kwargs carry
                # num_items_in_batch, so gradient accumulation averages over tokens, not micro-batches.
                loss = self.loss_function(
                    logits=logits_BLV, labels=labels, vocab_size=self.config.vocab_size, **kwargs
                )

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits_BLV,
            **cache_field(cache_of(out)),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class ScratchformerForSequenceClassification(ScratchformerPreTrainedModel):
    """One label per sequence, read from the last real (non-padding) token: in a decoder it is the
    only position that has seen the whole text."""

    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ScratchformerModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits_BLN = self.score(self.dropout(out.last_hidden_state))
        B, L = logits_BLN.shape[:2]
        # Index of the last token to attend to in each row; works for left and right padding.
        if attention_mask is not None and attention_mask.dim() == 2:
            keep_BL = attention_mask[:, -L:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            keep_BL = input_ids != self.config.pad_token_id
        else:
            keep_BL = torch.ones(B, L, dtype=torch.bool, device=logits_BLN.device)
        last_B = (torch.arange(L, device=logits_BLN.device) * keep_BL).argmax(-1)
        pooled_BN = logits_BLN[torch.arange(B, device=logits_BLN.device), last_B]

        loss = None
        if labels is not None:
            if labels.shape[0] != B:
                raise ValueError(f"labels has {labels.shape[0]} rows for a batch of {B}: one label per sequence.")
            loss = self.loss_function(
                logits=logits_BLN, labels=labels, pooled_logits=pooled_BN, config=self.config, **kwargs
            )
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_BN,
            **cache_field(cache_of(out)),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class ScratchformerForTokenClassification(ScratchformerPreTrainedModel):
    """One label per token (named entities, parts of speech)."""

    _auto_class = "AutoModelForTokenClassification"

    def __init__(self, config: ScratchformerConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ScratchformerModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits_BLN = self.score(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            _check_labels(labels, logits_BLN.shape[:2], "token labels must have the shape of input_ids")
            loss = self.loss_function(logits=logits_BLN, labels=labels, config=self.config, **kwargs)
        return TokenClassifierOutput(
            loss=loss, logits=logits_BLN, hidden_states=out.hidden_states, attentions=out.attentions
        )


class ScratchformerForMaskedLM(ScratchformerPreTrainedModel):
    """BERT-style masked-token prediction. Needs a bidirectional encoder (`is_causal=False`): a
    decoder cannot see the right-hand context that fills the blank."""

    _auto_class = "AutoModelForMaskedLM"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ScratchformerConfig) -> None:
        if config.is_causal:
            raise ValueError(
                "ScratchformerForMaskedLM needs a bidirectional encoder, but this config has is_causal=True. "
                "Build the model from a config with is_causal=False (e.g. "
                "ScratchformerConfig.from_preset('gpt2', is_causal=False)), or use ScratchformerForCausalLM."
            )
        super().__init__(config)
        self.model = ScratchformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits_BLV = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            _check_labels(labels, logits_BLV.shape[:2], "labels must have the shape of input_ids")
            # No shift here: position t predicts the token hidden at position t.
            loss = self.loss_function(logits=logits_BLV, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits_BLV, hidden_states=out.hidden_states, attentions=out.attentions)


def _check_labels(labels: torch.Tensor, expected: torch.Size, what: str) -> None:
    if tuple(labels.shape) != tuple(expected):
        raise ValueError(f"{what} {tuple(expected)}, got {tuple(labels.shape)} (use -100 for positions to ignore).")


def id_outside_vocabulary(ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None) -> int | None:
    """An id of `ids` outside [0, vocab_size) (entries equal to `ignore_index` aside), or None. Values
    are read only where that is free: on CPU and not while compiling; on an accelerator the read
    would be a host sync every forward, so there the embedding's device-side assert is the guard."""
    if ids.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    if ids.numel() == 0:
        return None
    low, high = (int(v) for v in torch.aminmax(ids))
    return low if low < 0 else high if high >= vocab_size else None


def check_positions(config, position_ids: torch.Tensor, highest: int | None, where: str = "input") -> None:
    """Learned and sinusoidal tables end at max_position_embeddings - 1 (rotary angles never end).

    `highest` is the largest position when the shapes tell it (positions the model made: a range
    from the cache length, free to check on any device). None means only the values tell: positions
    a caller gave may restart inside a row, as vLLM and padding-free collators pack several sequences
    into one, so a row longer than the table can be fine. Those are read on CPU; on an accelerator
    the read would be a host sync every forward, so there the embedding's device-side assert guards."""
    if config.position_embedding == "rope" or torch.compiler.is_compiling():
        return
    if highest is None:
        if position_ids.device.type != "cpu":
            return
        lowest, highest = (int(v) for v in torch.aminmax(position_ids))
        if lowest < 0:
            raise ValueError(f"position_ids contain {lowest}: positions count from 0 in every sequence.")
    limit = config.max_position_embeddings
    if highest >= limit:
        raise ValueError(
            f"The {where} needs positions up to {highest}, but this model has {config.position_embedding} "
            f"positions for 0..{limit - 1} (max_position_embeddings={limit}). Truncate it to {limit} tokens "
            f"(tokenizer(..., truncation=True, max_length={limit}))."
        )


def _check_label_ids(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    bad = id_outside_vocabulary(labels, vocab_size, ignore_index)
    if bad is not None:
        raise ValueError(
            f"labels contain {bad}, outside the vocabulary [0, {vocab_size}): labels are token ids, "
            f"or {ignore_index} for positions that carry no loss."
        )


__all__ = [
    "ScratchformerPreTrainedModel",
    "ScratchformerModel",
    "ScratchformerForCausalLM",
    "ScratchformerForSequenceClassification",
    "ScratchformerForTokenClassification",
    "ScratchformerForMaskedLM",
]
