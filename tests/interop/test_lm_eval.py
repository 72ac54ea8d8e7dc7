"""lm-eval's `hf` model on a real scratchformer checkpoint, checked against our own arithmetic.

Three local tasks (written to a temporary directory, no hub dataset): perplexity
(`loglikelihood_rolling`), multiple choice and `generate_until`. Every figure lm-eval reports is
recomputed here directly with the model, from the way it was pretrained: documents framed
`<s> text </s>`, so a text's log-likelihood is the sum of log p(token | <s>, earlier tokens).

What this pins down about BOS (our tokenizer prepends `<s>` to every text, as Llama's does):

- perplexity tasks need `add_bos_token=False`. lm-eval's rolling windows prepend `prefix_token_id`
  (`<s>`) to the document's tokens themselves, and with the default (the tokenizer decides) those
  tokens already start with `<s>`: it scores `<s><s>text`, `<s>` included as a predicted token;
- multiple-choice and generation tasks need the default. There lm-eval relies on the tokenizer
  for `<s>`, so `add_bos_token=False` scores and prompts the text with no `<s>` at all.

So no single setting is right for both kinds of task (lm-eval 0.4.13): run perplexity tasks with
`add_bos_token=False`, the others without it.

And about remote code: the `lm_eval` command never imports scratchformer, so even with scratchformer
installed the Auto classes do not know `model_type: scratchformer` and `trust_remote_code=True` is
required. In Python, `import scratchformer.modeling` before `simple_evaluate` makes it unnecessary.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

# Everything here is local; a tool that looked online would hang or fail on CI machines. Set before
# lm_eval (and with it datasets / huggingface_hub) is imported, since they read these at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import scratchformer.modeling  # noqa: E402,F401  (registers the Auto classes: no remote code in-process)

# Short on purpose: each fits one window of the tiny model's 128-token context, so lm-eval's rolling
# windows reduce to one forward and "log p(text | <s>)" is a single, exact quantity to compare.
DOCS = [
    "The for statement is used to iterate over the elements of a sequence.",
    "A list is a mutable sequence; its items can be replaced, added and removed.",
    "The import statement finds a module, loads it and binds a name in the local namespace.",
]

QUESTIONS = [
    {"question": "The for statement iterates over the elements of a", "choices": ["sequence", "banana", "volcano"],
     "label": 0},
    {"question": "A function is defined with the keyword", "choices": ["def", "class", "lambda"], "label": 0},
    {"question": "The import statement loads a", "choices": ["river", "module", "piano"], "label": 1},
    {"question": "An exception is raised with the statement", "choices": ["raise", "print", "pass"], "label": 0},
]

# Small and not a multiple of anything: a generation ended by this limit is easy to tell from one
# ended by a saved default length (transformers' 20, or a max_new_tokens in generation_config.json).
MAX_GEN_TOKS = 9
GEN_STOP = "<|end|>"

# lm-eval recomputes what we recompute, in float32 with another batching: agreement to 1e-4 relative
# is rounding, while the BOS mistakes below move a document's log-likelihood by whole nats.
RTOL = 1e-4


def _task_yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        # datasets' Arrow cache beside the data, in the test's temporary directory, not ~/.cache.
        f"  cache_dir: {data.parent / 'datasets_cache'}\n"
        "  data_files:\n"
        f"    test: {data}\n"
        "test_split: test\n"
        f"{body}"
        "metadata:\n"
        "  version: 1.0\n"
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Three lm-eval tasks over local jsonl files: sf_ppl, sf_mc, sf_gen."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    docs, questions = root / "docs.jsonl", root / "questions.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    # Metrics listed with their aggregation so lm-eval does not warn about guessing them.
    (root / "sf_ppl.yaml").write_text(_task_yaml("sf_ppl", docs, (
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n"
        "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
        "  - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
        "  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n"
    )))
    (root / "sf_mc.yaml").write_text(_task_yaml("sf_mc", questions, (
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )))
    (root / "sf_gen.yaml").write_text(_task_yaml("sf_gen", questions, (
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{choices[label]}}"\n'
        "generation_kwargs:\n"
        f'  until: ["{GEN_STOP}"]\n'
        f"  max_gen_toks: {MAX_GEN_TOKS}\n"
        "  do_sample: false\n"
        "metric_list:\n"
        "  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
    )))
    return root


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint) -> Path:
    return trained_checkpoint("llama")


@pytest.fixture(scope="module")
def model_and_tokenizer(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)


def evaluate(checkpoint: Path, task_dir: Path, tasks: list[str], **model_args) -> dict:
    """`lm_eval.simple_evaluate` as a user calls it: model "hf", a path, our task directory."""
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(checkpoint), **model_args},
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir)),
        device="cpu",
        batch_size=2,  # 2, not 1: lm-eval's padding of several requests into one forward is exercised
        bootstrap_iters=0,
        log_samples=True,
    )


@pytest.fixture(scope="module")
def default_run(checkpoint, task_dir) -> dict:
    """lm-eval's defaults: `add_bos_token` unset, so the tokenizer's own `<s>` is used."""
    return evaluate(checkpoint, task_dir, ["sf_ppl", "sf_mc", "sf_gen"])


@pytest.fixture(scope="module")
def no_bos_run(checkpoint, task_dir) -> dict:
    return evaluate(checkpoint, task_dir, ["sf_ppl", "sf_mc"], add_bos_token=False)


def samples(run: dict, task: str) -> list[dict]:
    return sorted(run["samples"][task], key=lambda s: s["doc_id"])


def loglikelihood(model, ids: list[int], first_scored: int) -> float:
    """sum over i >= first_scored of log p(ids[i] | ids[:i]): one forward, float64 accumulation."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(first_scored, len(ids)))


def assert_close(got: float, want: float, what: str) -> None:
    assert math.isclose(got, want, rel_tol=RTOL, abs_tol=RTOL), f"{what}: lm-eval {got!r}, direct {want!r}"


def test_perplexity_needs_add_bos_token_false(model_and_tokenizer, default_run, no_bos_run):
    model, tok = model_and_tokenizer
    max_length = model.config.max_position_embeddings
    direct, doubled = [], []
    for doc in DOCS:
        ids = tok(doc).input_ids
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert len(ids) <= max_length, "the document must fit one window for the direct figure to be exact"
        # What the model was trained to give: the text's tokens, each given <s> and what precedes it.
        direct.append(loglikelihood(model, ids, first_scored=1))
        # What lm-eval computes when the token list already starts with <s>: its rolling window puts
        # prefix_token_id (<s>) in front and scores every listed token, <s> included.
        doubled.append(loglikelihood(model, [tok.bos_token_id, *ids], first_scored=1))

    # add_bos_token=False: the token list has no <s>, the window's prefix supplies the one <s>.
    for sample, want in zip(samples(no_bos_run, "sf_ppl"), direct, strict=True):
        assert_close(sample["resps"][0][0], want, f"log-likelihood of {sample['doc']['text']!r}")
    # The aggregate metrics are functions of the same sums, by lm-eval's own word and byte counts.
    total = sum(direct)
    words = sum(len(re.split(r"\s+", d)) for d in DOCS)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    metrics = no_bos_run["results"]["sf_ppl"]
    assert_close(metrics["word_perplexity,none"], math.exp(-total / words), "word perplexity")
    assert_close(metrics["byte_perplexity,none"], math.exp(-total / n_bytes), "byte perplexity")
    assert_close(metrics["bits_per_byte,none"], -total / n_bytes / math.log(2), "bits per byte")

    # The default scores <s><s>text: exactly the doubled figure, and whole nats away from the right one.
    for sample, want, right in zip(samples(default_run, "sf_ppl"), doubled, direct, strict=True):
        assert_close(sample["resps"][0][0], want, "default settings vs <s><s>text")
        assert abs(sample["resps"][0][0] - right) > 0.5, "the default no longer doubles <s>: revisit the advice"
    default = default_run["results"]["sf_ppl"]
    assert default["word_perplexity,none"] > metrics["word_perplexity,none"] * 1.05
    print("lm-eval perplexity: direct log-likelihoods " + ", ".join(f"{x:.4f}" for x in direct)
          + "; add_bos_token=False " + ", ".join(f"{s['resps'][0][0]:.4f}" for s in samples(no_bos_run, "sf_ppl"))
          + "; default " + ", ".join(f"{s['resps'][0][0]:.4f}" for s in samples(default_run, "sf_ppl")))
    for name, run in (("add_bos_token=False", metrics), ("default", default)):
        print(f"  {name}: word ppl {run['word_perplexity,none']:.2f}, byte ppl {run['byte_perplexity,none']:.4f}, "
              f"bits/byte {run['bits_per_byte,none']:.4f}")
    print(f"  direct: word ppl {math.exp(-total / words):.2f}, byte ppl {math.exp(-total / n_bytes):.4f}, "
          f"bits/byte {-total / n_bytes / math.log(2):.4f}")


def test_multiple_choice_needs_the_default(model_and_tokenizer, default_run, no_bos_run):
    model, tok = model_and_tokenizer
    direct, without_bos = [], []
    for q in QUESTIONS:
        # lm-eval puts the target delimiter (a space) in front of each choice and scores the choice's
        # tokens given the context; the byte-level pre-tokenizer splits before " word", so tokenizing
        # the two parts separately gives the same tokens as tokenizing the whole.
        context = tok(q["question"]).input_ids
        bare = tok(q["question"], add_special_tokens=False).input_ids
        choices = [tok(" " + c, add_special_tokens=False).input_ids for c in q["choices"]]
        direct.append([loglikelihood(model, context + c, first_scored=len(context)) for c in choices])
        without_bos.append([loglikelihood(model, bare + c, first_scored=len(bare)) for c in choices])

    for sample, want in zip(samples(default_run, "sf_mc"), direct, strict=True):
        got = [resp[0][0] for resp in sample["resps"]]
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, f"choice log-likelihood for {sample['doc']['question']!r}")
    accuracy = sum(max(range(len(lls)), key=lls.__getitem__) == q["label"] for lls, q in zip(direct, QUESTIONS))
    assert default_run["results"]["sf_mc"]["acc,none"] == pytest.approx(accuracy / len(QUESTIONS))

    # add_bos_token=False drops <s> from the context altogether: a different (wrong) figure, which is
    # why the perplexity advice must not be applied to multiple-choice tasks.
    for sample, want, right in zip(samples(no_bos_run, "sf_mc"), without_bos, direct, strict=True):
        got = [resp[0][0] for resp in sample["resps"]]
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, "add_bos_token=False vs the context without <s>")
        assert max(abs(g - r) for g, r in zip(got, right)) > 1e-2


def test_generate_until_honours_max_gen_toks(checkpoint, model_and_tokenizer, default_run):
    # A saved max_new_tokens would win over the max_length lm-eval passes to generate(): none is saved.
    # The saved max_length (the context, for callers that name no length) gives way to lm-eval's.
    saved = json.loads((checkpoint / "generation_config.json").read_text())
    assert "max_new_tokens" not in saved, saved

    model, tok = model_and_tokenizer
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids(GEN_STOP)}
    for sample in samples(default_run, "sf_gen"):
        ids = tok(sample["doc"]["question"], return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_GEN_TOKS, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        # The premise: greedy decoding runs the full budget here, so only max_gen_toks can end it.
        assert len(new) == MAX_GEN_TOKS and not stops & set(new), new
        assert sample["resps"][0][0] == tok.decode(new, skip_special_tokens=True)


def _results_file(output_dir: Path) -> dict:
    [path] = output_dir.rglob("results_*.json")
    return json.loads(path.read_text())["results"]["sf_ppl"]


def test_command_line_and_trust_remote_code(checkpoint, task_dir, no_bos_run, tmp_path, run_without_scratchformer):
    def argv(out: Path, trust: bool) -> list[str]:
        model_args = f"pretrained={checkpoint},add_bos_token=False" + (",trust_remote_code=True" if trust else "")
        return ["--model", "hf", "--model_args", model_args, "--tasks", "sf_ppl", "--include_path", str(task_dir),
                "--device", "cpu", "--batch_size", "2", "--output_path", str(out)]

    # The console script installed beside this interpreter: the command a user types.
    lm_eval_cli = str(Path(sys.executable).with_name("lm_eval"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    # scratchformer installed, run without and with trust_remote_code, side by side (each is mostly
    # import time) while the run that cannot import scratchformer goes through the fixture.
    installed = {
        trust: subprocess.Popen([lm_eval_cli, *argv(tmp_path / f"installed-{trust}", trust)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for trust in (False, True)
    }
    blocked_dir = tmp_path / "blocked"
    blocked_dir.mkdir()
    try:
        blocked = run_without_scratchformer(
            "import sys\n"
            "from lm_eval.__main__ import cli_evaluate\n"
            f"sys.argv = ['lm_eval', *{argv(blocked_dir / 'out', True)!r}]\n"
            "cli_evaluate()\n",
            cwd=blocked_dir,
        )
        outputs = {trust: proc.communicate(timeout=300) for trust, proc in installed.items()}
    finally:  # a failure above must not leave the two runs behind
        for proc in installed.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    # Installed is not enough: the lm_eval process never imports scratchformer, so AutoConfig meets an
    # unknown model_type with an auto_map and asks for trust_remote_code=True.
    assert installed[False].returncode != 0
    assert "trust_remote_code=True" in outputs[False][1], outputs[False][1][-3000:]
    assert installed[True].returncode == 0, outputs[True][1][-3000:]
    assert blocked.returncode == 0, blocked.stderr[-3000:]

    # Same numbers from the command line (local classes or the checkpoint's own remote code) as in-process.
    want = no_bos_run["results"]["sf_ppl"]
    for got in (_results_file(tmp_path / "installed-True"), _results_file(blocked_dir / "out")):
        for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
            assert_close(got[metric], want[metric], f"command line {metric}")
    # `scratchformer doctor` gives this command line for the checkpoint.
    from scratchformer.training.library.doctor import config_verdicts, load_config

    [verdict] = [v for v in config_verdicts(load_config(checkpoint)) if v.rule == "lm_eval"]
    assert verdict.ok and "pretrained=DIR,trust_remote_code=True" in verdict.reason
    assert "add_bos_token=False for perplexity tasks" in verdict.reason
