"""The README.md model card of a pretraining run's artifact: a pure function of the run's config and
results, so a card can be rendered (and tested) without training anything."""

from __future__ import annotations

import re
from pathlib import Path

from .doctor import where_it_runs


def render_model_card(config, cfg, run_config: dict, result: dict) -> str:
    """Markdown with the hub's YAML header: what the model is, how it was trained, how well it did,
    and how to load it. `config` is the model's `ScratchformerConfig`, `cfg` the `PretrainConfig`."""
    repo = cfg.push_to_hub or "path/to/model"
    title = cfg.push_to_hub or Path(cfg.output_dir).resolve().name
    rows = _result_rows(run_config, result)
    arch = _architecture_rows(config, cfg, result)
    training = _training_rows(config, cfg, run_config)
    curve = (
        "\n![Training curves: loss, learning rate, throughput](loss_curve.png)\n"
        if result.get("has_loss_curve")
        else ""
    )
    if result.get("has_timeline"):
        curve += ("\n![How the attention heads formed: loss, head scores, logit lens and the attention of a fixed "
                  "probe over training](timeline.png)\n")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- scratchformer
- custom_code
- text-generation
---

# {title}

A {result["parameters"] / 1e6:.2f}M-parameter decoder-only transformer pretrained from scratch with
`scratchformer pretrain`. Bits per byte divides the validation loss by the UTF-8 bytes of the text
predicted, so it compares across tokenizers; perplexity is per token of this model's own vocabulary.

## Results

{_table(rows)}
{curve}
## Architecture

{_table(arch)}

## Training

{_table(training)}

Every flag of the run is in `training_args.json`.

## How to load

The model code ships in this directory (`configuration_scratchformer.py`, `modeling_scratchformer.py`
and the files it imports: `transformer_scratchformer.py`, `loss_scratchformer.py`, `checks_scratchformer.py`),
so stock transformers loads it with `trust_remote_code=True`; with the `scratchformer` package
installed and imported, no remote code is needed.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
inputs = tokenizer("The", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=100)[0], skip_special_tokens=True))
```

`generation_config.json` samples by default (temperature 0.8, top-k 50, top-p 0.95); pass
`do_sample=False` for greedy decoding.

{where_it_runs(config)}"""


def _result_rows(run_config: dict, result: dict) -> list[tuple[str, str]]:
    """How well the run did, and what it cost."""
    steps = f"{result['steps']:,} of {result['max_train_steps']:,}"
    if result.get("interrupted"):
        steps += " (stopped early by a signal)"
    ppl = result.get("eval_ppl")
    rows = [
        ("validation loss", _fmt(result.get("eval_loss"), "{:.4f} nats/token")),
        ("validation perplexity", _fmt(ppl, "{:.2f}")),
        ("validation bits per byte", _fmt(result.get("eval_bpb"), "{:.4f}")),
        ("training steps", steps),
        ("tokens seen", f"{result['tokens_seen']:,}"),
    ]
    if result.get("non_embedding_parameters"):  # cards rendered from results before 0.4 lack them
        rows += [
            ("tokens per parameter", f"{result['tokens_per_parameter']:.1f} (tokens seen / "
             f"{result['non_embedding_parameters']:,} non-embedding parameters; Chinchilla's optimum is ~20)"),
            ("training compute", f"{result['training_flops']:.3g} FLOPs (estimated as 6 x parameters x tokens)"),
        ]
    rows += [
        (
            "training time",
            f"{_duration(result['train_seconds'])} on {run_config['num_processes']} process(es), "
            f"mixed precision {run_config['mixed_precision']}",
        ),
    ]
    return rows


def _architecture_rows(config, cfg, result: dict) -> list[tuple[str, str]]:
    """What the model is: its family, size and the concept each config field chose."""
    kv = config.num_key_value_heads
    return [
        ("family (preset)", cfg.preset),
        ("parameters", f"{result['parameters']:,}"),
        ("layers x width", f"{config.num_hidden_layers} x {config.hidden_size}"),
        (
            "attention heads",
            f"{config.num_attention_heads} query, {kv} key/value"
            + (" (grouped-query)" if kv < config.num_attention_heads else ""),
        ),
        ("feed-forward", f"{config.mlp_type}, width {config.intermediate_size}"),
        ("positions", f"{config.position_embedding}, up to {config.max_position_embeddings} tokens"),
        ("normalization", f"{config.norm_type}, {config.norm_position}-norm"),
        ("vocabulary", f"{config.vocab_size:,} tokens"),
        ("tied embeddings", str(config.tie_word_embeddings).lower()),
    ]


def _training_rows(config, cfg, run_config: dict) -> list[tuple[str, str]]:
    """How it was trained: data, tokenizer, batch, optimizer, schedule, documents, seed."""
    accum = run_config["gradient_accumulation_steps"]
    global_batch = cfg.per_device_train_batch_size * run_config["num_processes"] * accum
    return [
        ("training data", run_config.get("train_data", "")),
        ("validation data", run_config.get("validation_data", "")),
        ("tokenizer", cfg.tokenizer or f"byte-level BPE trained on the training data ({config.vocab_size:,} tokens)"),
        (
            "batch",
            f"{global_batch} blocks of {run_config['block_size']} tokens "
            f"({cfg.per_device_train_batch_size} per device x {run_config['num_processes']} process(es) x {accum} "
            "accumulation)",
        ),
        (
            "optimizer",
            (f"Muon (linear layers inside the blocks{_but_query_key(cfg)}) with AdamW (embeddings, norms, biases"
             f"{', query and key projections' if _but_query_key(cfg) else ''}), AdamW "
             if getattr(cfg, "optimizer", "adamw") == "muon" else "AdamW, ")
            + f"betas ({cfg.adam_beta1}, {cfg.adam_beta2}), weight decay {cfg.weight_decay} "
            f"on matrices, gradient clipping {cfg.max_grad_norm}",
        ),
        (
            "learning rate",
            f"{run_config['learning_rate']:g} peak, {run_config['num_warmup_steps']} warmup steps, "
            + (f"held, then linear over the last {cfg.lr_decay_fraction:.0%} of the steps"
               if getattr(cfg, "lr_scheduler_type", "cosine") == "wsd" else "cosine")
            + f" to {run_config.get('min_lr', run_config['learning_rate'] * 0.1):g}",
        ),
        ("documents", "kept apart (position_ids restart at each document; no cross-document attention or target)"
         if run_config.get("document_masking_applied") else "joined into blocks under one causal mask"),
        ("seed", str(cfg.seed)),
    ]


def _but_query_key(cfg) -> str:
    """", but the query and key projections" when Muon left them to AdamW (the default since 0.4)."""
    return ", but the query and key projections" if getattr(cfg, "query_key_optimizer", "muon") == "adamw" else ""


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else spec.format(value)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m}m {s}s" if hours else f"{m}m {s}s" if m else f"{s}s"


def render_finetune_card(results: dict, base_card: str | None = None, where: str = "") -> str:
    """Markdown with the hub's YAML header: what the model was fine-tuned from, for what, on what,
    how well it does, how to use it with stock transformers, and `where` (doctor's "Where it runs"
    section, `doctor.where_it_runs`) where it runs."""
    task, pipeline_task = results["task"], results["pipeline_task"]
    name = Path(results["output_dir"]).resolve().name
    tags = ["scratchformer", "custom_code", pipeline_task] + (["lora"] if results["lora"] else [])
    rows = []
    entities = "eval_f1" in results["eval"]  # a BIO tagger: entity scores first, then the per-word ones
    for key, label, spec in (
        ("eval_f1", "validation entity F1 (micro, seqeval)", "{:.4f}"),
        ("eval_precision", "validation entity precision", "{:.4f}"),
        ("eval_recall", "validation entity recall", "{:.4f}"),
        ("eval_accuracy", "validation accuracy" + (" (per word)" if entities else ""), "{:.4f}"),
        ("eval_macro_f1", "validation macro-F1" + (" (per tag)" if entities else ""), "{:.4f}"),
        ("eval_loss", "validation loss", "{:.4f}"),
        ("eval_perplexity", "validation perplexity", "{:.2f}"),
    ):
        if key in results["eval"]:
            rows.append((label, spec.format(results["eval"][key])))
    if results["train_loss"] is not None:
        rows.append(("final training loss", f"{results['train_loss']:.4f}"))
    h = results["hyperparameters"]
    training = [
        ("base model", f"`{results['base_model']}`"),
        ("data", results["data"]),
        ("examples", f"{results['train_examples']} training, {results['validation_examples']} validation"),
        ("tokens per example", f"up to {results['max_length']}"),
        ("epochs", f"{h['num_train_epochs']:g}" if h["max_steps"] <= 0 else f"{h['max_steps']} steps"),
        ("learning rate", f"{h['learning_rate']:g} ({h['lr_scheduler_type']}), weight decay {h['weight_decay']:g}"),
        ("batch", f"{h['per_device_train_batch_size']} per device x {h['gradient_accumulation_steps']} accumulation"),
        ("seed", str(h["seed"])),
    ]
    if results["new_weights"]:
        training.append(("newly initialised", ", ".join(f"`{k}`" for k in results["new_weights"])))
    if results["lora"]:
        lora = results["lora"]
        training.append(
            (
                "LoRA",
                f"rank {lora['r']}, alpha {lora['alpha']:g} on {', '.join(lora['target_modules'])}; merged "
                "into the weights here, the adapter alone is in adapter/",
            )
        )
    if results["chat"]:
        training.append(
            (
                "format",
                "chat template; loss on "
                + ("assistant turns only" if results["assistant_only_loss"] else "every token"),
            )
        )
    labels = ""
    if results["labels"]:
        labels = "\n## Labels\n\n" + _table([(str(i), name) for i, name in enumerate(results["labels"])]) + "\n"
    example = {
        "text-classification": 'print(pipe("Some text to classify"))',
        "token-classification": 'print(pipe("Some text to tag", aggregation_strategy="first"))',
        "text-generation": 'print(pipe("Once upon a time", max_new_tokens=50)[0]["generated_text"])',
        "fill-mask": 'print(pipe("The capital of France is<mask>."))',
    }[pipeline_task]
    curve = "\n![Training and validation loss](loss_curve.png)\n" if results.get("has_loss_curve") else ""
    base = ""
    if base_card:
        body = re.sub(r"\A---\n.*?\n---\n", "", base_card, flags=re.S).strip()
        body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # its headings one level down, under ours
        body = re.sub(r"^!\[.*\]\(.*\)\n", "", body, flags=re.M)  # its images are not in this directory
        base = f"\n## The base model\n\nThe card of `{results['base_model']}`, as it was:\n\n{body}\n"
    return f"""---
library_name: transformers
pipeline_tag: {pipeline_task}
tags:
{"".join(f"- {t}{chr(10)}" for t in tags)}---

# {name}

`{results["base_model"]}` fine-tuned for {task} with `transformers.Trainer` (`scratchformer finetune`).

## Results

{_table(rows)}
{curve}{labels}
## Training

{_table(training)}

`finetune_results.json` holds every number above and Trainer's full log.

## How to use

The model code ships in this directory, so stock transformers runs it with `trust_remote_code=True`;
with the `scratchformer` package installed, no remote code is needed.

```python
from transformers import AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("path/to/{name}", trust_remote_code=True)
pipe = pipeline("{pipeline_task}", model="path/to/{name}", tokenizer=tokenizer, trust_remote_code=True)
{example}
```
{chr(10) + where if where else ""}{base}"""


def render_seq2seq_card(results: dict, where: str = "") -> str:
    """The card of an encoder-decoder trained by `scratchformer finetune --task seq2seq`: what it is
    (from scratch or from which checkpoint), how well it translates, how it was trained, how to run it,
    and `where` (doctor's "Where it runs" section) where it runs."""
    name = Path(results["output_dir"]).resolve().name
    m, h, scores = results["model"], results["hyperparameters"], results["eval"]
    origin = f"`{results['base_model']}` trained further" if results["base_model"] else "Trained from scratch"
    rows = []
    for key, label, spec in (
        ("exact_match", "validation exact match", "{:.2f} %"),
        ("bleu", "validation BLEU (corpus, 0-100)", "{:.2f}"),
        ("chrf", "validation chrF (corpus, 0-100)", "{:.2f}"),
        ("loss", "validation loss (label-smoothed, as trained)", "{:.4f}"),
    ):
        if key in scores:
            rows.append((label, spec.format(scores[key])))
    if not scores:
        rows.append(("validation", "not measured (no --validation_files)"))
    elif scores.get("bleu") == 0 and scores.get("exact_match", 0) > 0:
        rows.append(("why BLEU is 0", "BLEU needs 4-word matches; targets shorter than 4 words score 0 however "
                                      "many are right: read exact match and chrF"))  # fmt: skip
    rows.append(("final training loss", _fmt(results["train_loss"], "{:.4f}")))
    if results.get("generation"):
        g = results["generation"]
        rows.append(("decoding", "greedy" if g["num_beams"] == 1 else f"{g['num_beams']} beams"))
        if g.get("bleu"):  # sacrebleu's signature: how the BLEU above was computed, so it can be compared
            rows.append(("BLEU signature", f"`{g['bleu']}`"))
    arch = [
        ("parameters", f"{m['parameters']:,}"),
        ("layers", f"{m['encoder_layers']} encoder + {m['decoder_layers']} decoder, width {m['hidden_size']}"),
        ("attention heads", str(m["num_attention_heads"])),
        ("feed-forward", f"{m['mlp_type']}, width {m['intermediate_size']}"),
        ("positions", f"{m['position_embedding']}, up to {m['max_position_embeddings']} tokens"),
        ("normalization", f"{m['norm_type']}, {m['norm_position']}-norm"),
        (
            "vocabulary",
            f"{m['vocab_size']:,} tokens, one embedding for source, target and output"
            if m["tie_word_embeddings"]
            else f"{m['vocab_size']:,} tokens",
        ),
    ]
    steps = f"{results['train_steps']} optimizer steps ({results['epochs']:.3g} epochs)"
    training = [
        ("data", results["data"]),
        ("examples", f"{results['train_examples']} training, {results['validation_examples']} validation"),
        ("tokenizer", results["tokenizer"]),
        (
            "tokens per example",
            f"source up to {results['max_source_length']}, target up to {results['max_target_length']}",
        ),
        ("length", steps),
        ("learning rate", f"{h['learning_rate']:.3g} peak, {h['schedule']} ({h['warmup_steps']} warm-up steps)"),
        (
            "optimizer",
            f"AdamW, betas ({h['adam_beta1']}, {h['adam_beta2']}), eps {h['adam_epsilon']:g}, "
            f"weight decay {h['weight_decay']:g}",
        ),
        ("label smoothing", f"{h['label_smoothing_factor']:g}"),
        ("batch", f"{h['per_device_train_batch_size']} per device x {h['gradient_accumulation_steps']} accumulation"),
        ("seed", str(h["seed"])),
    ]
    curve = "\n![Training loss](loss_curve.png)\n" if results.get("has_loss_curve") else ""
    return f"""---
library_name: transformers
pipeline_tag: text2text-generation
tags:
- scratchformer
- custom_code
- encoder-decoder
- text2text-generation
---

# {name}

{origin} with `Seq2SeqTrainer` (`scratchformer finetune --task seq2seq`): a
{m["parameters"] / 1e6:.2f}M-parameter encoder-decoder in the shape of "Attention Is All You Need"
that maps a source text to a target text.

## Results

{_table(rows)}
{curve}
## Architecture

{_table(arch)}

## Training

{_table(training)}

`finetune_results.json` holds every number above and Trainer's full log (also in `metrics.jsonl`).

## How to use

The model code ships in this directory, so stock transformers runs it with `trust_remote_code=True`;
with the `scratchformer` package installed and imported, no remote code is needed.

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/{name}", trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained("path/to/{name}", trust_remote_code=True)
inputs = tokenizer(["a source text"], return_tensors="pt", padding=True)
outputs = model.generate(**inputs, max_new_tokens=64, num_beams=4)
print(tokenizer.batch_decode(outputs, skip_special_tokens=True))
```
{chr(10) + where if where else ""}"""
