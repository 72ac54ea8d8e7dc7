"""Convert a `LlamaForCausalLM`, `Qwen3ForCausalLM` or `GPT2LMHeadModel` into a scratchformer checkpoint.

Two reasons to have this: a learner can read GPT-2, a small Llama or a small Qwen3 in our code, and it
is our proof of correctness (the parity tests convert random reference models and compare logits).

    scratchformer convert --model path/to/llama-qwen3-or-gpt2 --output_dir path/to/scratchformer

Our module names are Llama's and Qwen3's (`q_norm`/`k_norm` for QK-norm), so their state dicts carry
over key for key. GPT-2 differs in three ways: its names (`transformer.h.N.attn.c_attn`), its fused
query/key/value projection, and its `Conv1D` layers, which store weights as (in, out) where
`nn.Linear` stores (out, in).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM

from .files import atomic_directory
from .model_dir import load_model_dir

SUPPORTED = ("llama", "qwen3", "gpt2")


def _token_ids(config) -> dict:
    ids = {name: getattr(config, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    ids["mask_token_id"] = None
    return ids


def llama_config_to_scratchformer(config) -> ScratchformerConfig:
    """The llama preset with a LlamaConfig's sizes; a Qwen3Config gives the qwen3 preset (Llama's block
    with QK-norm), after refusing what that preset cannot compute (sliding-window layers)."""
    preset = "qwen3" if config.model_type == "qwen3" else "llama"
    if preset == "qwen3":
        sliding = [i for i, kind in enumerate(getattr(config, "layer_types", None) or []) if kind != "full_attention"]
        if getattr(config, "use_sliding_window", False) and sliding:
            raise ValueError(
                f"This Qwen3 uses sliding-window attention in layers {sliding}; scratchformer attends to every "
                "earlier position. Only Qwen3 configs with use_sliding_window=False (every released Qwen3) convert."
            )
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"Only the original RoPE can be converted; this model uses rope_type={rope_type!r}.")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(
            f"This {config.model_type} model has head_dim={head_dim} with {config.num_attention_heads} heads != "
            f"hidden_size={config.hidden_size}; scratchformer derives the head width as hidden_size / heads."
        )
    if config.hidden_act != "silu":
        raise ValueError(f"Only SwiGLU (hidden_act='silu') models can be converted, got {config.hidden_act!r}.")
    return ScratchformerConfig.from_preset(
        preset,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        norm_eps=config.rms_norm_eps,
        attention_bias=config.attention_bias,
        mlp_bias=getattr(config, "mlp_bias", False),  # Qwen3 has none
        attention_dropout=config.attention_dropout,
        initializer_range=config.initializer_range,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        **_token_ids(config),
    )


def gpt2_config_to_scratchformer(config) -> ScratchformerConfig:
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"GPT-2 with activation_function={config.activation_function!r} cannot be converted exactly: "
            "scratchformer's 'gelu' is the tanh approximation GPT-2 uses ('gelu_new')."
        )
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        raise ValueError("Only GPT-2 with the standard 1/sqrt(head_dim) attention scaling can be converted.")
    return ScratchformerConfig.from_preset(
        "gpt2",
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.n_inner or 4 * config.n_embd,
        max_position_embeddings=config.n_positions,
        norm_eps=config.layer_norm_epsilon,
        embedding_dropout=config.embd_pdrop,
        hidden_dropout=config.resid_pdrop,
        attention_dropout=config.attn_pdrop,
        initializer_range=config.initializer_range,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        **_token_ids(config),
    )


def gpt2_state_dict_to_scratchformer(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename GPT-2's keys to ours; split the fused c_attn and transpose every Conv1D weight."""
    out = {
        "model.embed_tokens.weight": sd["transformer.wte.weight"],
        "model.embed_positions.weight": sd["transformer.wpe.weight"],
        "model.norm.weight": sd["transformer.ln_f.weight"],
        "model.norm.bias": sd["transformer.ln_f.bias"],
    }
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        # c_attn maps C -> 3C as [q | k | v] along its output axis.
        q_W, k_W, v_W = sd[src + "attn.c_attn.weight"].t().chunk(3, dim=0)
        q_b, k_b, v_b = sd[src + "attn.c_attn.bias"].chunk(3, dim=0)
        for name, W, b in (("q_proj", q_W, q_b), ("k_proj", k_W, k_b), ("v_proj", v_W, v_b)):
            out[dst + f"self_attn.{name}.weight"] = W.contiguous()
            out[dst + f"self_attn.{name}.bias"] = b.contiguous()
        for ours, theirs in (("self_attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                             ("mlp.down_proj", "mlp.c_proj")):
            out[dst + ours + ".weight"] = sd[src + theirs + ".weight"].t().contiguous()
            out[dst + ours + ".bias"] = sd[src + theirs + ".bias"]
        for ours, theirs in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            out[dst + ours + ".weight"] = sd[src + theirs + ".weight"]
            out[dst + ours + ".bias"] = sd[src + theirs + ".bias"]
    return out


def convert_model(model: PreTrainedModel) -> ScratchformerForCausalLM:
    """A scratchformer copy (same weights, same dtype) of an in-memory Llama, Qwen3 or GPT-2 causal LM."""
    model_type = model.config.model_type
    sd = model.state_dict()
    if model_type in ("llama", "qwen3"):
        config = llama_config_to_scratchformer(model.config)
        sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    elif model_type == "gpt2":
        config = gpt2_config_to_scratchformer(model.config)
        sd = gpt2_state_dict_to_scratchformer(sd, model.config.n_layer)
    else:
        raise ValueError(f"Cannot convert model_type {model_type!r}: supported are {list(SUPPORTED)}.")
    config._attn_implementation = model.config._attn_implementation
    ours = ScratchformerForCausalLM(config).to(next(model.parameters()).dtype)
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Weights did not line up: missing {missing}, unexpected {unexpected}.")
    return ours.eval()


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a saved Llama/Qwen3/GPT-2 directory, write a scratchformer directory (weights, config, code,
    generation config and, when present, the tokenizer). The output appears complete or not at all."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: pass a directory saved with save_pretrained.")
    model_type = AutoConfig.from_pretrained(src).model_type
    if model_type not in SUPPORTED:
        raise ValueError(
            f"{src} holds a {model_type!r} model; `scratchformer convert` reads {list(SUPPORTED)} checkpoints."
        )
    model, _ = load_model_dir(src, AutoModelForCausalLM, need_tokenizer=False)  # safetensors only, checked
    ours = convert_model(model)
    ours.generation_config = model.generation_config
    with atomic_directory(out) as tmp:
        ours.save_pretrained(tmp)
        if (src / "tokenizer.json").is_file() or (src / "vocab.json").is_file():
            AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    return out
