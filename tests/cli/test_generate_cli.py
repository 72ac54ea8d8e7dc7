"""`scratchformer generate`: streamed output, prompts from arguments or stdin, chat, and its errors."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from scratchformer.modeling import (
    ScratchformerConfig,
    ScratchformerForCausalLM,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
)
from scratchformer.tokenization import END_ID, EOS_ID, train_bpe
from scratchformer.training import generate
from scratchformer.training.library import generation

TEXT = ["the cat sat on the mat", "the dog ate the bone", "a bird sang in the tree"] * 20


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    tokenizer = train_bpe(TEXT, vocab_size=280, show_progress=False, model_max_length=64)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    models = {
        "lm": ScratchformerForCausalLM(ScratchformerConfig(**sizes)),
        "learned": ScratchformerForCausalLM(ScratchformerConfig.from_preset("gpt2", **sizes)),
        "encoder": ScratchformerForMaskedLM(ScratchformerConfig(**sizes, is_causal=False)),
        "classifier": ScratchformerForSequenceClassification(ScratchformerConfig(**sizes, num_labels=2)),
    }
    for name, model in models.items():
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    return {name: str(tmp / name) for name in models}


def run(argv, capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = generate.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def greedy(model_dir: str, prompt: str, n: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_greedy_output_is_the_prompt_then_what_generate_gives(dirs, capsys):
    code, out, err = run(["--model", dirs["lm"], "--max-new-tokens", "8", "--temperature", "0", "the cat"], capsys)
    assert code == 0, err
    assert out == "the cat" + greedy(dirs["lm"], "the cat", 8) + "\n"


def test_tokens_are_streamed_one_at_a_time(dirs, capsys, monkeypatch):
    calls = []
    original = TextStreamer.put
    monkeypatch.setattr(TextStreamer, "put", lambda self, value: (calls.append(value.numel()), original(self, value)))
    code, _, err = run(["--model", dirs["lm"], "--max-new-tokens", "6", "--temperature", "0", "the"], capsys)
    assert code == 0, err
    assert calls[1:] == [1] * 6  # the prompt once, then every new token as soon as it exists


def test_prompts_come_from_stdin_one_per_line(dirs, capsys, monkeypatch):
    argv = ["--model", dirs["lm"], "--max-new-tokens", "4", "--temperature", "0"]
    code, out, err = run(argv, capsys, stdin="the cat\n\nthe dog\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out == "".join(f"{p}{greedy(dirs['lm'], p, 4)}\n" for p in ("the cat", "the dog"))  # blank line skipped


def test_sampling_is_reproducible_with_a_seed(dirs, capsys):
    argv = ["--model", dirs["lm"], "--max-new-tokens", "10", "--temperature", "1.2", "--top-p", "0.9", "--seed", "3"]
    first, second = (run([*argv, "a bird"], capsys)[1] for _ in range(2))
    assert first == second and first.startswith("a bird")


def test_chat_formats_turns_and_stops_at_end_of_turn(dirs, capsys, monkeypatch):
    model, tokenizer = generation.load(dirs["lm"])
    args = generate.build_parser().parse_args(["--model", dirs["lm"], "--chat"])
    gen = generation.generation_config(model, tokenizer, chat=args.chat)  # the library takes plain arguments
    assert set(gen.eos_token_id) == {EOS_ID, END_ID}  # </s> and <|end|> both end a reply

    prompts = []
    real = generation.generate_one
    monkeypatch.setattr(
        generation, "generate_one", lambda m, t, g, ids, **kw: (prompts.append(t.decode(ids[0])), real(m, t, g, ids))[1]
    )
    argv = ["--model", dirs["lm"], "--chat", "--system", "be brief", "--max-new-tokens", "3", "--temperature", "0"]
    code, _, err = run(argv, capsys, stdin="hello\nagain\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert prompts[0] == "<s><|system|>\nbe brief<|end|><|user|>\nhello<|end|><|assistant|>\n"
    # The second turn carries the whole conversation so far, the model's first reply included.
    assert prompts[1].startswith(prompts[0]) and prompts[1].endswith("<|user|>\nagain<|end|><|assistant|>\n")


def test_long_prompts_are_cut_to_fit_learned_positions(dirs, capsys):
    long_prompt = " ".join(["the cat sat on the mat"] * 20)  # well over the 64 positions
    code, out, err = run(["--model", dirs["learned"], "--max-new-tokens", "10", long_prompt], capsys)
    assert code == 0, err
    assert "prompt cut to its last 54 tokens" in err


# -- errors: one line, exit status 2 ---------------------------------------------------------------

# Each case's own message, most of a sentence: a bare flag name or a word like "model" also appears in
# argparse's usage text and in the path itself, so it would pass whatever went wrong.
EMPTY = "error: empty prompt: give the text to continue, as an argument"


@pytest.mark.parametrize(
    "argv, stdin, message",
    [
        (["MODEL", ""], None, EMPTY),
        (["MODEL", "   "], None, EMPTY),
        (["MODEL"], "\n  \n", EMPTY),
        (["MODEL", "--temperature", "-1", "x"], None, "error: --temperature=-1.0 must be 0 (greedy) or positive"),
        (["MODEL", "--max-new-tokens", "0", "x"], None, "error: --max_new_tokens=0 must be at least 1"),
        (["MODEL", "--top-p", "1.5", "x"], None, "error: --top_p=1.5 must be in (0, 1]"),
        (["learned", "--max-new-tokens", "64", "x"], None,
         "does not fit this model's context of 64 positions; ask for fewer than 64"),
        (["encoder", "x"], None,
         "is a bidirectional encoder (is_causal=False): it fills in blanks but cannot continue text. "
         "Use pipeline('fill-mask', model=...)"),
        (["classifier", "x"], None,
         "holds a ScratchformerForSequenceClassification, not a language model, so it cannot generate text. "
         "Use it with pipeline('text-classification', model=...)"),
        (["missing", "x"], None, "/nonexistent/model: no such directory here"),
    ],
)  # fmt: skip
def test_errors_name_the_fix(dirs, capsys, monkeypatch, argv, stdin, message):
    name, *rest = argv
    model = dirs["lm"] if name == "MODEL" else dirs.get(name, "/nonexistent/model")
    code, _, err = run(["--model", model, *rest], capsys, stdin=stdin, monkeypatch=monkeypatch)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def test_a_saved_max_length_meets_max_new_tokens_without_a_warning(dirs, tmp_path, capsys):
    """Pretraining saves max_length = the context; --max_new_tokens is the command's own limit, and
    transformers would warn at every prompt that both are set."""
    import shutil

    from transformers import GenerationConfig

    shutil.copytree(dirs["learned"], tmp_path / "m")
    saved = GenerationConfig.from_pretrained(tmp_path / "m")
    saved.max_length = 64
    saved.save_pretrained(tmp_path / "m")
    import logging

    class Record(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages: list[str] = []
    logger = logging.getLogger("transformers.generation.utils")  # transformers' loggers do not propagate
    handler = Record()
    logger.addHandler(handler)
    try:
        code, out, err = run(["--model", str(tmp_path / "m"), "--max-new-tokens", "8", "--temperature", "0",
                              "the cat"], capsys)  # fmt: skip
    finally:
        logger.removeHandler(handler)
    assert code == 0, err
    assert out == "the cat" + greedy(str(tmp_path / "m"), "the cat", 8) + "\n"
    assert not [m for m in messages if "seem to have been set" in m], messages
