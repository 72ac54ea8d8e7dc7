"""`scratchformer finetune --task seq2seq` as a user meets it: a new encoder-decoder from the command
alone (no checkpoint, no tokenizer), the shared flag vocabulary, the default learning-rate schedule,
and an output directory that is a hub model with its card and results, written atomically, with no
pickle in it. Everything is toy-sized (width 32, one layer a side, a few optimizer steps)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig
from scratchformer.tokenization import train_bpe
from scratchformer.training import finetune
from scratchformer.training import seq2seq as command
from scratchformer.training.arguments import SMOKE_TEST_ENV, _canonical, _option_strings, rewrite
from scratchformer.training.library import seq2seq as lib
from scratchformer.training.library.model_dir import PICKLE_SUFFIXES

WORDS = ["list", "dict", "for", "while", "class", "def", "return", "import"]
# Width 32 and one layer each side: a new model that trains in a fraction of a second per step.
TOY = ["--size", "tiny", "--hidden_size", "32", "--num_hidden_layers", "1", "--per_device_train_batch_size", "8"]


def write_pairs(path: Path, n: int, offset: int = 0) -> str:
    rows = [{"source": " ".join(WORDS[(i + j) % 8] for j in range(2 + i % 4)),
             "target": " ".join(WORDS[(i + j) % 8] for j in range(2 + i % 4))[::-1]}
            for i in range(offset, offset + n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(*argv: str) -> tuple[int, list[dict], str]:
    """`scratchformer finetune --task seq2seq ARGV` in this process: (exit code, the JSON lines it
    printed, everything it printed)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = finetune.main(["--task", "seq2seq", *argv])
    text = stdout.getvalue()
    return code, [json.loads(line) for line in text.splitlines() if line.startswith('{"')], text


def results(out: Path) -> dict:
    return json.loads((out / "finetune_results.json").read_text())


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pairs")
    return {"train": write_pairs(root / "train.jsonl", 40), "dev": write_pairs(root / "dev.jsonl", 6, offset=40)}


@pytest.fixture(scope="module")
def tokenizer_dir(pairs, tmp_path_factory) -> Path:
    """A tokenizer as `scratchformer tokenizer` writes one, on other text than the pairs."""
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_bpe([" ".join(WORDS)] * 50 + ["the quick brown fox"] * 50, vocab_size=280, show_progress=False
              ).save_pretrained(out)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def scratch(pairs, tmp_path_factory) -> dict:
    """One run from nothing but pairs: a new model, its tokenizer trained on the pairs, scored on dev."""
    out = tmp_path_factory.mktemp("scratch") / "s2s"
    code, printed, text = run("--train_files", pairs["train"], "--validation_files", pairs["dev"],
                              "--output_dir", str(out), *TOY, "--vocab_size", "400", "--max_steps", "4")  # fmt: skip
    return {"code": code, "printed": printed, "text": text, "out": out}


# -- 1. a new model from the command alone -----------------------------------------------------------


def test_a_new_model_and_its_tokenizer_from_the_command_alone(scratch, pairs):
    assert scratch["code"] == 0
    out = scratch["out"]
    config = ScratchformerSeq2SeqConfig.from_pretrained(out)
    # --size tiny (4 heads, feed-forward 4x width), with --hidden_size and --num_hidden_layers laid over it;
    # the rest is the paper's architecture (--preset paper, the default).
    assert (config.encoder_layers, config.decoder_layers, config.hidden_size) == (1, 1, 32)
    assert (config.num_attention_heads, config.intermediate_size) == (4, 128)
    assert (config.norm_position, config.position_embedding, config.mlp_type) == ("post", "sinusoidal", "relu")
    tokenizer = AutoTokenizer.from_pretrained(out)
    # Trained on the pairs, source and target (whose words are reversed) alike, within --vocab_size.
    assert config.vocab_size == len(tokenizer) <= 400
    for text in (" while", " elihw", " tropmi"):
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1, text
    assert config.decoder_start_token_id == tokenizer.bos_token_id and config.eos_token_id == tokenizer.eos_token_id
    assert "trained on the training pairs" in results(out)["tokenizer"]
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    generated = model.generate(**tokenizer(["list dict"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert generated[0, 0] == config.decoder_start_token_id and generated.shape[1] <= 6


def test_sizes_and_size_flags_shape_a_new_model(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def shape(**kwargs) -> tuple:
        c = lib.new_model_config(tokenizer, **kwargs)
        return c.encoder_layers, c.decoder_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size

    assert shape() == (3, 3, 128, 4, 512)  # mini, as pretrain's default size
    assert shape(size="tiny") == (2, 2, 64, 4, 256)
    assert shape(size="small") == (6, 6, 256, 4, 1024)
    paper = ScratchformerSeq2SeqConfig.from_preset("paper", vocab_size=len(tokenizer))
    assert shape(size="base") == (paper.encoder_layers, paper.decoder_layers, paper.hidden_size,
                                  paper.num_attention_heads, paper.intermediate_size)  # fmt: skip
    # --num_hidden_layers is each stack's N; an explicit --encoder_layers / --decoder_layers wins.
    assert shape(size="tiny", num_hidden_layers=4, decoder_layers=1, hidden_size=96, num_attention_heads=3) == (
        4, 1, 96, 3, 384)  # fmt: skip
    c = lib.new_model_config(tokenizer, size="tiny", dropout=0.0)
    assert c.embedding_dropout == c.hidden_dropout == 0.0 and c.vocab_size == len(tokenizer)
    with pytest.raises(lib.UserError, match="divisible"):
        lib.new_model_config(tokenizer, hidden_size=30)


def test_a_given_tokenizer_is_the_models(pairs, tokenizer_dir, tmp_path):
    code, _, _ = run("--train_files", pairs["train"], "--output_dir", str(tmp_path / "o"), *TOY,
                     "--tokenizer", str(tokenizer_dir), "--max_steps", "1")  # fmt: skip
    assert code == 0
    given, saved = AutoTokenizer.from_pretrained(tokenizer_dir), AutoTokenizer.from_pretrained(tmp_path / "o")
    assert saved.get_vocab() == given.get_vocab() and len(given) < 300  # not one trained on the pairs
    assert ScratchformerSeq2SeqConfig.from_pretrained(tmp_path / "o").vocab_size == len(given)
    assert results(tmp_path / "o")["tokenizer"] == str(tokenizer_dir)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m", "--size", "tiny", "--tokenizer", "t"], "--size, --tokenizer describe a new model"),
        (["--tokenizer", "t", "--vocab_size", "300"], "--vocab_size sizes a tokenizer trained here"),
        (["--size", "huge"], "invalid choice: 'huge'"),
        (["--max_steps", "0"], "--max_steps 0 must be at least 1"),
        (["--size", "tiny", "--hidden_size", "30"], "hidden_size=30 is not divisible"),  # before any data is read
    ],
)
def test_contradicting_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    assert finetune.main(["--task", "seq2seq", "--train_files", "p.jsonl", "--output_dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


# -- 2. the shared flag vocabulary -------------------------------------------------------------------


def test_the_flags_are_the_shared_vocabulary():
    flags = {_canonical(o) for o in _option_strings(command.build_parser())}
    shared = {"--output_dir", "--overwrite", "--train_files", "--validation_files", "--per_device_train_batch_size",
              "--gradient_accumulation_steps", "--num_train_epochs", "--max_steps", "--learning_rate",
              "--warmup_steps", "--seed", "--model", "--tokenizer", "--preset", "--size", "--num_hidden_layers",
              "--hidden_size", "--num_attention_heads", "--intermediate_size", "--vocab_size", "--dropout"}  # fmt: skip
    assert shared <= flags
    # `scratchformer finetune` rewrites Trainer's other name before dispatching to the seq2seq command.
    assert rewrite("finetune", ["--max_train_steps", "3", "--num_warmup_steps", "1"]) == [
        "--max_steps", "3", "--warmup_steps", "1"]  # fmt: skip


def test_max_steps_seed_and_overwrite_take_effect(pairs, tokenizer_dir, tmp_path, capsys):
    common = ["--train_files", pairs["train"], *TOY, "--tokenizer", str(tokenizer_dir), "--num_train_epochs", "50"]

    def weights(out: Path) -> dict:
        return load_file(out / "model.safetensors")

    code, printed, _ = run(*common, "--output_dir", str(tmp_path / "a"), "--max_train_steps", "2", "--seed", "1")
    assert code == 0 and printed[0]["train_steps"] == 2 and results(tmp_path / "a")["hyperparameters"]["seed"] == 1
    assert run(*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "2", "--seed", "1")[0] == 0
    assert run(*common, "--output_dir", str(tmp_path / "c"), "--max_steps", "2", "--seed", "2")[0] == 0
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the seed decides the new model's weights and the run
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # An earlier run is never replaced by accident; --overwrite replaces it.
    assert run(*common, "--output_dir", str(tmp_path / "a"), "--max_steps", "1")[0] == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert run(*common, "--output_dir", str(tmp_path / "a"), "--max_steps", "1", "--overwrite")[0] == 0
    assert results(tmp_path / "a")["train_steps"] == 1


def test_smoke_test_runs_the_command_line_as_written(pairs, tmp_path, monkeypatch):
    """SCRATCHFORMER_SMOKE_TEST=1 appends `--max_steps 2` (what the README test runs): it must be a flag."""
    monkeypatch.setenv(SMOKE_TEST_ENV, "1")
    code, printed, _ = run("--train_files", pairs["train"], "--output_dir", str(tmp_path / "o"), *TOY,
                           "--vocab_size", "300", "--num_train_epochs", "100")  # fmt: skip
    assert code == 0 and printed[0]["train_steps"] == 2


def test_a_value_spelled_seq2seq_is_not_taken_for_the_task(pairs, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run("--train_files", pairs["train"], "--output_dir", "seq2seq", *TOY, "--tokenizer",
                     str(tokenizer_dir), "--max_steps", "1")  # fmt: skip
    assert code == 0 and (tmp_path / "seq2seq" / "config.json").is_file()


# -- 3. the default schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("paper", [False, True])
def test_the_schedule_trainer_runs(pairs, tokenizer_dir, tmp_path, monkeypatch, paper):
    """Default: the paper's peak lr (d^-0.5 * 4000^-0.5) reached after 5 % of the steps, then a linear
    decay to 0. --paper_schedule: the inverse square root with its 4000 warm-up steps."""
    trainers = []

    class WatchedTrainer(lib.Seq2SeqTrainer):
        def train(self, *args, **kwargs):
            trainers.append(self)
            return super().train(*args, **kwargs)

    monkeypatch.setattr(lib, "Seq2SeqTrainer", WatchedTrainer)
    flags = ["--paper_schedule"] if paper else []
    code, _, _ = run("--train_files", pairs["train"], "--output_dir", str(tmp_path / "o"), *TOY, "--tokenizer",
                     str(tokenizer_dir), "--max_steps", "40", *flags)  # fmt: skip
    assert code == 0
    (trainer,) = trainers
    peak = 32**-0.5 * 4000**-0.5
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(peak)
    lr_at = trainer.lr_scheduler.lr_lambdas[0]  # the multiplier of the peak at each step
    if paper:
        assert trainer.args.warmup_steps == 4000 and lr_at(40) == pytest.approx(40 / 4000)
    else:
        assert trainer.args.get_warmup_steps(40) == math.ceil(0.05 * 40) == 2
        assert lr_at(2) == 1.0 and lr_at(21) == pytest.approx(0.5) and lr_at(40) == 0.0
    assert results(tmp_path / "o")["hyperparameters"]["learning_rate"] == pytest.approx(peak)


# -- 4. the output directory -----------------------------------------------------------------------


def test_the_output_is_a_hub_model_with_card_and_results_and_no_pickle(scratch, tmp_path):
    out = scratch["out"]
    # Exactly what save_pretrained writes for this model and its tokenizer, and the run's own files.
    config = ScratchformerSeq2SeqConfig.from_pretrained(out)
    ScratchformerForConditionalGeneration(config).save_pretrained(tmp_path / "ref")
    AutoTokenizer.from_pretrained(out).save_pretrained(tmp_path / "ref")
    expected = {p.name for p in (tmp_path / "ref").iterdir()} | {"README.md", "finetune_results.json", "metrics.jsonl"}
    assert {"generation_config.json", "model.safetensors", "modeling_scratchformer_seq2seq.py"} <= expected
    found = {p.name for p in out.iterdir()}
    assert found - {"loss_curve.png"} == expected  # no training_args.bin, no staging or checkpoints folder
    assert not [p for p in out.rglob("*") if p.suffix in PICKLE_SUFFIXES]

    r = results(out)
    printed_train, printed_eval = scratch["printed"]
    assert r["eval"] == printed_eval and set(r["eval"]) == {"loss", "exact_match", "bleu", "chrf"}
    assert r["train_loss"] == printed_train["train_loss"] and r["train_steps"] == 4
    assert r["validation_examples"] == 6 and r["base_model"] is None
    h = r["hyperparameters"]
    assert (h["max_steps"], h["per_device_train_batch_size"], h["label_smoothing_factor"]) == (4, 8, 0.1)
    assert r["model"]["parameters"] == sum(t.numel() for t in load_file(out / "model.safetensors").values())
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text2text-generation\n")
    assert f"| validation exact match | {r['eval']['exact_match']:.2f} % |" in card
    assert f"| validation BLEU (corpus, 0-100) | {r['eval']['bleu']:.2f} |" in card
    assert f"| validation chrF (corpus, 0-100) | {r['eval']['chrf']:.2f} |" in card
    assert "Trained from scratch" in card and "AutoModelForSeq2SeqLM" in card
    assert "## Where it runs" in card and "| export --to gguf" not in card and "| vLLM (CPU) | ✗ |" in card
    assert f"saved to    {out}" in scratch["text"]


def test_the_bleu_reported_is_sacrebleus_with_its_signature(scratch):
    """The score papers report, and the signature that says how it was computed, in the results and the card."""
    sacrebleu = pytest.importorskip("sacrebleu")
    r = results(scratch["out"])
    signature = r["generation"]["bleu"]
    assert signature.startswith("sacrebleu nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert signature.endswith(sacrebleu.__version__)
    assert f"| BLEU signature | `{signature}` |" in (scratch["out"] / "README.md").read_text()


def test_the_output_appears_complete_or_not_at_all(pairs, tokenizer_dir, tmp_path, monkeypatch, capsys):
    argv = ["--train_files", pairs["train"], "--output_dir", str(tmp_path / "o"), *TOY, "--tokenizer",
            str(tokenizer_dir), "--max_steps", "1"]  # fmt: skip

    def disk_full(*args, **kwargs) -> str:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(lib, "render_seq2seq_card", disk_full)  # the model is written by then, the card is not
        assert run(*argv)[0] == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "o").iterdir()} <= {lib.STAGING_DIR}  # nothing half-written in view
    # What a killed save leaves is no earlier run: the next run goes ahead without --overwrite.
    assert run(*argv)[0] == 0 and (tmp_path / "o" / "model.safetensors").is_file()
    assert not (tmp_path / "o" / lib.STAGING_DIR).exists()


# -- the library under the command: its pieces at their edges ------------------------------------


def test_noam_lr_is_the_papers_equation_3():
    d, w = 512, 4000
    assert lib.noam_lr(1, d, w) == pytest.approx(d**-0.5 * w**-1.5)  # the warm-up's first step
    assert lib.noam_lr(w, d, w) == pytest.approx(d**-0.5 * w**-0.5)  # the peak, where the two meet
    assert lib.noam_lr(4 * w, d, w) == pytest.approx(d**-0.5 * (4 * w) ** -0.5)  # then 1/sqrt(step)
    assert lib.noam_lr(w, d, w, factor=2.0) == pytest.approx(2 * d**-0.5 * w**-0.5)
    assert lib.noam_lr(0, d, w) == lib.noam_lr(1, d, w)  # steps count from 1


def test_pair_files_are_checked_kind_rows_and_values(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    assert lib.load_pairs(str(one))["target"] == ["b"]  # one row is enough
    (tmp_path / "notes.txt").write_text("a\tb\n")
    (tmp_path / "more.csv").write_text("source,target\nc,d\n")
    for files in ([str(tmp_path / "notes.txt")], [str(one), str(tmp_path / "more.csv")]):
        with pytest.raises(lib.UserError, match="use .jsonl, .json or .csv files, all of one kind"):
            lib.load_pairs(files)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"source": "a", "target": 5}) + "\n")
    with pytest.raises(lib.UserError, match="row 1 has 5 as 'target', not text"):
        lib.load_pairs(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"source": "a", "target": "b"}) + '\n{"source": "c", "target": \n')
    with pytest.raises(lib.UserError, match="broken.jsonl: could not read it as json: "):
        lib.load_pairs(str(broken))
    # Files with no rows: datasets raises ValueError or StopIteration on them; the user gets one line.
    for name, text in (("header.csv", "source,target\n"), ("empty.jsonl", ""), ("list.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(lib.UserError, match=f"{name}: no rows"):
            lib.load_pairs(str(tmp_path / name))


def test_pairs_are_cut_to_their_lengths_and_targets_end_with_eos_not_bos(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    long = " ".join(WORDS * 3)
    data = lib.tokenize_pairs(datasets.Dataset.from_dict({"source": [long], "target": [long]}), tok, "source",
                              "target", max_source_length=5, max_target_length=6)  # fmt: skip
    assert data["input_ids"][0] == tok(long, truncation=True, max_length=5)["input_ids"]
    assert len(data["input_ids"][0]) == 5
    assert data["labels"][0] == tok(long, add_special_tokens=False)["input_ids"][:5] + [tok.eos_token_id]


def _tiny_seq2seq(tok) -> ScratchformerForConditionalGeneration:
    torch.manual_seed(0)
    return ScratchformerForConditionalGeneration(lib.new_model_config(
        tok, size="tiny", hidden_size=32, encoder_layers=1, decoder_layers=1, max_position_embeddings=64))  # fmt: skip


def test_generated_texts_are_greedy_and_without_special_tokens(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = _tiny_seq2seq(tok).eval()
    sources = ["list dict for", "while class", "def return import list"]
    enc = tok(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=12, do_sample=False)
    torch.manual_seed(1)  # sampling would draw other tokens than the argmax of a random model
    assert lib.generate_texts(model, tok, sources, max_new_tokens=12) == tok.batch_decode(ids, skip_special_tokens=True)
    assert tok.decode(ids[0]) != tok.decode(ids[0], skip_special_tokens=True)  # the start token is one


def test_a_checkpoint_brings_its_tokenizer_unless_one_is_given(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    _tiny_seq2seq(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _, loaded, base = lib.model_and_tokenizer(tmp_path / "m", None, seed=0)
    assert base == str(tmp_path / "m") and loaded.padding_side == "right" and len(loaded) == len(tok)
    other = train_bpe(["quite other text"] * 20, vocab_size=270, show_progress=False)
    _, given, _ = lib.model_and_tokenizer(tmp_path / "m", other, seed=0)
    assert len(given) == len(other) != len(tok)


def test_lengths_default_to_the_models_positions_and_stop_there():
    config = ScratchformerSeq2SeqConfig(vocab_size=50, hidden_size=16, encoder_layers=1, decoder_layers=1,
                                        num_attention_heads=2, intermediate_size=32,
                                        max_position_embeddings=64)  # fmt: skip
    assert lib.pair_lengths(config, None, None) == (64, 64)
    assert lib.pair_lengths(config, 64, 64) == (64, 64)
    with pytest.raises(lib.UserError, match="65/10: the model has positions for 64 tokens"):
        lib.pair_lengths(config, 65, 10)


def test_the_papers_schedule_needs_a_warm_up_of_at_least_one_step(tmp_path):
    def arguments(warmup):
        return lib.trainer_arguments({}, tmp_path, 32, 0.1, inverse_sqrt_schedule=True, warmup_steps=warmup)

    assert arguments(1).lr_scheduler_type is not None
    for warmup in (0, 0.5):
        with pytest.raises(lib.UserError, match="must be >= 1"):
            arguments(warmup)


def test_the_library_call_from_python(pairs, tokenizer_dir, tmp_path):
    """`finetune_seq2seq` called from Python with a dataset, its defaults, into a folder whose parents do
    not exist yet, keeping the checkpoints the caller asked Trainer for; then the same folder again,
    refused without overwrite."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    train = lib.load_pairs(pairs["train"])
    out = tmp_path / "new" / "nested" / "run"
    args = {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "steps",
            "save_steps": 1}  # fmt: skip
    _, r = lib.finetune_seq2seq(lib.new_model_config(tok, size="tiny", hidden_size=32, encoder_layers=1,
                                                     decoder_layers=1, max_position_embeddings=64),
                                train, eval_dataset=lib.load_pairs(pairs["dev"]), tokenizer=tok,
                                training_args=args)  # fmt: skip
    assert r["data"] == "a datasets.Dataset given in Python" and r["has_loss_curve"] is False
    assert r["hyperparameters"]["schedule"] == "linear warm-up and decay"
    assert r["generation"]["do_sample"] is False and r["generation"]["num_beams"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "model.safetensors").is_file() and not (out / "loss_curve.png").exists()
    with pytest.raises(lib.UserError, match="exists and is not empty; choose another --output_dir or pass --overwrite"):
        lib.finetune_seq2seq(out, train, training_args=args)
    with pytest.raises(lib.UserError, match="exists and is not empty"):
        lib.check_output_dir(out)  # the check alone refuses too, unless told to overwrite
    lib.check_output_dir(out, overwrite=True)
