"""`scratchformer doctor`: the right ✓/✗ per tool on each preset and on a deliberately odd checkpoint,
each rule tied to the tests that measured it, each rule held against the tool it describes where that
tool is in this environment (the exporters, the GGUF writer, generation), the live load in a fresh
process, the exit status, and the model card's "Where it runs" table."""

from __future__ import annotations

import ast
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training import cli
from scratchformer.training.library import doctor
from scratchformer.training.library.doctor import RULES, config_verdicts, diagnose, where_it_runs
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.export import export_stock
from scratchformer.training.library.gguf import DTYPES, planned_tensor_types, write_gguf

ROOT = Path(__file__).resolve().parents[2]
OLD = ROOT / "tests" / "fixtures" / "checkpoints" / "v0.1.0" / "causal_llama"  # code from before transformers 5.24
TEXT = "The import statement finds a module, loads it and binds a name. def f(x):\n    return x * 2\n" * 20
RENAMED_CACHE = Version(transformers.__version__) >= Version("5.24.0.dev0")

# The configs the issue names: each preset at the mini size (4 layers x 128, 4 heads of 32), a paper
# preset of width 128 with 8 heads (head width 16), and the base size's widths (768, feed-forward
# 2048: every row a multiple of 256) in one layer.
MINI = dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=4, max_position_embeddings=256)
CONFIGS = {
    "llama": ("llama", MINI),
    "gpt2": ("gpt2", MINI),
    "paper": ("paper", MINI),
    "paper, head width 16": ("paper", {**MINI, "num_attention_heads": 8}),
    "llama, base widths": ("llama", dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=1)),
    "qwen3": ("qwen3", MINI),
}
# tool -> ✓/✗ per config, in CONFIGS' order: written out by hand from what each tool was measured to do.
EXPECTED = {
    "positions": "✓✓✓✓✓✓",
    "export_llama": "✓✗✗✗✓✗",
    "export_qwen3": "✗✗✗✗✗✓",
    "export_gpt2": "✗✓✗✗✗✗",
    "gguf": "✓✗✗✗✓✓",
    "gguf_k_quants": "✗✗✗✗✓✗",  # mini's rows of 128 and 352; base's 768 and 2048
    "vllm_cpu": "✓✓✓✗✓✓",  # head widths 32, 32, 32, 16, 64, 32
    "serve": "✓✓✓✓✓✓",
    "trl": "✓✓✓✓✓✓",
    "lm_eval": "✓✓✓✓✓✓",
}


def config_of(name: str, vocab_size: int = 320) -> ScratchformerConfig:
    preset, sizes = CONFIGS[name]
    return ScratchformerConfig.from_preset(preset, vocab_size=vocab_size, **sizes)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([TEXT], vocab_size=320, show_progress=False)


def save(path: Path, config: ScratchformerConfig, tokenizer) -> Path:
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def marks(verdicts) -> dict[str, str]:
    return {v.rule: v.mark for v in verdicts}


def test_each_preset_and_an_odd_checkpoint_get_the_right_marks(tokenizer, tmp_path):
    """The mini-size checkpoints are saved and diagnosed as the command diagnoses them (its live load
    aside: test_the_live_check_finds_code_older_than_transformers); the base widths from the config."""
    got = {rule: "" for rule in EXPECTED}
    for i, name in enumerate(CONFIGS):
        if name == "llama, base widths":  # 7M parameters: the config says as much as the weights would
            verdicts = config_verdicts(config_of(name))
        else:
            diagnosis = diagnose(save(tmp_path / str(i), config_of(name, len(tokenizer)), tokenizer), live=False)
            assert not diagnosis.broken
            assert [v.rule for v in diagnosis.verdicts][0] == "transformers_range"
            verdicts = diagnosis.verdicts[1:]
        for rule, mark in marks(verdicts).items():
            got[rule] += mark
    assert got == EXPECTED
    odd = {v.rule: v.reason for v in config_verdicts(config_of("paper, head width 16"))}
    assert odd["vllm_cpu"].startswith("head width 16: vLLM's CPU attention has kernels for 32, 64")
    assert "position_embedding='sinusoidal' (needs 'rope')" in odd["export_llama"]
    assert "norm_position='post' (needs 'pre')" in odd["gguf"] and "scale_embeddings=True" in odd["gguf"]
    assert "prompt + new tokens <= 256: sinusoidal positions end at 255" in odd["positions"]
    assert odd["serve"].startswith("scratchformer serve --model DIR") and "llama export" not in odd["serve"]
    mini = {v.rule: v.reason for v in config_verdicts(config_of("llama"))}
    assert mini["gguf_k_quants"].startswith("rows of 128 and 352 are not multiples of 256")
    assert "its llama export serves with plain `transformers serve`" in mini["serve"]
    base = {v.rule: v.reason for v in config_verdicts(config_of("llama, base widths"))}
    assert "Q4_K_M" in base["gguf_k_quants"] and "768 and 2048" in base["gguf_k_quants"]
    qwen3 = {v.rule: v.reason for v in config_verdicts(config_of("qwen3"))}
    assert qwen3["export_llama"] == "qk_norm=True (needs False)"
    assert qwen3["export_qwen3"].startswith("Qwen3ForCausalLM") and qwen3["gguf"].startswith("llama.cpp's qwen3")
    assert doctor.preset_of(config_of("qwen3")) == "qwen3" and doctor.preset_of(config_of("llama")) == "llama"


def _test_functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


# What a test must use to hold the tool against doctor's rule (not merely sit beside it).
DOCTOR_NAMES = {"doctor", "diagnose", "config_verdicts", "VLLM_CPU_HEAD_SIZES", "planned_tensor_types",
                "k_quant_rows"}


def test_every_rule_names_the_tests_that_measured_it():
    """A rule cannot drift from its tool: every test a rule cites exists, and for every rule one of
    them checks doctor's verdict against the tool itself."""
    assert set(RULES) == {v.rule for name in CONFIGS for v in config_verdicts(config_of(name))} | {
        "loads", "transformers_range"}
    missing, unpaired = [], []
    for name, rule in RULES.items():
        assert rule.evidence, name
        paired = False
        for test_id in rule.evidence:
            path, _, function = test_id.partition("::")
            functions = _test_functions(ROOT / path) if (ROOT / path).is_file() else {}
            if function not in functions:
                missing.append(test_id)
                continue
            used = {n.id for n in ast.walk(functions[function]) if isinstance(n, ast.Name)}
            used |= {n.attr for n in ast.walk(functions[function]) if isinstance(n, ast.Attribute)}
            used |= {n.value for n in ast.walk(functions[function]) if isinstance(n, ast.Constant)}  # cli "doctor"
            paired |= bool(used & DOCTOR_NAMES)
        if not paired:
            unpaired.append(name)
    assert missing == [], f"rules cite tests that do not exist: {missing}"
    assert unpaired == [], f"no test holds these rules against their tool: {unpaired}"


@pytest.mark.parametrize("name", ["llama", "qwen3", "gpt2", "paper, head width 16"])
def test_each_rule_agrees_with_the_tool_it_describes(name, tokenizer, tmp_path):
    """The tools this environment has, run on a checkpoint of each kind: an export succeeds exactly
    where doctor says ✓ (and its GGUF tensors have the planned types); generate() stops where the
    positions end exactly where doctor says it stops there, and a prompt longer than the positions is
    refused exactly where doctor says so."""
    preset, sizes = CONFIGS[name]
    # Narrower and shallower than CONFIGS (the same concept choices): seconds, not minutes.
    config = ScratchformerConfig.from_preset(preset, vocab_size=len(tokenizer), hidden_size=64,
                                             num_hidden_layers=1, max_position_embeddings=32,
                                             num_attention_heads=sizes["num_attention_heads"] // 2)
    src = save(tmp_path / "model", config, tokenizer)
    verdicts = {v.rule: v for v in diagnose(src, live=False).verdicts}
    for target in ("llama", "qwen3", "gpt2"):
        try:
            export_stock(src, target, tmp_path / target)
            exported = True
        except UserError:
            exported = False
        assert exported == verdicts[f"export_{target}"].ok, (target, verdicts[f"export_{target}"])
    for dtype in DTYPES:
        try:
            path, _ = write_gguf(src, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
        except UserError:
            path = None
        assert (path is not None) == verdicts["gguf"].ok, dtype
        if path is not None:
            import gguf

            types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
            assert types == {n: t.ggml_type for n, t in planned_tensor_types(config, dtype).items()}
    model = ScratchformerForCausalLM.from_pretrained(src).eval()
    positions = verdicts["positions"].reason
    out = model.generate(torch.arange(3, 3 + 28)[None], max_new_tokens=10, min_new_tokens=10, do_sample=False,
                         pad_token_id=0)  # fmt: skip
    assert out.shape[1] in (32, 38)  # where the 32 positions end, or every token asked for
    assert (out.shape[1] == 32) == ("stops there" in positions), (out.shape, positions)
    try:
        model.generate(torch.arange(3, 3 + 33)[None], max_new_tokens=2, do_sample=False, pad_token_id=0)
        refused = False
    except ValueError as e:
        refused = "max_position_embeddings=32" in str(e)
    assert refused == ("refused" in positions), positions


@pytest.mark.slow
def test_the_live_check_finds_code_older_than_transformers(tokenizer, tmp_path, capsys):
    """The fresh-process load on three checkpoints: one with this scratchformer's code (✓, exit 0),
    the 0.1 fixture whose code predates transformers 5.24 (✓ before 5.24; broken from 5.24 on, exit 1,
    naming upgrade-checkpoint; it is run only with --trust_remote_code), and one with a NaN weight."""
    current = save(tmp_path / "current", config_of("llama", len(tokenizer)), tokenizer)
    assert cli.main(["doctor", "--model", str(current)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{current}: ScratchformerForCausalLM, llama preset, 4 layers x 128, 4 heads of 32")
    lines = {line[2:].split("  ")[0].strip(): line for line in out[1:]}
    assert set(lines) == {rule.tool for rule in RULES.values()}  # one line per tool
    assert lines["transformers"].startswith("✓ transformers ") and "cached decoding = uncached" in lines["transformers"]
    assert "this scratchformer's own code" in lines["transformers versions"]
    assert lines["vLLM (CPU)"].startswith("✓") and lines["export --to gpt2"].startswith("✗")
    assert lines["transformers serve"].startswith("✓ transformers serve ")
    assert "scratchformer serve --model DIR" in lines["transformers serve"]

    old = tmp_path / "old"
    shutil.copytree(OLD, old)
    # Its code is not run without the flag; the rule alone says it is broken from transformers 5.24 on.
    assert cli.main(["doctor", "--model", str(old)]) == (1 if RENAMED_CACHE else 0)
    assert "? transformers " in capsys.readouterr().out
    status = cli.main(["doctor", "--model", str(old), "--trust_remote_code"])
    out = capsys.readouterr().out
    if RENAMED_CACHE:
        assert status == 1, out
        assert "✗ transformers " in out and "upgrade-checkpoint" in out and "is broken here" in out
    else:
        assert status == 0, out
        assert "✓ transformers " in out and "predates transformers 5.24" in out and "before upgrading" in out

    broken = save(tmp_path / "nan", config_of("llama", len(tokenizer)), tokenizer)
    model = ScratchformerForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = math.nan
    model.save_pretrained(broken)
    assert cli.main(["doctor", "--model", str(broken)]) == 1
    assert "not finite" in capsys.readouterr().out


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert cli.main(["doctor", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no such directory" in err
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert cli.main(["doctor", "--model", str(tmp_path)]) == 2
    assert "doctor checks scratchformer checkpoints" in capsys.readouterr().err


def test_the_model_card_shows_the_same_table():
    config = config_of("paper, head width 16")
    table = where_it_runs(config)
    assert table.startswith("## Where it runs\n")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| tool")]
    verdicts = [doctor.Verdict("transformers_range", True, ""), *config_verdicts(config)]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {v.tool}", v.mark] for v in verdicts]
    assert "| vLLM (CPU) | ✗ | head width 16:" in table


def test_other_heads_and_the_encoder_decoder_say_what_they_are_not():
    """Classifiers, masked LMs and the encoder-decoder load (their own line) but export, serve and
    post-train as causal LMs only: every such tool is ✗ with the reason, none is a guess."""
    fixtures = ROOT / "tests" / "fixtures" / "checkpoints" / "v0.3.0"
    for name, reason in (("sequence_classification", "a causal LM"), ("masked_lm", "attends both ways"),
                         ("seq2seq_paper", "encoder-decoder")):
        diagnosis = diagnose(fixtures / name, live=False)
        verdicts = {v.rule: v for v in diagnosis.verdicts}
        assert not diagnosis.broken and verdicts["transformers_range"].ok and verdicts["positions"].ok
        for rule in ("export_llama", "export_qwen3", "export_gpt2", "gguf", "gguf_k_quants", "vllm_cpu", "serve",
                     "trl", "lm_eval"):
            assert verdicts[rule].ok is False, (name, rule)
        assert reason in verdicts["export_llama"].reason or reason in verdicts["trl"].reason, name


def test_the_serve_line_is_what_scratchformer_serve_accepts(tokenizer, tmp_path):
    """`scratchformer serve` checks a checkpoint before it starts transformers' server
    (serving.check_servable); it takes one exactly where doctor's serve line says ✓: every preset, and
    not a classifier, a masked LM, the encoder-decoder, or a causal LM saved without its tokenizer."""
    from scratchformer.training.library.serving import check_servable

    fixtures = ROOT / "tests" / "fixtures" / "checkpoints" / "v0.3.0"
    dirs = {preset: save(tmp_path / preset, config_of(preset, len(tokenizer)), tokenizer)
            for preset in ("llama", "gpt2", "paper")}  # fmt: skip
    for name in ("sequence_classification", "masked_lm", "seq2seq_paper"):
        dirs[name] = Path(shutil.copytree(fixtures / name, tmp_path / name))
        tokenizer.save_pretrained(dirs[name])
    dirs["without its tokenizer"] = save(tmp_path / "bare", config_of("llama", len(tokenizer)), tokenizer)
    for file in dirs["without its tokenizer"].glob("*.json"):
        if file.name not in ("config.json", "generation_config.json"):
            file.unlink()
    marks_of = {}
    for name, path in dirs.items():
        verdict = {v.rule: v for v in diagnose(path, live=False).verdicts}["serve"]
        try:
            check_servable(str(path))
            served = True
        except UserError:
            served = False
        assert served == verdict.ok, (name, verdict)
        marks_of[name] = verdict.mark
    assert marks_of == {"llama": "✓", "gpt2": "✓", "paper": "✓", "sequence_classification": "✗", "masked_lm": "✗",
                        "seq2seq_paper": "✗", "without its tokenizer": "✗"}  # fmt: skip
    bare = {v.rule: v for v in diagnose(dirs["without its tokenizer"], live=False).verdicts}["serve"]
    assert "no tokenizer.json" in bare.reason and "tokenizer.save_pretrained" in bare.reason


def test_without_the_gguf_package_the_gguf_lines_say_how_to_get_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # import gguf now raises ImportError
    verdicts = {v.rule: v for v in config_verdicts(config_of("llama"))}
    assert verdicts["gguf"].ok is False and 'pip install "scratchformer[gguf]"' in verdicts["gguf"].reason
    assert verdicts["export_llama"].ok  # the rest does not need it


def test_a_checkpoint_without_its_code_is_told_how_to_add_it(tokenizer, tmp_path, capsys):
    src = save(tmp_path / "m", config_of("gpt2", len(tokenizer)), tokenizer)
    for code in src.glob("*.py"):
        code.unlink()
    assert cli.main(["doctor", "--model", str(src)]) == 0  # nothing is broken that upgrade-checkpoint cannot add
    out = capsys.readouterr().out
    assert "✗ transformers " in out and "no model code in the directory" in out and "upgrade-checkpoint" in out
