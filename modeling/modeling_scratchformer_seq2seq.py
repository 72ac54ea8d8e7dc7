"""The paper's own model: an encoder-decoder transformer (Vaswani et al. 2017, figure 1).

Dimension key (shape suffixes on every activation):
    B  batch          S  source length (encoder)    T  target length (decoder, this call)
    M  decoder key/value length (cache + new)        C  model width     V  vocabulary
    H  query heads    G  key/value heads            K  head width

The encoder (left half of figure 1) reads the source bidirectionally. The decoder (right half)
reads the target so far through masked self-attention, then looks at the encoder's output through
cross-attention ("encoder-decoder attention", section 3.2.3), then an MLP. One embedding matrix
serves source, target and the output projection (section 3.4).

Every layer is `transformer_scratchformer.py`'s block: the encoder's made bidirectional, the
decoder's with its cross-attention sublayer (the same attention class, reading the encoder's
output). The cache's name, the stack and the input checks are the decoder-only model's
(`modeling_scratchformer.py`, `checks_scratchformer.py`). New here: the two stacks, the shared
embedding, teacher forcing and the head. This file and the ones it imports are the remote-code
payload: torch, transformers and siblings only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.utils import can_return_tuple

from .checks_scratchformer import (
    check_attention_mask,
    check_embeddings,
    check_label_ids,
    check_labels,
    check_one_input,
    check_positions,
    check_token_ids,
    eager_mask_config,
)
from .configuration_scratchformer_seq2seq import ScratchformerSeq2SeqConfig
from .modeling_scratchformer import (
    accepts_past_key_values,
    cache_field,
    cache_of,
    causal_mask,
    output_flags,
    with_position_limit,
)
from .transformer_scratchformer import (
    ScratchformerBlock,
    ScratchformerLayerNorm,
    ScratchformerRMSNorm,
    ScratchformerSinusoidalEmbedding,
    embedding_scale,
    final_norm,
    make_absolute_positions,
    make_dropout,
    run_blocks,
    sinusoidal_table,
)

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
    _no_split_modules = ["ScratchformerBlock"]
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


# ----------------------------------------------------------------------------------------------
# Encoder and decoder stacks
# ----------------------------------------------------------------------------------------------


class ScratchformerSeq2SeqStack(ScratchformerSeq2SeqPreTrainedModel):
    """What the encoder and the decoder share: the token embedding (one matrix for both), positions
    added to it, dropout, `num_layers` blocks and the final norm."""

    def __init__(
        self, config: ScratchformerSeq2SeqConfig, embed_tokens: nn.Embedding | None, num_layers: int, **block_kwargs
    ) -> None:
        super().__init__(config)
        if embed_tokens is None:  # standalone use; the full model passes its shared matrix
            embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens = embed_tokens
        self.embed_positions = make_absolute_positions(config)
        self.embed_scale = embedding_scale(config)
        self.dropout = make_dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ScratchformerBlock(config, i, **block_kwargs) for i in range(num_layers))
        self.norm = final_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, name: str) -> torch.Tensor:
        """The token embeddings, checked; positions are added once the caller knows them."""
        check_one_input(input_ids, inputs_embeds)
        if input_ids is not None:
            check_token_ids(input_ids, self.embed_tokens.num_embeddings, name)
            inputs_embeds = self.embed_tokens(input_ids)
        check_embeddings(inputs_embeds)
        return inputs_embeds


class ScratchformerSeq2SeqEncoder(ScratchformerSeq2SeqStack):
    """Figure 1, left: embed, add positions, N bidirectional blocks."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, embed_tokens: nn.Embedding | None = None) -> None:
        # A source sentence is read whole, so every token may look at every other: with no padding
        # (mask None) sdpa/flash must not add causality either.
        super().__init__(config, embed_tokens, config.encoder_layers, is_causal=False)

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
        output_attentions, output_hidden_states = output_flags(config, output_attentions, output_hidden_states)
        x_BSC = self.embed(input_ids, inputs_embeds, "input_ids")
        B, S, _ = x_BSC.shape
        check_attention_mask(attention_mask, B, S, length="source tokens")
        # Positions count real tokens only, so a left-padded source reads exactly like an unpadded one.
        if attention_mask is not None:
            position_ids_BS = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            position_ids_BS = torch.arange(S, device=x_BSC.device)[None].expand(B, S)
        # From a mask the values tell the largest position (a long left-padded source may still fit).
        check_positions(config, position_ids_BS, None if attention_mask is not None else S - 1, "source")
        x_BSC = self.dropout(x_BSC * self.embed_scale + self.embed_positions(position_ids_BS))

        mask_B1SS = create_bidirectional_mask(
            config=eager_mask_config(config, output_attentions), inputs_embeds=x_BSC, attention_mask=attention_mask
        )
        x_BSC, all_hidden_states, all_attentions, _ = run_blocks(
            self.layers, self.norm, x_BSC, output_attentions, output_hidden_states, mask_B1LM=mask_B1SS, **kwargs
        )
        return BaseModelOutput(last_hidden_state=x_BSC, hidden_states=all_hidden_states, attentions=all_attentions)


class ScratchformerSeq2SeqDecoder(ScratchformerSeq2SeqStack):
    """Figure 1, right: embed the target so far, add positions, N blocks of masked self-attention,
    cross-attention and MLP."""

    def __init__(self, config: ScratchformerSeq2SeqConfig, embed_tokens: nn.Embedding | None = None) -> None:
        super().__init__(config, embed_tokens, config.decoder_layers, is_causal=True, cross_attention=True)

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
        output_attentions, output_hidden_states = output_flags(config, output_attentions, output_hidden_states)
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs encoder_hidden_states: run the encoder on the source first.")
        x_BTC = self.embed(input_ids, inputs_embeds, "decoder_input_ids")
        B, T, _ = x_BTC.shape

        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError("An encoder-decoder needs an EncoderDecoderCache (self- and cross-attention caches).")
        past = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, B, past + T, "decoder_attention_mask")
        position_ids_BT = torch.arange(past, past + T, device=x_BTC.device)[None].expand(B, T)
        check_positions(config, position_ids_BT, past + T - 1, "target")
        x_BTC = self.dropout(x_BTC * self.embed_scale + self.embed_positions(position_ids_BT))

        mask_config = eager_mask_config(config, output_attentions)
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

        x_BTC, all_hidden_states, all_self, all_cross = run_blocks(
            self.layers, self.norm, x_BTC, output_attentions, output_hidden_states,
            mask_B1LM=self_mask_B1TM, cache=cache, encoder_BSC=encoder_hidden_states, cross_mask_B1LS=cross_mask_B1TS,
            **kwargs,
        )  # fmt: skip
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

    def generate(self, inputs=None, generation_config=None, logits_processor=None, stopping_criteria=None, **kwargs):
        """GenerationMixin.generate, which also stops where the decoder's position table ends (see
        modeling_scratchformer.PositionLimit): the source is checked against it as it is encoded."""
        stopping_criteria = with_position_limit(self.config, stopping_criteria)
        return super().generate(inputs, generation_config, logits_processor, stopping_criteria, **kwargs)

    def init_continuous_batching(self, *args, **kwargs):
        # Behind generate_batch() and `transformers serve --continuous-batching` too. Without this, the
        # batcher would run the decoder alone on packed prompts and every request would fail later.
        raise NotImplementedError(
            "Continuous batching (generate_batch, init_continuous_batching) runs decoder-only models: "
            "transformers' batcher packs the prompts into one decoder row and has no place for an encoder's "
            "output. Batch an encoder-decoder with generate() (padded inputs, greedy or beam search)."
        )

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
            check_labels(labels, logits_BTV.shape[:2], "labels must have the shape of decoder_input_ids")
            check_label_ids(labels, self.config.vocab_size, -100)
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
