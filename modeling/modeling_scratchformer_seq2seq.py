"""The paper's own model: an encoder-decoder transformer (Vaswani et al. 2017, figure 1).

Dimension key (shape suffixes on every activation):
    B  batch          S  source length (encoder)    T  target length (decoder, this call)
    M  decoder key/value length (cache + new)        C  model width     V  vocabulary
    H  query heads    G  key/value heads            K  head width

The encoder (left half of figure 1) reads the source bidirectionally. The decoder (right half)
reads the target so far through masked self-attention, then looks at the encoder's output through
cross-attention ("encoder-decoder attention", section 3.2.3), then an MLP. One embedding matrix
serves source, target and the output projection (section 3.4).

Norms, positions, self-attention and the MLP are `modeling_scratchformer.py`'s own blocks; the encoder
layer *is* its block. New here: cross-attention, the three-sublayer decoder layer, and the plumbing.
This file and the two beside it are the remote-code payload: torch, transformers and siblings only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple

from .configuration_scratchformer_seq2seq import ScratchformerSeq2SeqConfig
from .modeling_scratchformer import (
    ScratchformerAttention,
    ScratchformerBlock,
    ScratchformerLayerNorm,
    ScratchformerMLP,
    ScratchformerRMSNorm,
    ScratchformerSinusoidalEmbedding,
    accepts_past_key_values,
    cache_field,
    cache_of,
    causal_mask,
    check_positions,
    eager_attention_forward,
    id_outside_vocabulary,
    make_norm,
    sinusoidal_table,
)

# ----------------------------------------------------------------------------------------------
# Cross-attention
# ----------------------------------------------------------------------------------------------


class ScratchformerCrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output (section 3.2.3).

    The encoder's output does not change while the decoder generates, so its keys and values are
    projected once, on the first step, and read back from `EncoderDecoderCache.cross_attention_cache`
    on every later step."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.H, self.G, self.K = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_key_value_groups = self.H // self.G
        self.scaling = self.K**-0.5
        self.attention_dropout = config.attention_dropout
        # Every decoder position may look at every source token: nothing here is causal.
        self.is_causal = False
        C, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(C, self.H * self.K, bias=bias)
        self.k_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.v_proj = nn.Linear(C, self.G * self.K, bias=bias)
        self.o_proj = nn.Linear(self.H * self.K, C, bias=bias)

    def forward(
        self,
        x_BTC: torch.Tensor,
        enc_BSC: torch.Tensor,
        mask_B1TS: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x_BTC.shape
        q_BHTK = self.q_proj(x_BTC).view(B, T, -1, self.K).transpose(1, 2)
        cross_cache = cache.cross_attention_cache if cache is not None else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx):
            k_BGSK, v_BGSK = cross_cache.layers[self.layer_idx].keys, cross_cache.layers[self.layer_idx].values
        else:
            S = enc_BSC.shape[1]
            k_BGSK = self.k_proj(enc_BSC).view(B, S, -1, self.K).transpose(1, 2)
            v_BGSK = self.v_proj(enc_BSC).view(B, S, -1, self.K).transpose(1, 2)
            if cross_cache is not None:
                k_BGSK, v_BGSK = cross_cache.update(k_BGSK, v_BGSK, self.layer_idx)
                cache.is_updated[self.layer_idx] = True

        # The same seam as self-attention; maps (output_attentions) always come from the eager path.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out_BTHK, probs_BHTS = attention(
            self,
            q_BHTK,
            k_BGSK,
            v_BGSK,
            mask_B1TS,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out_BTHK.reshape(B, T, -1)), probs_BHTS


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class ScratchformerSeq2SeqEncoderLayer(ScratchformerBlock):
    """The encoder layer is the decoder-only model's block with its attention made bidirectional:
    a source sentence is read whole, so every token may look at every other."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, layer_idx: int) -> None:
        # Bidirectional, so with no padding (mask None) sdpa/flash must not add causality either.
        super().__init__(config, layer_idx, is_causal=False)


class ScratchformerSeq2SeqDecoderLayer(GradientCheckpointingLayer):
    """Three sublayers, each with a residual connection, dropout and a norm: masked self-attention
    over the target so far, cross-attention to the source, the MLP.

    post-norm (the paper): x = norm(x + sublayer(x)); pre-norm: x = x + sublayer(norm(x))."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = ScratchformerAttention(config, layer_idx, is_causal=True)
        self.cross_attn = ScratchformerCrossAttention(config, layer_idx)
        self.mlp = ScratchformerMLP(config)
        self.input_layernorm = make_norm(config)
        self.cross_attention_layernorm = make_norm(config)
        self.post_attention_layernorm = make_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        x_BTC: torch.Tensor,
        enc_BSC: torch.Tensor,
        self_mask_B1TM: torch.Tensor | None = None,
        cross_mask_B1TS: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        self_cache = cache.self_attention_cache if cache is not None else None

        h_BTC = self.input_layernorm(x_BTC) if self.pre_norm else x_BTC
        attn_BTC, self_probs_BHTM = self.self_attn(h_BTC, self_mask_B1TM, None, self_cache, output_attentions, **kwargs)
        x_BTC = self._residual(x_BTC, attn_BTC, self.input_layernorm)

        h_BTC = self.cross_attention_layernorm(x_BTC) if self.pre_norm else x_BTC
        attn_BTC, cross_probs_BHTS = self.cross_attn(
            h_BTC, enc_BSC, cross_mask_B1TS, cache, output_attentions, **kwargs
        )
        x_BTC = self._residual(x_BTC, attn_BTC, self.cross_attention_layernorm)

        h_BTC = self.post_attention_layernorm(x_BTC) if self.pre_norm else x_BTC
        x_BTC = self._residual(x_BTC, self.mlp(h_BTC), self.post_attention_layernorm)
        return x_BTC, self_probs_BHTM, cross_probs_BHTS

    def _residual(self, x_BTC: torch.Tensor, sublayer_BTC: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        # Pre-norm normalised the sublayer's input already; post-norm normalises the sum.
        if self.pre_norm:
            return x_BTC + self.dropout(sublayer_BTC)
        return norm(x_BTC + self.dropout(sublayer_BTC))


# ----------------------------------------------------------------------------------------------
# Hugging Face plumbing
# ----------------------------------------------------------------------------------------------

AUTO_MAP = {
    "AutoConfig": "configuration_scratchformer_seq2seq.ScratchformerSeq2SeqConfig",
    "AutoModel": "modeling_scratchformer_seq2seq.ScratchformerSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_scratchformer_seq2seq.ScratchformerForConditionalGeneration",
}


class ScratchformerSeq2SeqPreTrainedModel(PreTrainedModel):
    config_class = ScratchformerSeq2SeqConfig
    config: ScratchformerSeq2SeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchformerSeq2SeqEncoderLayer", "ScratchformerSeq2SeqDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]  # both names: see CACHE_NAME
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _auto_class = "AutoModel"

    def __init__(self, config: ScratchformerSeq2SeqConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        config.auto_map = {**AUTO_MAP, **(getattr(config, "auto_map", None) or {})}

    def _init_weights(self, module: nn.Module) -> None:
        # The Annotated Transformer's initialisation: Glorot/Xavier uniform for every matrix, which
        # keeps activations' variance flat through a layer in both directions. Embeddings get
        # std C^-0.5 so that, multiplied by sqrt(C), they enter the model at unit scale, the same
        # scale as the sinusoids they are added to.
        C = self.config.hidden_size
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=C**-0.5)
        elif isinstance(module, ScratchformerLayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ScratchformerRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ScratchformerSinusoidalEmbedding):
            # Non-persistent buffer: rebuilt here, or from_pretrained leaves meta-device garbage.
            init.copy_(module.table, sinusoidal_table(*module.table.shape))

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by DataCollatorForSeq2Seq, so that a label-smoothing Trainer (which keeps labels
        away from the model) still feeds the decoder the right inputs."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


def shift_tokens_right(labels_BT: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads <start> y1 .. y(T-1) and predicts y1 .. yT, so target
    position t is predicted from the tokens before it. Ignored labels (-100) are read as padding."""
    inputs_BT = labels_BT.new_zeros(labels_BT.shape)
    inputs_BT[:, 1:] = labels_BT[:, :-1].clone()
    inputs_BT[:, 0] = decoder_start_token_id
    return inputs_BT.masked_fill(inputs_BT == -100, pad_token_id)


def _embed(module: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None:
        vocab = module.embed_tokens.num_embeddings
        bad = id_outside_vocabulary(input_ids, vocab)
        if bad is not None:
            raise ValueError(f"input ids contain {bad}, outside the vocabulary [0, {vocab}).")
        inputs_embeds = module.embed_tokens(input_ids)
    return inputs_embeds


def _positions(config: ScratchformerSeq2SeqConfig) -> nn.Module:
    if config.position_embedding == "learned":
        return nn.Embedding(config.max_position_embeddings, config.hidden_size)
    return ScratchformerSinusoidalEmbedding(config.max_position_embeddings, config.hidden_size)


def _eager_mask_config(config: ScratchformerSeq2SeqConfig, output_attentions: bool) -> ScratchformerSeq2SeqConfig:
    # Masks are built in the chosen kernel's form (sdpa may get None); the eager path, which is the
    # one that returns attention maps, always needs an explicit tensor.
    if output_attentions and config._attn_implementation != "eager":
        config = copy.copy(config)
        config._attn_implementation = "eager"
    return config


# ----------------------------------------------------------------------------------------------
# Encoder and decoder stacks
# ----------------------------------------------------------------------------------------------


class ScratchformerSeq2SeqEncoder(ScratchformerSeq2SeqPreTrainedModel):
    """Figure 1, left: embed, add positions, N bidirectional layers."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, embed_tokens: nn.Embedding | None = None) -> None:
        super().__init__(config)
        if embed_tokens is None:  # standalone use; the full model passes its shared matrix
            embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens = embed_tokens
        self.embed_positions = _positions(config)
        # sqrt(C): the paper's scaling, so embeddings are not drowned by the unit-amplitude sinusoids.
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ScratchformerSeq2SeqEncoderLayer(config, i) for i in range(config.encoder_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        config = self.config
        output_attentions = bool(output_attentions if output_attentions is not None else config.output_attentions)
        output_hidden_states = bool(output_hidden_states or config.output_hidden_states)
        x_BSC = _embed(self, input_ids, inputs_embeds)
        B, S, _ = x_BSC.shape
        # Positions count real tokens only, so a left-padded source reads exactly like an unpadded one.
        if attention_mask is not None:
            position_ids_BS = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            position_ids_BS = torch.arange(S, device=x_BSC.device)[None].expand(B, S)
        # From a mask the values tell the largest position (a long left-padded source may still fit).
        check_positions(config, position_ids_BS, None if attention_mask is not None else S - 1, "source")
        x_BSC = self.dropout(x_BSC * self.embed_scale + self.embed_positions(position_ids_BS))

        mask_B1SS = create_bidirectional_mask(
            config=_eager_mask_config(config, output_attentions), inputs_embeds=x_BSC, attention_mask=attention_mask
        )
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (x_BSC,)
            x_BSC, probs_BHSS = layer(x_BSC, mask_B1LM=mask_B1SS, output_attentions=output_attentions, **kwargs)
            if output_attentions:
                all_attentions += (probs_BHSS,)
        x_BSC = self.norm(x_BSC)
        if output_hidden_states:
            all_hidden_states += (x_BSC,)
        return BaseModelOutput(last_hidden_state=x_BSC, hidden_states=all_hidden_states, attentions=all_attentions)


class ScratchformerSeq2SeqDecoder(ScratchformerSeq2SeqPreTrainedModel):
    """Figure 1, right: embed the target so far, add positions, N layers of masked self-attention,
    cross-attention and MLP."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, embed_tokens: nn.Embedding | None = None) -> None:
        super().__init__(config)
        if embed_tokens is None:  # standalone use; the full model passes its shared matrix
            embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens = embed_tokens
        self.embed_positions = _positions(config)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ScratchformerSeq2SeqDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        config = self.config
        output_attentions = bool(output_attentions if output_attentions is not None else config.output_attentions)
        output_hidden_states = bool(output_hidden_states or config.output_hidden_states)
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs encoder_hidden_states: run the encoder on the source first.")
        x_BTC = _embed(self, input_ids, inputs_embeds)
        B, T, _ = x_BTC.shape

        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError("An encoder-decoder needs an EncoderDecoderCache (self- and cross-attention caches).")
        past = cache.get_seq_length() if cache is not None else 0
        position_ids_BT = torch.arange(past, past + T, device=x_BTC.device)[None].expand(B, T)
        check_positions(config, position_ids_BT, past + T - 1, "target")
        x_BTC = self.dropout(x_BTC * self.embed_scale + self.embed_positions(position_ids_BT))

        mask_config = _eager_mask_config(config, output_attentions)
        # Not position_ids_BT: they are one plain range, and shown them the mask builder would look for
        # packed documents with a host sync.
        self_cache = cache.self_attention_cache if cache is not None else None
        self_mask_B1TM = causal_mask(mask_config, x_BTC, attention_mask, self_cache)
        cross_mask_B1TS = create_bidirectional_mask(
            config=mask_config,
            inputs_embeds=x_BTC,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )

        all_hidden_states = () if output_hidden_states else None
        all_self, all_cross = ((), ()) if output_attentions else (None, None)
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (x_BTC,)
            x_BTC, self_probs_BHTM, cross_probs_BHTS = layer(
                x_BTC,
                encoder_hidden_states,
                self_mask_B1TM=self_mask_B1TM,
                cross_mask_B1TS=cross_mask_B1TS,
                cache=cache,
                output_attentions=output_attentions,
                **kwargs,
            )
            if output_attentions:
                all_self += (self_probs_BHTM,)
                all_cross += (cross_probs_BHTS,)
        x_BTC = self.norm(x_BTC)
        if output_hidden_states:
            all_hidden_states += (x_BTC,)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x_BTC,
            **cache_field(cache if use_cache else None),
            hidden_states=all_hidden_states,
            attentions=all_self,
            cross_attentions=all_cross,
        )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class ScratchformerSeq2SeqModel(ScratchformerSeq2SeqPreTrainedModel):
    """Encoder and decoder over one shared embedding (section 3.4: source and target share a
    vocabulary, so one matrix serves both). Returns hidden states, no head."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: ScratchformerSeq2SeqConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = ScratchformerSeq2SeqEncoder(config, self.shared)
        self.decoder = ScratchformerSeq2SeqDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        # generate() runs the encoder once and hands its output back on every decoding step.
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_out = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_out.last_hidden_state,
            **cache_field(cache_of(decoder_out)),
            decoder_hidden_states=decoder_out.hidden_states,
            decoder_attentions=decoder_out.attentions,
            cross_attentions=decoder_out.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


# ----------------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------------


class ScratchformerForConditionalGeneration(ScratchformerSeq2SeqPreTrainedModel, GenerationMixin):
    """Figure 1's top right: the "Linear" and "Softmax" boxes, p(y_t | y_<t, x). The linear layer
    is the shared embedding matrix, transposed (section 3.4)."""

    _auto_class = "AutoModelForSeq2SeqLM"
    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: ScratchformerSeq2SeqConfig) -> None:
        super().__init__(config)
        self.model = ScratchformerSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits_BTV = self.lm_head(out.last_hidden_state)

        loss = None
        if labels is not None:
            if labels.shape != logits_BTV.shape[:2]:
                raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(logits_BTV.shape[:2])}.")
            # No shift here: the decoder's inputs were shifted instead, so position t predicts labels[t].
            # Summed, then divided by the batch's token count (num_items_in_batch from Trainer when
            # accumulating gradients), so every target token weighs the same across micro-batches.
            loss = F.cross_entropy(
                logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), labels.reshape(-1), ignore_index=-100,
                reduction="sum",
            )
            count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)

        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits_BTV,
            **cache_field(cache_of(out)),
            decoder_hidden_states=out.decoder_hidden_states,
            decoder_attentions=out.decoder_attentions,
            cross_attentions=out.cross_attentions,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states,
            encoder_attentions=out.encoder_attentions,
        )


__all__ = [
    "ScratchformerSeq2SeqPreTrainedModel",
    "ScratchformerSeq2SeqModel",
    "ScratchformerForConditionalGeneration",
    "shift_tokens_right",
]
