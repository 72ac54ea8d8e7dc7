"""Write a scratchformer checkpoint as one GGUF file for llama.cpp (and Ollama, LM Studio, llama-cpp-python):
`scratchformer export --to gguf`.

    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf            # f16 matrices
    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf --dtype f32
    scratchformer export --model runs/mini/model --to gguf --output_file mini-q8.gguf --dtype q8_0

Quantized files (q8_0, q5_1, q5_0, q4_1, q4_0) come from the gguf package's own quantizers
(`gguf.quants.quantize`, the numpy port of ggml's reference code), and each tensor gets the type
llama.cpp's own tools would give it (`tensor_types`): norms stay f32, the output matrix keeps 8 bits,
and a matrix whose rows a type's blocks do not divide stays f16. K-quants (Q4_K_M...) are written by
llama.cpp's `llama-quantize` from our f16 file; they need rows that are multiples of 256.

The llama preset is llama.cpp's "llama" architecture, so the weights only need llama.cpp's names and
one row permutation (see `rotary_rows_to_ggml`); the qwen3 preset is llama.cpp's "qwen3", whose rotary
layout is already ours (no permutation) and which adds each layer's QK-norm gains.

The tokenizer is the part that usually goes wrong: llama.cpp's converter recognises a BPE
pre-tokenizer by hashing the ids of a fixed test string, so a tokenizer trained on the user's own text
is unknown to it and refused. We know what our tokenizer is (byte-level BPE, GPT-2's split regex, no
prefix space: `scratchformer.tokenization.bpe`), check that the checkpoint's tokenizer.json is exactly
that, and write the metadata ourselves.

Unlike `export --to llama`, nothing here runs the result (llama.cpp is not a dependency); the
interop suite (tests/interop/test_llama_cpp.py) runs the real llama.cpp on these files: identical
greedy continuations and token ids, logits equal to float32 rounding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .export import check_exportable, gguf_architecture
from .files import atomic_output
from .model_dir import load_model_dir, read_config

# --dtype -> (the GGML type of the matrices, the file's general.file_type), by their names in gguf's enums.
# The float types are convert_hf_to_gguf.py's --outtype choices; the 4- and 5-bit ones are what
# llama.cpp's llama-quantize writes and the gguf package can quantize (its K-quants are read-only).
GGUF_DTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
DTYPES = tuple(GGUF_DTYPES)
# The output matrix of a 4- or 5-bit file. llama-quantize gives it Q6_K when its rows are a multiple
# of 256 and Q8_0 otherwise (llama_tensor_get_type: "nx % qk_k != 0"); gguf cannot write Q6_K, so
# ours is always Q8_0: the same as llama.cpp's below 256, a little larger and more precise above.
OUTPUT_QUANT = "Q8_0"
# K-quants (Q2_K ... Q6_K, the Q4_K_M mixes) pack 256 values per block (ggml's QK_K).
K_QUANT_BLOCK = 256
# The architecture each preset is written as (export.gguf_architecture): the same block, QK-norm aside.
ARCHITECTURES = ("llama", "qwen3")
# llama.cpp's name for the pre-tokenizer (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_GPT2), whose regex is
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
# run by a hand-written matcher (unicode_regex_split_custom_gpt2) that also takes the final `|\s+`:
# GPT-2's split, which `tokenizers`' ByteLevel(use_regex=True) applies. "trillion" and
# "granite-docling" select the same regex too, but were added in 2025, so older llama.cpp builds
# (and the Ollama and LM Studio releases that embed them) refuse a file naming them, while "gpt-2"
# has been known since pre-tokenizer types exist; they differ from "gpt-2" only in
# llama_detokenize's clean-up of spaces before punctuation over a whole sequence, which generation
# output (assembled token by token) never goes through.
PRE_TOKENIZER = "gpt-2"
# Ollama's own engine reads the split regex from this key, and for the llama architecture falls back
# to Llama 3's regex (digits in threes, no contraction-only tokens) without it.
GPT2_SPLIT_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TURN = "<|end|>"  # closes every turn of our chat template (tokenization.bpe.DEFAULT_CHAT_TEMPLATE)


def rotary_rows_to_ggml(w_OC: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a query or key projection from our rotary layout to llama.cpp's.

    Rotary embeddings turn channel pairs by position-dependent angles. Our layout (transformers'
    Llama: `rotate_half`) pairs channel i of a head with channel i + K/2; llama.cpp's "llama"
    architecture runs ggml's normal rope, which pairs channels 2i and 2i + 1, with the same
    frequency theta^(-2i/K) for pair i. Moving row i to 2i and row i + K/2 to 2i + 1 in every head
    makes ggml rotate exactly the pairs we rotate, by the same angles, and since the same reordering
    is applied to queries and keys, every q.k dot product (all attention reads) is unchanged. Values
    and the output projection never meet the rotation and stay as they are. This is
    `LlamaModel.permute` of llama.cpp's convert_hf_to_gguf.py; for keys, `n_heads` is the number of
    key/value heads.

    llama.cpp's "qwen3" architecture runs ggml's NEOX rope instead, which pairs i with i + K/2 as we do,
    so its queries and keys are written as they are (convert_hf_to_gguf.py's Qwen3 does not permute)."""
    O, C = w_OC.shape
    K = O // n_heads
    return w_OC.reshape(n_heads, 2, K // 2, C).transpose(1, 2).reshape(O, C)


@dataclass
class GGUFVocab:
    """What llama.cpp needs to tokenize exactly as our tokenizer does."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad, mask, eot
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None
    notes: list[str] = field(default_factory=list)


def check_tokenizer_pipeline(spec: dict[str, Any]) -> None:
    """Refuse a tokenizer.json that llama.cpp's "gpt-2" pre-tokenizer would not reproduce exactly."""
    why = ("llama.cpp reproduces only byte-level BPE with GPT-2's split regex and no prefix space (what "
           "`scratchformer tokenizer` trains)")
    if spec.get("normalizer") is not None:
        raise UserError(f"the tokenizer has a normalizer ({spec['normalizer'].get('type')}), which GGUF cannot "
                          f"carry; {why}")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")) != ("ByteLevel", False, True):
        raise UserError(f"the tokenizer's pre-tokenizer is {json.dumps(pre)}, not ByteLevel(add_prefix_space="
                          f"False, use_regex=True); {why}")
    model = spec.get("model") or {}
    wanted = {"type": "BPE", "dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "byte_fallback": False, "ignore_merges": False}
    wrong = {k: model.get(k) for k, v in wanted.items() if model.get(k, v) != v}
    if wrong:
        raise UserError(f"the tokenizer's model has {wrong}, which llama.cpp's BPE does not do; {why}")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"the tokenizer's decoder is {(spec.get('decoder') or {}).get('type')}, not ByteLevel; {why}")


def _add_special_tokens(tokenizer, bos: int, eos: int) -> tuple[bool, bool]:
    """(add_bos, add_eos) as the tokenizer's post-processor does it; refuses anything else it adds,
    since llama.cpp can only prepend BOS and append EOS."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b", add_special_tokens=True)["input_ids"]
    # "a b" encodes to ordinary tokens, so a BOS in front or an EOS at the end came from the post-processor.
    add_bos, add_eos = full[:1] == [bos], full[-1:] == [eos]
    if full != [bos] * add_bos + plain + [eos] * add_eos:
        raise UserError(f"the tokenizer's post-processor turns {plain} into {full}; llama.cpp can only add a "
                          "BOS token in front and an EOS token at the end")
    return add_bos, add_eos


def gguf_vocab(tokenizer, vocab_size: int) -> GGUFVocab:
    """Tokens, token types, merges, special ids, BOS/EOS flags and chat template of a
    PreTrainedTokenizerFast, for a model whose embedding has `vocab_size` rows."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    check_tokenizer_pipeline(spec)
    notes: list[str] = []

    id_to_token: dict[int, str] = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    id_to_token.update({i: a["content"] for i, a in added.items()})
    if max(id_to_token) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(id_to_token)} but the model's vocabulary has "
                          f"{vocab_size} rows: this tokenizer does not belong to this model")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in id_to_token:
            # Embedding rows no token maps to (a vocabulary padded to a round size): llama.cpp needs a
            # distinct text for every row, and UNUSED keeps it out of tokenization and output.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            # Added tokens are matched in raw text before the BPE runs, in llama.cpp as in `tokenizers`.
            # Special ones are CONTROL: llama.cpp matches them in text only when asked to parse special
            # tokens and renders them only on request, as transformers' skip_special_tokens does.
            # USER_DEFINED ones are always matched and always rendered, like non-special added tokens.
            tokens.append(id_to_token[i])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
            if added[i].get("lstrip") or added[i].get("rstrip") or added[i].get("single_word"):
                notes.append(f"added token {id_to_token[i]!r} strips whitespace or matches whole words only; "
                             "GGUF has no field for that, so llama.cpp matches it as plain text")
        else:
            tokens.append(id_to_token[i])
            types.append(gguf.TokenType.NORMAL)
    if len(set(tokens)) != len(tokens):
        # llama.cpp maps token text back to one id and aborts on a duplicate.
        duplicate = next(t for t in tokens if tokens.count(t) > 1)
        raise UserError(f"the token {duplicate!r} appears under two ids; llama.cpp needs every token text once")
    if len(id_to_token) < vocab_size:
        notes.append(f"the model has {vocab_size - len(id_to_token)} embedding rows no token uses; they are written "
                     "as unused placeholder tokens")

    # tokenizers >= 0.20 saves merges as pairs, older ones as "a b"; GGUF (llama.cpp splits at the first
    # space after position 0) wants "a b". Byte-level symbols never contain a space (it is "Ġ").
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]

    ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad", "mask")}
    for name in ("bos", "eos"):
        if ids[name] is None:
            # llama.cpp's BPE default for a missing BOS/EOS is id 11, which would end or start every text
            # with whatever token 11 happens to be.
            raise UserError(f"the tokenizer has no {name}_token; llama.cpp needs one (it would use token 11)")
    end_of_turn = next((i for i, a in added.items() if a["content"] == END_OF_TURN and a["special"]), None)
    if end_of_turn is not None:
        # llama.cpp also guesses "<|end|>" by its text; written out, no guess is needed, and
        # generation stops at the end of an assistant turn as well as at EOS.
        ids["eot"] = end_of_turn
    special_ids = {name: i for name, i in ids.items() if i is not None}
    add_bos, add_eos = _add_special_tokens(tokenizer, special_ids["bos"], special_ids["eos"])

    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: "default" becomes tokenizer.chat_template
        template = [{"name": name, "template": text} for name, text in template.items()]
    return GGUFVocab(tokens, [int(t) for t in types], merges, special_ids, add_bos, add_eos, template or None, notes)


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """Our state dict under llama.cpp's tensor names, float32; for the llama architecture, queries and
    keys permuted for ggml's normal rope; for qwen3, each layer's QK-norm gains as attn_q_norm and
    attn_k_norm. Shapes stay PyTorch's (out, in); the GGUF writer records them reversed, as ggml counts
    dimensions."""
    config = model.config
    qwen3 = gguf_architecture(config) == "qwen3"
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
    }
    # llama.cpp uses token_embd as the output matrix when output.weight is absent, as a tied model does.
    if not config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    H, G = config.num_attention_heads, config.num_key_value_heads
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"blk.{i}."
        out[dst + "attn_norm.weight"] = sd[src + "input_layernorm.weight"]
        q_W, k_W = sd[src + "self_attn.q_proj.weight"], sd[src + "self_attn.k_proj.weight"]
        out[dst + "attn_q.weight"] = q_W if qwen3 else rotary_rows_to_ggml(q_W, H)
        out[dst + "attn_k.weight"] = k_W if qwen3 else rotary_rows_to_ggml(k_W, G)
        if qwen3:  # applied to each head's K channels before rotary, in llama.cpp as in ours
            out[dst + "attn_q_norm.weight"] = sd[src + "self_attn.q_norm.weight"]
            out[dst + "attn_k_norm.weight"] = sd[src + "self_attn.k_norm.weight"]
        out[dst + "attn_v.weight"] = sd[src + "self_attn.v_proj.weight"]
        out[dst + "attn_output.weight"] = sd[src + "self_attn.o_proj.weight"]
        out[dst + "ffn_norm.weight"] = sd[src + "post_attention_layernorm.weight"]
        out[dst + "ffn_gate.weight"] = sd[src + "mlp.gate_proj.weight"]
        out[dst + "ffn_up.weight"] = sd[src + "mlp.up_proj.weight"]
        out[dst + "ffn_down.weight"] = sd[src + "mlp.down_proj.weight"]
    return out


def check_dtype(dtype: str) -> None:
    if dtype not in GGUF_DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}: choose one of {', '.join(DTYPES)}. K-quants (q4_k_m, "
                        "q5_k_m, q6_k...) are written by llama.cpp's quantizer from an f16 export: "
                        "llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M (rows must be multiples of 256)")


def output_matrix(config) -> str:
    """The tensor llama.cpp multiplies the last hidden state by: output.weight, or token_embd.weight
    when the embeddings are tied (llama.cpp then has no output.weight and reuses the embedding)."""
    return "token_embd.weight" if config.tie_word_embeddings else "output.weight"


@dataclass
class TensorType:
    """The GGML type one tensor is written in, and why it is not the file's type when it is not."""

    name: str
    shape: tuple[int, ...]  # PyTorch's (out, in): ggml's rows are the last dimension
    ggml_type: str  # a gguf.GGMLQuantizationType name: "Q4_0", "F16", ...
    reason: str = ""


def tensor_types(shapes: dict[str, tuple[int, ...]], dtype: str, output_name: str) -> dict[str, TensorType]:
    """The GGML type of every tensor of a `dtype` file, chosen as llama.cpp's converter
    (convert_hf_to_gguf.py) and quantizer (llama-quantize) choose: 1-D tensors (the norms) stay F32,
    since ggml's norm kernels read f32; in a 4- or 5-bit file the output matrix is Q8_0 (see
    OUTPUT_QUANT); a matrix whose rows are not a whole number of the type's blocks cannot be stored
    in it and stays F16, the converter's fallback. Needs only shapes, so `scratchformer doctor` can
    say what an export would hold without reading a weight."""
    import gguf

    check_dtype(dtype)
    wanted = GGUF_DTYPES[dtype][0]
    types = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        if len(shape) < 2:
            types[name] = TensorType(name, shape, "F32", "1-D: ggml's norm kernels read f32")
            continue
        chosen, reason = wanted, ""
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted]][0]
        if name == output_name and block > 1 and wanted != OUTPUT_QUANT:
            chosen, reason = OUTPUT_QUANT, "the output matrix keeps 8 bits, as llama-quantize keeps it"
        if shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[chosen]][0]:
            chosen, reason = "F16", f"rows of {shape[-1]} are not a multiple of {wanted}'s block of {block}"
        types[name] = TensorType(name, shape, chosen, reason)
    return types


def gguf_shapes(config) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a GGUF export of this config holds, from the config alone (the model
    is built on the meta device: shapes, no memory, no weights read)."""
    from scratchformer.modeling import ScratchformerForCausalLM

    with torch.device("meta"):
        model = ScratchformerForCausalLM(config)
    return {name: tuple(t.shape) for name, t in gguf_tensors(model).items()}


def planned_tensor_types(config, dtype: str) -> dict[str, TensorType]:
    """`tensor_types` of a `dtype` export of a checkpoint with this config, from the config alone."""
    return tensor_types(gguf_shapes(config), dtype, output_matrix(config))


def k_quant_rows(config) -> list[int]:
    """The row lengths of the matrices llama-quantize would K-quantize that are not multiples of 256
    (empty when a Q4_K_M/Q5_K_M/Q6_K file is all K-quants)."""
    # Every matrix's rows are hidden_size long (heads x head width is hidden_size), but ffn_down's,
    # which are intermediate_size long.
    return sorted(r for r in {config.hidden_size, config.intermediate_size} if r % K_QUANT_BLOCK)


def _type_notes(types: dict[str, TensorType], dtype: str) -> list[str]:
    """One note per reason a matrix is not in the file's type."""
    by_reason: dict[str, list[str]] = {}
    for t in types.values():
        if t.reason and len(t.shape) > 1:
            by_reason.setdefault(f"{t.ggml_type.lower()} ({t.reason})", []).append(t.name)
    return [f"{len(names)} of {sum(len(t.shape) > 1 for t in types.values())} matrices are {why} rather than "
            f"{dtype}: {', '.join(names)}" for why, names in by_reason.items()]


def _quantize(name: str, t: torch.Tensor, ggml_type: str):
    """The tensor's bytes as gguf's own quantizer writes them (numpy), refusing values its type
    cannot hold: f16 overflows above 65504, and the quantized types keep their block scales (and Q4_1/
    Q5_1 their minimum) in f16 too."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[ggml_type]
    with np.errstate(over="ignore"):  # an overflow is refused below, by name, not warned about
        data = gguf.quants.quantize(t.numpy(), qtype)
    if ggml_type not in ("F32", "BF16") and not np.isfinite(gguf.quants.dequantize(data, qtype)).all():
        what = "the float16 range (|x| > 65504)" if ggml_type == "F16" else f"what {ggml_type}'s float16 scales hold"
        raise UserError(f"{name} holds values beyond {what}; export with --dtype f32 or --dtype bf16")
    return data


def _model_name(source: Path) -> str:
    # A pretrain run saves to RUN/model; the run's name says more than "model".
    source = source.resolve()
    return source.parent.name if source.name == "model" and source.parent.name else source.name


def _add_metadata(writer, config, vocab: GGUFVocab, name: str, file_type: int, source: Path) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description(f"a scratchformer checkpoint ({gguf_architecture(config)} preset), written by "
                           "`scratchformer export --to gguf`")
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)  # every channel of a head is rotated
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))

    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE with merges
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_string("tokenizer.ggml.pretokenizer", GPT2_SPLIT_REGEX)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id, "mask": writer.add_mask_token_id, "eot": writer.add_eot_token_id}
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)  # our pre-tokenizer adds no space in front of the text
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

    # llama.cpp's tools take these as their sampling defaults, as transformers takes generation_config.json.
    generation = source / "generation_config.json"
    settings = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    if settings.get("do_sample"):
        if settings.get("temperature") is not None:
            writer.add_sampling_temp(float(settings["temperature"]))
        if settings.get("top_k") is not None:
            writer.add_sampling_top_k(int(settings["top_k"]))
        if settings.get("top_p") is not None:
            writer.add_sampling_top_p(float(settings["top_p"]))


def write_gguf(
    model_dir: str | os.PathLike, output_file: str | os.PathLike, dtype: str = "f16"
) -> tuple[Path, list[str]]:
    """Write `model_dir` (a llama- or qwen3-preset scratchformer causal LM with its tokenizer) as the GGUF file
    `output_file`; returns (the file, notes). `dtype` (one of DTYPES) is the type of the matrices,
    with the exceptions `tensor_types` gives (norms f32, ...), each named in a note. Refuses configs
    llama.cpp's "llama" and "qwen3" architectures cannot represent, tokenizers it would not reproduce, values the
    type cannot hold, and an existing file."""
    try:
        import gguf
    except ImportError:
        raise UserError(
            '--to gguf needs the gguf package: pip install gguf (or pip install "scratchformer[gguf]")'
        ) from None
    from transformers import AutoConfig, AutoModelForCausalLM

    check_dtype(dtype)
    source, out = Path(model_dir), Path(output_file)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --output_file or remove it first")
    # The config decides first, so a refusal comes at once, before any weight is read.
    read_config(source)
    notes = check_exportable(AutoConfig.from_pretrained(source), "gguf")
    # float32 whatever the checkpoint holds: bf16 and f16 widen exactly, and every other type is
    # rounded once, from the exact values.
    model, tokenizer = load_model_dir(source, AutoModelForCausalLM, architectures=("ForCausalLM",),
                                      need_tokenizer=True, dtype=torch.float32)
    config = model.config
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    notes += vocab.notes
    tensors = gguf_tensors(model)
    del model  # the tensors above hold what is needed; each is dropped once quantized
    types = tensor_types({k: tuple(v.shape) for k, v in tensors.items()}, dtype, output_matrix(config))
    notes += _type_notes(types, dtype)

    # Every tensor is converted before the file is opened, so a value the type cannot hold is refused
    # with nothing written; memory holds the float32 model plus the (smaller) converted one at most.
    data = {}
    for name in list(tensors):
        data[name] = _quantize(name, tensors.pop(name), types[name].ggml_type)

    writer = gguf.GGUFWriter(path=None, arch=gguf_architecture(config))
    _add_metadata(writer, config, vocab, _model_name(source), gguf.LlamaFileType[GGUF_DTYPES[dtype][1]], source)
    for name, array in data.items():
        # Quantized data is uint8 in its byte shape, which the writer turns back into the element shape.
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[types[name].ggml_type])

    # Complete or absent, never a file llama.cpp would half-load; a file that appeared while we wrote
    # is someone's, never replaced.
    try:
        with atomic_output(out, exclusive=True) as tmp:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for array in data.values():
                writer.write_tensor_data(array)
            writer.close()
    except FileExistsError:
        raise FileExistsError(f"{out} already exists: choose a new --output_file or remove it first") from None
    finally:
        writer.close()
    return out, notes
