"""`scratchformer export --to gguf --dtype f32|f16|bf16|q8_0|q5_1|q5_0|q4_1|q4_0` on tiny checkpoints, with
only the dev set's `gguf` and transformers: every tensor in the type llama.cpp's own tools would give
it, read back by gguf's reader and dequantized within that type's known error of our weights, the
file's `general.file_type`, and the Q8_0 file through transformers' own GGUF loader.

tests/training/test_gguf_read_back.py does the same on a trained checkpoint, and tests/interop/test_llama_cpp.py
runs every type in the real llama.cpp (and compares our bytes with llama.cpp's own quantizer)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_layout import gguf_names
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training import export
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.gguf import DTYPES, k_quant_rows, planned_tensor_types, write_gguf

TEXT = "The import statement finds a module, loads it and binds a name. def f(x):\n    return x * 2\n" * 20
QUANTIZED = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
             "q5_1": "MOSTLY_Q5_1", "q5_0": "MOSTLY_Q5_0", "q4_1": "MOSTLY_Q4_1", "q4_0": "MOSTLY_Q4_0"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Width 64 (rows of 64: two blocks of 32), feed-forward width 48 (ffn_down's rows: not a whole
    number of blocks), grouped-query attention, untied output; weights a trained model's size
    (std 0.02), a few of them large so that blocks differ in scale."""
    path = tmp_path_factory.mktemp("gguf-quantized") / "model"
    tokenizer = train_bpe([TEXT], vocab_size=320, show_progress=False)
    config = ScratchformerConfig.from_preset(
        "llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p[torch.rand_like(p) < 0.01] *= 20  # outliers, as trained weights have
            else:
                p.add_(torch.randn_like(p) * 0.1)  # norms that are not all ones
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ours(checkpoint):
    return ScratchformerForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    out = tmp_path_factory.mktemp("gguf-files")
    return {dtype: write_gguf(checkpoint, out / f"model-{dtype}.gguf", dtype=dtype) for dtype in DTYPES}


def expected_type(name: str, dtype: str) -> str:
    """Written out by hand from llama.cpp's rules, for this checkpoint's shapes."""
    if not name.endswith(".weight") or "norm" in name:
        return "F32"  # 1-D
    if dtype in ("f32", "f16", "bf16"):
        return dtype.upper()
    if "ffn_down" in name:
        return "F16"  # rows of 48: not a whole number of 32-value blocks, convert_hf_to_gguf's fallback
    if name == "output.weight" and dtype != "q8_0":
        return "Q8_0"  # llama-quantize keeps the output matrix at 8 bits (rows not a multiple of 256)
    return dtype.upper()


def to_ggml_rows(w: torch.Tensor, heads: int | None) -> torch.Tensor:
    """Within each head, rows (i, i + K/2) go to (2i, 2i + 1): ggml's rotary pairs (written here
    independently of the exporter)."""
    if heads is None:
        return w
    O, C = w.shape
    return w.reshape(heads, 2, O // heads // 2, C).transpose(1, 2).reshape(O, C)


def from_ggml_rows(w: torch.Tensor, heads: int | None) -> torch.Tensor:
    if heads is None:
        return w
    O, C = w.shape
    return w.reshape(heads, O // heads // 2, 2, C).transpose(1, 2).reshape(O, C)


def ours_under_gguf_names(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {name: to_ggml_rows(sd[key].detach().float(), heads)
            for name, (key, heads) in gguf_names(model.config).items()}


def dequantized(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as float32, through gguf's own dequantizers."""
    return {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_tensor_has_the_type_llama_cpp_gives_it(files, ours, dtype):
    path, notes = files[dtype]
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType[FILE_TYPE[dtype]]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types == {name: expected_type(name, dtype) for name in ours_under_gguf_names(ours)}
    # `doctor` predicts the same from the config alone.
    assert {n: t.ggml_type for n, t in planned_tensor_types(ours.config, dtype).items()} == types
    # Every matrix not in the file's type is named in a note, with the reason.
    if dtype in QUANTIZED:
        assert any("ffn_down" in n and "rows of 48 are not a multiple of" in n for n in notes), notes
        assert any("output.weight" in n and "8 bits" in n for n in notes) == (dtype != "q8_0"), notes
    else:
        assert notes == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantized_tensors_are_ours_within_the_types_error(files, ours, ggml_error_bound, dtype):
    reader = gguf.GGUFReader(files[dtype][0])
    expected = ours_under_gguf_names(ours)
    worst_fraction = 0.0
    for t in reader.tensors:
        x = expected[t.name].numpy()
        stored = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(x.shape)
        error = np.abs(stored - x)
        bound = ggml_error_bound(x, t.tensor_type.name)
        assert (error <= bound).all(), (t.name, float((error - bound).max()))
        if t.tensor_type.name != "F32":
            worst_fraction = max(worst_fraction, float((error / np.maximum(bound, 1e-30)).max()))
    if dtype == "f32":
        assert worst_fraction == 0.0
    else:
        # The bounds are tight: some value uses more than a third of its bound (a wrong permutation
        # or a wrong tensor would fail the check above; a type that stored nothing would fail here).
        assert worst_fraction > 1 / 3, worst_fraction


def test_sizes_shrink_with_the_type(files):
    size = {dtype: files[dtype][0].stat().st_size for dtype in DTYPES}
    assert size["f32"] > size["f16"] == size["bf16"] > size["q8_0"] > size["q5_1"] > size["q5_0"] > size["q4_1"]
    assert size["q4_1"] > size["q4_0"]


def test_q8_0_through_transformers_gguf_loader(checkpoint, files, ours):
    """transformers' own GGUF loader (`from_pretrained(dir, gguf_file=...)`) dequantizes the file into a
    stock LlamaForCausalLM. Its logits must be our model's with the dequantized weights to float32
    summation order (1e-5 relative: the loader reads every tensor, undoes the rotary permutation, ties
    the output), and our original model's within Q8_0's own effect (see tests/interop/test_gguf.py,
    which measures that bound on a trained checkpoint)."""
    path = files["q8_0"][0]
    stock = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert type(stock) is LlamaForCausalLM
    assert stock.config.tie_word_embeddings is False and stock.config.num_key_value_heads == 2

    # Our model, with the weights the file holds.
    stored = ScratchformerForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    values = dequantized(path)
    sd = stored.state_dict()
    with torch.no_grad():
        for name, (key, heads) in gguf_names(ours.config).items():
            sd[key].copy_(from_ggml_rows(torch.from_numpy(values[name].reshape(sd[key].shape).copy()), heads))
    c = ours.config
    ids = torch.randint(0, c.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, with_stored, original = (m(ids).logits for m in (stock, stored, ours))
    scale = original.abs().max().item()
    assert (theirs - with_stored).abs().max().item() <= 1e-5 * scale
    # Quantization moved the logits (the file is Q8_0, not a copy), but not their order much.
    moved = (theirs - original).abs().max().item()
    assert 1e-4 * scale < moved < 5e-2 * scale, (moved, scale)


def test_values_a_type_cannot_hold_are_refused(checkpoint, tmp_path):
    src = tmp_path / "big"
    model = ScratchformerForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = -1e5
    model.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((checkpoint / name).read_bytes())
    # float16 (and Q4_1's float16 minimum) cannot hold -1e5; Q8_0's scale (1e5 / 127) and bf16 can.
    for dtype, what in (("f16", "the float16 range"), ("q4_1", "what Q4_1's float16 scales hold")):
        with pytest.raises(UserError, match=rf"blk\.1\.ffn_up\.weight holds values beyond {what}.*--dtype f32"):
            write_gguf(src, tmp_path / f"big-{dtype}.gguf", dtype=dtype)
        assert not (tmp_path / f"big-{dtype}.gguf").exists()
    for dtype in ("q8_0", "bf16"):
        write_gguf(src, tmp_path / f"big-{dtype}.gguf", dtype=dtype)
    assert list(tmp_path.glob(".big*")) == []  # no temporary left behind


def test_k_quant_rows_and_planned_types_of_the_presets():
    """K-quants pack 256 values a block: of the sizes `scratchformer pretrain` offers, only base
    (768 wide, feed-forward 2048) has every row a multiple of 256."""
    from scratchformer.training.library.pretrain_config import SIZES

    rows = {}
    for size, fields in SIZES.items():
        config = ScratchformerConfig.from_preset("llama", vocab_size=512, hidden_size=fields["hidden_size"],
                                                 num_attention_heads=fields["num_attention_heads"],
                                                 num_hidden_layers=1)
        rows[size] = (config.hidden_size, config.intermediate_size, k_quant_rows(config))
    assert rows == {"tiny": (64, 192, [64, 192]), "mini": (128, 352, [128, 352]), "small": (384, 1024, [384]),
                    "base": (768, 2048, [])}


def test_the_qwen3_preset_is_llama_cpps_qwen3(checkpoint, tmp_path):
    """The qwen3 preset is written as llama.cpp's "qwen3": the tensors gguf lists for that architecture,
    QK-norm gains as attn_q_norm/attn_k_norm, queries and keys as they are (its NEOX rope pairs i with
    i + K/2, as ours does), and transformers' own GGUF loader (its qwen3 mapping, written from
    llama.cpp's converter) builds a Qwen3ForCausalLM with our logits. That loader reads no head width
    from the file and assumes Qwen3's default of 128, so it is given the export's config here; the
    real llama.cpp runs the file in tests/interop/test_llama_cpp.py."""
    from transformers import Qwen3ForCausalLM

    from scratchformer.training.library.export import qwen3_config

    src = tmp_path / "qwen3"
    config = ScratchformerConfig.from_preset(
        "qwen3", vocab_size=ScratchformerConfig.from_pretrained(checkpoint).vocab_size, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, rope_theta=5000.0)
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)  # gains that are not all ones, QK-norm's among them
    model.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((checkpoint / name).read_bytes())
    path, notes = write_gguf(src, tmp_path / "qwen3.gguf", dtype="f32")
    assert notes == []

    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "qwen3"
    assert reader.fields["qwen3.attention.key_length"].contents() == config.head_dim
    assert reader.fields["qwen3.rope.freq_base"].contents() == 5000.0
    arch = gguf.MODEL_ARCH.QWEN3
    known = {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in gguf.MODEL_TENSORS[arch] for i in range(2)}
    values = dequantized(path)
    assert set(values) <= known and {"blk.1.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= set(values)
    sd = model.state_dict()
    names = {k: (v, None) for k, (v, _) in gguf_names(config).items()}  # no rotary permutation
    names |= {f"blk.{i}.attn_{x}_norm.weight": (f"model.layers.{i}.self_attn.{x}_norm.weight", None)
              for i in range(2) for x in "qk"}
    assert set(names) == set(values)
    for name, (key, _) in names.items():
        assert np.array_equal(values[name].reshape(sd[key].shape), sd[key].numpy()), name

    stock = Qwen3ForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, config=qwen3_config(config),
                                             dtype=torch.float32).eval()
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, mine = stock(ids).logits, model(ids).logits
    assert (theirs - mine).abs().max().item() <= 1e-5 * mine.abs().max().item()


def test_command_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert export.main(["--model", str(checkpoint), "--to", "gguf", "--output_file", str(out), "--dtype", "q4_0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out}"
    assert any(line.startswith("note: ") and "ffn_down" in line for line in printed)
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_0
    # K-quants are llama.cpp's to write: the message says how.
    assert export.main(["--model", str(checkpoint), "--to", "gguf", "--output_file", str(tmp_path / "k.gguf"),
                        "--dtype", "q4_k_m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown GGUF dtype 'q4_k_m'" in err and "llama-quantize" in err
    assert not (tmp_path / "k.gguf").exists()
