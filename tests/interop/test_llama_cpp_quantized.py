"""Every `scratchformer export --to gguf --dtype` in the real llama.cpp (through llama-cpp-python): each file
loads and generates; its perplexity on held-out text, computed from llama.cpp's own logits, against the
f32 file's; how often its top token is the one our `generate()` picks; greedy continuations of three
prompts; the file size. Our quantized tensors are byte for byte what llama.cpp's own quantizer
(`llama_model_quantize`, the library behind `llama-quantize`) writes from the same f32 file, with the
same type for every tensor; and its K-quants (Q4_K_M) need rows that are multiples of 256, as
`scratchformer doctor` says.

Run by `make interop` (which compiles llama-cpp-python); with SCRATCHFORMER_WRITE_RESULTS=1 the figures
are written to benchmarks/results/interop_llama_cpp_quantized.json and .md."""

from __future__ import annotations

import ctypes
import json
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.training.library.doctor import config_verdicts
from scratchformer.training.library.evaluation import EvalConfig, evaluation_blocks
from scratchformer.training.library.gguf import DTYPES, k_quant_rows, planned_tensor_types, write_gguf

pytestmark = pytest.mark.llama_cpp

PROMPTS = ("The import statement", "A function definition", "Exceptions are raised when")
NEW_TOKENS = 32
HELD_OUT_BLOCKS = 16  # of 128 tokens from the embedded corpus's validation split: 2,032 predictions
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
QUANTIZED = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
# Bounds on what a type may cost, from the measured figures (benchmarks/results/
# interop_llama_cpp_quantized.md) with room for another build of llama.cpp: perplexity relative to
# the f32 file's, and the share of held-out positions whose top token is our model's.
PERPLEXITY_RATIO = {"f32": 1.001, "f16": 1.002, "bf16": 1.01, "q8_0": 1.01, "q5_1": 1.05, "q5_0": 1.05,
                    "q4_1": 1.15, "q4_0": 1.15}
TOP1_AGREEMENT = {"f32": 0.999, "f16": 0.995, "bf16": 0.97, "q8_0": 0.97, "q5_1": 0.9, "q5_0": 0.9,
                  "q4_1": 0.8, "q4_0": 0.8}

MEASURED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def llama_dir(trained_checkpoint) -> Path:
    return trained_checkpoint("llama")


@pytest.fixture(scope="module")
def ours(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="module")
def files(llama_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("quantized")
    return {dtype: write_gguf(llama_dir, out / f"model-{dtype}.gguf", dtype=dtype)[0] for dtype in DTYPES}


@pytest.fixture(scope="module")
def held_out(llama_dir, ours) -> list[list[int]]:
    """Blocks of the embedded corpus's validation split, cut as `scratchformer eval` and pretraining's
    validation cut them, each scored as one sequence (as llama.cpp's perplexity tool scores chunks)."""
    blocks = evaluation_blocks(EvalConfig(model=str(llama_dir), max_eval_samples=HELD_OUT_BLOCKS), ours[1],
                               ours[0].config.max_position_embeddings)
    return [list(b["input_ids"]) for b in blocks]


@pytest.fixture(scope="module")
def our_logits(ours, held_out) -> list[np.ndarray]:
    with torch.no_grad():
        return [ours[0](torch.tensor([ids])).logits[0].numpy() for ids in held_out]


def open_llama(llama_cpp, path: Path, **kwargs):
    return llama_cpp.Llama(model_path=str(path), verbose=False, seed=0, **kwargs)


def negative_log_likelihoods(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """-log p(token t+1 | tokens ..t) at every position but the last (float64)."""
    x = logits[:-1].astype(np.float64)
    log_z = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
    return log_z - x[np.arange(len(ids) - 1), ids[1:]]


def greedy(llm, ids: list[int]) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == NEW_TOKENS:
            break
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_loads_and_generates(llama_cpp, files, ours, held_out, our_logits, dtype):
    model, tok = ours
    path = files[dtype]
    # The file holds what doctor and the exporter planned, tensor by tensor.
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types == {n: t.ggml_type for n, t in planned_tensor_types(model.config, dtype).items()}
    assert [v.ok for v in config_verdicts(model.config) if v.rule == "gguf"] == [True]

    # llama.cpp as a user opens it (default f16 key/value cache), every position's logits kept.
    llm = open_llama(llama_cpp, path, n_ctx=model.config.max_position_embeddings, logits_all=True)
    try:
        assert llm.metadata["general.file_type"] == str(int(gguf.LlamaFileType[
            {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}.get(dtype, f"MOSTLY_{dtype.upper()}")]))
        nll, our_nll, agree, positions = [], [], 0, 0
        for ids, mine in zip(held_out, our_logits, strict=True):
            llm.reset()
            llm.eval(ids)
            theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
            nll.append(negative_log_likelihoods(theirs, ids))
            our_nll.append(negative_log_likelihoods(mine, ids))
            agree += int((theirs.argmax(-1) == mine.argmax(-1)).sum())
            positions += len(ids)
        greedy_rows = []
        for prompt in PROMPTS:
            ids = tok(prompt)["input_ids"]
            with torch.no_grad():
                ids_1L = torch.tensor([ids])
                expected = model.generate(ids_1L, attention_mask=torch.ones_like(ids_1L), do_sample=False,
                                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)[0, len(ids):].tolist()
            got = greedy(llm, ids)
            same = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(expected))
            greedy_rows.append(dict(prompt=prompt, identical_tokens=same, text=llm.detokenize(got).decode(
                "utf-8", errors="replace")))
    finally:
        llm.close()
    ppl = float(np.exp(np.concatenate(nll).mean()))
    MEASURED[dtype] = dict(
        file_bytes=path.stat().st_size, perplexity=ppl, our_perplexity=float(np.exp(np.concatenate(our_nll).mean())),
        top1_agreement=agree / positions, positions=positions, greedy=greedy_rows,
        types=sorted({t for n, t in types.items() if not n.endswith("norm.weight")}))
    # It generates: a full continuation of every prompt.
    assert all(len(r["text"]) > 0 for r in greedy_rows)
    assert np.isfinite(ppl)
    if dtype == "f32":
        # llama.cpp's numbers are ours (its default f16 key/value cache rounds the attention inputs).
        assert ppl == pytest.approx(MEASURED["f32"]["our_perplexity"], rel=1e-3)
    else:
        f32 = MEASURED.get("f32") or pytest.skip("run with the f32 case first")
        assert ppl / f32["perplexity"] < PERPLEXITY_RATIO[dtype], (ppl, f32["perplexity"])
    assert agree / positions >= TOP1_AGREEMENT[dtype], agree / positions


def llama_quantize(llama_cpp, source: Path, target: Path, ftype: int, pure: bool = False) -> None:
    """llama.cpp's own quantizer (what `llama-quantize SOURCE TARGET TYPE` runs), default settings."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    params.pure = pure
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize failed ({status})"


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_our_quantization_is_llama_cpps(llama_cpp, files, tmp_path, dtype):
    """From the same f32 file, llama.cpp's quantizer gives every tensor the type ours gives it (norms
    f32, the output matrix q8_0, the rest the file's type) and the same bytes: gguf's numpy quantizers
    are ports of ggml's reference code, and we add no arithmetic of our own."""
    theirs_path = tmp_path / f"llama-cpp-{dtype}.gguf"
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{dtype.upper()}")
    llama_quantize(llama_cpp, files["f32"], theirs_path, ftype)
    ours_t = {t.name: t for t in gguf.GGUFReader(files[dtype]).tensors}
    theirs_t = {t.name: t for t in gguf.GGUFReader(theirs_path).tensors}
    assert {n: t.tensor_type.name for n, t in theirs_t.items()} == {n: t.tensor_type.name for n, t in ours_t.items()}
    different = [n for n in ours_t if not np.array_equal(np.asarray(ours_t[n].data), np.asarray(theirs_t[n].data))]
    MEASURED.setdefault("llama_quantize", {})[dtype] = dict(tensors=len(ours_t), bytes_identical=len(ours_t) - len(
        different))
    assert different == []


@pytest.fixture(scope="module")
def wide_checkpoint(trained_checkpoint, tmp_path_factory) -> Path:
    """Rows that are multiples of 256 (width 256, feed-forward 768), the trained checkpoint's tokenizer."""
    path = tmp_path_factory.mktemp("wide") / "model"
    tok = AutoTokenizer.from_pretrained(trained_checkpoint("llama"))
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_k_quants_need_rows_that_are_multiples_of_256(llama_cpp, llama_dir, wide_checkpoint, tmp_path):
    """`llama-quantize model-f16.gguf out.gguf Q4_K_M` on our f16 export: with rows of 64 and 192 (the
    tiny size) no matrix can hold a K-quant and llama.cpp falls back to 32-block types; with rows of
    256 and 768 every matrix is a K-quant. Both files load and generate. doctor says which is which."""
    k_types = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    found = {}
    for name, src in (("tiny", llama_dir), ("wide", wide_checkpoint)):
        f16, _ = write_gguf(src, tmp_path / f"{name}-f16.gguf", dtype="f16")
        out = tmp_path / f"{name}-q4_k_m.gguf"
        llama_quantize(llama_cpp, f16, out, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
        matrices = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) > 1}
        llm = open_llama(llama_cpp, out, n_ctx=64)
        try:
            tokens = greedy(llm, llm.tokenize(b"The import statement", add_bos=True))
        finally:
            llm.close()
        config = ScratchformerConfig.from_pretrained(src)
        [verdict] = [v for v in config_verdicts(config) if v.rule == "gguf_k_quants"]
        found[name] = dict(rows=[config.hidden_size, config.intermediate_size],
                           not_multiples_of_256=k_quant_rows(config), types=sorted(set(matrices.values())),
                           doctor=verdict.mark, generated=len(tokens), file_bytes=out.stat().st_size)
        assert len(tokens) == NEW_TOKENS
        all_k = set(matrices.values()) <= k_types
        assert verdict.ok is all_k, (name, matrices, verdict)
    MEASURED["q4_k_m"] = found
    assert not set(found["tiny"]["types"]) & k_types  # Q5_0 / Q5_1 / Q8_0 fallbacks
    assert set(found["wide"]["types"]) <= k_types


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    if os.environ.get("SCRATCHFORMER_WRITE_RESULTS") != "1" or not all(d in MEASURED for d in DTYPES):
        return
    import llama_cpp

    versions = {"llama_cpp_python": llama_cpp.__version__, "gguf": version("gguf"),
                "transformers": version("transformers"), "torch": version("torch"),
                "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    report = {
        "what": "scratchformer export --to gguf --dtype ..., run by llama.cpp through llama-cpp-python",
        "checkpoint": "scratchformer pretrain --preset llama --size tiny --vocab_size 512 --max_train_steps 300 "
                      "(embedded corpus, seed 0)",
        "held_out": f"{HELD_OUT_BLOCKS} blocks of 128 tokens of the embedded corpus's validation split",
        "versions": versions, "greedy_new_tokens": NEW_TOKENS, **MEASURED,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "interop_llama_cpp_quantized.json").write_text(json.dumps(report, indent=2) + "\n",
                                                                  encoding="utf-8")
    f32 = MEASURED["f32"]
    lines = [
        f"llama.cpp via llama-cpp-python {versions['llama_cpp_python']}, gguf {versions['gguf']}, transformers "
        f"{versions['transformers']}, torch {versions['torch']}, Python {versions['python']}, {versions['machine']}. "
        "The files are `scratchformer export --to gguf --dtype ...` of a 300-step tiny llama-preset pretrain run "
        "(2 layers x 64, 512-token tokenizer). Perplexity: llama.cpp's own logits (default settings: f16 "
        f"key/value cache) on {HELD_OUT_BLOCKS} held-out blocks of 128 tokens ({f32['positions'] - HELD_OUT_BLOCKS:,} "
        f"predictions); our float32 model scores {f32['our_perplexity']:.3f} on the same tokens. Top-1: the share "
        f"of those {f32['positions']:,} positions where llama.cpp's likeliest token is the one our `generate()` picks. "
        f"Greedy: of {NEW_TOKENS} new tokens on three prompts, how many match ours before the first difference. "
        "Written by tests/interop/test_llama_cpp_quantized.py.",
        "",
        "| --dtype | tensor types | file size | perplexity | vs f32 | top-1 = ours | greedy tokens = ours |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for dtype in DTYPES:
        m = MEASURED[dtype]
        lines.append(
            f"| {dtype} | {', '.join(t.lower() for t in m['types'])} | {m['file_bytes'] / 1024:,.0f} KiB | "
            f"{m['perplexity']:.3f} | {m['perplexity'] / f32['perplexity']:.4f} | {m['top1_agreement']:.1%} | "
            f"{', '.join(str(r['identical_tokens']) for r in m['greedy'])} of {NEW_TOKENS} |")
    if "llama_quantize" in MEASURED:
        lines += ["", "llama.cpp's own quantizer (`llama_model_quantize`, default settings) on the f32 file:", "",
                  "| type | tensors with our type and our bytes |", "|---|---|"]
        lines += [f"| {d} | {r['bytes_identical']} of {r['tensors']} |" for d, r in MEASURED["llama_quantize"].items()]
    if "q4_k_m" in MEASURED:
        lines += ["", "`llama-quantize model-f16.gguf out.gguf Q4_K_M` (through `llama_model_quantize`):", "",
                  "| rows (width, feed-forward) | matrix types written | doctor's K-quant line | generates |",
                  "|---|---|---|---|"]
        lines += [f"| {r['rows'][0]}, {r['rows'][1]} | {', '.join(t.lower() for t in r['types'])} | {r['doctor']} | "
                  f"{r['generated']} tokens |" for r in MEASURED["q4_k_m"].values()]
    (RESULTS_DIR / "interop_llama_cpp_quantized.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
