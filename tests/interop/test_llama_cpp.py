"""The real llama.cpp (through llama-cpp-python) on `scratchformer export --to gguf` files: the same
greedy continuations as our `generate()`, the same token ids on a few hundred varied strings, the
same logits to float32 rounding, and the chat template rendered the same. The llama preset runs as
llama.cpp's "llama" architecture and the qwen3 preset as its "qwen3" (QK-norm, NEOX rotary layout).

Run by `make interop` (which compiles llama-cpp-python); with SCRATCHFORMER_WRITE_RESULTS=1 the
measured figures are written to benchmarks/results/interop_llama_cpp.json and .md."""

from __future__ import annotations

import json
import os
import platform
import random
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization.bpe import SPECIAL_TOKENS, train_bpe
from scratchformer.training.library.gguf import PRE_TOKENIZER, write_gguf

pytestmark = pytest.mark.llama_cpp

PROMPTS = ("The import statement", "A function definition", "Exceptions are raised when")
NEW_TOKENS = 32
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

# Pieces that exercise every branch of the split regex and of byte-level BPE: contractions (and
# capitalised ones, which GPT-2's regex does not treat as contractions), whitespace runs before
# words and at the end, tabs, CR/LF, exotic spaces, digits and long numbers, letters with combining
# marks, scripts with and without spaces, emoji with skin tones, ZWJ sequences and flags, code,
# punctuation runs, control characters, private-use and unassigned code points.
FRAGMENTS = (
    "The import statement", "don't", "I'll", "we've", "she'd", "they're", "it's", "I'm", "DON'T", "I'LL",
    "'s", "'tis", "rock 'n' roll", "'quoted'", "a  b", "a   \n\n  b", "trailing   ", "   leading", "\t\tx",
    "line\r\nbreak", "no\u00a0break", "wide\u3000space", "em\u2003space", "\u2028", "\x85next", "123",
    "1234567890123456789", "3.14159", "1,000,000", "x2y3", "٣٤٥", "Ⅻ", "½", "café", "naïve", "Ünïcödé",
    "e\u0301", "Привет мир", "Γειά σου", "שלום", "مرحبا", "हिन्दी", "我想在apple工作1314151天", "こんにちは世界",
    "안녕하세요", "🚀", "😶\u200d🌫️", "👍🏽", "🇫🇷", "✅ 🦙🦙", "def f(x):\n    return x**2  # square",
    "if (a && b) { c++; }", '<div class="x">', "SELECT * FROM t WHERE id = 1;", "λx.x", "x += 1", "~/.bashrc",
    "http://example.com/a?b=c&d=e", "!!!???...", "------======", "'''''", '""""', "```", "(((())))",
    "\x07bell", "\x1b[31mred", "ﬁ", "Ａｂｃ", "\ue000", "!\u0378!", "\U0010fffd", "\ufeffbom", "x\u200by",
    "\n", " ", "  ", "\t", "a", " a", "ĠĊ",
)
SEPARATORS = ("", " ", "  ", "\n", "\n\n", "\t", " \n ", "   ")


def varied_strings(n: int = 400) -> list[str]:
    """Every fragment alone, then random concatenations of 2 to 6 of them: deterministic (seeded)."""
    rng = random.Random(0)
    strings = list(FRAGMENTS)
    while len(strings) < n:
        strings.append("".join(rng.choice(FRAGMENTS) + rng.choice(SEPARATORS) for _ in range(rng.randint(2, 6))))
    assert not any(s in text for text in strings for s in SPECIAL_TOKENS)
    return strings


def with_special_tokens(n: int = 40) -> list[str]:
    """Strings holding our special tokens' text, which both sides must match as the special tokens."""
    rng = random.Random(1)
    return ["".join(rng.choice(FRAGMENTS + SPECIAL_TOKENS) + rng.choice(SEPARATORS) for _ in range(rng.randint(2, 6)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """The figures the tests measure; written to benchmarks/results when SCRATCHFORMER_WRITE_RESULTS=1."""
    measured: dict[str, Any] = {}
    yield measured
    if os.environ.get("SCRATCHFORMER_WRITE_RESULTS") == "1" and measured:
        write_results(measured)


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


PRESETS = ("llama", "qwen3")  # the presets that export to GGUF: llama.cpp's "llama" and "qwen3"


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    """`exported(preset)` -> (its trained model/ directory, {"f32": file, "f16": file}), built on first use."""
    built: dict[str, tuple[Path, dict[str, Path]]] = {}

    def make(preset: str) -> tuple[Path, dict[str, Path]]:
        if preset not in built:
            src, out = trained_checkpoint(preset), tmp_path_factory.mktemp(f"llama-cpp-{preset}")
            built[preset] = src, {dtype: write_gguf(src, out / f"model-{dtype}.gguf", dtype=dtype)[0]
                                  for dtype in ("f32", "f16")}
        return built[preset]

    return make


@pytest.fixture(scope="module")
def llama_dir(exported) -> Path:
    return exported("llama")[0]


@pytest.fixture(scope="module")
def gguf_files(exported) -> dict[str, Path]:
    return exported("llama")[1]


def load_ours(model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def ours(llama_dir):
    return load_ours(llama_dir)


def measured(results: dict[str, Any], preset: str) -> dict[str, Any]:
    """Where a preset's figures go: the llama preset's at the top level (as before the qwen3 preset),
    the qwen3 preset's under "qwen3"."""
    return results if preset == "llama" else results.setdefault(preset, {})


def open_llama(llama_cpp, path: Path, **kwargs):
    return llama_cpp.Llama(model_path=str(path), verbose=False, seed=0, **kwargs)


@pytest.fixture(scope="module")
def llm(llama_cpp, gguf_files, ours):
    """llama.cpp as a user opens it: the f32 file, default settings."""
    model = open_llama(llama_cpp, gguf_files["f32"], n_ctx=ours[0].config.max_position_embeddings, logits_all=False)
    yield model
    model.close()  # explicitly: left to interpreter exit, llama-cpp-python's finaliser fails noisily


def greedy_llama_cpp(llm, ids: list[int], stop: set[int]) -> list[int]:
    """llama.cpp's own sampler at temperature 0 (greedy), stopping where our generate() stops: after
    NEW_TOKENS tokens or on one of generation_config's EOS ids (kept, as generate() keeps it)."""
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token in stop or len(out) == NEW_TOKENS:
            break
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_continuations_are_ours(llama_cpp, exported, results, preset, dtype):
    """The f32 file must continue every prompt exactly as we do. The f16 file (the default export)
    rounds every weight, so a near tie could go the other way: its agreement is measured and reported,
    and its logits are held to a bound in test_logits_are_ours. doctor's GGUF line for both presets
    rests on this test."""
    from scratchformer.training.library.doctor import config_verdicts

    model_dir, gguf_files = exported(preset)
    model, tok = load_ours(model_dir)
    [verdict] = [v for v in config_verdicts(model.config) if v.rule == "gguf"]
    assert verdict.ok and ("qwen3" in verdict.reason) == (preset == "qwen3")
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos]) - {None}
    llm = open_llama(llama_cpp, gguf_files[dtype], n_ctx=model.config.max_position_embeddings, logits_all=False)
    rows = []
    try:
        for prompt in PROMPTS:
            ids = tok(prompt)["input_ids"]
            assert ids[0] == tok.bos_token_id  # the leading <s>, on both sides
            assert llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False) == ids
            with torch.no_grad():
                ids_1L = torch.tensor([ids])
                generated = model.generate(ids_1L, attention_mask=torch.ones_like(ids_1L), do_sample=False,
                                           max_new_tokens=NEW_TOKENS)
            expected = generated[0, len(ids):].tolist()
            got = greedy_llama_cpp(llm, ids, stop)
            rows.append(dict(prompt=prompt, prompt_ids=ids, ours=expected, llama_cpp=got, identical=got == expected,
                             text=tok.decode(expected),
                             text_identical=llm.detokenize(got) == tok.decode(got).encode("utf-8")))
    finally:
        llm.close()
    measured(results, preset)[f"greedy_{dtype}"] = rows
    assert all(r["text_identical"] for r in rows)
    if dtype == "f32":
        assert [r["identical"] for r in rows] == [True] * len(PROMPTS), rows


# (file dtype, llama.cpp's key/value cache type, bound on max |delta| relative to the largest logit)
LOGIT_CASES = [("f32", "f32", 1e-4), ("f32", "f16", 1e-2), ("f16", "f16", 3e-2)]


@pytest.mark.parametrize("dtype, kv_cache, bound", LOGIT_CASES)
@pytest.mark.parametrize("preset", PRESETS)
def test_logits_are_ours(llama_cpp, exported, results, preset, dtype, kv_cache, bound):
    """Every position of each prompt, evaluated in one batch (llama.cpp's first step) vs our float32
    forward. llama.cpp keeps its key/value cache in f16 by default, which rounds the attention
    inputs; with an f32 file and an f32 cache only the float32 summation order differs."""
    model_dir, gguf_files = exported(preset)
    model, tok = load_ours(model_dir)
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_cache == "f32" else {}
    llm = open_llama(llama_cpp, gguf_files[dtype], n_ctx=model.config.max_position_embeddings, logits_all=True,
                     **cache)
    worst = scale = 0.0
    same_argmax = True
    try:
        for prompt in PROMPTS:
            ids = tok(prompt)["input_ids"]
            llm.reset()
            llm.eval(ids)
            theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
            with torch.no_grad():
                mine = model(torch.tensor([ids])).logits[0].numpy()
            worst = max(worst, float(np.abs(theirs - mine).max()))
            scale = max(scale, float(np.abs(mine).max()))
            same_argmax &= bool((theirs.argmax(-1) == mine.argmax(-1)).all())
    finally:
        llm.close()
    measured(results, preset).setdefault("logits", {})[f"{dtype}_file_{kv_cache}_kv_cache"] = dict(
        gguf_dtype=dtype, kv_cache=kv_cache, max_abs_diff=worst, max_abs_logit=scale,
        same_argmax_every_position=same_argmax)
    assert worst < bound * max(1.0, scale)
    if dtype == "f32":
        assert same_argmax


@pytest.mark.parametrize("preset", PRESETS)
def test_tokenization_is_ours(llama_cpp, exported, results, preset):
    model_dir, gguf_files = exported(preset)
    _, tok = load_ours(model_dir)
    llm = open_llama(llama_cpp, gguf_files["f32"], vocab_only=True)
    try:
        check_tokenization(llm, tok, measured(results, preset))
    finally:
        llm.close()


def check_tokenization(llm, tok, results: dict[str, Any]) -> None:
    strings = varied_strings()
    different = [s for s in strings
                 if llm.tokenize(s.encode("utf-8"), add_bos=True, special=False) != tok(s)["input_ids"]]
    # Decoding llama.cpp's way (token by token) gives the text back, byte for byte.
    not_round_trip = [s for s in strings if llm.detokenize(tok(s)["input_ids"][1:]) != s.encode("utf-8")]
    specials = with_special_tokens()
    different_special = [s for s in specials if llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)
                         != tok(s)["input_ids"]]
    results["tokenization"] = dict(
        strings=len(strings), identical=len(strings) - len(different),
        decoded_identical=len(strings) - len(not_round_trip),
        strings_with_special_tokens=len(specials), identical_with_special_tokens=len(specials) - len(different_special),
        fragments=list(FRAGMENTS))
    assert different == [] and not_round_trip == [] and different_special == []


def test_tokenization_with_a_vocabulary_trained_on_the_strings(llama_cpp, tmp_path, results):
    """The trained fixture's 512 tokens rarely merge across a split boundary, so a split llama.cpp
    drew differently could still give the same ids. A vocabulary trained on the test strings
    themselves merges nearly every pair inside each piece: any difference in where the pre-tokenizer
    splits shows up as different ids."""
    strings = varied_strings()
    tok = train_bpe(strings * 3, vocab_size=4096, min_frequency=1, show_progress=False)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=4, max_position_embeddings=64)
    ScratchformerForCausalLM(config).save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    path, _ = write_gguf(tmp_path / "dense", tmp_path / "dense.gguf", dtype="f32")
    llm = open_llama(llama_cpp, path, vocab_only=True)
    try:
        different = [s for s in strings
                     if llm.tokenize(s.encode("utf-8"), add_bos=True, special=False) != tok(s)["input_ids"]]
    finally:
        llm.close()
    results["tokenization_dense_vocabulary"] = dict(vocab_size=len(tok), strings=len(strings),
                                                    identical=len(strings) - len(different))
    assert different == []


def test_added_tokens(llama_cpp, llama_dir, tmp_path, results):
    """Tokens added after training (tokenizer.add_tokens, e.g. for a fine-tuning format) are split out
    of the text before the BPE runs, by `tokenizers` and by llama.cpp alike (as USER_DEFINED)."""
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tok.add_tokens(["scratchformer", "<tag>", "日本"])
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=4, max_position_embeddings=64)
    ScratchformerForCausalLM(config).save_pretrained(tmp_path / "added")
    tok.save_pretrained(tmp_path / "added")
    path, _ = write_gguf(tmp_path / "added", tmp_path / "added.gguf", dtype="f32")
    strings = ["I like scratchformer!", "a<tag>b <tag> c", "scratchformerscratchformer", " 日本語", "x scratchformer y",
               *(f"{a} <tag>{b}" for a, b in zip(varied_strings()[:40], varied_strings()[40:80]))]
    llm = open_llama(llama_cpp, path, vocab_only=True)
    try:
        different = [s for s in strings
                     if llm.tokenize(s.encode("utf-8"), add_bos=True, special=False) != tok(s)["input_ids"]]
        not_round_trip = [s for s in strings if llm.detokenize(tok(s)["input_ids"][1:]) != s.encode("utf-8")]
    finally:
        llm.close()
    results["tokenization_added_tokens"] = dict(strings=len(strings), identical=len(strings) - len(different))
    assert different == [] and not_round_trip == []


def test_chat_template_renders_and_tokenizes_the_same(llama_cpp, llm, ours, results):
    # llama-cpp-python's create_chat_completion renders the GGUF's template with Jinja2 and tokenizes
    # the result with special tokens parsed and no BOS added (the template writes it).
    _, tok = ours
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "What does the import statement do?"},
                {"role": "assistant", "content": "It loads a module."},
                {"role": "user", "content": "And 'from x import y'?"}]
    bos, eos = tok.bos_token, tok.eos_token
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    theirs = formatter(messages=messages).prompt
    mine = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert theirs == mine
    ids = llm.tokenize(theirs.encode("utf-8"), add_bos=False, special=True)
    assert ids == tok(mine, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.convert_tokens_to_ids("<|end|>")) == len(messages)
    results["chat_template_identical"] = True


def write_results(measured: dict[str, Any]) -> None:
    import llama_cpp

    report = {
        "what": "scratchformer export --to gguf (f32 and f16), llama preset (and under 'qwen3' the qwen3 preset), "
                "run by llama.cpp through llama-cpp-python",
        "checkpoint": "scratchformer pretrain --preset llama|qwen3 --size tiny --vocab_size 512 --max_train_steps 300 "
                      "(embedded corpus, seed 0)",
        "versions": {"llama_cpp_python": llama_cpp.__version__, "gguf": version("gguf"),
                     "transformers": version("transformers"), "torch": version("torch"),
                     "python": platform.python_version()},
        "pre_tokenizer": PRE_TOKENIZER,
        "greedy_new_tokens": NEW_TOKENS,
        **measured,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "interop_llama_cpp.json").write_text(json.dumps(report, indent=2) + "\n",
                                                        encoding="utf-8")
    lines = [
        f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, gguf {version('gguf')}, transformers "
        f"{version('transformers')}, torch {version('torch')}. The GGUF files are `scratchformer export --to gguf` "
        "of a 300-step tiny pretrain run (512-token tokenizer) of the llama preset (llama.cpp's `llama` "
        f"architecture) and of the qwen3 preset (its `qwen3`), pre-tokenizer `{PRE_TOKENIZER}`, against our own "
        "float32 model. Written by tests/interop/test_llama_cpp.py.",
    ]
    for preset in PRESETS:
        if preset in measured or preset == "llama":
            lines += ["", f"## {preset} preset", "", *preset_lines(measured_of(measured, preset))]
    (RESULTS_DIR / "interop_llama_cpp.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def measured_of(measured: dict[str, Any], preset: str) -> dict[str, Any]:
    return measured if preset == "llama" else measured.get(preset, {})


def preset_lines(measured: dict[str, Any]) -> list[str]:
    tokenization = measured.get("tokenization", {})
    dense = measured.get("tokenization_dense_vocabulary", {})
    logits = measured.get("logits", {})
    yes = {True: "yes", False: "**no**"}
    lines = [
        f"Greedy decoding, {NEW_TOKENS} new tokens, same prompt ids (with the leading `<s>`), llama.cpp's defaults:",
        "",
        "| prompt | prompt tokens | f32 file: tokens identical | f16 file: tokens identical | f32: text identical |",
        "|---|---:|---|---|---|",
    ]
    f32_rows, f16_rows = measured.get("greedy_f32", []), measured.get("greedy_f16", [])
    for a, b in zip(f32_rows, f16_rows or [None] * len(f32_rows)):
        f16 = yes[b["identical"]] if b else "-"
        lines.append(f"| {a['prompt']} | {len(a['prompt_ids'])} | {yes[a['identical']]} | {f16} | "
                     f"{yes[a['text_identical']]} |")
    lines += ["", "| check | result |", "|---|---|"]
    for row in logits.values():
        lines.append(f"| logits at every prompt position, {row['gguf_dtype']} file, {row['kv_cache']} KV cache: "
                     f"max abs diff | {row['max_abs_diff']:.2e} (largest logit {row['max_abs_logit']:.2f}; argmax "
                     f"identical: {yes[row['same_argmax_every_position']]}) |")
    if tokenization:
        lines += [
            f"| varied strings tokenized identically (`special=False`) | {tokenization['identical']} / "
            f"{tokenization['strings']} |",
            f"| ...decoded back to the same bytes | {tokenization['decoded_identical']} / {tokenization['strings']} |",
            f"| strings holding special tokens, identical (`special=True`) | "
            f"{tokenization['identical_with_special_tokens']} / {tokenization['strings_with_special_tokens']} |",
        ]
    if dense:
        lines.append(f"| same strings, {dense['vocab_size']}-token vocabulary trained on them | "
                     f"{dense['identical']} / {dense['strings']} |")
    added = measured.get("tokenization_added_tokens")
    if added:
        lines.append(f"| strings with tokens added after training (user-defined) | {added['identical']} / "
                     f"{added['strings']} |")
    if "chat_template_identical" in measured:
        lines.append(f"| chat template: rendered prompt and its ids | {yes[measured['chat_template_identical']]} |")
    return lines
