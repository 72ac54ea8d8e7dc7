"""The bad-input catalogue, for what other files do not already cover: damaged or foreign model
directories (through the shared loader and through the `generate` and `inspect` commands), pickle
weights, a mask of the wrong dtype, data at the edges, and no network use at run time.

Already covered elsewhere (not repeated here): config values (test_config.py::
test_inconsistent_values_raise_naming_the_field), model inputs (test_modeling.py: out-of-vocabulary
and negative ids, non-integer ids, too long for positions, mask shape, empty batch, labels shape),
pretrain flags (test_pretrain.py::test_bad_input_fails_with_a_clear_message), empty / blank / non-UTF-8
/ malformed data files and missing columns (test_data.py), one-class labels (test_finetune.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization.bpe import train_bpe
from scratchformer.training import generate, viz
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.model_dir import load_model_dir
from scratchformer.training.library.pretraining import PretrainConfig, train

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "numbers 1 2 3 and words"] * 20


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    """A tiny, valid causal-LM directory: config, safetensors in 3 shards, tokenizer."""
    root = tmp_path_factory.mktemp("good")
    tokenizer = train_bpe(TEXTS, vocab_size=300, show_progress=False)
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(root / "single")
    ScratchformerForCausalLM(config).save_pretrained(root / "sharded", max_shard_size="20KB")
    for d in ("single", "sharded"):
        tokenizer.save_pretrained(root / d)
    return root


def _truncate(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _drop_a_shard(d: Path) -> None:
    weight_map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    (d / sorted(set(weight_map.values()))[1]).unlink()


def _edit_config(**changes):
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **changes}))

    return edit


def _pickle_only(d: Path) -> None:
    state = ScratchformerForCausalLM.from_pretrained(d).state_dict()
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")


# (name, which good directory, how it is damaged, words the message must hold)
DAMAGED = [
    ("truncated safetensors", "single", _truncate, r"model\.safetensors is damaged or truncated.*download it again"),
    ("a shard missing from the index", "sharded", _drop_a_shard,
     r"lists \d+ weight shards but model-00002-of-\d+\.safetensors is missing.*whole directory again"),
    ("config.json not JSON", "single", lambda d: (d / "config.json").write_text('{"model_type": "scratchf'),
     r"config\.json is not valid JSON.*re-save the model"),
    ("unknown model_type", "single", _edit_config(model_type="not-a-model"),
     r"model_type 'not-a-model', which neither transformers nor scratchformer knows"),
    ("another architecture", "single", _edit_config(model_type="bert", architectures=["BertForMaskedLM"]),
     r"holds a BertForMaskedLM \(bert\).*ForCausalLM"),
    ("no tokenizer.json", "single", lambda d: (d / "tokenizer.json").unlink(),
     r"has no tokenizer\.json; save the tokenizer beside the model"),
    ("pickle weights only", "single", _pickle_only,
     r"holds weights only as pytorch_model\.bin \(pickle\).*arbitrary code.*use_safetensors=False\)\.save_pretrained"),
    ("no weights at all", "single", lambda d: (d / "model.safetensors").unlink(), r"no weights \(model\.safetensors\)"),
]  # fmt: skip


@pytest.fixture(params=DAMAGED, ids=[case[0] for case in DAMAGED])
def damaged(request, good_dir, tmp_path):
    name, source, damage, message = request.param
    d = tmp_path / "model"
    shutil.copytree(good_dir / source, d)
    damage(d)
    return d, message, name


def test_the_loader_refuses_a_damaged_directory_naming_file_and_fix(damaged):
    d, message, _ = damaged
    with pytest.raises(UserError, match=message):
        load_model_dir(d, AutoModelForCausalLM, architectures=("ForCausalLM",))


# Where a command's own check speaks before the shared loader, its message (the loader's otherwise).
# generate refuses any non-LM head itself; inspect takes any head, so a BERT config over our weights
# fails as a weights/config mismatch.
GENERATE_SAYS = {
    "another architecture": r"holds a BertForMaskedLM, not a language model, so it cannot generate text\. "
    r"Use it with pipeline\('fill-mask'",
}
INSPECT_SAYS = {
    "another architecture": r"the weights do not fit the BertModel that config\.json describes .*different models",
}


def test_generate_refuses_it_in_one_line(damaged, capsys):
    d, message, case = damaged
    assert generate.main(["--model", str(d), "--max-new-tokens", "2", "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    # The case's own message: the directory is named "model", so a looser check (a word, the path)
    # would pass on any error at all.
    assert re.search(GENERATE_SAYS.get(case, message), err), err


def test_inspect_refuses_it_with_its_own_error(damaged):
    d, message, case = damaged
    # UserError (a ValueError), carrying the loader's message: the CLI prints it as one line.
    with pytest.raises(UserError, match=INSPECT_SAYS.get(case, message)):
        viz.load_model(d)


def test_the_good_directories_load(good_dir):
    for d in ("single", "sharded"):
        model, tokenizer = load_model_dir(good_dir / d, AutoModelForCausalLM, architectures=("ForCausalLM",))
        ids = tokenizer("the cat", return_tensors="pt").input_ids
        assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_transformers_is_never_allowed_to_fall_back_to_pickle(good_dir, tmp_path, monkeypatch):
    d = tmp_path / "both"
    shutil.copytree(good_dir / "single", d)
    torch.save({}, d / "pytorch_model.bin")  # a stray pickle beside good safetensors is never opened
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    load_model_dir(d, AutoModelForCausalLM)


def test_our_code_never_unpickles_without_weights_only():
    root = Path(__file__).resolve().parents[2]
    for path in [*root.glob("training/*.py"), *root.glob("modeling/*.py"), *root.glob("tokenization/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{n}"
            assert "import pickle" not in line and "pickle.load" not in line, f"{path.name}:{n}"


# ------------------------------------------------------------------------------------------------
# Model inputs not covered in test_modeling.py
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.complex64])
def test_attention_mask_of_the_wrong_dtype(dtype):
    config = ScratchformerConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 max_position_embeddings=16)  # fmt: skip
    model = ScratchformerForCausalLM(config).eval()
    ids = torch.tensor([[1, 2, 3]])
    try:
        mask = torch.ones(1, 3).to(dtype)
    except (RuntimeError, TypeError):
        pytest.skip(f"{dtype} tensors cannot be made here")
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool, torch.float32])
def test_attention_mask_dtypes_that_are_accepted(dtype):
    config = ScratchformerConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 max_position_embeddings=16)  # fmt: skip
    model = ScratchformerForCausalLM(config).eval()
    out = model(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]).to(dtype))
    assert torch.isfinite(out.logits[:, 1:]).all()


# ------------------------------------------------------------------------------------------------
# Data at the edges
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tok")
    train_bpe(TEXTS, vocab_size=300, show_progress=False).save_pretrained(d)
    return str(d)


def _cfg(tmp_path: Path, tokenizer_dir: str, train_file: Path, **overrides) -> PretrainConfig:
    val = tmp_path / "val.txt"
    val.write_text(" ".join(TEXTS))
    return PretrainConfig(**{**dict(train_files=[str(train_file)], validation_files=[str(val)], tokenizer=tokenizer_dir,
                                    size="tiny", hidden_size=32, block_size=32, per_device_train_batch_size=2,
                                    max_train_steps=2, eval_steps=100, save_steps=100, report_to="none",
                                    output_dir=str(tmp_path / "out")), **overrides})  # fmt: skip


def test_a_single_document_shorter_than_a_block(tmp_path, tokenizer_dir):
    doc = tmp_path / "short.jsonl"
    doc.write_text(json.dumps({"text": "the cat sat"}) + "\n")
    with pytest.raises(ValueError, match=r"training text holds fewer than 32 tokens.*lower --block_size"):
        train(_cfg(tmp_path, tokenizer_dir, doc))
    assert not (tmp_path / "out" / "model").exists()


def test_an_enormous_single_line_is_packed_not_refused(tmp_path, tokenizer_dir):
    line = tmp_path / "one_line.txt"
    line.write_text("the cat sat on the mat and " * 20_000)  # 540 kB, no newline at all
    result = train(_cfg(tmp_path, tokenizer_dir, line))
    assert result["steps"] == 2 and result["train_loss"] > 0


# ------------------------------------------------------------------------------------------------
# Nothing reaches the network unless asked
# ------------------------------------------------------------------------------------------------

# sitecustomize for the child: every attempt to resolve or connect to a network address is written
# down and refused. AF_UNIX sockets (used by nothing here, but harmless) are let through.
_NO_NETWORK = """
import os, socket, traceback
_log = os.environ["SF_NETWORK_LOG"]
def _refuse(what):
    with open(_log, "a") as f:
        f.write(what + "\\n" + "".join(traceback.format_stack()[-30:-12]))  # who asked, for the failure message
    raise OSError(101, "network disabled by the test: " + what)
_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(f"connect {address}")
    return _connect(self, address)
socket.socket.connect = connect
socket.getaddrinfo = lambda host, *a, **k: _refuse(f"getaddrinfo {host}")
"""

_PRETRAIN_THEN_GENERATE = """
import sys
from scratchformer.training import generate, pretrain
out, train_file, tok = sys.argv[1:4]
code = pretrain.main(["--train_files", train_file, "--tokenizer", tok, "--size", "tiny", "--hidden_size", "32",
                      "--block_size", "32", "--per_device_train_batch_size", "2", "--max_train_steps", "2",
                      "--report_to", "none", "--output_dir", out])
assert code == 0, code
code = generate.main(["--model", out + "/model", "--max-new-tokens", "3", "--seed", "0", "the cat"])
assert code == 0, code
"""


def _offline_env(tmp_path: Path) -> tuple[dict, Path]:
    """The environment of a child that runs with the hook above (and so do its own children, which
    inherit PYTHONPATH), with the offline switches a user may not have set removed."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(_NO_NETWORK))
    log = tmp_path / "network.log"
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(hooks), SF_NETWORK_LOG=str(log), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    return env, log


@pytest.mark.slow
def test_pretrain_and_generate_make_no_network_call(tmp_path, tokenizer_dir):
    env, log = _offline_env(tmp_path)
    train_file = tmp_path / "train.txt"
    train_file.write_text("\n".join(TEXTS * 5))
    proc = subprocess.run(
        [sys.executable, "-c", _PRETRAIN_THEN_GENERATE, str(tmp_path / "run"), str(train_file), tokenizer_dir],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()
    # The hook is live: the same child does record a real attempt.
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('example.com', 80))"],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert probe.returncode != 0 and "getaddrinfo example.com" in log.read_text()


# The README's other commands on local files, each through `scratchformer <command>` in one child (one
# interpreter start); the demo's own fresh processes inherit the hook. Each at the least work it allows.
_EVERY_OTHER_COMMAND = """
import json, sys
from pathlib import Path
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization.bpe import train_bpe
from scratchformer.training import cli

work, story = Path(sys.argv[1]), sys.argv[2]

def run(*argv):
    code = cli.main([str(a) for a in argv])
    assert code == 0, (argv, code)

run("tokenizer", "--output_dir", work / "tok", "--train_files", story, "--vocab-size", "300", "--quiet")

torch.manual_seed(0)
tokenizer = train_bpe(open(story).read().splitlines(), vocab_size=300, show_progress=False)
config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             max_position_embeddings=64)
ScratchformerForCausalLM(config).save_pretrained(work / "lm")
tokenizer.save_pretrained(work / "lm")
rows = [{"text": line, "label": ("a", "b")[i % 2]} for i, line in enumerate(open(story).read().splitlines()[:40])]
(work / "clf.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
run("finetune", "--model", work / "lm", "--task", "classification", "--train_files", work / "clf.jsonl",
    "--output_dir", work / "clf", "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu",
    "--disable_tqdm", "true", "--report_to", "none")

run("inspect", "attention", "--model", work / "lm", "the harbour", "--output_file", work / "a.png", "--html",
    work / "a.html")
run("inspect", "embeddings", "--model", work / "lm", "--token", "e", "--k", "3", "--output_file", work / "e.png")

LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=64)).save_pretrained(work / "llama")
run("convert", "--model", work / "llama", "--output_dir", work / "converted")

run("demo", "--train_files", story, "--size", "tiny", "--max_train_steps", "1", "--output_dir", work / "demo")
print("all ran")
"""


@pytest.mark.slow
def test_finetune_tokenizer_inspect_convert_and_demo_make_no_network_call(tmp_path):
    env, log = _offline_env(tmp_path)
    rng = random.Random(0)
    words = ["lantern", "harbour", "meadow", "copper", "violin", "glacier", "orchard", "thunder", "velvet", "saddle",
             "the", "and", "of", "with"]  # fmt: skip
    story = tmp_path / "story.txt"  # enough words for the demo's classifier passages
    story.write_text("".join(" ".join(rng.choice(words) for _ in range(12)) + ".\n" for _ in range(400)))
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-c", _EVERY_OTHER_COMMAND, str(tmp_path / "work"), str(story)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "all ran" in proc.stdout, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()
    # Each command did its work (so no step was skipped before it could reach for the network).
    for path in ("tok/tokenizer.json", "clf/config.json", "a.png", "a.html", "e.png", "converted/model.safetensors",
                 "demo/demo.json"):  # fmt: skip
        assert (tmp_path / "work" / path).is_file(), path


@pytest.mark.parametrize("command, argv, hub_like", [
    ("pretrain", ["--tokenizer", "tok-typo", "--output_dir", "out"], True),
    ("pretrain", ["--tokenizer", "./tok-typo", "--output_dir", "out"], False),
    ("finetune", ["--model", "runs-typo/model", "--task", "classification", "--train_files", "t.jsonl",
                  "--output_dir", "out"], True),
    ("generate", ["--model", "runs/mini/modle", "hello"], False),
    ("inspect", ["positions", "--model", "modle", "--output_file", "p.png"], True),
    ("export", ["--model", "~/no-such-dir", "--to", "llama", "--output_dir", "out"], False),
])
def test_a_path_that_is_not_a_directory_fails_at_once_naming_it(command, argv, hub_like, tmp_path, monkeypatch, capsys):
    """A typo'd local path used to cost a minute of hub retries and end in "couldn't connect to
    huggingface.co" (or "Repo id must use alphanumeric chars"): now one line names it, says it is not a
    directory here, and, only when it reads like a hub id, how to fetch one; nothing is written."""
    import importlib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n')
    main = importlib.import_module(f"scratchformer.training.{command}").main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    typo = argv[argv.index("--tokenizer" if command == "pretrain" else "--model") + 1]
    assert err.startswith(f"error: {typo}: no such directory here"), err
    assert ("hf download" in err) == hub_like, err
    assert not (tmp_path / "out").exists()
