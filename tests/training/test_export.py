"""`scratchformer export --to llama|qwen3|gpt2`: the output is a stock checkpoint that transformers' own
LlamaForCausalLM / Qwen3ForCausalLM / GPT2LMHeadModel load without remote code, computing our logits and
greedy tokens; every config a target cannot represent is refused with the field and value named,
writing nothing.
(The GGUF target is proven with the real gguf reader and llama.cpp in tests/interop.)"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM

from scratchformer.modeling import (
    ScratchformerConfig,
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerForSequenceClassification,
    ScratchformerSeq2SeqConfig,
)
from scratchformer.tokenization import train_bpe
from scratchformer.training import export
from scratchformer.training.library import export as export_lib
from scratchformer.training.library.errors import UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "checkpoints" / "v0.2.0"
STOCK = {"llama": LlamaForCausalLM, "qwen3": Qwen3ForCausalLM, "gpt2": GPT2LMHeadModel}


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 17, 29, 3, 44, 8, 23, 31, 12], [0, 0, 0, 9, 40, 7, 33, 21, 15]])
    return ids, (ids != 0).long()


def qwen3_source(path: Path) -> Path:
    """A qwen3-preset checkpoint whose greedy decoding varies (no saved fixture predates the preset):
    a wide initialisation, and QK-norm gains away from 1 so that a norm the export lost would show."""
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset("qwen3", vocab_size=97, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=64, initializer_range=0.3)
    model = ScratchformerForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return _save(model, path)


@pytest.mark.parametrize("target", ["llama", "qwen3", "gpt2"])
def test_export_loads_as_the_stock_class_and_decodes_like_ours(target, tmp_path, assert_same_decoding):
    # The saved fixtures were trained a few seconds: greedy decoding varies.
    source = qwen3_source(tmp_path / "qwen3") if target == "qwen3" else FIXTURES / f"causal_{target}"
    out, notes = export_lib.export_stock(source, target, tmp_path / "out")
    assert notes == []
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert not list(out.glob("*.py"))

    stock, loading = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)  # no trust_remote_code
    stock.eval()
    assert type(stock) is STOCK[target]
    # Every weight the stock class has comes from the file, none is left at its initialisation (a bias
    # the config declared by mistake would be, and zero-initialised it would even give the same logits).
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), loading
    if target != "gpt2":
        assert config["attention_bias"] is False and config.get("mlp_bias", False) is False
    if target == "qwen3":
        assert config["use_sliding_window"] is False  # serving engines read it to pick their attention
    ours = ScratchformerForCausalLM.from_pretrained(source).eval()
    ids, mask = prompts()
    with torch.no_grad():
        diff = (stock(ids, attention_mask=mask).logits - ours(ids, attention_mask=mask).logits)[mask.bool()]
    assert diff.abs().max() <= 1e-5
    for use_cache in (True, False):
        assert_same_decoding(stock, ours, ids, attention_mask=mask, max_new_tokens=16, pad_token_id=0,
                             use_cache=use_cache, min_distinct=6)


def test_the_export_needs_no_scratchformer(tmp_path, run_without_scratchformer):
    out, _ = export_lib.export_stock(FIXTURES / "causal_llama", "llama", tmp_path / "llama")
    ours = ScratchformerForCausalLM.from_pretrained(FIXTURES / "causal_llama").eval()
    ids, mask = prompts()
    torch.save(ids, tmp_path / "ids.pt")
    result = run_without_scratchformer(f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()  # no trust_remote_code
        with torch.no_grad():
            torch.save(model(torch.load("ids.pt")).logits, "logits.pt")
        print(type(model).__name__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("LlamaForCausalLM")
    with torch.no_grad():
        assert (torch.load(tmp_path / "logits.pt") - ours(ids).logits).abs().max() <= 1e-5


def test_tokenizer_generation_config_chat_template_and_card_travel(tmp_path):
    torch.manual_seed(0)
    tokenizer = train_bpe(["the cat sat on the mat, the dog sat on the log"] * 20, vocab_size=300)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=4, max_position_embeddings=64)
    model = ScratchformerForCausalLM(config)
    model.generation_config.temperature = 0.7
    model.generation_config.do_sample = True
    source = tmp_path / "source"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    (source / "README.md").write_text("# my model\n\ntrained on cats\n")

    out, _ = export_lib.export_stock(source, "llama", tmp_path / "out")
    from transformers import AutoTokenizer, GenerationConfig

    loaded = AutoTokenizer.from_pretrained(out)
    text = "the cat sat"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False)
    assert loaded.apply_chat_template(messages, tokenize=False) == chat
    assert GenerationConfig.from_pretrained(out).temperature == 0.7
    card = (out / "README.md").read_text()
    assert "LlamaForCausalLM" in card and "trained on cats" in card


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32)
REFUSALS = [
    # (target, preset, overrides, text the message must contain)
    ("llama", "paper", {}, "position_embedding='sinusoidal'"),
    ("llama", "paper", {}, "norm_position='post'"),
    ("llama", "gpt2", {}, "norm_type='layernorm'"),
    ("llama", "gpt2", {}, "attention_bias=True"),
    ("llama", "llama", {"position_embedding": "learned"}, "position_embedding='learned'"),
    ("llama", "llama", {"scale_embeddings": True}, "scale_embeddings=True"),
    ("llama", "llama", {"mlp_type": "gelu"}, "mlp_type='gelu'"),
    ("llama", "llama", {"mlp_bias": True}, "mlp_bias=True"),
    ("gpt2", "llama", {}, "position_embedding='rope'"),
    ("gpt2", "gpt2", {"num_key_value_heads": 1}, "num_key_value_heads=1"),
    ("gpt2", "gpt2", {"norm_position": "post"}, "norm_position='post'"),
    ("gpt2", "paper", {}, "scale_embeddings=True"),
    ("gguf", "gpt2", {}, "position_embedding='learned'"),
    ("llama", "llama", {"qk_norm": True}, "qk_norm=True (RMSNorm on each head's queries and keys)"),
    ("gpt2", "gpt2", {"qk_norm": True}, "qk_norm=True"),
    ("qwen3", "llama", {}, "qk_norm=False"),
    ("qwen3", "gpt2", {}, "norm_type='layernorm'"),
    ("qwen3", "qwen3", {"attention_bias": True}, "attention_bias=True"),
    ("gguf", "qwen3", {"mlp_bias": True}, "mlp_bias=True"),
]


@pytest.mark.parametrize(("target", "preset", "overrides", "expected"), REFUSALS)
def test_configs_the_target_cannot_represent_are_refused(target, preset, overrides, expected):
    config = ScratchformerConfig.from_preset(preset, **TINY, **overrides)
    with pytest.raises(UserError, match="cannot export to") as caught:
        export_lib.check_exportable(config, target)
    message = str(caught.value)
    assert expected in message and f"the {' or '.join(map(repr, export_lib.PRESETS_OF[target]))} preset" in message


def test_qk_norm_asked_for_llama_is_pointed_to_qwen3():
    """The qwen3 preset is refused by --to llama and --to gpt2 (neither has QK-norm), and told which
    target takes it; GGUF writes it as llama.cpp's qwen3. A config no target takes is told none."""
    config = ScratchformerConfig.from_preset("qwen3", **TINY)
    for target in ("llama", "gpt2"):
        with pytest.raises(UserError, match="qk_norm=True") as caught:
            export_lib.check_exportable(config, target)
        assert str(caught.value).endswith("; this checkpoint exports exactly with --to qwen3")
    with pytest.raises(UserError) as caught:
        export_lib.check_exportable(ScratchformerConfig.from_preset("paper", **TINY), "llama")
    assert "exports exactly with" not in str(caught.value)
    assert export_lib.check_exportable(config, "qwen3") == export_lib.check_exportable(config, "gguf") == []
    assert export_lib.gguf_architecture(config) == "qwen3"
    assert export_lib.gguf_architecture(ScratchformerConfig.from_preset("llama", **TINY)) == "llama"


def test_a_refused_export_writes_nothing_and_says_so_on_one_line(tmp_path, capsys):
    source = _save(ScratchformerForCausalLM(ScratchformerConfig.from_preset("paper", **TINY)), tmp_path / "paper")
    capsys.readouterr()
    code = export.main(["--model", str(source), "--to", "llama", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot export to llama") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper"]  # no output, no temporary left


def test_other_heads_and_the_encoder_decoder_are_refused(tmp_path, capsys):
    classifier = _save(
        ScratchformerForSequenceClassification(ScratchformerConfig.from_preset("llama", **TINY)), tmp_path / "clf"
    )
    seq2seq = _save(
        ScratchformerForConditionalGeneration(ScratchformerSeq2SeqConfig(
            vocab_size=50, hidden_size=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32)),
        tmp_path / "s2s",
    )
    capsys.readouterr()
    for source in (classifier, seq2seq):
        assert export.main(["--model", str(source), "--to", "llama", "--output_dir", str(tmp_path / "x")]) == 2
        assert "ForCausalLM" in capsys.readouterr().err
    config = ScratchformerSeq2SeqConfig(vocab_size=50, hidden_size=16, encoder_layers=1, decoder_layers=1,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    with pytest.raises(UserError, match="encoder-decoder has no stock counterpart"):
        export_lib.check_exportable(config, "llama")


def test_dropout_llama_cannot_carry_is_reported_not_refused(tmp_path):
    config = ScratchformerConfig.from_preset("llama", **TINY, hidden_dropout=0.1)
    notes = export_lib.check_exportable(config, "llama")
    assert len(notes) == 1 and "hidden_dropout=0.1" in notes[0] and "inference is unaffected" in notes[0]
    gpt2 = ScratchformerConfig.from_preset("gpt2", **TINY, hidden_dropout=0.1)
    assert export_lib.check_exportable(gpt2, "gpt2") == []


def test_command_line(tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(FIXTURES / "causal_gpt2", source)
    args = ["--model", str(source), "--to", "gpt2", "--output_dir", str(tmp_path / "gpt2")]
    assert export.main(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'gpt2'}"
    assert export.main(args) == 2  # the output exists now
    assert "already exists" in capsys.readouterr().err
    assert export.main(["--model", str(source), "--to", "gpt2"]) == 2
    assert "--output_dir" in capsys.readouterr().err
    assert export.main(["--model", str(source), "--to", "gguf"]) == 2
    assert "--output_file" in capsys.readouterr().err


def test_a_stock_checkpoint_is_refused_as_not_ours(tmp_path, capsys):
    out, _ = export_lib.export_stock(FIXTURES / "causal_llama", "llama", tmp_path / "llama")
    with pytest.raises(UserError, match="this is a 'llama' checkpoint; only decoder-only scratchformer checkpoints"):
        export_lib.export_stock(out, "llama", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_a_config_from_before_qk_norm_exports_as_llama(monkeypatch):
    """A config object made by a 0.3 checkpoint's own code (its remote code, as a process without our
    classes registered loads it) has no `qk_norm` field: it is a Llama, with nothing to refuse."""
    folder = Path(__file__).parents[1] / "fixtures" / "checkpoints" / "v0.3.0" / "causal_llama"
    spec = importlib.util.spec_from_file_location("configuration_v030", folder / "configuration_scratchformer.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    old = module.ScratchformerConfig.from_pretrained(folder)
    assert not hasattr(old, "qk_norm")
    assert export_lib.gguf_architecture(old) == "llama"
    assert export_lib.unrepresentable(old, "llama") == [] and export_lib.unrepresentable(old, "gguf") == []


@pytest.mark.parametrize(("relative", "refused"), [(5e-5, False), (3e-4, True)])
def test_the_exports_logits_are_checked_relative_to_their_scale(tmp_path, monkeypatch, relative, refused):
    """The stock model's logits must match ours to 1e-4 of the largest logit in float32: a difference of
    5e-5 of it passes, 3e-4 is refused and nothing is written. (The source's logits reach about 10, so an
    absolute test, or a looser one, would say otherwise.)"""
    probe = export_lib._probe_logits

    def shifted(model, vocab_size):
        ids, ours = probe(model, vocab_size)
        assert ours.abs().max() > 3
        return ids, ours + relative * ours.abs().max()

    monkeypatch.setattr(export_lib, "_probe_logits", shifted)
    source = qwen3_source(tmp_path / "qwen3")
    if refused:
        with pytest.raises(UserError, match="logits differ from the original by 3.0"):
            export_lib.export_stock(source, "qwen3", tmp_path / "out")
        assert not (tmp_path / "out").exists()
    else:
        export_lib.export_stock(source, "qwen3", tmp_path / "out")
