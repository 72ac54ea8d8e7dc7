"""Stock `transformers.pipeline` on scratchformer checkpoints: text-generation (strings and chat),
text-classification, token-classification, fill-mask (encoder) and feature-extraction, with the
package installed and through remote code in a process that cannot import it.

The token classifier and the masked LM are trained here (a few seconds each) so the outputs can be
checked for being right, not only well formed.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoTokenizer, TrainingArguments

from scratchformer.modeling import (
    ScratchformerConfig,
    ScratchformerForCausalLM,
    ScratchformerForSequenceClassification,
)
from scratchformer.tokenization import train_bpe
from scratchformer.training.library.finetuning import FinetuneArguments, finetune
from scratchformer.training.library.tasks import align_word_labels

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
WORDS = ["saw", "met", "paid", "called", "the", "man", "with", "and", "later", "bought", "apples", "today"]
# Animal and sound: the animal is given away only by the word after it, so filling
# "the <mask> meows" right needs the right-hand context an encoder has.
SOUNDS = {"cat": "meows", "dog": "barks", "owl": "hoots", "cow": "moos"}


def ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Words tagged NAME (capitalised), NUM (digits) or O."""
    words, tags = [], []
    for _ in range(rng.randint(4, 9)):
        kind = rng.random()
        if kind < 0.25:
            words.append(rng.choice(NAMES)), tags.append("NAME")
        elif kind < 0.45:
            words.append(str(rng.randint(0, 999))), tags.append("NUM")
        else:
            words.append(rng.choice(WORDS)), tags.append("O")
    return words, tags


def animal_sentence(rng: random.Random) -> str:
    animal = rng.choice(list(SOUNDS))
    return f"the {animal} {SOUNDS[animal]}."


def cpu_args(tmp, **overrides) -> TrainingArguments:
    fields = dict(output_dir=str(tmp / "checkpoints"), use_cpu=True, report_to="none", disable_tqdm=True,
                  save_strategy="no", eval_strategy="no", logging_steps=50, seed=0)  # fmt: skip
    return TrainingArguments(**{**fields, **overrides})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Directories for each pipeline: {"clm", "clf", "ner", "mlm"}."""
    tmp = tmp_path_factory.mktemp("pipelines")
    rng = random.Random(0)
    ner = [ner_sentence(rng) for _ in range(400)]
    animals = [animal_sentence(rng) for _ in range(600)]
    tokenizer = train_bpe([" ".join(w) for w, _ in ner] + animals, vocab_size=320, show_progress=False,
                          model_max_length=64)  # fmt: skip
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    dirs = {name: tmp / name for name in ("clm", "clf", "gpt2")}
    ScratchformerForCausalLM(ScratchformerConfig(**config)).save_pretrained(dirs["clm"])
    # The encoder starts from a GPT-2-style decoder: with learned positions, attending one token to
    # the right is found within a few hundred steps at this size (rotary ones plateau longer).
    ScratchformerForCausalLM(ScratchformerConfig.from_preset("gpt2", **config)).save_pretrained(dirs["gpt2"])
    ScratchformerForSequenceClassification(
        ScratchformerConfig(**config, id2label={0: "negative", 1: "positive"})
    ).save_pretrained(dirs["clf"])
    for d in dirs.values():
        tokenizer.save_pretrained(d)

    (tmp / "ner.jsonl").write_text("".join(json.dumps({"tokens": w, "ner_tags": t}) + "\n" for w, t in ner))
    dirs["ner"] = tmp / "ner"
    finetune(
        FinetuneArguments(
            model=str(dirs["clm"]),
            task="token-classification",
            train_files=[str(tmp / "ner.jsonl")],
            validation_fraction=0.0,
        ),  # fmt: skip
        cpu_args(
            tmp, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=5e-3, output_dir=str(dirs["ner"])
        ),
    )
    (tmp / "animals.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in animals))
    dirs["mlm"] = tmp / "mlm"
    finetune(  # a decoder turned into an encoder, then taught to fill blanks, one sentence per example
        FinetuneArguments(
            model=str(dirs["gpt2"]),
            task="masked-lm",
            bidirectional=True,
            train_files=[str(tmp / "animals.jsonl")],
            packing=False,
            validation_fraction=0.0,
            mlm_probability=0.3,
        ),  # fmt: skip
        cpu_args(
            tmp, num_train_epochs=8, per_device_train_batch_size=16, learning_rate=5e-3, output_dir=str(dirs["mlm"])
        ),
    )
    return {k: str(v) for k, v in dirs.items()}


# Run in-process (package installed) and in a subprocess (remote code only); both print the same JSON.
PIPELINE_SCRIPT = """
import json
import numpy as np
from transformers import AutoTokenizer, pipeline

def dump(x):  # numpy scalars (pipeline scores) as plain numbers
    return json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v))

def run(dirs, **remote):
    def pipe(task, name, **kw):
        tok = AutoTokenizer.from_pretrained(dirs[name], **remote)
        return pipeline(task, model=dirs[name], tokenizer=tok, device="cpu", **remote, **kw)
    generate = pipe("text-generation", "clm")
    text = generate("Alice saw", max_new_tokens=5, do_sample=False)
    chat = generate([{"role": "user", "content": "Hi Bob"}], max_new_tokens=5, do_sample=False)
    features = pipe("feature-extraction", "clm")("Alice saw 12 apples")
    return {
        "text": text,
        "chat": chat,
        "classify": pipe("text-classification", "clf")(["Alice paid 3", "the man"]),
        "tag": pipe("token-classification", "ner", aggregation_strategy="first")("Carol paid 17 apples and Bob"),
        "fill": pipe("fill-mask", "mlm")(["the<mask> meows.", "the<mask> barks."], top_k=3),
        "features_shape": list(np.asarray(features).shape),
        "model_module": generate.model.__class__.__module__,
    }
"""


@pytest.fixture(scope="module")
def local_outputs(models):
    namespace: dict = {}
    exec(PIPELINE_SCRIPT, namespace)
    return json.loads(namespace["dump"](namespace["run"](models)))


def test_text_generation_takes_strings_and_chat_messages(local_outputs):
    (text,) = local_outputs["text"]
    assert text["generated_text"].startswith("Alice saw") and len(text["generated_text"]) > len("Alice saw")
    (chat,) = local_outputs["chat"]
    conversation = chat["generated_text"]
    assert [m["role"] for m in conversation] == ["user", "assistant"]
    assert conversation[0]["content"] == "Hi Bob" and isinstance(conversation[1]["content"], str)


def test_text_classification_returns_a_label_and_score_per_text(local_outputs):
    assert len(local_outputs["classify"]) == 2
    for item in local_outputs["classify"]:
        assert item["label"] in ("negative", "positive") and 0.5 <= item["score"] <= 1.0


def test_token_classification_tags_words(local_outputs):
    # A vocabulary this small splits " 17" into " ", "1", "7": the pipeline's word heuristic makes the
    # lone space a "word" of its own, whose prediction was never trained (its label is -100). Real
    # vocabularies rarely do this (about 3% of word starts with the default corpus at 8k tokens).
    tagged = [(e["word"].strip(), e["entity_group"]) for e in local_outputs["tag"] if e["word"].strip()]
    assert tagged == [("Carol", "NAME"), ("17", "NUM"), ("Bob", "NAME")]


def test_fill_mask_ranks_the_masked_token_from_the_right_context(local_outputs):
    meows, barks = local_outputs["fill"]
    assert meows[0]["token_str"].strip() == "cat", meows
    assert meows[0]["sequence"] == "the cat meows."
    assert barks[0]["token_str"].strip() == "dog", barks
    for candidates in (meows, barks):
        scores = [c["score"] for c in candidates]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_feature_extraction_returns_one_vector_per_token(local_outputs, models):
    n_tokens = len(AutoTokenizer.from_pretrained(models["clm"])("Alice saw 12 apples")["input_ids"])
    assert local_outputs["features_shape"] == [1, n_tokens, 32]


def test_installed_package_needs_no_remote_code(local_outputs):
    assert local_outputs["model_module"] == "scratchformer.modeling.modeling_scratchformer"


def test_every_pipeline_gives_the_same_answers_through_remote_code(local_outputs, models, tmp_path,
                                                                   run_without_scratchformer):  # fmt: skip
    script = PIPELINE_SCRIPT + f"\nprint(dump(run({models!r}, trust_remote_code=True)))\n"
    proc = run_without_scratchformer(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert remote.pop("model_module").startswith("transformers_modules.")
    local = {k: v for k, v in local_outputs.items() if k != "model_module"}
    assert remote.keys() == local.keys()
    for key in local:
        assert _rounded(remote[key]) == _rounded(local[key]), key


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def test_word_labels_go_to_the_first_subtoken_that_spells_the_word(models):
    tokenizer = AutoTokenizer.from_pretrained(models["clm"])
    words = ["Carol", "zebra,", "paid", "17"]
    aligned = align_word_labels(tokenizer, words, [1, 2, 3, 4], max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(aligned["input_ids"])
    labelled = [(tok, label) for tok, label in zip(tokens, aligned["labels"]) if label != -100]
    assert [label for _, label in labelled] == [1, 2, 3, 4]  # one label per word, in order
    # Each labelled token is where the word starts (its first letter, past any lone space token),
    # and every other token of the word is -100.
    for (tok, _), word in zip(labelled, words):
        text = tokenizer.convert_tokens_to_string([tok]).strip()
        assert text and word.startswith(text), (tok, word)
    assert aligned["labels"][0] == -100 and tokens[0] == tokenizer.bos_token
    assert len(tokens) > len(words) + 1  # 'zebra,' is not one token: its other pieces were skipped
    # The words keep the spaces of running text, so they tokenize as the sentence does.
    assert aligned["input_ids"] == tokenizer(" ".join(words))["input_ids"]
