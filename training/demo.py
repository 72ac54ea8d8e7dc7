"""`scratchformer demo`: the whole story in one command, offline, in minutes on a laptop CPU.

    scratchformer demo                          # Python's help topics (embedded), a 1.3M-parameter model
    scratchformer demo --quick                  # the same story at toy size (what the tests run)
    scratchformer demo --train_files my.txt --size small --max_train_steps 2000 --output_dir my-demo

1. train a byte-level BPE tokenizer on the text;
2. pretrain a small decoder on it (`scratchformer.training.library.pretraining.train`, with its progress bar);
3. reload the saved directory in a fresh Python process that *cannot* import scratchformer, with
   nothing but transformers and `trust_remote_code=True`, and generate text;
4. fine-tune a classifier from the pretrained model with `transformers.Trainer`, on a labelled set
   made from the same text: is this passage as written, or have the letters inside its words been
   scrambled ("Tihs is a pgasase")?
5. classify fresh passages with `pipeline("text-classification")`, again in a process without
   scratchformer;
6. say where every artefact and plot is.

The classification task needs no labels from the user and works on any text. It is chosen to be
learnable in the seconds the demo has: scrambled words break into sub-word pieces the tokenizer
rarely saw, which a small model picks up within one epoch (0.99 validation accuracy measured with
--quick on the default corpus). Shuffling the *order* of the words instead, which only a model that
knows the language's grammar can spot, stayed near chance (0.45-0.63) at these sizes and budgets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.layout import RunLayout

MARKER = ".scratchformer-demo"  # marks a directory the demo made, so a rerun may replace it
WINDOW_WORDS = 12  # words per passage in the classification task
LABELS = ("original", "scrambled")


@dataclass(frozen=True)
class Plan:
    """The sizes of one demo run."""

    size: str  # a `scratchformer pretrain --size`
    vocab_size: int
    steps: int  # pretraining optimizer steps
    classifier_train: int  # labelled passages for fine-tuning
    classifier_validation: int
    classifier_epochs: float
    classifier_lr: float
    max_new_tokens: int


PLANS = {
    # ~1 minute on 2 CPU cores: every stage runs, the models are small and briefly trained.
    # (classifier lr 2e-3: accuracy 0.932 mean over seeds 0-3 against 0.915 at 1e-3, after the default
    # recipe's tiny pretraining)
    "quick": Plan("tiny", 1024, 150, 800, 200, 2, 2e-3, 24),
    # a few minutes on 2 CPU cores: the model writes recognisable (if odd) Python-doc English.
    "default": Plan("mini", 4096, 400, 3000, 400, 2, 1e-3, 60),
}
DEFAULT_PROMPTS = ("The for statement", "A list is", "Exceptions")
# The attention picture's text: long enough (about 30 tokens) for heads' habits to show.
ATTENTION_TEXT = (
    "The assert statement raises an AssertionError when its expression is false, and the for statement "
    "iterates over the items of a sequence."
)
ATTENTION_WORDS = 24  # with --train_files: a passage of this many words from the user's own text


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer demo",
        description="Tokenizer, pretraining, remote-code reload and generation, Trainer fine-tuning and "
        "pipeline classification, end to end on the embedded corpus (or your own text), offline.",
    )
    p.add("--output_dir", default="demo-out", metavar="DIR", help="where everything is written (default: ./demo-out)")
    p.add("--train_files", nargs="+", metavar="F", help="your own text (.txt, .jsonl, .csv, .parquet)")
    p.add("--size", choices=("tiny", "mini", "small", "base"), help="model size (default: mini)")
    p.add("--preset", choices=("llama", "gpt2", "paper"), default="llama", help="architecture family")
    p.add("--max_train_steps", type=int, help="pretraining steps (default: 400; 150 with --quick)")
    p.add("--prompt", action="append", help="a prompt to continue (repeatable)")
    p.add("--quick", action="store_true",
          help="the same story at toy size: tiny model, 150 steps (timings: benchmarks/results/demo_full.md)")
    p.add("--seed", type=int, default=0, help="random seed")
    return p


@command("demo")
def main(argv: list[str]) -> int:
    result = run_demo(build_parser().parse(argv))
    return 130 if result.get("interrupted") else 0  # 130: the shell's code for "stopped by a signal"


class DemoError(UserError):
    """A stage failed; the message says which and why."""


def run_demo(args: argparse.Namespace) -> dict:
    """Every stage, printing as it goes; returns the numbers and paths (also in OUT/demo.json)."""
    plan = PLANS["quick" if args.quick else "default"]
    size = args.size or plan.size
    steps = args.max_train_steps or plan.steps
    if steps < 1:
        raise DemoError("--max_train_steps must be at least 1")
    # Absolute: the fresh processes run with OUT as their working directory (see
    # _run_without_scratchformer), where a relative --output_dir such as the default would not resolve.
    out = _prepare_out(Path(args.output_dir).resolve())
    with _quiet_libraries():
        return _run_stages(args, plan, size, steps, out)


def _run_stages(args: argparse.Namespace, plan: Plan, size: str, steps: int, out: Path) -> dict:
    started = time.perf_counter()
    default = "Python's help topics (pydoc_data, embedded in every CPython)"
    source = ", ".join(args.train_files) if args.train_files else default
    _banner(f"scratchformer demo: {source} -> {out}/")
    # The demo's folder holds a tokenizer, a pretraining run and a fine-tuning run, each laid out as usual.
    tokenizer_dir = RunLayout(out).tokenizer
    pretrain_run, classifier_run = RunLayout(out / "pretrain"), RunLayout(out / "classifier")

    # 1. Tokenizer
    from scratchformer.training.library.pretraining import SIZES
    from scratchformer.training.library.tokenizer_training import format_stats, train_tokenizer

    block_size = SIZES[size]["block_size"]
    _stage(1, f"Train a byte-level BPE tokenizer ({plan.vocab_size} tokens)")
    clock = time.perf_counter()
    tok_stats = train_tokenizer(
        tokenizer_dir, files=args.train_files, vocab_size=plan.vocab_size, max_length=block_size, overwrite=True
    )
    print(textwrap.indent(format_stats(tok_stats), "    "))
    _done(clock)

    # 2. Pretraining
    from scratchformer.training.library.pretraining import PretrainConfig, train
    from scratchformer.training.viz.curves import draw_run_curves

    s = SIZES[size]
    _stage(
        2,
        f"Pretrain a {args.preset}-style decoder, size {size} ({s['num_hidden_layers']} layers x "
        f"{s['hidden_size']} wide, context {block_size}), {steps} steps",
    )
    clock = time.perf_counter()
    pre = train(
        PretrainConfig(
            output_dir=str(pretrain_run.root),
            tokenizer=str(tokenizer_dir),
            train_files=args.train_files,
            preset=args.preset,
            size=size,
            max_train_steps=steps,
            eval_steps=max(1, steps // 2),
            save_steps=steps,
            logging_steps=max(1, min(10, steps // 10)),
            max_eval_samples=64,
            report_to="none",
            seed=args.seed,
        ),
        draw_curves=draw_run_curves,
    )
    model_dir = Path(pre["output_dir"])
    if pre["interrupted"]:  # Ctrl-C or SIGTERM: stop here, not carry on with a part-trained model
        print(f"\n    stopped by a signal at step {pre['steps']} of {steps}; the checkpoint is in {pretrain_run.root}. "
              f"Continue it with: scratchformer pretrain --output_dir {pretrain_run.root} --resume", file=sys.stderr)
        return {"interrupted": True, "pretrain": pre}
    print(
        f"    {pre['parameters'] / 1e6:.2f}M parameters, {pre['tokens_seen']:,} tokens seen; validation loss "
        f"{pre['eval_loss']:.3f} (perplexity {pre['eval_ppl']:.1f}, {pre['eval_bpb']:.3f} bits per byte)"
    )
    print(f"    saved hub-style to {model_dir}/ (weights, config, tokenizer, model card, the model's own .py files)")
    _done(clock)

    # 3. Fresh process, transformers only
    prompts = args.prompt or (
        list(DEFAULT_PROMPTS) if not args.train_files else _prompts_from(args.train_files, args.seed)
    )
    _stage(3, "Reload it in a fresh Python that cannot import scratchformer, and generate")
    print(textwrap.indent(GENERATE_SNIPPET.format(model=model_dir, prompt=prompts[0]), "    | "))
    clock = time.perf_counter()
    _run_without_scratchformer(
        GENERATE_SCRIPT.format(model=str(model_dir), prompts=prompts, n=plan.max_new_tokens, seed=args.seed), out
    )
    _done(clock)

    # 4. Fine-tuning with Trainer
    _stage(4, "Fine-tune a classifier with transformers.Trainer: is a passage as written, or scrambled?")
    clock = time.perf_counter()
    train_file, validation_file, n_train, examples = write_scrambled_data(
        args.train_files, out / "classifier-data", plan.classifier_train, plan.classifier_validation, args.seed
    )
    print(
        f"    {n_train} training / {len(examples)} validation passages of {WINDOW_WORDS} words in "
        f"{train_file.parent}/; in half, the inner letters of each word are scrambled, e.g."
    )
    for label in LABELS:
        print(f"      {label:>9}: {next(t for t, y in examples if y == label)}")
    clf = _finetune(model_dir, classifier_run.root, train_file, validation_file, plan, args.seed)
    accuracy = clf["eval"]["eval_accuracy"]
    print(
        f"    validation accuracy {accuracy:.3f}, macro-F1 {clf['eval']['eval_macro_f1']:.3f} (chance: 0.5); "
        f"only the new head ({', '.join(clf['new_weights'])}) started from scratch"
    )
    _done(clock)

    # 5. pipeline(), again without scratchformer
    _stage(5, 'Classify held-out passages with pipeline("text-classification"), in a fresh process')
    clock = time.perf_counter()
    by_label = [[e for e in examples[::-1] if e[1] == label][:3] for label in LABELS]  # not the ones shown above
    shown = [e for pair in zip(*by_label) for e in pair]
    _run_without_scratchformer(
        CLASSIFY_SCRIPT.format(model=str(classifier_run.root), examples=[list(e) for e in shown]), out
    )
    _done(clock)

    # 6. Where things are
    attention_text = ATTENTION_TEXT if not args.train_files else _passage_from(args.train_files, args.seed)
    plots, head_note = _attention_plot(model_dir, attention_text, out)
    total = time.perf_counter() - started
    _stage(6, f"Done in {total:.0f} s. Where things are:")
    rows = [
        ("tokenizer", tokenizer_dir),
        ("pretrained model", model_dir),
        ("  its model card", RunLayout(model_dir).card),
        ("  loss curve", pretrain_run.loss_curve),
        ("  training log", pretrain_run.metrics),
        ("classifier", classifier_run.root),
        ("  its model card", classifier_run.card),
        ("  loss curve", classifier_run.loss_curve),
        ("classifier data", out / "classifier-data"),
        *plots,
    ]
    for name, path in rows:
        if path.exists():
            print(f"    {name:<18} {path}")
    if head_note:
        print(f"    {head_note}")
    print(textwrap.indent(NEXT_STEPS.format(model=model_dir, clf=classifier_run.root, prompt=prompts[0],
                                                    text=attention_text), "    "))

    summary = {
        "out": str(out),
        "seconds": round(total, 1),
        "tokenizer": {k: tok_stats[k] for k in ("vocab_size", "bytes_per_token")},
        "pretrain": {k: pre.get(k) for k in ("output_dir", "parameters", "steps", "eval_loss", "eval_ppl", "eval_bpb")},
        "classifier": {
            "dir": str(classifier_run.root),
            **{k: clf["eval"][k] for k in ("eval_accuracy", "eval_macro_f1")},
        },
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------------------------
# The classification task: original or scrambled?
# ----------------------------------------------------------------------------------------------


def scramble(word: str, rng: random.Random) -> str:
    """The inner letters of a word of four or more letters in a random order, first and last kept
    ("passage" -> "pgasase"); other words (short ones, numbers, code) unchanged."""
    if len(word) < 4 or not word.isalpha():
        return word
    inner = list(word[1:-1])
    rng.shuffle(inner)
    return word[0] + "".join(inner) + word[-1]


def scrambled_examples(words: Sequence[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `n` passages of `WINDOW_WORDS` consecutive words, half as written ("original"), half
    with every word scrambled ("scrambled"). Each passage appears once, in one form only, so the
    classifier cannot learn by matching a passage with its twin."""
    windows = [words[i : i + WINDOW_WORDS] for i in range(0, len(words) - WINDOW_WORDS + 1, WINDOW_WORDS)]
    rng.shuffle(windows)
    examples = []
    for window in windows:
        if len(examples) == n:
            break
        if len(examples) % 2 == 0:
            examples.append((" ".join(window), LABELS[0]))
            continue
        changed = [scramble(w, rng) for w in window]
        if changed != list(window):  # a passage of short words cannot be scrambled: skip it
            examples.append((" ".join(changed), LABELS[1]))
    rng.shuffle(examples)
    return examples


def write_scrambled_data(
    files: Sequence[str] | None, out: Path, n_train: int, n_validation: int, seed: int
) -> tuple[Path, Path, int, list[tuple[str, str]]]:
    """Training passages from the training text, validation passages from text held out of it
    (the default corpus's validation topics, or the last tenth of the user's files), written as
    JSON lines with "text" and "label". Returns the two paths, the number of training passages
    and the validation examples."""
    train_words, validation_words = _split_words(files)
    rng = random.Random(seed)
    train = scrambled_examples(train_words, n_train, rng)
    validation = scrambled_examples(validation_words, n_validation, rng)
    if len(train) < 20 or len(validation) < 10:
        raise DemoError(
            f"the text gives only {len(train)} training and {len(validation)} validation passages of "
            f"{WINDOW_WORDS} words for the classifier; give more text (a few thousand words at least)"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", train), ("validation", validation)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1], len(train), validation


def _split_words(files: Sequence[str] | None) -> tuple[list[str], list[str]]:
    from scratchformer.training.library.data import default_corpus, iter_text_batches, load_text_dataset

    if not files:
        return _words(default_corpus("train")), _words(default_corpus("validation"))
    texts = [t for batch in iter_text_batches(load_text_dataset(files=list(files))) for t in batch]
    words = _words(texts)
    cut = len(words) * 9 // 10
    return words[:cut], words[cut:]


def _words(texts: Iterable[str]) -> list[str]:
    return [w for text in texts for w in text.split()]


def _passage_from(files: Sequence[str], seed: int) -> str:
    """A passage of the user's own text (validation words when there are enough) for the attention picture."""
    words = _split_words(files)[1] or _split_words(files)[0]
    start = random.Random(seed).randrange(max(1, len(words) - ATTENTION_WORDS))
    return " ".join(words[start : start + ATTENTION_WORDS]) or "The"


def _prompts_from(files: Sequence[str], seed: int) -> list[str]:
    """Three openings (the first four words of passages) from the user's own text."""
    words = _split_words(files)[1] or _split_words(files)[0]
    rng = random.Random(seed)
    starts = [rng.randrange(max(1, len(words) - 4)) for _ in range(3)]
    return [" ".join(words[i : i + 4]) for i in starts] or ["The"]


# ----------------------------------------------------------------------------------------------
# Stages that run elsewhere
# ----------------------------------------------------------------------------------------------


def _finetune(model_dir: Path, out: Path, train_file: Path, validation_file: Path, plan: Plan, seed: int) -> dict:
    from transformers import TrainingArguments

    from scratchformer.training.library.finetuning import FinetuneArguments, finetune
    from scratchformer.training.viz.curves import draw_run_curves

    args = FinetuneArguments(
        model=str(model_dir),
        task="classification",
        train_files=[str(train_file)],
        validation_files=[str(validation_file)],
        overwrite=True,
    )
    training = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=plan.classifier_epochs,
        learning_rate=plan.classifier_lr,
        warmup_steps=0.1,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=1,
        report_to="none",
        seed=seed,
    )
    return finetune(args, training, draw_curves=draw_run_curves)


GENERATE_SNIPPET = """\
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{model}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{model}", trust_remote_code=True)
model.generate(**tokenizer({prompt!r}, return_tensors="pt"), max_new_tokens=...)"""

# The scripts run in a fresh interpreter where `import scratchformer` fails: whatever they load
# comes from the checkpoint directory's own files, through transformers' remote-code machinery.
BLOCK_SCRATCHFORMER = """\
import sys
sys.modules["scratchformer"] = None  # any import of scratchformer now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
"""

GENERATE_SCRIPT = (
    BLOCK_SCRATCHFORMER
    + """
tokenizer = AutoTokenizer.from_pretrained({model!r}, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained({model!r}, trust_remote_code=True)
print(f"    loaded {{type(model).__name__}} from {{type(model).__module__}}")
torch.manual_seed({seed})
for prompt in {prompts!r}:
    inputs = tokenizer(prompt, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens={n}, do_sample=True, temperature=0.8, top_k=50)
    text = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"    {{prompt!r}} -> {{(prompt + text)!r}}")
"""
)

CLASSIFY_SCRIPT = (
    BLOCK_SCRATCHFORMER
    + """
tokenizer = AutoTokenizer.from_pretrained({model!r}, trust_remote_code=True)
classify = pipeline("text-classification", model={model!r}, tokenizer=tokenizer, trust_remote_code=True)
print(f"    pipeline(\\"text-classification\\", model=...) -> {{type(classify.model).__module__}}")
examples = {examples!r}
for (text, truth), guess in zip(examples, classify([t for t, _ in examples])):
    mark = "right" if guess["label"] == truth else "WRONG"
    print(f"    {{guess['label']:>9}} {{guess['score']:.2f}}  ({{mark}})  {{text}}")
"""
)

NEXT_STEPS = """
Next:
  scratchformer generate --model {model} "{prompt}"
  scratchformer inspect attention --model {model} "{text}" --output_file attention.png
  scratchformer inspect heads --model {model}
  scratchformer finetune --model {model} --task classification --train_files your.jsonl --output_dir your-classifier
  python -c "from transformers import pipeline; \\
    print(pipeline('text-classification', model='{clf}', trust_remote_code=True)('Tihs is sbrmalced'))\""""


def _run_without_scratchformer(code: str, cwd: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    # cwd is the output directory, never the repository, so no bare `modeling/` folder is importable.
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise DemoError(f"the fresh process failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _attention_plot(model_dir: Path, text: str, out: Path) -> tuple[list[tuple[str, Path]], str | None]:
    """Every head of the pretrained model on `text`, and the head that reads the previous token most,
    drawn alone (when matplotlib is installed); a line naming that head and its score."""
    from scratchformer.training.library.head_scores import chance_previous_token, previous_token_scores

    try:
        from scratchformer.training.viz.attention import attention_maps, plot_attention
        from scratchformer.training.viz.common import load_model, save

        model, tokenizer = load_model(str(model_dir))
        tokens, maps = attention_maps(model, tokenizer, text)
        scores = previous_token_scores(maps)
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        grid = save(plot_attention(tokens, maps), out / "attention.png")
        title = f"layer {layer}, head {head}: {scores[layer, head]:.2f} of its weight on the previous token"
        single = save(plot_attention(tokens, maps, layer=layer, head=head, title=title), out / "attention_head.png")
    except ImportError:  # no matplotlib: the other artefacts stand on their own
        return [], None
    note = (f"layer {layer}, head {head} reads the previous token: {scores[layer, head]:.2f} of its attention on "
            f"{len(tokens)} tokens (a uniform head: {chance_previous_token(len(tokens)):.2f}); "
            "scratchformer inspect heads scores every head")  # fmt: skip
    return [("attention map", Path(grid)), ("  one head alone", Path(single))], note


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _prepare_out(out: Path) -> Path:
    """A fresh OUT. A directory an earlier demo made is replaced; anything else is left alone."""
    if out.exists():
        if not out.is_dir():
            raise DemoError(f"--output_dir {out} is a file")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"--output_dir {out} exists and was not made by the demo; choose another --output_dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `scratchformer demo`; a rerun replaces this directory\n")
    return out


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Keep the story readable: the progress bars that matter (tokenizer, pretraining, Trainer)
    stay; load/save bars, dataset-building bars and advisory warnings go, until the demo ends."""
    import datasets
    from transformers.utils import logging as hf_logging

    accelerate_logger = logging.getLogger("accelerate")
    saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), datasets.are_progress_bars_disabled(),
             accelerate_logger.level)  # fmt: skip
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    accelerate_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(saved[0])
        if saved[1]:
            hf_logging.enable_progress_bar()
        if not saved[2]:
            datasets.enable_progress_bars()
        accelerate_logger.setLevel(saved[3])


def _banner(text: str) -> None:
    print(text, flush=True)


def _stage(n: int, text: str) -> None:
    print(f"\n[{n}/6] {text}", flush=True)


def _done(clock: float) -> None:
    print(f"    ({time.perf_counter() - clock:.1f} s)", flush=True)


__all__ = ["PLANS", "build_parser", "main", "run_demo", "scramble", "scrambled_examples", "write_scrambled_data"]

if __name__ == "__main__":
    raise SystemExit(main())
