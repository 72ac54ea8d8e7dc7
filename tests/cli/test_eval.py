"""`scratchformer eval`: its numbers against an independent computation with transformers' own loss,
the same numbers for the stock Llama export of the same weights and for pretraining's own report,
the results file, and its errors."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import random
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization.bpe import train_bpe
from scratchformer.training import cli
from scratchformer.training import eval as eval_command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.evaluation import (
    EvalConfig,
    check_eval_config,
    check_output_file,
    default_block_size,
    describe_source,
    model_positions,
    parse_tasks,
    run_harness,
    write_json_atomically,
)
from scratchformer.training.library.export import export_stock
from scratchformer.training.library.generation import best_device
from scratchformer.training.library.pretraining import PretrainConfig, train

WORDS = ("the cat dog bird sat ran sang on in under over a mat park tree bone river stone quickly slowly "
         "and but because 1 2 3 42, . ; ( ) = def return").split()  # fmt: skip
BLOCK = 32
KEYS = ("eval_loss", "eval_ppl", "eval_bpb", "eval_tokens", "eval_bytes")


def lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(n)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny llama-preset checkpoint with peaked (non-uniform) predictions, its stock Llama export, and
    ASCII text files."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = train_bpe(lines(300, 0), vocab_size=300, show_progress=False)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=64,
                                             initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    export_stock(root / "model", "llama", root / "llama")
    (root / "val.txt").write_text("".join(lines(60, 1)))
    (root / "empty.txt").write_text("")
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = eval_command.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference(model_dir, text_file, block_size: int) -> dict:
    """Independently: the .txt file's lines tokenized and joined, cut into blocks of `block_size - 1`
    tokens each opened with <s>; transformers' shifted cross-entropy (`labels=input_ids`) per block,
    summed over tokens; bytes of the predicted tokens from their decoded text."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = text_file.read_text()
    stream = [
        i for line in text.splitlines(keepends=True) for i in tokenizer(line, add_special_tokens=False)["input_ids"]
    ]
    assert tokenizer.decode(stream, clean_up_tokenization_spaces=False) == text  # byte-level BPE: exact
    step = block_size - 1
    nats = tokens = n_bytes = 0.0
    for start in range(0, len(stream) // step * step, step):
        ids = torch.tensor([[tokenizer.bos_token_id] + stream[start : start + step]])
        with torch.no_grad():
            nats += model(input_ids=ids, labels=ids).loss.double().item() * step
        tokens += step
        n_bytes += len(tokenizer.decode(ids[0, 1:], clean_up_tokenization_spaces=False).encode("utf-8"))
    return {"eval_loss": nats / tokens, "eval_ppl": math.exp(nats / tokens), "eval_bpb": nats / math.log(2) / n_bytes,
            "eval_tokens": tokens, "eval_bytes": n_bytes}  # fmt: skip


def check_close(got: dict, want: dict) -> None:
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-5), key


def test_numbers_match_transformers_own_loss_on_the_same_blocks(dirs, capsys):
    out_file = dirs / "out" / "ours.json"
    code, out, err = run(["--model", dirs / "model", "--validation_files", dirs / "val.txt", "--block_size", BLOCK,
                          "--output_file", out_file], capsys)  # fmt: skip
    assert code == 0, err
    got = json.loads(out_file.read_text())
    want = reference(dirs / "model", dirs / "val.txt", BLOCK)
    check_close(got, want)
    assert abs(want["eval_loss"] - math.log(300)) > 0.3  # not uniform: a wrong shift or block would show
    assert got["eval_blocks"] == want["eval_tokens"] / (BLOCK - 1) and got["block_size"] == BLOCK
    assert f"{got['eval_loss']:.4f} nats/token" in out and f"{got['eval_bpb']:.4f}" in out
    assert f"wrote {out_file}" in out


def test_the_stock_llama_export_scores_the_same(dirs, capsys):
    results = {}
    for name in ("model", "llama"):
        out_file = dirs / f"{name}.json"
        code, _, err = run(["--model", dirs / name, "--validation_files", dirs / "val.txt", "--block_size", BLOCK,
                            "--output-file", out_file, "--per-device-eval-batch-size", 3], capsys)  # fmt: skip
        assert code == 0, err
        results[name] = json.loads(out_file.read_text())
    assert results["llama"]["model_class"] == "LlamaForCausalLM"
    assert results["model"]["model_class"] == "ScratchformerForCausalLM"
    check_close(results["llama"], results["model"])
    check_close(results["llama"], reference(dirs / "llama", dirs / "val.txt", BLOCK))


def test_results_file_is_json_with_every_figure_and_written_atomically(dirs, capsys):
    out_dir = dirs / "results"
    code, _, err = run(["--model", dirs / "model", "--max_eval_samples", 3, "--output_file", out_dir / "r.json"],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert [p.name for p in out_dir.iterdir()] == ["r.json"]  # no temporary file left behind
    data = json.loads((out_dir / "r.json").read_text())
    assert set(KEYS) <= set(data) and all(isinstance(data[k], (int, float)) for k in KEYS)
    # No data flag: the embedded corpus's validation split; default block size: the model's 64 positions.
    assert "embedded default corpus" in data["validation_data"]
    assert data["eval_blocks"] == 3 and data["block_size"] == 64 and data["eval_tokens"] == 3 * 63
    assert data["eval_bytes"] > data["eval_tokens"] and math.isclose(data["eval_ppl"], math.exp(data["eval_loss"]),
                                                                     rel_tol=1e-5)  # fmt: skip


def test_it_reports_what_pretraining_reported(dirs, tmp_path, capsys):
    """A two-step pretraining run's final validation figures, recomputed from its saved model/."""
    (tmp_path / "train.txt").write_text("".join(lines(200, 2)))
    cfg = PretrainConfig(train_files=[str(tmp_path / "train.txt")], validation_files=[str(dirs / "val.txt")],
                         tokenizer=str(dirs / "model"), size="tiny", hidden_size=32, block_size=BLOCK,
                         per_device_train_batch_size=8, max_train_steps=2, report_to="none",
                         output_dir=str(tmp_path / "run"))  # fmt: skip
    reported = train(cfg)
    code, _, err = run(["--model", tmp_path / "run" / "model", "--validation_files", dirs / "val.txt",
                        "--output_file", tmp_path / "r.json"], capsys)  # fmt: skip
    assert code == 0, err
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["block_size"] == BLOCK  # read from the run's training_args.json
    check_close(got, reported)


def test_documents_are_scored_alone_as_pretraining_scored_them(dirs, tmp_path, capsys):
    """JSON rows are documents: pretraining kept them apart and scored each validation document alone;
    eval does the same by default, and --no_document_masking scores the joined blocks (other figures)."""
    def docs(n: int, seed: int) -> str:
        text = lines(n, seed)
        return "".join(json.dumps({"text": "".join(text[i : i + 5])}) + "\n" for i in range(0, n, 5))

    (tmp_path / "train.jsonl").write_text(docs(200, 2))
    (tmp_path / "val.jsonl").write_text(docs(60, 1))
    cfg = PretrainConfig(train_files=[str(tmp_path / "train.jsonl")], validation_files=[str(tmp_path / "val.jsonl")],
                         tokenizer=str(dirs / "model"), size="tiny", hidden_size=32, block_size=BLOCK,
                         per_device_train_batch_size=8, max_train_steps=2, report_to="none",
                         output_dir=str(tmp_path / "run"))  # fmt: skip
    reported = train(cfg)
    for extra, path in (([], "kept.json"), (["--no_document_masking"], "joined.json")):
        code, _, err = run(["--model", tmp_path / "run" / "model", "--validation_files", tmp_path / "val.jsonl",
                            "--output_file", tmp_path / path, *extra], capsys)  # fmt: skip
        assert code == 0, err
    kept, joined = (json.loads((tmp_path / p).read_text()) for p in ("kept.json", "joined.json"))
    check_close(kept, reported)
    assert joined["eval_tokens"] > kept["eval_tokens"]  # the </s> -> <s> steps are scored there


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "{root}/nowhere"], "no such directory"),
        (["--model", "{root}/model", "--validation_files", "{root}/empty.txt"], "the file is empty"),
        (["--model", "{root}/model", "--tasks", "hellaswag"], "pip install lm-eval"),
        (["--model", "{root}/model", "--block_size", "65"], "longer than the model's 64 positions"),
        (["--model", "{root}/model", "--validation_files", "{root}/val.txt", "--dataset_name", "x"], "not both"),
        (["--model", "{root}/model", "--block_sise", "8"], "did you mean --block_size"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(dirs, argv, message, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # lm-eval absent even where it is installed
                        lambda name, *a: None if name == "lm_eval" else real_find_spec(name, *a))  # fmt: skip
    code, out, err = run([a.format(root=dirs) for a in argv], capsys)
    lines_ = err.strip().splitlines()
    assert code == 2 and len(lines_) == 1 and lines_[0].startswith("error: "), err
    assert message in lines_[0] and "Traceback" not in err and out == ""


def test_listed_by_the_cli(capsys):
    assert cli.main(["--help"]) == 0
    assert "  eval " in capsys.readouterr().out


# -- the settings at their limits, and the glue around lm-evaluation-harness ---------------------


def _results(cfg, device=None) -> dict:
    return {"model": cfg.model, "model_class": "X", "validation_data": "d", "eval_tokens": 1, "eval_bytes": 1,
            "eval_blocks": 1, "block_size": 2, "eval_loss": 0.0, "eval_ppl": 1.0, "eval_bpb": 0.0}  # fmt: skip


def test_the_library_defaults_are_the_commands_defaults(monkeypatch, capsys):
    """`EvalConfig(model=...)` from Python scores what `scratchformer eval --model ...` scores: documents
    kept apart, no model code of the checkpoint's own run, the validation split, 8 blocks a pass."""
    seen = []
    monkeypatch.setattr(eval_command, "evaluate_checkpoint", lambda cfg, device=None: seen.append(cfg) or _results(cfg))
    assert run(["--model", "m"], capsys)[0] == 0
    assert seen == [EvalConfig(model="m")]
    assert seen[0].document_masking is True and seen[0].trust_remote_code is False


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [("per_device_eval_batch_size", 1, True), ("per_device_eval_batch_size", 0, False),
     ("per_device_eval_batch_size", True, False), ("max_eval_samples", 1, True), ("max_eval_samples", -1, False),
     ("block_size", 2, True), ("block_size", 1, False), ("block_size", 0, False), ("block_size", True, False)],
)  # fmt: skip
def test_settings_are_checked_at_their_exact_limits(field, value, ok):
    cfg = EvalConfig(model="m", **{field: value})
    if ok:
        check_eval_config(cfg)
    else:
        with pytest.raises(UserError, match=f"--{field} must be"):
            check_eval_config(cfg)


def test_a_models_length_is_its_first_positive_integer_setting():
    config = types.SimpleNamespace
    assert model_positions(config(max_position_embeddings=64)) == 64
    assert model_positions(config(max_position_embeddings=1)) == 1
    assert model_positions(config(max_position_embeddings=0, n_positions=32)) == 32
    assert model_positions(config(max_position_embeddings=None, n_positions=32)) == 32  # GPT-2's name
    assert model_positions(config()) is None


@pytest.mark.parametrize(
    ("training_args", "want"),
    [('{"block_size": 16}', 16), ('{"block_size": 2}', 2), ('{"block_size": 1}', 64), ('{"block_size": true}', 64),
     ('{"block_size": "16"}', 64), ("[16]", 64), ("not json", 64), (None, 64)],
)  # fmt: skip
def test_the_default_block_size_is_the_runs_when_it_is_a_valid_one(tmp_path, training_args, want):
    if training_args is not None:
        (tmp_path / "training_args.json").write_text(training_args)
    assert default_block_size(tmp_path, types.SimpleNamespace(max_position_embeddings=64)) == want
    long = types.SimpleNamespace(max_position_embeddings=4096)
    assert default_block_size(tmp_path, long) == (want if want != 64 else 1024)  # positions capped at 1024


def test_the_results_name_their_data():
    assert describe_source(EvalConfig(model="m", validation_files=["a.txt", "b.txt"])) == "files a.txt, b.txt"
    named = EvalConfig(model="m", dataset_name="d", dataset_config_name="c", validation_split="test")
    assert describe_source(named) == "split 'test' of dataset d (c)"


def test_tasks_are_comma_separated_names():
    assert parse_tasks(" hellaswag, arc_easy ,") == ["hellaswag", "arc_easy"]
    with pytest.raises(UserError, match="needs task names"):
        parse_tasks(" , ")


def test_run_harness_asks_for_the_directory_and_keeps_numbers_and_strings(monkeypatch, tmp_path):
    """Our glue around lm-evaluation-harness, with a stand-in `lm_eval` that records what it is asked
    (the real harness on a real checkpoint is tests/interop/test_lm_eval.py): the model directory through
    transformers ("hf"), no remote code unless asked, the best device unless one is named; and of its
    results, numbers and strings only (booleans, lists and samples dropped)."""
    calls: list[dict] = []
    answers = [{"results": {"hellaswag": {"acc,none": 0.25, "alias": "hellaswag", "n": 3, "flag": True,
                                          "samples": [1, 2]}}}, None]  # fmt: skip

    def simple_evaluate(**kwargs):
        calls.append(kwargs)
        return answers[len(calls) - 1]

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate, fake.__spec__ = simple_evaluate, importlib.machinery.ModuleSpec("lm_eval", None)
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    assert run_harness(tmp_path, ["hellaswag"]) == {"hellaswag": {"acc,none": 0.25, "alias": "hellaswag", "n": 3}}
    assert calls[0] == {"model": "hf", "model_args": {"pretrained": str(tmp_path), "trust_remote_code": False},
                        "tasks": ["hellaswag"], "batch_size": 8, "device": best_device()}  # fmt: skip
    assert run_harness(tmp_path, ["x"], batch_size=2, device="meta", trust_remote_code=True) == {}  # no results
    assert calls[1]["device"] == "meta" and calls[1]["model_args"]["trust_remote_code"] is True


def test_a_results_file_that_names_a_directory_is_refused_with_a_file_to_name(tmp_path):
    with pytest.raises(UserError, match=f"is a directory; name a file \\(e.g. {tmp_path / 'results.json'}\\)"):
        check_output_file(tmp_path)


def test_numbers_that_json_cannot_hold_are_written_as_null_at_any_depth(tmp_path):
    path = write_json_atomically({"a": [float("nan"), 1.5], "b": (float("inf"),), "c": {"d": -float("inf")}},
                                 tmp_path / "r.json")  # fmt: skip
    assert json.loads(path.read_text()) == {"a": [None, 1.5], "b": [None], "c": {"d": None}}
