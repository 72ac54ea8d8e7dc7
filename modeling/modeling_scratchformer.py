"""The Hugging Face contract of scratchformer's decoder-only model: what makes the transformer of
`transformer_scratchformer.py` (read that first) a first-class `transformers` model.

In order: the KV cache's name, which transformers changed in 5.24 (one place decides it); what
every stack of blocks shares (the encoder-decoder's two stacks too); the Auto map written into every
checkpoint; the `PreTrainedModel` base (weight init, attention backends, compilation);
`ScratchformerModel` (embeddings, positions, the blocks, the final norm); and the heads (causal LM
with its tensor- and pipeline-parallel plans, sequence and token classification, masked LM). The
fused LM-head loss is `loss_scratchformer.py`, the input checks `checks_scratchformer.py`.

Dimension key as in `transformer_scratchformer.py`: B batch, L query length, M key/value length,
C model width, H query heads, K head width, V vocabulary, N labels of a classification head.

This file is the remote-code payload's entry point for every Auto class: it imports only torch,
transformers, the standard library and its sibling files, which save_pretrained copies beside it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache

try:  # continuous batching's cache; every release the package supports has it (see PAGED below)
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
except ImportError:  # pragma: no cover
    PagedAttentionCache = None
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.utils import can_return_tuple, logging

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
from .configuration_scratchformer import ScratchformerConfig
from .loss_scratchformer import fused_causal_lm_loss
from .transformer_scratchformer import (
    ScratchformerBlock,
    ScratchformerRotaryEmbedding,
    ScratchformerSinusoidalEmbedding,
    embedding_scale,
    final_norm,
    make_absolute_positions,
    make_dropout,
    run_blocks,
    sinusoidal_table,
)

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
# Continuous batching's paged cache
# ----------------------------------------------------------------------------------------------
# generate_batch(), init_continuous_batching() and `transformers serve --continuous-batching` pack
# every running request into one row (batch 1): they pass each token's position, the packed row's
# mask (each request sees only its own past) and a PagedAttentionCache, blocks of memory shared by
# all requests, read and written at indices that travel in the forward's keyword arguments. That
# cache has no length to read (each request has its own) and, like the mask, is the batcher's
# business; the model only routes it. Who writes it moved with the rename above:
# - up to 5.23 the model's cache argument was `past_key_values`, and the batcher's `cache=` was a
#   keyword for transformers' paged attention kernels, which wrote the cache themselves;
# - from 5.24 `cache` is the model's cache argument, and the attention layer writes the paged cache
#   as it writes any other, `cache.update(k, v, layer_idx, kwargs=kwargs)`; the kernels only read.


def is_paged(cache) -> bool:
    return PagedAttentionCache is not None and isinstance(cache, PagedAttentionCache)


class KernelWrittenPagedCache:
    """A paged cache up to transformers 5.23, as the attention layer sees it: `update` writes nothing,
    it puts the cache among the kernel's keyword arguments, where those releases' kernels take it from
    and write it."""

    def __init__(self, paged: PagedAttentionCache) -> None:
        self.paged = paged

    def update(self, k_BGLK: torch.Tensor, v_BGLK: torch.Tensor, layer_idx: int, kwargs: dict):
        kwargs["cache"] = self.paged
        return k_BGLK, v_BGLK


def layers_cache(cache: Cache | None) -> Cache | KernelWrittenPagedCache | None:
    """The cache the attention layers update: the caller's own, but a paged one up to 5.23 (see above)."""
    if is_paged(cache) and CACHE_NAME == "past_key_values":
        return KernelWrittenPagedCache(cache)
    return cache


# ----------------------------------------------------------------------------------------------
# Where generation ends: the position table
# ----------------------------------------------------------------------------------------------
# Learned and sinusoidal positions are a table of max_position_embeddings rows: a token past the last
# row has no position. generate() asks for as many tokens as it is told (a text-generation pipeline
# 256 by default, transformers' server at least 1024), so a 12-token prompt would fail half way
# through its reply. Instead generation stops where the table ends, as max_length stops it, with a
# warning giving the numbers: generate() through a stopping criterion, continuous batching by
# bounding each request's max_new_tokens. Rotary positions have no last row, but the model never saw
# distances past the context it was trained for: it goes on, with a warning saying so.


def new_tokens_within_positions(config, prompt_length: int) -> int | None:
    """How many tokens generation can add to a prompt before the position table ends (at least one: the
    last position's token is never fed back); None for rotary positions, which never end."""
    if config.position_embedding == "rope":
        return None
    return max(1, config.max_position_embeddings - prompt_length)


def position_limit_message(config, prompt_length: int, length: int) -> str:
    limit, kind = config.max_position_embeddings, config.position_embedding
    if kind == "rope":
        return (
            f"Generating past {limit} tokens, the context this rotary model was trained for "
            f"(max_position_embeddings={limit}): rotary positions go on, but the model never saw longer distances "
            f"and its text degrades. Ask for at most {max(1, limit - prompt_length)} new tokens (max_new_tokens) "
            f"after this {prompt_length}-token prompt to stay within it."
        )
    return (
        f"Generation stopped at {length} tokens (a {prompt_length}-token prompt and {length - prompt_length} new): "
        f"this model's {kind} positions end there (max_position_embeddings={limit}). Ask for at most "
        f"{new_tokens_within_positions(config, prompt_length)} new tokens (max_new_tokens) after this prompt to end "
        "before it, or use a model with a longer context."
    )


class PositionLimit(StoppingCriteria):
    """generate()'s stop at the end of the position table (rotary positions: a warning only). It is
    called each time a token was added, with every sequence so far (prompt + new tokens)."""

    def __init__(self, config) -> None:
        self.config = config
        self.prompt_length: int | None = None
        self.warned = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        length = input_ids.shape[-1]
        if self.prompt_length is None:
            self.prompt_length = length - 1
        limit = self.config.max_position_embeddings
        stop = self.config.position_embedding != "rope" and length >= limit
        if (stop or length > limit) and not self.warned:
            self.warned = True
            logger.warning(position_limit_message(self.config, self.prompt_length, length))
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def with_position_limit(config, stopping_criteria: StoppingCriteriaList | None) -> StoppingCriteriaList:
    return StoppingCriteriaList([*(stopping_criteria or []), PositionLimit(config)])


def requests_within_positions(manager, config):
    """A continuous batching manager whose requests end where the position table ends: continuous
    batching ends a request at its max_new_tokens or an end token only, and a forward past the table
    would stop the batcher for every request. A prompt longer than the table is refused as it arrives."""
    if getattr(manager, "within_positions", False):  # a persistent manager, handed back again
        return manager
    add_request = manager.add_request
    limit = config.max_position_embeddings

    @functools.wraps(add_request)
    def add_request_within_positions(input_ids, request_id=None, max_new_tokens=None, *args, **kwargs):
        if config.position_embedding != "rope" and len(input_ids) > limit:
            raise ValueError(
                f"The prompt has {len(input_ids)} tokens, but this model's {config.position_embedding} positions "
                f"end at {limit} (max_position_embeddings): shorten it to at most {limit - 1} tokens, leaving room "
                "for the reply."
            )
        asked = manager.generation_config.max_new_tokens if max_new_tokens is None else max_new_tokens
        room = new_tokens_within_positions(config, len(input_ids))
        if room is not None and (asked is None or asked > room):
            logger.warning_once(position_limit_message(config, len(input_ids), len(input_ids) + room))
            max_new_tokens = room
        elif room is None and (asked is None or len(input_ids) + asked > limit):
            logger.warning_once(position_limit_message(config, len(input_ids), limit + 1))
        return add_request(input_ids, request_id, max_new_tokens, *args, **kwargs)

    manager.add_request = add_request_within_positions
    manager.within_positions = True
    return manager


# ----------------------------------------------------------------------------------------------
# What every stack shares (the decoder-only model, and the encoder-decoder's encoder and decoder)
# ----------------------------------------------------------------------------------------------


def output_flags(config, output_attentions: bool | None, output_hidden_states: bool | None) -> tuple[bool, bool]:
    """The caller's choice where one was given (an explicit False included), else the config's."""
    return (
        bool(output_attentions if output_attentions is not None else config.output_attentions),
        bool(output_hidden_states if output_hidden_states is not None else config.output_hidden_states),
    )


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
    # A decoding step with a static cache compiles as one graph (tests/modeling/test_performance_paths.py), so
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
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding == "rope":
            self.rotary_emb = ScratchformerRotaryEmbedding(config)
        else:
            self.embed_positions = make_absolute_positions(config)
        self.embed_scale = embedding_scale(config)
        self.dropout = make_dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ScratchformerBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = final_norm(config)
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
        output_attentions, output_hidden_states = output_flags(config, output_attentions, output_hidden_states)
        # A cache only pays off when generating; training and scoring never reuse it.
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; turning it off.")
            use_cache = False

        check_one_input(input_ids, inputs_embeds)
        if input_ids is not None:
            check_token_ids(input_ids, config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)
        check_embeddings(inputs_embeds)
        B, L, _ = inputs_embeds.shape

        # A cache made here starts empty: the mask builder is not shown it, which changes nothing for
        # the mask but lets it recognise packed rows (it looks for them only when there is no cache).
        cache_for_mask = cache
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        # Continuous batching passes positions and mask with its paged cache, which holds no one length.
        paged = is_paged(cache)
        past = cache.get_seq_length() if cache is not None and not paged else 0
        # Caller-given positions may restart inside a row (packed documents); the mask builder reads
        # them to keep documents apart, which costs a host sync. Positions made here are one plain
        # range, so the mask builder is not shown them and the training step stays sync-free.
        given_position_ids = position_ids
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=inputs_embeds.device)[None]
        check_positions(config, position_ids, highest=past + L - 1 if given_position_ids is None else None)
        check_attention_mask(attention_mask, B, past + L)

        x_BLC = inputs_embeds * self.embed_scale if self.embed_scale != 1.0 else inputs_embeds
        rotary_BLK = None
        if config.position_embedding == "rope":
            rotary_BLK = self.rotary_emb(x_BLC, position_ids)
        else:
            x_BLC = x_BLC + self.embed_positions(position_ids)
        x_BLC = self.dropout(x_BLC)

        # The mask is built once for all layers (see eager_mask_config).
        mask_config = eager_mask_config(config, output_attentions)
        if paged:
            mask_B1LM = attention_mask  # the batcher's, for its packed row (None for kernels that take cu_seq_lens)
        elif config.is_causal:
            mask_B1LM = causal_mask(mask_config, x_BLC, attention_mask, cache_for_mask, position_ids=given_position_ids)
        else:
            mask_B1LM = create_bidirectional_mask(
                config=mask_config, inputs_embeds=x_BLC, attention_mask=attention_mask
            )

        if given_position_ids is not None:
            # Flash-attention has no mask to carry packed documents: transformers' kernel reads them
            # from the positions themselves (a row of one batch whose positions restart), as Llama's.
            kwargs["position_ids"] = given_position_ids
        x_BLC, all_hidden_states, all_attentions, _ = run_blocks(
            self.layers, self.norm, x_BLC, output_attentions, output_hidden_states,
            mask_B1LM=mask_B1LM, rotary_BLK=rotary_BLK, cache=layers_cache(cache), **kwargs,
        )  # fmt: skip
        return BaseModelOutputWithPast(
            last_hidden_state=x_BLC,
            **cache_field(cache if use_cache else None),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


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

    def generate(self, inputs=None, generation_config=None, logits_processor=None, stopping_criteria=None, **kwargs):
        """GenerationMixin.generate, which also stops where the position table ends (see PositionLimit)."""
        stopping_criteria = with_position_limit(self.config, stopping_criteria)
        return super().generate(inputs, generation_config, logits_processor, stopping_criteria, **kwargs)

    def init_continuous_batching(self, *args, **kwargs):
        """transformers' continuous batching (behind generate_batch and `transformers serve
        --continuous-batching`), whose requests end where the position table ends."""
        return requests_within_positions(super().init_continuous_batching(*args, **kwargs), self.config)

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
            check_labels(labels, x_BLC.shape[:2], "labels must have the shape of input_ids")
            check_label_ids(labels, self.config.vocab_size, kwargs.get("ignore_index", -100))
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
            check_labels(labels, logits_BLN.shape[:2], "token labels must have the shape of input_ids")
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
            check_labels(labels, logits_BLV.shape[:2], "labels must have the shape of input_ids")
            # No shift here: position t predicts the token hidden at position t.
            loss = self.loss_function(logits=logits_BLV, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits_BLV, hidden_states=out.hidden_states, attentions=out.attentions)


__all__ = [
    "ScratchformerPreTrainedModel",
    "ScratchformerModel",
    "ScratchformerForCausalLM",
    "ScratchformerForSequenceClassification",
    "ScratchformerForTokenClassification",
    "ScratchformerForMaskedLM",
]
