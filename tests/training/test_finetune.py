"""`scratchformer finetune`: stock Trainer on our checkpoints, for every task, and its errors.

One tiny language model is "pretrained" once per module (causal-LM fine-tuning of a random model on
a synthetic corpus, which is itself the causal-lm test) and every other test starts from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import warnings
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer, TrainingArguments, pipeline

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training.finetune import main, parse_args
from scratchformer.training.library.finetuning import FinetuneArguments, finetune
from scratchformer.training.library.metrics import accuracy_and_macro_f1
from scratchformer.training.library.tasks import prepare_language_modeling

ANIMALS = ["cat", "dog", "fox", "owl"]
VERBS = ["chased", "saw", "followed", "ignored", "watched"]
ADJECTIVES = ["big", "small", "red", "old", "quiet", ""]
ENDINGS = ["", " today", " again", " at night", " in the park"]


def sentence(rng: random.Random) -> tuple[str, str]:
    """'the old fox watched the cat at night', labelled with its subject ('fox'). Both animals are in
    every sentence, so a bag of words cannot tell the label: the model has to read the order."""
    subject, obj = rng.sample(ANIMALS, 2)
    text = f"the {rng.choice(ADJECTIVES)} {subject} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {obj}"
    return " ".join(text.split()) + rng.choice(ENDINGS), subject


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def cpu_args(tmp, **overrides) -> TrainingArguments:
    """What the CLI would build, for a tiny CPU run: no tracker, no progress bars, no checkpoints."""
    fields = dict(
        output_dir=str(tmp / "checkpoints"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="epoch",
        logging_steps=5,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        seed=0,
    )
    return TrainingArguments(**{**fields, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    labelled = [sentence(rng) for _ in range(700)]
    corpus = [sentence(rng)[0] + ".\n" for _ in range(1500)]
    (tmp / "corpus.txt").write_text("".join(corpus))
    return {
        "dir": tmp,
        "corpus": str(tmp / "corpus.txt"),
        "train": write_jsonl(tmp / "train.jsonl", [{"text": t, "label": a} for t, a in labelled[:600]]),
        "validation": write_jsonl(tmp / "validation.jsonl", [{"text": t, "label": a} for t, a in labelled[600:]]),
        "texts": [t for t, _ in labelled],
    }


@pytest.fixture(scope="module")
def lm(data, tmp_path_factory):
    """A random tiny decoder, then causal-LM training on the synthetic corpus: our 'pretrained' model."""
    tmp = tmp_path_factory.mktemp("lm")
    tokenizer = train_bpe(data["texts"], vocab_size=320, show_progress=False, model_max_length=64)
    config = ScratchformerConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(tmp / "random")
    tokenizer.save_pretrained(tmp / "random")
    args = FinetuneArguments(model=str(tmp / "random"), task="causal-lm", train_files=[data["corpus"]], max_length=32)
    results = finetune(
        args,
        cpu_args(
            tmp, num_train_epochs=5, per_device_train_batch_size=16, learning_rate=5e-3, output_dir=str(tmp / "lm")
        ),
    )
    return {"dir": str(tmp / "lm"), "results": results}


def test_causal_lm_on_text_learns_and_writes_a_hub_directory(lm):
    results = lm["results"]
    # A uniform guess over 320 tokens costs ln(320) = 5.8 nats; the corpus is a small grammar.
    assert results["eval"]["eval_loss"] < 2.5
    assert results["eval"]["eval_perplexity"] == pytest.approx(2.718281828 ** results["eval"]["eval_loss"], rel=1e-6)
    out = lm["dir"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "modeling_scratchformer.py", "configuration_scratchformer.py", "README.md",
                 "finetune_results.json", "metrics.jsonl"):  # fmt: skip
        assert (Path(out) / name).is_file(), name
    assert not (Path(out) / "checkpoints").exists()  # not asked to keep them
    assert not (Path(out) / ".final.tmp").exists()  # the staging directory is gone once moved in
    card = open(f"{out}/README.md").read()
    assert "pipeline_tag: text-generation" in card and "validation perplexity" in card
    assert "## Where it runs" in card and "| TRL | ✓ |" in card  # doctor's table (tests/cli/test_doctor.py)


def test_classification_reaches_accuracy_and_pipelines_predict_it(lm, data, tmp_path, run_without_scratchformer):
    out = tmp_path / "clf"
    # Through the command line, with stock TrainingArguments flags in both spellings.
    argv = ["--model", lm["dir"], "--task", "classification", "--output_dir", str(out),
            "--train_files", data["train"], "--validation_files", data["validation"],
            "--num_train_epochs", "6", "--learning-rate", "2e-3", "--per_device_train_batch_size", "16",
            "--use_cpu", "--disable_tqdm", "true", "--seed", "0", "--early-stopping-patience", "3"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "finetune_results.json").read_text())
    assert results["eval"]["eval_accuracy"] >= 0.9, results["eval"]
    assert results["eval"]["eval_macro_f1"] >= 0.9
    assert results["labels"] == sorted(ANIMALS)
    assert results["new_weights"] == ["score.weight"]  # the head is new; everything else was loaded
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): a for i, a in enumerate(sorted(ANIMALS))}
    assert config["label2id"] == {a: i for i, a in enumerate(sorted(ANIMALS))}
    assert "AutoModelForSequenceClassification" in config["auto_map"]

    rng = random.Random(123)  # sentences neither training nor validation saw (most of them)
    fresh = [sentence(rng) for _ in range(30)]
    classify = pipeline("text-classification", model=str(out), device="cpu")
    predicted = [p["label"] for p in classify([t for t, _ in fresh])]
    assert sum(p == a for p, (_, a) in zip(predicted, fresh)) >= 27

    # The same directory with nothing but transformers: remote code, in a process that cannot import us.
    script = f"""
        import json
        from transformers import AutoTokenizer, pipeline
        tok = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        clf = pipeline("text-classification", model={str(out)!r}, tokenizer=tok, trust_remote_code=True, device="cpu")
        print(json.dumps([clf.model.__class__.__module__] + [p["label"] for p in clf({[t for t, _ in fresh]!r})]))
    """
    proc = run_without_scratchformer(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, *remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert module.startswith("transformers_modules.")  # the checkpoint's own copy of the model code
    assert remote == predicted


def test_gradient_accumulation_keeps_the_loss_scale(lm, data, tmp_path):
    """Trainer passes num_items_in_batch to our loss instead of dividing by the accumulation steps:
    4 micro-batches of 4 must log the loss of one batch of 16, not 4 times it."""
    losses = []
    for batch, accumulation in ((16, 1), (4, 4)):
        args = FinetuneArguments(model=lm["dir"], task="causal-lm",
                                 train_files=[data["corpus"]], max_length=32, validation_fraction=0.0)  # fmt: skip
        training = cpu_args(tmp_path / f"ga{accumulation}", max_steps=1, logging_steps=1, eval_strategy="no",
                            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)  # fmt: skip
        results = finetune(args, dataclasses.replace(training, output_dir=str(tmp_path / f"ga{accumulation}")))
        losses.append(next(r["loss"] for r in results["log_history"] if "loss" in r))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3), losses


def test_packed_documents_are_kept_apart_in_causal_lm_and_the_loss_is_per_document(lm, data, tmp_path):
    """JSON rows are documents: packed for causal-lm, each block carries position_ids restarting at
    every document, the collator labels each document's first token -100, and a step trains on that;
    --no_document_masking (and masked-lm, which attends both ways) joins them as before."""
    tokenizer = AutoTokenizer.from_pretrained(lm["dir"])
    docs = datasets.Dataset.from_dict({"text": data["texts"][:200]})
    kept, _, _ = prepare_language_modeling(FinetuneArguments(model=lm["dir"], task="causal-lm"), tokenizer, docs,
                                           None, 32)  # fmt: skip
    assert kept.column_names == ["input_ids", "position_ids"]
    for args in (FinetuneArguments(model=lm["dir"], task="causal-lm", document_masking=False),
                 FinetuneArguments(model=lm["dir"], task="masked-lm")):  # fmt: skip
        joined, _, _ = prepare_language_modeling(args, tokenizer, docs, None, 32)
        assert joined.column_names == ["input_ids"] and joined["input_ids"] == kept["input_ids"]
    args = FinetuneArguments(model=lm["dir"], task="causal-lm", train_files=[data["train"]], max_length=32,
                             validation_fraction=0.0)  # fmt: skip
    training = cpu_args(tmp_path, max_steps=2, logging_steps=1, eval_strategy="no", per_device_train_batch_size=8)
    results = finetune(args, dataclasses.replace(training, output_dir=str(tmp_path / "out")))
    assert all(math.isfinite(r["loss"]) for r in results["log_history"] if "loss" in r)


def test_chat_records_train_on_assistant_turns_only(lm, tmp_path):
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"name an animal {i}"},
                {"role": "assistant", "content": ANIMALS[i % 4]},
            ]
        }  # fmt: skip
        for i in range(40)
    ]
    train = write_jsonl(tmp_path / "chat.jsonl", chats)
    args = FinetuneArguments(model=lm["dir"], task="causal-lm", train_files=[train], assistant_only_loss=True)
    tokenizer = AutoTokenizer.from_pretrained(lm["dir"])
    import datasets

    raw = datasets.load_dataset("json", data_files=train, split="train")
    encoded, _, is_chat = prepare_language_modeling(args, tokenizer, raw, None, 64)
    assert is_chat
    row = encoded[0]
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert trained == "cat<|end|>"  # the reply and the token that closes the turn, nothing of the user's
    results = finetune(args, cpu_args(tmp_path, max_steps=3, eval_strategy="no", output_dir=str(tmp_path / "sft")))
    assert results["chat"] and results["assistant_only_loss"]
    assert "loss on assistant turns only" in (tmp_path / "sft" / "README.md").read_text()


def test_lora_trains_only_adapters_and_changes_the_output(lm, data, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model

    model = ScratchformerForCausalLM.from_pretrained(lm["dir"])
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM)
    )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    ids = AutoTokenizer.from_pretrained(lm["dir"])("the cat saw the dog", return_tensors="pt")["input_ids"]
    before = peft_model(input_ids=ids).logits.detach()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert not torch.allclose(peft_model(input_ids=ids).logits, before)

    # The same through `finetune --lora-r`: adapter saved alone, merged model saved for pipelines.
    args = FinetuneArguments(model=lm["dir"], task="classification",
                             train_files=[data["train"]], lora_r=4)  # fmt: skip
    results = finetune(args, cpu_args(tmp_path, max_steps=4, eval_strategy="no", output_dir=str(tmp_path / "lora")))
    assert results["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    out = pipeline("text-classification", model=str(tmp_path / "lora"), device="cpu")("the cat saw the dog")
    assert out[0]["label"] in ANIMALS


def test_a_classifier_can_be_fine_tuned_again_for_other_labels(lm, data, tmp_path):
    two = write_jsonl(tmp_path / "two.jsonl", [{"text": f"the {a} sat", "label": a} for a in ("cat", "dog") * 8])
    first = FinetuneArguments(model=lm["dir"], task="classification", train_files=[two],
                              validation_fraction=0.0)  # fmt: skip
    finetune(first, cpu_args(tmp_path, max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "two")))
    second = FinetuneArguments(model=str(tmp_path / "two"), task="classification",
                               train_files=[data["train"]], validation_fraction=0.0)  # fmt: skip
    results = finetune(second, cpu_args(tmp_path, max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "four")))
    assert results["labels"] == sorted(ANIMALS)
    assert results["new_weights"] == ["score.weight"]  # the 2-label head was replaced by a 4-label one


def test_a_crash_while_saving_leaves_no_half_written_model(lm, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", disk_full)  # after the weights were written
    two = write_jsonl(tmp_path / "two.jsonl", [{"text": f"the {a} sat", "label": a} for a in ("cat", "dog") * 8])
    args = FinetuneArguments(model=lm["dir"], task="classification", train_files=[two],
                             validation_fraction=0.0)  # fmt: skip
    with pytest.raises(OSError, match="No space"):
        finetune(args, cpu_args(tmp_path, max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "out")))
    top = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert not {"model.safetensors", "config.json", "README.md"} & set(top), top  # only in the hidden staging
    monkeypatch.undo()
    args.overwrite = True  # the rerun (told to replace what is there) clears the staging leftover
    results = finetune(args, cpu_args(tmp_path, max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "out")))
    assert results["labels"] == ["cat", "dog"] and not (tmp_path / "out" / ".final.tmp").exists()


def test_no_pin_memory_warning_without_a_gpu(lm, tmp_path):
    """Trainer pins batches by default, and torch warns once per run that pinning without an accelerator
    does nothing; on a CPU the run asks for no pinning, as the seq2seq command does."""
    two = write_jsonl(tmp_path / "two.jsonl", [{"text": f"the {a} sat", "label": a} for a in ("cat", "dog") * 8])
    args = FinetuneArguments(model=lm["dir"], task="classification", train_files=[two], validation_fraction=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # As the command runs it: no --use_cpu (which would turn pinning off by itself).
        finetune(args, cpu_args(tmp_path, max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "out"),
                                use_cpu=False))  # fmt: skip
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]


def test_hf_flags_parse_with_task_defaults(tmp_path):
    args, training = parse_args(["--model", "m", "--task", "classification", "--output_dir", str(tmp_path / "o"),
                                 "--num-train-epochs", "7", "--gradient_accumulation_steps", "2",
                                 "--lr_scheduler_type", "cosine", "--use_cpu"])  # fmt: skip
    assert args.task == "classification" and training.num_train_epochs == 7
    assert training.gradient_accumulation_steps == 2 and training.use_cpu
    # --output_dir is where the model goes (finetune() puts Trainer's checkpoints in OUTPUT_DIR/checkpoints).
    assert training.output_dir == str(tmp_path / "o")
    assert training.metric_for_best_model == "accuracy" and training.greater_is_better
    assert training.load_best_model_at_end and training.report_to == []
    _, lm_training = parse_args(["--model", "m", "--task", "causal-lm", "--output_dir", "o", "--output_dir",
                                "elsewhere"])
    assert lm_training.metric_for_best_model == "loss" and lm_training.output_dir == "elsewhere"


def test_accuracy_and_macro_f1_match_hand_computation():
    metrics = accuracy_and_macro_f1([0, 0, 1, 2], [0, 1, 1, 1])
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 0 fn 2 -> 2/4; class 2: tp 0 fp 1 fn 0 -> 0
    assert metrics["accuracy"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


# ----------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the fix, exit status 2, no traceback
# ----------------------------------------------------------------------------------------------


def run_cli(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # progress bars may come before it
    assert last.startswith("error: ")
    return last


def test_error_when_model_dir_is_not_a_model(tmp_path, capsys, data):
    base = ["--task", "classification", "--output_dir", str(tmp_path / "o"), "--train_files", data["train"]]
    assert "no such directory" in run_cli(["--model", str(tmp_path / "missing"), *base], capsys)
    (tmp_path / "empty").mkdir()
    assert "no config.json" in run_cli(["--model", str(tmp_path / "empty"), *base], capsys)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text('{"model_type": "not-a-model"}')
    err = run_cli(["--model", str(tmp_path / "foreign"), *base], capsys)
    assert "neither transformers nor scratchformer knows" in err
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"model_type": "scratchformer"}')
    assert "no weights" in run_cli(["--model", str(tmp_path / "cfg"), *base], capsys)


def test_error_for_one_class_and_for_labels_unseen_in_training(lm, tmp_path, capsys):
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"the cat {i}", "label": "cat"} for i in range(10)])
    err = run_cli(["--model", lm["dir"], "--task", "classification", "--output_dir", str(tmp_path / "o"),
                   "--train_files", one], capsys)  # fmt: skip
    assert "single class ('cat')" in err and "--label_column" in err

    two = write_jsonl(tmp_path / "two.jsonl", [{"text": f"the {a}", "label": a} for a in ("cat", "dog") * 5])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": f"the {a}", "label": a} for a in ("owl", "cat")])
    err = run_cli(["--model", lm["dir"], "--task", "classification", "--output_dir", str(tmp_path / "o"),
                   "--train_files", two, "--validation_files", val], capsys)  # fmt: skip
    assert "never seen in training ('owl')" in err

    err = run_cli(["--model", lm["dir"], "--task", "classification", "--output_dir", str(tmp_path / "o"),
                   "--train_files", two, "--label-column", "topic"], capsys)  # fmt: skip
    assert "no column 'topic'" in err and "'label'" in err
    assert "needs labelled examples" in run_cli(
        ["--model", lm["dir"], "--task", "classification", "--output_dir", str(tmp_path / "o")], capsys
    )


def test_error_for_a_task_the_architecture_cannot_serve(lm, tmp_path, capsys):
    err = run_cli(["--model", lm["dir"], "--task", "masked-lm", "--output_dir", str(tmp_path / "o")], capsys)
    assert "is a decoder" in err and "--bidirectional" in err
    encoder = tmp_path / "encoder"
    config = ScratchformerConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 is_causal=False)  # fmt: skip
    ScratchformerForCausalLM(ScratchformerConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4)).save_pretrained(encoder)  # fmt: skip
    config.save_pretrained(encoder)  # the same weights, declared an encoder
    AutoTokenizer.from_pretrained(lm["dir"]).save_pretrained(encoder)
    err = run_cli(["--model", str(encoder), "--task", "causal-lm", "--output_dir", str(tmp_path / "o")], capsys)
    assert "bidirectional encoder" in err and "--task masked-lm" in err
