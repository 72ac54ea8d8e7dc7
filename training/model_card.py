"""The README.md model card of a pretraining run's artifact: a pure function of the run's config and
results, so a card can be rendered (and tested) without training anything."""

from __future__ import annotations

from pathlib import Path


def render_model_card(config, cfg, run_config: dict, result: dict) -> str:
    """Markdown with the hub's YAML header: what the model is, how it was trained, how well it did,
    and how to load it. `config` is the model's `ScratchformerConfig`, `cfg` the `PretrainConfig`."""
    repo = cfg.push_to_hub or "path/to/model"
    title = cfg.push_to_hub or Path(cfg.output_dir).resolve().name
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
        (
            "training time",
            f"{_duration(result['train_seconds'])} on {run_config['num_processes']} process(es), "
            f"mixed precision {run_config['mixed_precision']}",
        ),
    ]
    kv = config.num_key_value_heads
    arch = [
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
    accum = run_config["gradient_accumulation_steps"]
    global_batch = cfg.per_device_train_batch_size * run_config["num_processes"] * accum
    training = [
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
            f"AdamW, betas ({cfg.adam_beta1}, {cfg.adam_beta2}), weight decay {cfg.weight_decay} "
            f"on matrices, gradient clipping {cfg.max_grad_norm}",
        ),
        (
            "learning rate",
            f"{run_config['learning_rate']:g} peak, {run_config['num_warmup_steps']} warmup steps, "
            f"cosine to {run_config['learning_rate'] * cfg.min_lr_ratio:g}",
        ),
        ("seed", str(cfg.seed)),
    ]
    curve = (
        "\n![Training curves: loss, learning rate, throughput](loss_curve.png)\n"
        if result.get("has_loss_curve")
        else ""
    )
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
"""


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else spec.format(value)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m}m {s}s" if hours else f"{m}m {s}s" if m else f"{s}s"
