"""Every flag a user can pass takes effect, not just parses.

Each test is written against a broken implementation: "if the line that uses this flag were deleted,
would this fail?" So a flag is shown by what it changes (weights, logits, sampled tokens, what code
runs, what is read from disk), and the value is checked where it is used (the GenerationConfig given
to `generate`, the optimizer's groups at each step), never only in the parsed arguments.

Each command runs once through the real console script (`scratchformer tokenizer|pretrain|finetune|
generate`, offline); the rest calls the modules' `main(argv)` in this process, where spies can watch.
Everything is toy-sized: width 32, two layers, a few optimizer steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from scratchformer.modeling import (
    ScratchformerConfig,
    ScratchformerForCausalLM,
    ScratchformerForConditionalGeneration,
    ScratchformerSeq2SeqConfig,
)
from scratchformer.modeling.loss_scratchformer import LinearCrossEntropy
from scratchformer.modeling.transformer_scratchformer import ScratchformerAttention
from scratchformer.training import finetune, generate, pretrain
from scratchformer.training import tokenizer as tokenizer_cli
from scratchformer.training.library import finetuning
from scratchformer.training.library import seq2seq as seq2seq_lib
from scratchformer.training.library.data import default_corpus

SCRATCHFORMER = Path(sys.executable).parent / "scratchformer"
TINY_PRETRAIN = ["--size", "tiny", "--hidden_size", "32", "--block_size", "32", "--per_device_train_batch_size", "8",
                 "--learning_rate", "3e-3", "--report_to", "none", "--logging_steps", "1", "--eval_steps", "100",
                 "--save_steps", "100"]  # fmt: skip
STEPS = 3  # optimizer steps of the in-process pretraining runs (one micro-batch each)
LAYERS = 2  # the tiny size's


# -- helpers --------------------------------------------------------------------------------------


def console(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed `scratchformer` console script, offline, one thread, with a private datasets cache."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_DATASETS_CACHE=str(cwd / "datasets-cache"))  # fmt: skip
    proc = subprocess.run([str(SCRATCHFORMER), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"scratchformer {args[0]} failed:\n{proc.stderr[-4000:]}"
    return proc


def last_json(stdout: str) -> dict:
    """The JSON object a command prints last (pretrain's summary, indented over several lines)."""
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def logged_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def logits_of(model_dir, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


class Watch:
    """What a pretraining run did, seen from outside `train()`."""

    def __init__(self) -> None:
        self.linear_dtypes: set[torch.dtype] = set()  # output dtypes of every nn.Linear in training mode
        self.attention_calls = 0  # attention forwards in training mode (recomputation counts again)
        self.fused_calls = 0  # LinearCrossEntropy.apply: the fused LM head + loss
        self.steps: list[dict] = []  # per optimizer step: its groups' hyperparameters and the gradient norm
        self.hub: list[tuple] = []  # calls to the (fake) HfApi
        self.compiled: list[dict] = []  # torch.compile's keyword arguments
        self.graphs = 0  # graphs dynamo handed to the compile backend
        self.code: int | None = None
        self.out: Path | None = None


@contextlib.contextmanager
def watching(*, module_hooks: bool = True):
    """Spies on what a `pretrain.main` run executes. Nothing reaches the hub: HfApi is a recorder.
    `torch.compile` is recorded and then really run by dynamo, with a backend that counts the graphs
    and runs them eagerly (inductor would spend a minute compiling C++ on a CPU)."""
    watch = Watch()
    real_compile, real_apply = torch.compile, LinearCrossEntropy.apply

    def forward_hook(module, args, output):
        if not module.training:
            return
        if isinstance(module, torch.nn.Linear) and torch.is_tensor(output):
            watch.linear_dtypes.add(output.dtype)
        if isinstance(module, ScratchformerAttention):
            watch.attention_calls += 1

    def step_hook(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        watch.steps.append({"groups": groups, "grad_norm": norm})

    def fused(*args):
        watch.fused_calls += 1
        return real_apply(*args)

    def backend(graph_module, example_inputs):
        watch.graphs += 1
        return graph_module.forward

    def compile_spy(model, **kwargs):
        watch.compiled.append(kwargs)
        return real_compile(model, backend=backend)

    class FakeHfApi:
        def __init__(self, *args, **kwargs):
            watch.hub.append(("HfApi",))

        def create_repo(self, repo_id, **kwargs):
            watch.hub.append(("create_repo", repo_id))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, folder_path, repo_id, **kwargs):
            folder = Path(folder_path)
            run_dir = folder.parent
            # What was there at upload time: the finished model and the last step's log record.
            watch.hub.append(("upload_folder", folder, repo_id, sorted(p.name for p in folder.iterdir()),
                              max(r["step"] for r in metrics(run_dir))))  # fmt: skip

    handles = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "HfApi", FakeHfApi)
        mp.setattr(torch, "compile", compile_spy)
        mp.setattr(LinearCrossEntropy, "apply", fused)
        handles.append(register_optimizer_step_pre_hook(step_hook))
        if module_hooks:
            handles.append(torch.nn.modules.module.register_module_forward_hook(forward_hook))
        try:
            yield watch
        finally:
            for handle in handles:
                handle.remove()
            if watch.compiled:
                torch._dynamo.reset()  # no compiled frames left behind for other tests


def pretrain_argv(corpus: dict, tokenizer: str, out: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--train_files", corpus["train"], "--validation_files", corpus["validation"],
            "--tokenizer", tokenizer, *TINY_PRETRAIN, "--max_train_steps", str(STEPS), *extra]  # fmt: skip


def watched_pretrain(argv: list[str], **kwargs) -> Watch:
    with watching(**kwargs) as watch:
        watch.code = pretrain.main(argv)
    return watch


# -- shared inputs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Slices of the embedded corpus: documents as .jsonl, and running text as .txt."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [d[:2000] for d in list(default_corpus("train"))[:20]]
    val = [d[:2000] for d in list(default_corpus("validation"))[:5]]
    (root / "text.txt").write_text("\n".join(docs[:6]) + "\n")
    return {
        "root": root,
        "train": write_jsonl(root / "train.jsonl", [{"text": d} for d in docs]),
        "validation": write_jsonl(root / "validation.jsonl", [{"text": d} for d in val]),
        "text": str(root / "text.txt"),
    }


@pytest.fixture(scope="module")
def tokenizer_run(corpus, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    """`scratchformer tokenizer`, through the console script: the tokenizer every other run uses."""
    root = tmp_path_factory.mktemp("tok")
    proc = console(["tokenizer", "--output_dir", str(root / "tok"), "--train_files", corpus["train"],
                   "--vocab-size", "320",
                    "--max-length", "64", "--min-frequency", "2", "--quiet"], cwd=root)  # fmt: skip
    return str(root / "tok"), proc


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer_run) -> str:
    return tokenizer_run[0]


@pytest.fixture(scope="module")
def lm_dir(tokenizer_dir, tmp_path_factory) -> str:
    """A random tiny causal LM with the run's tokenizer: a checkpoint `generate` and `finetune` accept."""
    root = tmp_path_factory.mktemp("lm")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    ScratchformerForCausalLM(config).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return str(root / "lm")


@pytest.fixture(scope="module")
def baseline(corpus, tokenizer_dir, tmp_path_factory) -> Watch:
    """A default pretraining run (fp32, fused loss, no checkpointing, no compile), watched: what each
    flag's run is compared with."""
    out = tmp_path_factory.mktemp("baseline")
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, out))
    assert watch.code == 0
    watch.out = out
    return watch


# -- tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_console_flags_shape_the_saved_tokenizer(tokenizer_run):
    out, proc = tokenizer_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 320  # --vocab-size (the default is 8192)
    assert tokenizer.model_max_length == 64  # --max-length (the default is 1024)
    assert "reading corpus" not in proc.stderr  # --quiet: no progress bar
    assert "320 tokens" in proc.stdout


def test_tokenizer_min_frequency_stops_merges_below_it(corpus, tmp_path, capsys):
    sizes = {}
    for min_frequency in (2, 40):
        out = tmp_path / f"tok{min_frequency}"
        argv = ["--output_dir", str(out), "--train_files", corpus["train"], "--vocab-size", "4000",
                "--min-frequency", str(min_frequency)]  # fmt: skip
        assert tokenizer_cli.main(argv) == 0
        sizes[min_frequency] = len(AutoTokenizer.from_pretrained(out))
    # 4000 is out of reach of a 40 KB corpus: the vocabulary ends where pairs stop being frequent
    # enough, so a higher threshold must leave a smaller one.
    assert sizes[40] < sizes[2] < 4000, sizes
    assert "reading corpus" in capsys.readouterr().err  # without --quiet, the bar shows


# -- pretrain: the console script, and the flags that shape the model ------------------------------


@pytest.mark.slow
def test_pretrain_console_model_flags_reach_the_saved_model(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    proc = console(["pretrain", "--output_dir", str(out), "--train_files", corpus["train"],
                    "--validation_files", corpus["validation"], "--tokenizer", tokenizer_dir,
                    "--preset", "gpt2", "--size", "tiny", "--hidden_size", "32", "--num_attention_heads", "4",
                    "--num_key_value_heads", "2", "--intermediate_size", "48", "--block_size", "16",
                    "--max_position_embeddings", "40", "--position_embedding", "sinusoidal", "--dropout", "0.05",
                    "--num_hidden_layers", "3", "--per_device_train_batch_size", "4", "--max_train_steps", "2",
                    "--max_eval_samples", "3", "--max_shard_size", "40KB", "--report_to", "none"],
                   cwd=tmp_path)  # fmt: skip
    summary = last_json(proc.stdout)
    assert summary["steps"] == 2 and summary["tokens_seen"] == 2 * 4 * 16  # max_train_steps x batch x block_size
    config = json.loads((out / "model" / "config.json").read_text())
    # Every size and shape flag, and (the last two) what --preset gpt2 brings.
    expected = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=48, max_position_embeddings=40, position_embedding="sinusoidal",
                    embedding_dropout=0.05, hidden_dropout=0.05, attention_dropout=0.05,
                    norm_type="layernorm", mlp_type="gelu")  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    # --max_shard_size: the weights are split, and the index names more than one file.
    index = json.loads((out / "model" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.model.layers[0].self_attn.k_proj.out_features == 2 * 32 // 4  # two key/value heads
    # --max_eval_samples 3: evaluation read 3 blocks of 16 tokens (15 predictions each), not all; a
    # 2-step run with no --eval_steps evaluates after each step (about 20 evaluations a run, at most).
    evaluation = [r for r in metrics(out) if "eval_tokens" in r]
    assert [r["eval_tokens"] for r in evaluation] == [3 * 15, 3 * 15]


def test_preset_qwen3_and_qk_norm_give_a_model_with_qk_norm(corpus, tokenizer_dir, tmp_path):
    """--preset qwen3 trains the qwen3 preset (QK-norm on, Llama's choices otherwise); --qk_norm adds
    QK-norm to the default preset. Both save a model whose attention has q_norm and k_norm."""
    for name, flags in (("qwen3", ["--preset", "qwen3"]), ("llama-qk", ["--qk_norm"])):
        out = tmp_path / name
        assert watched_pretrain(pretrain_argv(corpus, tokenizer_dir, out, *flags)).code == 0
        config = json.loads((out / "model" / "config.json").read_text())
        assert config["qk_norm"] is True and config["norm_type"] == "rmsnorm" and config["mlp_type"] == "swiglu"
        attention = AutoModelForCausalLM.from_pretrained(out / "model").model.layers[0].self_attn
        assert attention.q_norm.weight.shape == attention.k_norm.weight.shape == (32 // 4,)  # one head's width


# -- pretrain: what runs ------------------------------------------------------------------------------


def test_default_run_uses_the_fused_loss_in_fp32_and_pushes_nothing(baseline):
    assert baseline.fused_calls == STEPS  # one fused head + loss per training micro-batch
    assert baseline.linear_dtypes == {torch.float32}
    assert baseline.attention_calls == STEPS * LAYERS  # no recomputation
    assert baseline.compiled == [] and baseline.hub == []


def test_no_fused_lm_loss_takes_the_plain_head_and_gives_the_same_losses(baseline, corpus, tokenizer_dir, tmp_path):
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, "--no_fused_lm_loss"))
    assert watch.code == 0
    assert watch.fused_calls == 0
    a, b = logged_losses(baseline.out), logged_losses(tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step


def test_gradient_checkpointing_recomputes_each_layer_in_the_backward(baseline, corpus, tokenizer_dir, tmp_path):
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, "--gradient_checkpointing"))
    assert watch.code == 0
    # Each layer's forward runs again during the backward pass: twice the attention calls of the
    # baseline, and (no dropout) exactly the same losses.
    assert watch.attention_calls == 2 * baseline.attention_calls == 2 * STEPS * LAYERS
    a, b = logged_losses(baseline.out), logged_losses(tmp_path)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6), step


def test_bf16_autocasts_the_forward_and_the_next_run_is_fp32_again(baseline, corpus, tokenizer_dir, tmp_path):
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path / "bf16", "--mixed_precision", "bf16"))
    assert watch.code == 0
    assert watch.linear_dtypes == {torch.bfloat16}
    fp32, bf16 = logged_losses(baseline.out), logged_losses(tmp_path / "bf16")
    assert sorted(bf16) == sorted(fp32)
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], rel=2e-2), step  # close: the same training
    assert any(bf16[s] != fp32[s] for s in fp32)  # but computed in another precision
    training_args = json.loads((tmp_path / "bf16" / "model" / "training_args.json").read_text())
    assert training_args["mixed_precision"] == "bf16"

    # accelerate keeps its state in a process-wide singleton: the next run in this process, without
    # the flag, must not inherit bf16 (nor a compile backend) from this one.
    again = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path / "again"))
    assert again.code == 0
    assert again.linear_dtypes == {torch.float32}
    assert logged_losses(tmp_path / "again") == fp32


def test_torch_compile_compiles_the_model_that_trains(baseline, corpus, tokenizer_dir, tmp_path):
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, "--torch_compile"), module_hooks=False)
    assert watch.code == 0
    assert [kw.get("backend") for kw in watch.compiled] == ["inductor"]  # once, with the backend the help names
    assert watch.graphs >= 1  # dynamo traced the training forward: the compiled module is what ran
    a, b = logged_losses(baseline.out), logged_losses(tmp_path)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    # The saved names are the model's own, not torch.compile's wrapper's (`_orig_mod.`).
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert saved and not any("_orig_mod" in k for k in saved)
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


def test_optimizer_flags_reach_every_optimizer_step(corpus, tokenizer_dir, tmp_path):
    flags = ["--optimizer", "adamw", "--lr_scheduler_type", "cosine", "--adam_beta1", "0.8", "--adam_beta2", "0.9",
             "--weight_decay", "0.3", "--num_warmup_steps", "2", "--min_lr_ratio", "0.5", "--max_grad_norm", "0.01",
             "--max_train_steps", "4"]  # fmt: skip
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, *flags))
    assert watch.code == 0 and len(watch.steps) == 4
    peak, floor = 3e-3, 3e-3 * 0.5
    # Warmup over 2 steps, then a half cosine from the peak towards learning_rate x min_lr_ratio,
    # which the step after the last would reach: halfway there at the last step.
    expected = [peak / 2, peak, peak, floor + (peak - floor) / 2]
    for step, want in zip(watch.steps, expected):
        decay, no_decay = step["groups"]
        assert decay["lr"] == pytest.approx(want) and no_decay["lr"] == pytest.approx(want)
        assert decay["betas"] == (0.8, 0.9)
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.0)
        assert step["grad_norm"] <= 0.01 * (1 + 1e-4)  # clipped before the step...
    unclipped = [r["grad_norm"] for r in metrics(tmp_path) if r.get("grad_norm") is not None]
    assert min(unclipped) > 0.1  # ... from norms that needed it


def test_muon_and_wsd_flags_reach_every_optimizer_step(corpus, tokenizer_dir, tmp_path):
    flags = ["--optimizer", "muon", "--lr_scheduler_type", "wsd", "--lr_decay_fraction", "0.5", "--weight_decay",
             "0.3", "--num_warmup_steps", "1", "--max_train_steps", "4"]  # fmt: skip
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, *flags))
    assert watch.code == 0
    # One optimizer for accelerate (the inner Muon and AdamW steps fire the hook too: leave them out).
    combined = [s for s in watch.steps if {g.get("optimizer") for g in s["groups"]} == {"muon", "adamw"}]
    assert len(combined) == 4
    peak = 3e-3
    # Warmup over 1 step, the peak held, then a line from the peak towards 0 over the last 2 steps.
    for step, want in zip(combined, [peak, peak, peak, peak / 2]):
        muon, decay, no_decay = step["groups"]
        assert muon["optimizer"] == "muon" and muon["adjust_lr_fn"] == "match_rms_adamw"
        assert all(g["lr"] == pytest.approx(want) for g in (muon, decay, no_decay))
        assert (muon["weight_decay"], decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.3, 0.0)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Muon" in card and "held, then linear over the last 50% of the steps to 0" in card


def test_push_to_hub_uploads_the_finished_model_once(corpus, tokenizer_dir, tmp_path):
    watch = watched_pretrain(pretrain_argv(corpus, tokenizer_dir, tmp_path, "--push_to_hub", "me/tiny"))
    assert watch.code == 0
    uploads = [c for c in watch.hub if c[0] == "upload_folder"]
    assert [c for c in watch.hub if c[0] == "create_repo"] == [("create_repo", "me/tiny")]
    assert len(uploads) == 1
    _, folder, repo_id, files, last_logged_step = uploads[0]
    assert repo_id == "me/tiny" and folder == tmp_path / "model"
    # At the end: the complete model directory, after the last training step was logged.
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_args.json"} <= set(files)
    assert last_logged_step == STEPS


def test_streaming_never_reads_past_what_the_steps_need(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """A .csv whose last lines are malformed. Read eagerly, preparing the data fails on them; streamed,
    a 2-step run never gets there. (The csv reader parses 10,000 rows at a time from a 256 KiB buffer,
    so the bad lines sit well past both.) The shuffle buffer reads ahead: a small --shuffle_buffer_size
    is what keeps the run short of the bad lines; the default, 10,000 blocks, is more than the file holds."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    words = [w for w in next(default_corpus("train")).split() if w.isalpha()][:300]
    rows = [" ".join(words[(i * 7) % 290 : (i * 7) % 290 + 5]) for i in range(60_000)]
    train = tmp_path / "train.csv"
    train.write_text("text\n" + "\n".join(rows) + '\nthis row, has "three, fields\nand, so, does this\n')
    assert train.stat().st_size > 2.5 * 256 * 1024
    validation = tmp_path / "validation.csv"
    validation.write_text("text\n" + "\n".join(rows[:200]) + "\n")

    def argv(out: str, *extra: str) -> list[str]:
        return ["--output_dir", str(tmp_path / out), "--train_files", str(train), "--validation_files",
                str(validation), "--tokenizer", tokenizer_dir, *TINY_PRETRAIN, "--block_size", "64",
                "--max_train_steps", "2", "--max_eval_samples", "2", *extra]  # fmt: skip

    assert pretrain.main(argv("eager")) == 2
    assert "error: " in capsys.readouterr().err  # one line, no traceback

    assert pretrain.main(argv("streamed", "--streaming", "--shuffle_buffer_size", "8")) == 0
    assert logged_losses(tmp_path / "streamed").keys() == {1, 2}
    assert not list((tmp_path / "datasets-cache").rglob("*.arrow"))  # and nothing was cached

    assert pretrain.main(argv("buffered", "--streaming")) == 2  # the default buffer reads on to the bad lines
    assert "Expected 1 fields" in capsys.readouterr().err


# -- finetune ---------------------------------------------------------------------------------------


def test_lora_merges_the_trained_adapter_into_the_targeted_weights(lm_dir, corpus, tmp_path, monkeypatch):
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    probe = tokenizer("The for statement is used to iterate", return_tensors="pt")["input_ids"]
    before_merge = []

    class WatchedTrainer(finetuning.Trainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            # The model Trainer trained, before finetune() merges and saves it.
            before_merge.append(type(self.model))
            self.model.eval()
            with torch.no_grad():
                before_merge.append(self.model(input_ids=probe).logits)
            return result

    monkeypatch.setattr(finetuning, "Trainer", WatchedTrainer)
    out = tmp_path / "lora"
    argv = ["--model", lm_dir, "--task", "causal-lm", "--train_files", corpus["text"], "--output_dir", str(out),
            "--lora-r", "2", "--lora-alpha", "3", "--lora-dropout", "0.1", "--lora-target-modules", "o_proj", "up_proj",
            "--max-length", "32", "--validation-fraction", "0", "--max_steps", "6", "--learning_rate", "2e-2",
            "--per_device_train_batch_size", "8", "--save_strategy", "no", "--eval_strategy", "no",
            "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"]  # fmt: skip
    assert finetune.main(argv) == 0
    peft_class, peft_logits = before_merge
    assert issubclass(peft_class, PeftModel)  # --lora-r wrapped the model: adapters were trained

    base, merged = load_file(Path(lm_dir) / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == merged.keys()  # merged: no LoRA tensors left in the saved model
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    targets = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.o_proj", "mlp.up_proj")}
    assert changed == targets  # --lora-target-modules: those weights and no others

    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 3, 0.1)
    for key in targets:
        module = key.removesuffix(".weight")
        a = next(v for k, v in adapter.items() if module in k and "lora_A" in k)
        b = next(v for k, v in adapter.items() if module in k and "lora_B" in k)
        delta = merged[key] - base[key]
        # W + (alpha / r) B A: rank --lora-r exactly, scaled by --lora-alpha / --lora-r.
        torch.testing.assert_close(delta, (3 / 2) * b @ a, rtol=1e-4, atol=1e-6)
        singular = torch.linalg.svdvals(delta)
        assert singular[1] > 1e-3 * singular[0] and singular[2] < 1e-4 * singular[0], (key, singular[:4])

    merged_logits, base_logits = logits_of(out, probe), logits_of(lm_dir, probe)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter's effect survived the merge
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-5, atol=1e-5)  # and is the PEFT model's
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_dir), out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe).logits, peft_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_finetune_console_early_stopping_and_kept_checkpoints(lm_dir, corpus, tmp_path):
    """Learning rate 0: the validation loss cannot improve, so patience 1 stops after the second
    evaluation of the six epochs asked for; --keep-checkpoints keeps Trainer's checkpoints."""
    out = tmp_path / "stopped"
    proc = console(["finetune", "--model", lm_dir, "--task", "causal-lm", "--train_files", corpus["text"],
                    "--output_dir", str(out), "--max-length", "32", "--validation-fraction", "0.2",
                    "--num_train_epochs", "6", "--learning_rate", "0", "--early-stopping-patience", "1",
                    "--keep-checkpoints", "--per_device_train_batch_size", "16", "--use_cpu",
                    "--disable_tqdm", "true", "--seed", "0"], cwd=tmp_path)  # fmt: skip
    assert "saved to" in proc.stdout
    results = json.loads((out / "finetune_results.json").read_text())
    assert max(r["epoch"] for r in results["log_history"]) == 2.0  # stopped early, not 6 epochs
    evaluations = {r["eval_loss"] for r in results["log_history"] if "eval_loss" in r}
    assert len(evaluations) == 1  # (because it never improved)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert len(kept) >= 1, kept


# -- finetune --task seq2seq ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seq2seq_data(tokenizer_dir, tmp_path_factory) -> dict:
    """An untrained tiny encoder-decoder (no dropout, so a step's loss is exact) and a copy task."""
    root = tmp_path_factory.mktemp("seq2seq")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = ScratchformerSeq2SeqConfig(vocab_size=len(tokenizer), hidden_size=32, encoder_layers=2,
                                        decoder_layers=2, num_attention_heads=4, intermediate_size=64,
                                        max_position_embeddings=64, embedding_dropout=0.0,
                                        hidden_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForConditionalGeneration(config).save_pretrained(root / "init")
    tokenizer.save_pretrained(root / "init")
    words = ["list", "dict", "for", "while", "class", "def", "return", "import"]
    rows = [{"source": " ".join(words[(i + j) % 8] for j in range(3 + i % 3)),
             "target": " ".join(words[(i + j) % 8] for j in range(3 + i % 3))} for i in range(24)]  # fmt: skip
    return {"init": root / "init", "train": write_jsonl(root / "train.jsonl", rows), "rows": rows}


def seq2seq_loss(model_dir, data: dict, smoothing: float = 0.0) -> float:
    """The training loss of one batch of every row, computed here as Seq2SeqTrainer defines it: the
    mean cross-entropy over label tokens, mixed with the mean over the vocabulary for smoothing."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    model.train()  # as in a training step (no dropout in this config, so nothing random)
    pairs = seq2seq_lib.tokenize_pairs(datasets.Dataset.from_list(data["rows"]), tokenizer, "source", "target")
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)([pairs[i] for i in range(len(pairs))])
    labels = batch.pop("labels")
    with torch.no_grad():
        log_probs = model(**batch).logits.float().log_softmax(-1)
    mask = labels != -100
    nll = -log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0][mask].mean()
    uniform = -log_probs.mean(-1)[mask].mean()
    return ((1 - smoothing) * nll + smoothing * uniform).item()


def run_seq2seq(data: dict, model_dir: Path, out: Path, *flags: str) -> dict:
    """`scratchformer finetune --task seq2seq` on the copy task, every row in one batch; returns the
    training metrics it prints."""
    argv = ["--task", "seq2seq", "--model", str(model_dir), "--train_files", data["train"], "--output_dir", str(out),
            "--per_device_train_batch_size", "32", "--warmup-steps", "1", *flags]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert finetune.main(argv) == 0
    printed = [json.loads(line) for line in stdout.getvalue().splitlines() if line.startswith('{"')]
    return next(m for m in printed if "train_loss" in m)


@pytest.fixture(scope="module")
def seq2seq_trained(seq2seq_data, tmp_path_factory) -> Path:
    """12 steps at a real learning rate (underscore spelling, as every other finetune flag may be)."""
    out = tmp_path_factory.mktemp("seq2seq-trained")
    run_seq2seq(seq2seq_data, seq2seq_data["init"], out, "--num_train_epochs", "12", "--learning_rate", "3e-3")
    return out


def test_seq2seq_learning_rate_is_the_one_used(seq2seq_data, seq2seq_trained, tmp_path):
    # Zero: not one weight moves. (Had the flag been dropped, the default, the paper's peak, is
    # 32^-0.5 = 0.18 with --warmup-steps 1: every weight would have moved.)
    run_seq2seq(seq2seq_data, seq2seq_data["init"], tmp_path, "--num_train_epochs", "2", "--learning-rate", "0")
    init, zero = load_file(seq2seq_data["init"] / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(init[k], zero[k]) for k in init)
    # A real one takes the loss well down.
    before, after = seq2seq_loss(seq2seq_data["init"], seq2seq_data), seq2seq_loss(seq2seq_trained, seq2seq_data)
    assert after < before - 1.0, (before, after)


@pytest.mark.parametrize("smoothing", ["0", "0.3"])
def test_seq2seq_label_smoothing_is_the_loss_trained_on(seq2seq_data, seq2seq_trained, tmp_path, smoothing):
    # One step at learning rate 0 over every row of the trained model: the reported training loss is
    # that model's loss, which must be the one with this smoothing (the default is 0.1). A trained
    # model puts far more on the right token than on the average one, so the smoothings differ widely.
    printed = run_seq2seq(seq2seq_data, seq2seq_trained, tmp_path, "--num_train_epochs", "1", "--learning-rate", "0",
                          "--label_smoothing_factor", smoothing)  # fmt: skip
    expected = seq2seq_loss(seq2seq_trained, seq2seq_data, float(smoothing))
    assert printed["train_loss"] == pytest.approx(expected, rel=1e-4)
    default = seq2seq_loss(seq2seq_trained, seq2seq_data, 0.1)
    assert abs(expected - default) > 0.05


def test_seq2seq_schedule_and_beam_flags_reach_trainer_and_generate(seq2seq_data, tmp_path, monkeypatch):
    trainers, beams = [], []

    class WatchedTrainer(seq2seq_lib.Seq2SeqTrainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            trainers.append(self)
            return result

    real_generate = ScratchformerForConditionalGeneration.generate

    def generate_spy(self, *args, **kwargs):
        beams.append(kwargs.get("num_beams"))
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(seq2seq_lib, "Seq2SeqTrainer", WatchedTrainer)
    monkeypatch.setattr(ScratchformerForConditionalGeneration, "generate", generate_spy)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", seq2seq_data["rows"][:2])
    run_seq2seq(seq2seq_data, seq2seq_data["init"], tmp_path / "out", "--num_train_epochs", "2",
                "--per_device_train_batch_size", "8",
                "--warmup-steps", "3", "--no-paper-schedule", "--learning-rate", "1e-3", "--validation_files",
                 eval_file,
                "--num-beams", "3")  # fmt: skip
    (trainer,) = trainers
    assert trainer.state.global_step == 2 * 3  # --epochs 2 of 24 rows in --batch-size 8
    assert str(getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type)) == "linear"
    assert trainer.args.warmup_steps == 3
    # The schedule Trainer built: a linear warm-up over 3 steps (the paper's inverse square root otherwise).
    assert trainer.lr_scheduler.lr_lambdas[0](1) == pytest.approx(1 / 3)
    assert beams and set(beams) == {3}


# -- generate -------------------------------------------------------------------------------------


@pytest.fixture
def generated(monkeypatch):
    """Records each `generate()` call made by `scratchformer generate`: its GenerationConfig and the
    new token ids."""
    calls = []
    real = ScratchformerForCausalLM.generate

    def spy(self, *args, **kwargs):
        output = real(self, *args, **kwargs)
        prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        calls.append({"config": kwargs.get("generation_config"), "prompt": prompt[0].tolist(),
                      "new": output[0, prompt.shape[1] :].tolist()})  # fmt: skip
        return output

    monkeypatch.setattr(ScratchformerForCausalLM, "generate", spy)
    return calls


def run_generate(lm_dir: str, calls: list, capsys, *flags: str, prompt: str = "the list") -> dict:
    assert generate.main(["--model", lm_dir, "--max-new-tokens", "12", *flags, prompt]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return calls[-1]


def greedy_tokens(lm_dir: str, prompt: str = "the list", n: int = 12) -> list[int]:
    model, tokenizer = AutoModelForCausalLM.from_pretrained(lm_dir), AutoTokenizer.from_pretrained(lm_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.slow
def test_generate_console_greedy_is_what_generate_gives(lm_dir, tmp_path):
    proc = console(["generate", "--model", lm_dir, "--temperature", "0", "--max-new-tokens", "6", "the list"],
                   cwd=tmp_path)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    continuation = tokenizer.decode(greedy_tokens(lm_dir, n=6), skip_special_tokens=True)
    assert proc.stdout == "the list" + continuation + "\n"


def test_sampling_flags_reach_the_generation_config(lm_dir, generated, capsys):
    call = run_generate(lm_dir, generated, capsys, "--temperature", "0.7", "--top-p", "0.8", "--top-k", "5",
                        "--repetition-penalty", "1.3", "--max-new-tokens", "7", "--seed", "0")  # fmt: skip
    config = call["config"]
    assert config.do_sample is True
    assert (config.temperature, config.top_p, config.top_k) == (0.7, 0.8, 5)
    assert (config.repetition_penalty, config.max_length - len(call["prompt"])) == (1.3, 7)
    assert len(call["new"]) == 7 or call["new"][-1] in (config.eos_token_id or [])


def test_sampling_depends_on_the_seed_and_greedy_does_not(lm_dir, generated, capsys):
    sample = {seed: run_generate(lm_dir, generated, capsys, "--temperature", "1", "--seed", seed)["new"]
              for seed in ("1", "2")}  # fmt: skip
    assert run_generate(lm_dir, generated, capsys, "--temperature", "1", "--seed", "1")["new"] == sample["1"]
    assert sample["1"] != sample["2"]  # sampling really samples
    assert sample["1"] != greedy_tokens(lm_dir)

    greedy = [run_generate(lm_dir, generated, capsys, "--temperature", "0", "--seed", seed) for seed in ("1", "2")]
    assert greedy[0]["new"] == greedy[1]["new"] == greedy_tokens(lm_dir)
    assert greedy[0]["config"].do_sample is False


# With the other knobs wide open (temperature 1.5, no top-p, no top-k), each of these alone must
# collapse sampling onto the likeliest token, whatever the seed.
@pytest.mark.parametrize("knob", [("--top-k", "1"), ("--top-p", "0.0001"), ("--temperature", "0.0001")],
                         ids=["top-k", "top-p", "temperature"])  # fmt: skip
def test_each_sampling_knob_changes_what_is_sampled(lm_dir, generated, capsys, knob):
    wide = {"--temperature": "1.5", "--top-p": "1.0", "--top-k": "0"}
    greedy = greedy_tokens(lm_dir)
    loose = [run_generate(lm_dir, generated, capsys, *sum(wide.items(), ()), "--seed", s)["new"] for s in "12"]
    assert any(tokens != greedy for tokens in loose)  # wide open, sampling leaves the greedy path
    narrowed = {**wide, knob[0]: knob[1]}
    for seed in "123":
        assert run_generate(lm_dir, generated, capsys, *sum(narrowed.items(), ()), "--seed", seed)["new"] == greedy


def test_repetition_penalty_changes_the_greedy_tokens(lm_dir, generated, capsys):
    plain = run_generate(lm_dir, generated, capsys, "--temperature", "0", "--max-new-tokens", "30")
    assert len(set(plain["new"])) < len(plain["new"])  # a random model repeats itself...
    penalized = run_generate(lm_dir, generated, capsys, "--temperature", "0", "--max-new-tokens", "30",
                             "--repetition-penalty", "1000")  # fmt: skip
    seen = penalized["prompt"] + penalized["new"]
    assert len(set(seen)) == len(seen)  # ... unless every token already seen is penalized
