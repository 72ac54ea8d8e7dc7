"""llama.cpp's tensor names for our decoder's state dict, shared by the GGUF tests (test_export_gguf,
test_gguf_read_back; pytest puts this folder on sys.path, and the name does not start with test_, so
nothing here is collected)."""

from __future__ import annotations


def gguf_names(config) -> dict[str, tuple[str, int | None]]:
    """llama.cpp name -> (our state-dict key, heads whose rotary rows ggml orders differently, or None).
    A model with tied embeddings has no output.weight: llama.cpp reads the output matrix from token_embd."""
    names: dict[str, tuple[str, int | None]] = {
        "token_embd.weight": ("model.embed_tokens.weight", None),
        "output_norm.weight": ("model.norm.weight", None),
    }
    if not config.tie_word_embeddings:
        names["output.weight"] = ("lm_head.weight", None)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        names |= {
            f"blk.{i}.attn_norm.weight": (p + "input_layernorm.weight", None),
            f"blk.{i}.attn_q.weight": (p + "self_attn.q_proj.weight", config.num_attention_heads),
            f"blk.{i}.attn_k.weight": (p + "self_attn.k_proj.weight", config.num_key_value_heads),
            f"blk.{i}.attn_v.weight": (p + "self_attn.v_proj.weight", None),
            f"blk.{i}.attn_output.weight": (p + "self_attn.o_proj.weight", None),
            f"blk.{i}.ffn_norm.weight": (p + "post_attention_layernorm.weight", None),
            f"blk.{i}.ffn_gate.weight": (p + "mlp.gate_proj.weight", None),
            f"blk.{i}.ffn_up.weight": (p + "mlp.up_proj.weight", None),
            f"blk.{i}.ffn_down.weight": (p + "mlp.down_proj.weight", None),
        }
    return names
