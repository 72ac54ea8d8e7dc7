"""Export a scratchformer checkpoint to a stock architecture: `scratchformer export`.

Serving engines (vLLM, TGI, llama.cpp, MLX) and tools that key on architectures (TransformerLens,
lm-eval's model registry) know Llama, Qwen3 and GPT-2, not scratchformer; remote code is also the
fragile path across transformers releases. The llama preset *is* Llama (same module names, same
rotary layout), the qwen3 preset *is* Qwen3 (Llama's plus `q_norm`/`k_norm`), and the gpt2 preset is
GPT-2 up to its weight names and fused/transposed layout, so their checkpoints can leave our code
entirely:

    scratchformer export --model runs/mini/model --to llama --output_dir mini-llama   # LlamaForCausalLM
    scratchformer export --model runs/qwen/model --to qwen3 --output_dir mini-qwen3   # Qwen3ForCausalLM
    scratchformer export --model runs/gpt2/model --to gpt2 --output_dir mini-gpt2     # GPT2LMHeadModel
    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf    # llama.cpp, Ollama

An export never runs silently wrong: a config the target cannot represent exactly (post-norm,
LayerNorm in a Llama, biases, another position encoding, embedding scaling, ...) is refused, naming
the field and its value; and before the output is renamed into place it is loaded with the stock
class and its logits are compared with ours. Tokenizer, generation config, chat template and model
card travel with it; the output appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .files import atomic_directory
from .model_dir import load_model_dir

TARGETS = ("llama", "qwen3", "gpt2", "gguf")
# The stock transformers class each directory target is written as.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}


# What the source checkpoint must be, per target: config field -> the value the target implies.
REQUIRED: dict[str, dict[str, Any]] = {
    "llama": dict(
        position_embedding="rope",
        norm_type="rmsnorm",
        norm_position="pre",
        mlp_type="swiglu",
        attention_bias=False,
        mlp_bias=False,
        scale_embeddings=False,
        is_causal=True,
        qk_norm=False,
    ),
    "gpt2": dict(
        position_embedding="learned",
        norm_type="layernorm",
        norm_position="pre",
        mlp_type="gelu",
        attention_bias=True,
        mlp_bias=True,
        scale_embeddings=False,
        is_causal=True,
        qk_norm=False,
    ),
}


REQUIRED["qwen3"] = {**REQUIRED["llama"], "qk_norm": True}  # Llama's block with QK-norm
# The presets that export to each target exactly. GGUF is written as llama.cpp's "llama" or "qwen3"
# architecture, whichever the checkpoint is (`gguf_architecture`).
PRESETS_OF = {"llama": ("llama",), "qwen3": ("qwen3",), "gpt2": ("gpt2",), "gguf": ("llama", "qwen3")}


def gguf_architecture(config) -> str:
    """The llama.cpp architecture a GGUF export of `config` is written as: "qwen3" with QK-norm, else
    "llama" (its refusals then name what the llama architecture lacks)."""
    return "qwen3" if getattr(config, "qk_norm", False) else "llama"


# Why a field matters, for the refusal message.
MEANING = {
    "position_embedding": "how positions enter the model",
    "norm_type": "the normalisation",
    "norm_position": "where the norms sit (pre: before each sublayer; post: after the residual sum)",
    "mlp_type": "the feed-forward network",
    "attention_bias": "biases in the attention projections",
    "mlp_bias": "biases in the MLP",
    "scale_embeddings": "the paper's multiplication of embeddings by sqrt(hidden_size)",
    "is_causal": "causal (decoder) vs bidirectional attention",
    "qk_norm": "RMSNorm on each head's queries and keys",
}


def unrepresentable(config, target: str) -> list[tuple[str, Any, Any]]:
    """(field, its value, the value `target` needs) for every field of a scratchformer causal-LM config
    that `target` cannot represent; empty when it exports exactly."""
    wrong = []
    for field, want in REQUIRED[gguf_architecture(config) if target == "gguf" else target].items():
        have = getattr(config, field, False if field == "qk_norm" else None)  # configs before 0.4 have no qk_norm
        if have != want:
            wrong.append((field, have, want))
    if target == "gpt2" and config.num_key_value_heads != config.num_attention_heads:
        wrong.append(("num_key_value_heads", config.num_key_value_heads, config.num_attention_heads))
    return wrong


def check_exportable(config, target: str) -> list[str]:
    """Raise UserError if `config` (a ScratchformerConfig) cannot be written as `target` exactly.
    Returns notes about what is dropped without changing inference (dropout)."""
    if target not in TARGETS:
        raise UserError(f"unknown export target {target!r}: choose one of {', '.join(TARGETS)}")
    if getattr(config, "model_type", None) != "scratchformer":
        raise UserError(
            f"this is a {getattr(config, 'model_type', '?')!r} checkpoint; only decoder-only scratchformer "
            "checkpoints (model_type 'scratchformer') export to stock architectures (the encoder-decoder has no "
            "stock counterpart)"
        )
    wrong = unrepresentable(config, target)
    if wrong:
        lines = "; ".join(f"{f}={have!r} ({MEANING.get(f, f)}), {target} needs {want!r}" for f, have, want in wrong)
        presets = PRESETS_OF[target]
        # A checkpoint another target takes exactly (the qwen3 preset asked for --to llama) is told which.
        fits = [t for t in ARCHITECTURES if t != target and not unrepresentable(config, t)]
        elsewhere = f"; this checkpoint exports exactly with --to {fits[0]}" if fits else ""
        raise UserError(
            f"cannot export to {target} exactly: {lines}. Only checkpoints of the "
            f"{' or '.join(map(repr, presets))} preset export to {target} (train with --preset {presets[0]}); other "
            f"configs run through scratchformer's own code (trust_remote_code=True){elsewhere}"
        )
    notes = []
    if target != "gpt2":  # GPT-2 carries all three dropouts; Llama and Qwen3 only attention dropout
        for field in ("embedding_dropout", "hidden_dropout"):
            if getattr(config, field):
                notes.append(f"{field}={getattr(config, field)} has no {target} counterpart and is dropped "
                             "(inference is unaffected; fine-tuning the export trains without it)")
    return notes


def exportable_config(model_dir: str | os.PathLike):
    """The checkpoint's config, read without its weights, checked to be a scratchformer causal LM."""
    from transformers import AutoConfig

    from .model_dir import read_config

    raw = read_config(model_dir)
    heads = raw.get("architectures") or []
    if heads and not any(h.endswith("ForCausalLM") for h in heads):
        raise UserError(
            f"{model_dir} holds a {heads[0]}; export writes causal language models (a checkpoint whose "
            "architecture ends in ForCausalLM, e.g. the model/ of a `scratchformer pretrain` run)"
        )
    if raw.get("model_type") != "scratchformer":  # the encoder-decoder, or another library's model
        return AutoConfig.from_pretrained(model_dir)
    from scratchformer.modeling import ScratchformerConfig

    return ScratchformerConfig.from_pretrained(model_dir)


def _token_ids(config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}


def _llama_family_fields(config) -> dict:
    """The fields LlamaConfig and Qwen3Config share, read from our config: the shapes, RMSNorm's
    epsilon, rotary's base, SwiGLU, no attention bias."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=config.attention_dropout,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        **_token_ids(config),
    )


def llama_config(config):
    from transformers import LlamaConfig

    return LlamaConfig(**_llama_family_fields(config), mlp_bias=False)


def qwen3_config(config):
    """Qwen3's config for the qwen3 preset: Llama's fields, the head width said explicitly (Qwen3's is
    its own field, 128 by default), no sliding window on any layer."""
    from transformers import Qwen3Config

    return Qwen3Config(
        **_llama_family_fields(config),
        use_sliding_window=False,
        max_window_layers=config.num_hidden_layers,
        layer_types=["full_attention"] * config.num_hidden_layers,
    )


def gpt2_config(config):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        n_positions=config.max_position_embeddings,
        layer_norm_epsilon=config.norm_eps,
        activation_function="gelu_new",  # the tanh approximation, which our "gelu" is
        embd_pdrop=config.embedding_dropout,
        resid_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        **_token_ids(config),
    )


def gpt2_state_dict(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our keys to GPT-2's: q/k/v fused into c_attn, every Linear weight transposed into GPT-2's
    Conv1D layout (in, out). The inverse of convert.gpt2_state_dict_to_scratchformer."""
    out = {
        "transformer.wte.weight": sd["model.embed_tokens.weight"],
        "transformer.wpe.weight": sd["model.embed_positions.weight"],
        "transformer.ln_f.weight": sd["model.norm.weight"],
        "transformer.ln_f.bias": sd["model.norm.bias"],
    }
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(n_layer):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        qkv = [sd[src + f"self_attn.{p}_proj.weight"] for p in "qkv"]
        out[dst + "attn.c_attn.weight"] = torch.cat(qkv, dim=0).t().contiguous()
        out[dst + "attn.c_attn.bias"] = torch.cat([sd[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for ours, theirs in (("self_attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                             ("mlp.down_proj", "mlp.c_proj")):
            out[dst + theirs + ".weight"] = sd[src + ours + ".weight"].t().contiguous()
            out[dst + theirs + ".bias"] = sd[src + ours + ".bias"]
        for ours, theirs in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            out[dst + theirs + ".weight"] = sd[src + ours + ".weight"]
            out[dst + theirs + ".bias"] = sd[src + ours + ".bias"]
    return out


def stock_checkpoint(model, target: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(stock config, state dict under the stock names) for an in-memory ScratchformerForCausalLM."""
    config = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # stored once, tied again on load
    if target == "llama":
        return llama_config(config), sd
    if target == "qwen3":  # the same names, q_norm/k_norm included
        return qwen3_config(config), sd
    return gpt2_config(config), gpt2_state_dict(sd, config.num_hidden_layers)


def _model_card(source: Path, target: str, architecture: str) -> str:
    original = (source / "README.md").read_text(encoding="utf-8") if (source / "README.md").is_file() else ""
    head = (
        f"# {source.name} ({target} export)\n\n"
        f"This is a scratchformer checkpoint exported as a stock `{architecture}`: it loads with "
        "`AutoModelForCausalLM.from_pretrained(...)` and needs no `trust_remote_code`. Written by "
        f"`scratchformer export --to {target}`, which checked that the stock class computes the same logits.\n"
    )
    return head + ("\n## The original model card\n\n" + original if original else "")


def _probe_logits(model, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    with torch.no_grad():
        return ids, model(ids).logits.float()


def export_stock(model_dir: str | os.PathLike, target: str, output_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """Write `model_dir` (a scratchformer causal LM) as a stock Llama, Qwen3 or GPT-2 directory at
    `output_dir`; returns (the output, notes). Refuses what the target cannot represent."""
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source, out = Path(model_dir), Path(output_dir)
    if target not in ARCHITECTURES:
        raise UserError(f"export_stock writes {', '.join(ARCHITECTURES)}, not {target!r}")
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --output_dir or remove it first")
    notes = check_exportable(exportable_config(source), target)  # before any weight is read
    model, _ = load_model_dir(source, AutoModelForCausalLM, architectures=("ForCausalLM",), need_tokenizer=False)
    model.eval()
    config, sd = stock_checkpoint(model, target)
    config.dtype = model.dtype

    with atomic_directory(out) as tmp:
        config.architectures = [ARCHITECTURES[target]]
        config.save_pretrained(tmp)
        save_torch_state_dict(sd, tmp)
        if (source / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(source).save_pretrained(tmp)
        if (source / "tokenizer.json").is_file():
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(source, target, config.architectures[0]), encoding="utf-8")

        # The stock class, from the files just written, must compute our logits.
        stock = AutoModelForCausalLM.from_pretrained(tmp, dtype=model.dtype).eval()
        if type(stock).__name__ != config.architectures[0]:
            raise UserError(f"the export loaded as {type(stock).__name__}, not {config.architectures[0]}")
        ids, ours = _probe_logits(model, config.vocab_size)
        with torch.no_grad():
            theirs = stock(ids).logits.float()
        tolerance = 1e-4 if model.dtype == torch.float32 else 5e-2
        diff = (ours - theirs).abs().max().item() / max(1.0, ours.abs().max().item())
        if diff > tolerance:
            raise UserError(f"the exported {target} model's logits differ from the original by {diff:.2e}; "
                              "nothing was written (please report this)")
    return out, notes
