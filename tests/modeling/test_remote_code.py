"""A saved checkpoint is self-contained: a Python that cannot import scratchformer loads every head
(the encoder-decoder's too) with trust_remote_code=True and computes the same numbers. One subprocess
does all the loading. Every checkpoint holds exactly the payload its Auto classes need, and the
payload's files import only torch, transformers, the standard library and each other, without a cycle."""

import ast
import json
import sys
from pathlib import Path

import torch

import scratchformer.modeling
from scratchformer.modeling import (
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerSeq2SeqConfig,
)

# What a decoder-only checkpoint carries: the config, the Hugging Face contract (every Auto class points
# there) and what it imports: the transformer itself, the fused loss and the input checks.
PAYLOAD = (
    "configuration_scratchformer.py",
    "modeling_scratchformer.py",
    "transformer_scratchformer.py",
    "loss_scratchformer.py",
    "checks_scratchformer.py",
)
# An encoder-decoder checkpoint ships its own pair beside the decoder-only payload, whose blocks,
# cache handling and checks it reuses.
SEQ2SEQ_PAYLOAD = (*PAYLOAD, "configuration_scratchformer_seq2seq.py", "modeling_scratchformer_seq2seq.py")
# Imported by every other file of the payload, importing none of them.
LEAF = "transformer_scratchformer"
AUTO_CLASSES = {
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForMaskedLM",
}
HEAD_AUTO_CLASS = {
    "causal": "AutoModelForCausalLM",
    "sequence": "AutoModelForSequenceClassification",
    "masked": "AutoModelForMaskedLM",
}
LABELS = {0: "negative", 1: "neutral", 2: "positive"}

CHILD = """
import json
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSeq2SeqLM, AutoModelForSequenceClassification)

x = torch.load("input_ids.pt")
mask = torch.load("attention_mask.pt")
results, classes = {}, {}
with torch.no_grad():
    config = AutoConfig.from_pretrained("causal", trust_remote_code=True)
    classes["config"] = type(config).__module__ + "." + type(config).__name__
    results["config_use_cache"] = torch.tensor(config.use_cache)

    causal = AutoModelForCausalLM.from_pretrained("causal", trust_remote_code=True).eval()
    results["causal"] = causal(x, attention_mask=mask).logits
    results["causal_generate"] = causal.generate(x[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    results["causal_tied"] = torch.tensor(causal.lm_head.weight is causal.model.embed_tokens.weight)

    base = AutoModel.from_pretrained("causal", trust_remote_code=True).eval()
    results["base"] = base(x, attention_mask=mask).last_hidden_state

    sequence = AutoModelForSequenceClassification.from_pretrained("sequence", trust_remote_code=True).eval()
    results["sequence"] = sequence(x, attention_mask=mask).logits
    classes["sequence_labels"] = sequence.config.id2label

    masked = AutoModelForMaskedLM.from_pretrained("masked", trust_remote_code=True).eval()
    results["masked"] = masked(x, attention_mask=mask).logits

    seq2seq = AutoModelForSeq2SeqLM.from_pretrained("seq2seq", trust_remote_code=True).eval()
    results["seq2seq"] = seq2seq(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :4]).logits
    results["seq2seq_generate"] = seq2seq.generate(x, attention_mask=mask, max_new_tokens=6, num_beams=2)
    seq2seq_base = AutoModel.from_pretrained("seq2seq", trust_remote_code=True).eval()
    results["seq2seq_base"] = seq2seq_base(input_ids=x, decoder_input_ids=x[:, :4]).last_hidden_state

    for name, model in (("causal", causal), ("base", base), ("sequence", sequence), ("masked", masked),
                        ("seq2seq", seq2seq), ("seq2seq_base", seq2seq_base)):
        classes[name] = type(model).__module__ + "." + type(model).__name__

torch.save(results, "results.pt")
with open("classes.json", "w") as f:
    json.dump(classes, f)
"""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) for every import in a file: level > 0 is a relative import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def assert_payload_is_self_contained(directory: Path, payload: tuple[str, ...] = PAYLOAD) -> None:
    """Every file of `payload` imports only torch, transformers, the standard library and the other
    files of the same payload: a decoder-only checkpoint does not carry the seq2seq pair, so its files
    must not reach for them."""
    siblings = {Path(name).stem for name in payload}
    for name in payload:
        imports = _imports(directory / name)
        assert imports, name
        for level, module in imports:
            top = module.split(".")[0]
            assert top != "scratchformer", f"{name}: absolute import of {module}"
            if level:
                assert level == 1 and module in siblings, f"{name}: relative import {'.' * level}{module}"
            else:
                # Only the two libraries every checkpoint user has, and the standard library.
                assert top in ("torch", "transformers") or top in sys.stdlib_module_names, f"{name}: imports {module}"


def test_checkpoint_loads_and_runs_without_scratchformer(tmp_path, tiny_config, run_without_scratchformer):
    torch.manual_seed(0)
    models = {
        "causal": ScratchformerForCausalLM(tiny_config(use_cache=False)),
        "sequence": ScratchformerForSequenceClassification(tiny_config(id2label=LABELS, position_embedding="learned")),
        "masked": ScratchformerForMaskedLM(tiny_config(is_causal=False, position_embedding="sinusoidal")),
        "seq2seq": ScratchformerForConditionalGeneration(ScratchformerSeq2SeqConfig(
            vocab_size=97, hidden_size=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, embedding_dropout=0.0, hidden_dropout=0.0,
        )),
    }  # fmt: skip
    source_dir = Path(scratchformer.modeling.__file__).parent
    for name, model in models.items():
        model.eval()
        with torch.no_grad():  # distinctive norm weights, so a mis-loaded one cannot pass
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        directory = tmp_path / name
        model.save_pretrained(directory)
        payload = SEQ2SEQ_PAYLOAD if name == "seq2seq" else PAYLOAD
        # Exactly the payload: a decoder-only checkpoint does not carry the encoder-decoder's pair.
        assert sorted(p.name for p in directory.glob("*.py")) == sorted(payload), name
        for file in payload:
            assert (directory / file).read_bytes() == (source_dir / file).read_bytes(), f"{name}/{file}"
        assert_payload_is_self_contained(directory, payload)
        config = json.loads((directory / "config.json").read_text())
        if name == "seq2seq":
            assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}
            continue
        assert set(config["auto_map"]) == AUTO_CLASSES
        entry = config["auto_map"][HEAD_AUTO_CLASS[name]]
        assert entry == f"modeling_scratchformer.{type(model).__name__}"
        assert config["auto_map"]["AutoConfig"] == "configuration_scratchformer.ScratchformerConfig"

    x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    torch.save(x, tmp_path / "input_ids.pt")
    torch.save(mask, tmp_path / "attention_mask.pt")

    proc = run_without_scratchformer(CHILD, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = torch.load(tmp_path / "results.pt")
    classes = json.loads((tmp_path / "classes.json").read_text())
    for name, qualname in classes.items():
        if name != "sequence_labels":
            # Remote code lives in transformers' dynamic-module namespace, not in our package.
            assert qualname.startswith("transformers_modules."), qualname
    assert classes["sequence_labels"] == {str(k): v for k, v in LABELS.items()}
    assert results["config_use_cache"].item() is False

    with torch.no_grad():
        assert torch.equal(results["causal"], models["causal"](x, attention_mask=mask).logits)
        assert torch.equal(results["base"], models["causal"].model(x, attention_mask=mask).last_hidden_state)
        assert torch.equal(results["sequence"], models["sequence"](x, attention_mask=mask).logits)
        assert torch.equal(results["masked"], models["masked"](x, attention_mask=mask).logits)
        seq2seq = models["seq2seq"]
        logits = seq2seq(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :4]).logits
        assert torch.equal(results["seq2seq"], logits)
        hidden = seq2seq.model(input_ids=x, decoder_input_ids=x[:, :4]).last_hidden_state
        assert torch.equal(results["seq2seq_base"], hidden)
        expected = seq2seq.generate(x, attention_mask=mask, max_new_tokens=6, num_beams=2)
        assert torch.equal(results["seq2seq_generate"], expected)
        expected = models["causal"].generate(x[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(results["causal_generate"], expected)
    assert results["causal_tied"].item() is True


def test_source_payload_is_self_contained():
    """The same check on the source files, so a bad import fails here before any checkpoint is saved."""
    source_dir = Path(scratchformer.modeling.__file__).parent
    assert_payload_is_self_contained(source_dir)
    assert_payload_is_self_contained(source_dir, SEQ2SEQ_PAYLOAD)


def test_the_payload_imports_form_no_cycle_and_the_transformer_is_the_leaf():
    """The transformer file imports none of its siblings and every model file imports it, so each
    checkpoint carries it, and the relative imports between the files never go round in a circle."""
    source_dir = Path(scratchformer.modeling.__file__).parent
    graph = {Path(name).stem: {m for level, m in _imports(source_dir / name) if level} for name in SEQ2SEQ_PAYLOAD}
    assert graph[LEAF] == set()
    assert LEAF in graph["modeling_scratchformer"] and LEAF in graph["modeling_scratchformer_seq2seq"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for imported in graph[module]:
                visit(imported, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_seq2seq_checkpoint_payload_is_self_contained(tmp_path):
    config = ScratchformerSeq2SeqConfig(vocab_size=97, hidden_size=32, encoder_layers=1, decoder_layers=1,
                                        num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    ScratchformerForConditionalGeneration(config).save_pretrained(tmp_path)
    source_dir = Path(scratchformer.modeling.__file__).parent
    assert {p.name for p in tmp_path.glob("*.py")} == set(SEQ2SEQ_PAYLOAD)
    for file in SEQ2SEQ_PAYLOAD:
        assert (tmp_path / file).read_bytes() == (source_dir / file).read_bytes(), file
    assert_payload_is_self_contained(tmp_path, SEQ2SEQ_PAYLOAD)


def test_the_subprocess_really_cannot_import_scratchformer(tmp_path, run_without_scratchformer):
    proc = run_without_scratchformer("import scratchformer.modeling\n", tmp_path)
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr, proc.stderr[-2000:]
