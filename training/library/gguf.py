"""Write a scratchformer checkpoint as one GGUF file for llama.cpp (and Ollama, LM Studio, llama-cpp-python):
`scratchformer export --to gguf`.

    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf            # f16 matrices
    scratchformer export --model runs/mini/model --to gguf --output_file mini.gguf --dtype f32

The llama preset is llama.cpp's "llama" architecture, so the weights only need llama.cpp's names and
one row permutation (see `rotary_rows_to_ggml`). The tokenizer is the part that usually goes wrong:
llama.cpp's converter recognises a BPE pre-tokenizer by hashing the ids of a fixed test string, so a
tokenizer trained on the user's own text is unknown to it and refused. We know what our tokenizer is
(byte-level BPE, GPT-2's split regex, no prefix space: `scratchformer.tokenization.bpe`), check that
the checkpoint's tokenizer.json is exactly that, and write the metadata ourselves.

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
from .export import check_exportable
from .files import fresh_sibling_file
from .model_dir import load_model_dir, read_config

DTYPES = ("f32", "f16")
ARCHITECTURE = "llama"
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
F16_MAX = 65504.0


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
    key/value heads."""
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


def _check_tokenizer_pipeline(spec: dict[str, Any]) -> None:
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
    _check_tokenizer_pipeline(spec)
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
    """Our state dict under llama.cpp's tensor names, float32, queries and keys permuted for ggml's rope.
    Shapes stay PyTorch's (out, in); the GGUF writer records them reversed, as ggml counts dimensions."""
    config = model.config
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
        out[dst + "attn_q.weight"] = rotary_rows_to_ggml(sd[src + "self_attn.q_proj.weight"], H)
        out[dst + "attn_k.weight"] = rotary_rows_to_ggml(sd[src + "self_attn.k_proj.weight"], G)
        out[dst + "attn_v.weight"] = sd[src + "self_attn.v_proj.weight"]
        out[dst + "attn_output.weight"] = sd[src + "self_attn.o_proj.weight"]
        out[dst + "ffn_norm.weight"] = sd[src + "post_attention_layernorm.weight"]
        out[dst + "ffn_gate.weight"] = sd[src + "mlp.gate_proj.weight"]
        out[dst + "ffn_up.weight"] = sd[src + "mlp.up_proj.weight"]
        out[dst + "ffn_down.weight"] = sd[src + "mlp.down_proj.weight"]
    return out


def _model_name(source: Path) -> str:
    # A pretrain run saves to RUN/model; the run's name says more than "model".
    source = source.resolve()
    return source.parent.name if source.name == "model" and source.parent.name else source.name


def _add_metadata(writer, config, vocab: GGUFVocab, name: str, file_type: int, source: Path) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description("a scratchformer checkpoint (llama preset), written by `scratchformer export --to gguf`")
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
    """Write `model_dir` (a llama-preset scratchformer causal LM with its tokenizer) as the GGUF file
    `output_file`; returns (the file, notes). `dtype` ("f32" or "f16") is the type of the matrices;
    norm weights are always f32, as llama.cpp's converter writes them. Refuses configs llama.cpp's
    "llama" architecture cannot represent, tokenizers it would not reproduce, and an existing file."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise UserError(
            '--to gguf needs the gguf package: pip install gguf (or pip install "scratchformer[gguf]")'
        ) from None
    from transformers import AutoConfig, AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    source, out = Path(model_dir), Path(output_file)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --output_file or remove it first")
    # The config decides first, so a refusal comes at once, before any weight is read.
    read_config(source)
    notes = check_exportable(AutoConfig.from_pretrained(source), "gguf")
    # float32 whatever the checkpoint holds: bf16 and f16 widen exactly, and f16 output rounds once.
    model, tokenizer = load_model_dir(source, AutoModelForCausalLM, architectures=("ForCausalLM",),
                                      need_tokenizer=True, dtype=torch.float32)
    config = model.config
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    notes += vocab.notes
    tensors = gguf_tensors(model)

    matrix_type = gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        for name, t in tensors.items():
            if t.dim() == 2 and t.abs().max().item() > F16_MAX:
                raise UserError(f"{name} holds values beyond the float16 range (|x| > {F16_MAX:g}); "
                                  "export with --dtype f32")

    writer = gguf.GGUFWriter(path=None, arch=ARCHITECTURE)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    _add_metadata(writer, config, vocab, _model_name(source), file_type, source)
    np_types: dict[str, Any] = {}
    for name, t in tensors.items():
        # 1-D tensors (the norms) stay float32: ggml's norm kernels read f32, as llama.cpp's converter writes.
        ggml_type = matrix_type if t.dim() == 2 else gguf.GGMLQuantizationType.F32
        np_types[name] = np.dtype(np.float16 if ggml_type == gguf.GGMLQuantizationType.F16 else np.float32)
        # Only the sizes now: each tensor is converted while it is written, so memory holds the model once.
        writer.add_tensor_info(name, tuple(t.shape), np_types[name], t.numel() * np_types[name].itemsize,
                               raw_dtype=ggml_type)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name in the target directory and renamed at the end: the output is
    # complete or absent, never a file llama.cpp would half-load.
    fd, tmp_name = fresh_sibling_file(out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, t in tensors.items():
            writer.write_tensor_data(t.numpy().astype(np_types[name], copy=False))
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        if out.exists():  # appeared while we wrote; never replace someone's file
            raise FileExistsError(f"{out} already exists: choose a new --output_file or remove it first")
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out, notes
