"""The transformer, written from scratch: every operation of a block, in the order data meets it.

Dimension key (shape suffixes on every activation):
    B  batch          L  query length        M  key/value length (cache + new tokens)
    C  model width    H  query heads         G  key/value heads (grouped-query attention)
    K  head width     F  feed-forward width  P  positions
    S  source length: the encoder's output, which cross-attention reads as its keys and values

Norms, positional encodings (§3.5), attention (§3.2), the MLP (§3.3), the block and the stack (§3.1;
embeddings scaled as in §3.4, residual dropout as in §5.4), in that order: read this file first.
Every concept choice comes from the config (the four presets reproduce the 2017 paper, GPT-2, Llama
and Qwen3), named alike by `ScratchformerConfig` and `ScratchformerSeq2SeqConfig`, so both models are
built from these classes. The Hugging Face contract (the model, the heads, the KV cache, the Auto map)
is `modeling_scratchformer.py`; the paper's encoder-decoder is `modeling_scratchformer_seq2seq.py`.

Part of the remote-code payload copied next to every checkpoint: it imports only torch and
transformers, and none of its siblings (they all import it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

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
    cheaper than LayerNorm and, in practice, as good. In float32, because squaring bf16 activations
    loses the small ones; cast back before the weight, as in Llama. F.rms_norm computes exactly that
    (bit for bit on CPU; on GPU one fused kernel, where the formula spelled out is five)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        normed_BLC = F.rms_norm(x_BLC.float(), x_BLC.shape[-1:], eps=self.eps)
        return self.weight * normed_BLC.to(x_BLC.dtype)


def make_norm(config: PreTrainedConfig) -> nn.Module:
    if config.norm_type == "layernorm":
        return ScratchformerLayerNorm(config.hidden_size, config.norm_eps)
    return ScratchformerRMSNorm(config.hidden_size, config.norm_eps)


# ----------------------------------------------------------------------------------------------
# Positional encodings
# ----------------------------------------------------------------------------------------------


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The paper's encoding (§3.5): PE(pos, 2i) = sin(pos / 10000^(2i/d)),
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


def make_absolute_positions(config: PreTrainedConfig) -> nn.Module:
    """Positions added to the token embeddings: a learned table (GPT-2) or the paper's sinusoids."""
    if config.position_embedding == "learned":
        return nn.Embedding(config.max_position_embeddings, config.hidden_size)
    return ScratchformerSinusoidalEmbedding(config.max_position_embeddings, config.hidden_size)


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/K) for the K/2 channel pairs (Su et al. 2021), in float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


class ScratchformerRotaryEmbedding(nn.Module):
    """Rotary position embedding: instead of adding a position vector, rotate each (query, key)
    channel pair by an angle proportional to the position. The dot product of a query at position
    m and a key at position n then depends on m - n only, which is what attention should see.

    The frequencies are computed at every forward, not kept in a buffer: a buffer would be rounded
    by model.to(torch.bfloat16) (position x rounded frequency drifts by whole radians at long
    contexts) and hold garbage after from_pretrained or to_empty() (meta device, FSDP) until
    rebuilt. K/2 numbers, once per forward for all layers, cost nothing measurable."""

    def __init__(self, config: PreTrainedConfig) -> None:
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
    """§3.2.1's softmax(Q K^T / sqrt(K) + mask) V, written out: the reference every fused kernel matches.

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
    """Multi-head attention (§3.2.2) with optional grouped key/value heads and rotary positions.

    Self-attention reads keys and values from its own input. Cross-attention (`is_cross_attention`,
    §3.2.3's "encoder-decoder attention") is the same module with the keys and values projected from
    the encoder's output instead: queries come from the decoder."""

    def __init__(
        self, config: PreTrainedConfig, layer_idx: int, is_causal: bool | None = None, is_cross_attention: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.H, self.G, self.K = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_key_value_groups = self.H // self.G
        self.scaling = self.K**-0.5
        self.attention_dropout = config.attention_dropout
        # Read by transformers' sdpa/flash kernels: a decoder's causal mask may be left to the kernel.
        # The config decides, unless the caller says (the encoder-decoder has one stack of each).
        # Cross-attention never is: every decoder position may look at every source token.
        self.is_causal = not is_cross_attention and (config.is_causal if is_causal is None else is_causal)
        C, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(C, self.H * self.K, bias=bias)
        self.k_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.v_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.o_proj = nn.Linear(self.H * self.K, C, bias=bias)
        self.o_proj.is_residual_projection = True
        # QK-norm (Dehghani et al. 2023; OLMo 2, Qwen3, Gemma 3): RMSNorm on each head's queries and keys
        # before rotary, so the logits' scale is the norms' learned gains, not the projections' growing
        # norms, which drove the paper's attention to one-hot rows and high-lr training into loss spikes.
        self.q_norm = ScratchformerRMSNorm(self.K, config.norm_eps) if config.qk_norm else None
        self.k_norm = ScratchformerRMSNorm(self.K, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x_BLC: torch.Tensor,
        mask_B1LM: torch.Tensor | None,
        rotary_BLK: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        encoder_BSC: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, L, _ = x_BLC.shape
        # -1 where H or G stands: under tensor parallelism (base_model_tp_plan) each rank holds
        # H/n query and G/n key/value heads of the projections, and computes attention for those.
        q_BHLK = self.q_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
        if self.q_norm is not None:
            q_BHLK = self.q_norm(q_BHLK)
        if self.is_cross_attention:  # M = S: every source token, no rotation
            k_BGMK, v_BGMK = self.encoder_keys_values(encoder_BSC, cache)
        else:
            k_BGLK = self.k_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
            v_BGLK = self.v_proj(x_BLC).view(B, L, -1, self.K).transpose(1, 2)
            if self.k_norm is not None:
                k_BGLK = self.k_norm(k_BGLK)
            if rotary_BLK is not None:
                q_BHLK, k_BGLK = apply_rotary(q_BHLK, k_BGLK, *rotary_BLK)
            if cache is not None:
                # The cache appends this step's keys/values and returns all M of them. A paged cache
                # (continuous batching) finds its slots in the kwargs, and may leave notes there for the kernel.
                k_BGMK, v_BGMK = cache.update(k_BGLK, v_BGLK, self.layer_idx, kwargs=kwargs)
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

    def encoder_keys_values(
        self, encoder_BSC: torch.Tensor, cache: EncoderDecoderCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention's keys and values. The encoder's output does not change while the decoder
        generates, so they are projected once, on the first step, and read back from
        `EncoderDecoderCache.cross_attention_cache` on every later step."""
        cross_cache = cache.cross_attention_cache if cache is not None else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx):
            return cross_cache.layers[self.layer_idx].keys, cross_cache.layers[self.layer_idx].values
        B, S, _ = encoder_BSC.shape
        k_BGSK = self.k_proj(encoder_BSC).view(B, S, -1, self.K).transpose(1, 2)
        if self.k_norm is not None:
            k_BGSK = self.k_norm(k_BGSK)
        v_BGSK = self.v_proj(encoder_BSC).view(B, S, -1, self.K).transpose(1, 2)
        if cross_cache is not None:
            k_BGSK, v_BGSK = cross_cache.update(k_BGSK, v_BGSK, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return k_BGSK, v_BGSK


# ----------------------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------------------


class ScratchformerMLP(nn.Module):
    """§3.3's position-wise feed-forward network: C -> F -> C, applied to every token alone.

    relu (the paper) and gelu (GPT-2, tanh form) are two matrices: down(act(up(x))).
    swiglu (Shazeer 2020, Llama) adds a gate: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: PreTrainedConfig) -> None:
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
    """§3.1's layer: attention then MLP, each wrapped in a residual connection and a norm. With
    `cross_attention` it is the decoder's layer: a third sublayer between the two reads the encoder's
    output (figure 1, right).

    post-norm (the paper): x = norm(x + sublayer(x)). pre-norm (GPT-2, Llama):
    x = x + sublayer(norm(x)); the residual stream is never normalised, so gradients reach early
    layers unattenuated and deep stacks train without warm-up tricks."""

    def __init__(
        self, config: PreTrainedConfig, layer_idx: int, is_causal: bool | None = None, cross_attention: bool = False
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        # Modules are registered (so initialised, from one seed) in the order the 0.2 layers had.
        self.self_attn = ScratchformerAttention(config, layer_idx, is_causal)
        self.cross_attn = (
            ScratchformerAttention(config, layer_idx, is_cross_attention=True) if cross_attention else None
        )
        self.mlp = ScratchformerMLP(config)
        self.input_layernorm = make_norm(config)
        self.cross_attention_layernorm = make_norm(config) if cross_attention else None
        self.post_attention_layernorm = make_norm(config)
        # §5.4's residual dropout: on each sub-layer's output, before it joins the residual.
        self.dropout = make_dropout(config.hidden_dropout)

    def forward(
        self,
        x_BLC: torch.Tensor,
        mask_B1LM: torch.Tensor | None = None,
        rotary_BLK: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        encoder_BSC: torch.Tensor | None = None,
        cross_mask_B1LS: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        # The encoder-decoder's cache holds one cache per kind of attention; cross-attention takes the whole.
        self_cache = cache.self_attention_cache if self.cross_attn is not None and cache is not None else cache

        h_BLC = self.input_layernorm(x_BLC) if self.pre_norm else x_BLC
        attn_BLC, probs_BHLM = self.self_attn(h_BLC, mask_B1LM, rotary_BLK, self_cache, output_attentions, **kwargs)
        x_BLC = self.residual(x_BLC, attn_BLC, self.input_layernorm)

        cross_probs_BHLS = None
        if self.cross_attn is not None:
            h_BLC = self.cross_attention_layernorm(x_BLC) if self.pre_norm else x_BLC
            attn_BLC, cross_probs_BHLS = self.cross_attn(
                h_BLC, cross_mask_B1LS, None, cache, output_attentions, encoder_BSC=encoder_BSC, **kwargs
            )
            x_BLC = self.residual(x_BLC, attn_BLC, self.cross_attention_layernorm)

        h_BLC = self.post_attention_layernorm(x_BLC) if self.pre_norm else x_BLC
        x_BLC = self.residual(x_BLC, self.mlp(h_BLC), self.post_attention_layernorm)
        return x_BLC, probs_BHLM, cross_probs_BHLS

    def residual(self, x_BLC: torch.Tensor, sublayer_BLC: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        # Pre-norm normalised the sublayer's input already; post-norm normalises the sum.
        if self.pre_norm:
            return x_BLC + self.dropout(sublayer_BLC)
        return norm(x_BLC + self.dropout(sublayer_BLC))


# ----------------------------------------------------------------------------------------------
# The stack (§3.1: N identical layers; the decoder-only model and both halves of the encoder-decoder)
# ----------------------------------------------------------------------------------------------


def embedding_scale(config: PreTrainedConfig) -> float:
    # §3.4: embeddings are multiplied by sqrt(d_model), so that they are not drowned by the
    # unit-amplitude sinusoids they are added to (the paper preset; GPT-2 and Llama do not scale).
    return math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0


def final_norm(config: PreTrainedConfig) -> nn.Module:
    # Pre-norm leaves the residual stream unnormalised, so it needs one last norm; post-norm
    # blocks already end in one.
    return make_norm(config) if config.norm_position == "pre" else nn.Identity()


def run_blocks(
    layers: nn.ModuleList,
    norm: nn.Module,
    x_BLC: torch.Tensor,
    output_attentions: bool,
    output_hidden_states: bool,
    mask_B1LM: torch.Tensor | None,
    rotary_BLK: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache: Cache | None = None,
    encoder_BSC: torch.Tensor | None = None,
    cross_mask_B1LS: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, tuple | None, tuple | None, tuple | None]:
    """Every block in turn, then the final norm: the output and, where asked for, each block's input
    and the final output, each block's attention maps, and cross-attention's maps of the source."""
    all_hidden_states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
    all_attentions: tuple[torch.Tensor, ...] | None = () if output_attentions else None
    all_cross_attentions: tuple[torch.Tensor, ...] | None = () if output_attentions else None
    for layer in layers:
        if all_hidden_states is not None:
            all_hidden_states += (x_BLC,)
        # Positional: under gradient checkpointing with use_reentrant=True, gradients reach only the
        # tensors passed positionally (x, and the encoder's output the decoder reads).
        x_BLC, probs_BHLM, cross_probs_BHLS = layer(
            x_BLC, mask_B1LM, rotary_BLK, cache, output_attentions, encoder_BSC, cross_mask_B1LS, **kwargs
        )
        if all_attentions is not None:
            all_attentions += (probs_BHLM,)
            all_cross_attentions += (cross_probs_BHLS,)
    x_BLC = norm(x_BLC)
    if all_hidden_states is not None:
        all_hidden_states += (x_BLC,)
    return x_BLC, all_hidden_states, all_attentions, all_cross_attentions
