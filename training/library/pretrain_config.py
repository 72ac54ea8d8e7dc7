"""What a pretraining run is asked to do: `PretrainConfig` (every flag of `scratchformer pretrain`),
the named model sizes, the checks that turn inconsistent flags into a clear error before anything
slow runs, and `RunPlan`, the flags resolved once into the numbers the run follows.
`pretraining.train` is the run itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from .data import BUILDERS
from .model_dir import require_dir
from .optim import OPTIMIZERS, SCHEDULES

# Named model sizes; any explicit size flag overrides its entry. "tiny" is for tests and smoke
# runs, "mini" is nanoGPT's CPU Shakespeare recipe (minutes on a laptop), "small" its GPU recipe,
# "base" GPT-2 small's shape.
EMBEDDED_CORPUS_STEPS = 400  # the demo's budget: perplexity ~44 at size mini (`run_length`)
# With no --eval_steps: about this many evaluations a run, so that the validation curve of a short run
# has a shape (two points showed neither overfitting nor a phase change), at most this far apart.
EVALUATIONS_PER_RUN, EVALUATIONS_MAX_APART = 20, 200

# Each size's peak learning rate under the default recipe (Muon, q/k under AdamW, WSD), measured on
# Tiny Shakespeare at pretrain's default batch, 16 blocks of the size's context
# (benchmarks/results/lr_sizes.md): the best of a doubling grid was 8e-3 at width 64 (tiny) and 4e-3 at
# width 128 (mini), i.e. lr = 0.512 / hidden_size, the 1/width scaling muP gives Adam-style updates of
# hidden matrices. Smaller batches want less (nanoGPT's 12 x 64 tokens: 2e-3, recipes_shakespeare.md).
# small keeps the rule: swept for 150 steps, it did 0.007 bits/byte better at twice it, inside the seed
# spread; base, too slow to sweep on 2 CPU cores, takes it unmeasured
# (tests/training/test_pretrain_units.py holds SIZES to the rule and to the measurements).
LR_TIMES_WIDTH = 0.512

SIZES: dict[str, dict] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, block_size=128,
                 learning_rate=LR_TIMES_WIDTH / 64),
    "mini": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, block_size=256,
                 learning_rate=LR_TIMES_WIDTH / 128),
    "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, block_size=256,
                  learning_rate=LR_TIMES_WIDTH / 384),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, block_size=1024,
                 learning_rate=LR_TIMES_WIDTH / 768),
}


@dataclass
class PretrainConfig:
    """Every flag of `scratchformer pretrain`; `None` means "derived" (see each help)."""

    # -- data --
    train_files: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Local training files, all of one type: {', '.join(sorted(BUILDERS))}. .txt files "
            "are running text (read by line, joined back exactly); other rows are documents, "
            "framed as <s> text </s>. With no data flag: the embedded default corpus."
        },
    )
    validation_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local validation files. Default: the dataset's validation split, or a held-out part of "
            "the training text."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hugging Face hub dataset (needs network) or a local dataset folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split: str = field(
        default="validation", metadata={"help": "Split of --dataset_name used for validation, when it has one."}
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training rows held out for validation when none is given: random "
            "documents (seeded by --seed), or the last lines of .txt files (nanoGPT's split)."
        },
    )
    document_masking: bool = field(
        default=True,
        metadata={
            "help": "Keep documents apart in the packed blocks: position_ids restart at each document, no token "
            "attends to another document and the step from one document's </s> to the next one's <s> is no "
            "target (benchmarks/results/document_masking.md). --no_document_masking: one causal mask over the "
            "whole block. Rows of .txt files are running text, not documents: no effect there."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the corpus lazily (no cache, flat memory) for corpora larger than disk or RAM, resumable "
            "exactly where a checkpoint stopped. Needs a run length: --max_train_steps, --max_train_tokens or "
            "--tokens_per_parameter."
        },
    )
    synthetic_data: Literal["in_context_markov"] | None = field(
        default=None,
        metadata={
            "help": "Train on generated rows instead of text. in_context_markov: Markov chains over the letters A-M "
            "whose transitions are drawn afresh for each row, so only a look-up in the row itself (an induction "
            "head) predicts them: the phase-change recipe of the README (library/synthetic.py). The tokenizer is "
            "still trained on the text, or given with --tokenizer."
        },
    )
    streaming_holdout_documents: int = field(
        default=1000, metadata={"help": "With --streaming and no validation split: hold out this many leading rows."}
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "With --streaming: blocks in the shuffle buffer."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many validation blocks (unset: all)."}
    )

    # -- tokenizer --
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "A tokenizer directory or hub name. Default: train a byte-level BPE on the training "
            "text into OUTPUT_DIR/tokenizer first."
        },
    )
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size when training the tokenizer."})

    # -- model --
    preset: Literal["paper", "gpt2", "llama", "qwen3"] = field(
        default="llama",
        metadata={"help": "Architecture family: the 2017 paper, GPT-2, Llama or Qwen3 (Llama's block with QK-norm)."},
    )
    size: Literal["tiny", "mini", "small", "base"] = field(
        default="mini",
        metadata={
            "help": "Model size: "
            + "; ".join(
                f"{k}={v['num_hidden_layers']}x{v['hidden_size']}, {v['num_attention_heads']} heads, context "
                f"{v['block_size']}, lr {v['learning_rate']:.3g}"
                for k, v in SIZES.items()
            )
            + ". Size flags override it."
        },
    )
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Layers (unset: from --size)."})
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (unset: from --size)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Query heads (unset: from --size)."})
    num_key_value_heads: int | None = field(
        default=None, metadata={"help": "Key/value heads; fewer than the query heads is grouped-query attention."}
    )
    intermediate_size: int | None = field(
        default=None, metadata={"help": "Feed-forward width (unset: from the MLP type)."}
    )
    block_size: int | None = field(default=None, metadata={"help": "Training context in tokens (unset: from --size)."})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Longest sequence the model accepts (unset: --block_size)."}
    )
    position_embedding: Literal["sinusoidal", "learned", "rope"] | None = field(
        default=None, metadata={"help": "Where positions come from (unset: the preset's)."}
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on embeddings, residual branches and attention (unset: the preset's)."},
    )
    qk_norm: bool = field(
        default=False,
        metadata={"help": "RMSNorm on each head's queries and keys before attention (QK-norm, as OLMo 2 and Qwen3; "
                  "--preset qwen3 has it)."},
    )

    # -- optimization --
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    total_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Blocks per optimizer step over all processes; sets --gradient_accumulation_steps to "
            "total / (per-device batch x processes), which must divide exactly."
        },
    )
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate (unset: from --size)."})
    # The defaults are the recipe that measured best (benchmarks/results/recipes_shakespeare.md).
    optimizer: Literal["adamw", "muon"] = field(
        default="muon",
        metadata={
            "help": "muon: torch.optim.Muon on the linear layers inside the blocks but the query and key "
            "projections, AdamW on those, embeddings, the LM head, norms and biases, one --learning_rate for both "
            "(Muon's update scaled to AdamW's RMS). adamw: AdamW on every parameter.",
        },
    )
    query_key_optimizer: Literal["adamw", "muon"] = field(
        default="adamw",
        metadata={
            "help": "With --optimizer muon, the optimizer of the attention's query and key projections, whose "
            "norms set how sharp attention can be: adamw lets them grow; under muon (the default before 0.4) "
            "they grow slowly and short runs end with nearly uniform attention.",
        },
    )
    lr_scheduler_type: Literal["cosine", "wsd"] = field(
        default="wsd",
        metadata={
            "help": "After the warmup: wsd (warmup-stable-decay): the peak held, then a linear decay over the last "
            "--lr_decay_fraction of the steps; or cosine down to learning_rate x --min_lr_ratio.",
            "aliases": ["--lr_scheduler", "--lr-scheduler"],
        },
    )
    lr_decay_fraction: float = field(
        default=0.4, metadata={"help": "With --lr_scheduler_type wsd: the fraction of the steps spent decaying."}
    )
    min_lr_ratio: float | None = field(
        default=None,
        metadata={"help": "The schedule ends at learning_rate x this (unset: 0.1 for cosine, 0 for wsd)."},
    )
    num_warmup_steps: int | None = field(
        default=None, metadata={"help": "Linear warmup steps (unset: 5%% of the training steps)."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "Decoupled weight decay, on matrices only."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    num_train_epochs: float | None = field(default=None, metadata={
        "help": f"Passes over the training blocks (default: 1; the embedded corpus: {EMBEDDED_CORPUS_STEPS} steps)."})
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps; overrides --num_train_epochs."}
    )
    max_train_tokens: int | None = field(
        default=None,
        metadata={"help": "Train on this many tokens (rounded up to whole optimizer steps); overrides "
                  "--num_train_epochs."},
    )
    tokens_per_parameter: float | None = field(
        default=None,
        metadata={"help": "Train on this many tokens per non-embedding parameter (Chinchilla's compute-optimal "
                  "ratio is about 20); overrides --num_train_epochs."},
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Autocast precision (unset: accelerate's config, else no)."}
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (inductor)."})
    fused_lm_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the LM head and the loss together, chunk by chunk, so the full logits never exist "
            "(faster, less memory). A choice of this loop: the saved model's config keeps it off."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, ~30%% slower."}
    )
    seed: int = field(default=42, metadata={"help": "Seeds weights, data order and dropout."})
    on_nonfinite: Literal["stop", "skip"] = field(
        default="stop",
        metadata={
            "help": "A NaN/inf training loss: `stop` the run (the last good checkpoint is kept), or `skip` that "
            "optimizer step's update and go on (costs one host sync per micro-batch)."
        },
    )
    ddp_timeout: int = field(
        default=1800,
        metadata={
            "help": "Seconds a process waits for the others in a collective operation before failing (several "
            "processes only): a process that died then stops the run instead of hanging it forever."
        },
    )

    # -- output --
    output_dir: str = field(default="runs/pretrain", metadata={"help": "Where the run writes everything."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr, tokens/s every this many steps."})
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate every this many steps (and at the end). Unset: about 20 evaluations a run, at "
            "most 200 steps apart, so a short run's validation curve shows where it starts to overfit."
        },
    )
    mechanism_metrics: bool | None = field(
        default=None,
        metadata={
            "help": "At each evaluation, also score every attention head on fixed probes (previous-token, "
            "first-token, induction, entropy; the in-context score), the logit lens per layer, and save the "
            "probe's attention maps (attention_snapshots.jsonl), for `scratchformer inspect timeline`. "
            "Unset: on for models of at most 64 heads in all (sizes tiny, mini, small)."
        },
    )
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every this many steps (and at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep this many newest checkpoints (0: keep all)."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a checkpoint: a step-N directory, or `auto` (also plain --resume) for "
            "the newest complete one in OUTPUT_DIR/checkpoints.",
            "nargs": "?",
            "const": "auto",
            "aliases": ["--resume_from_checkpoint", "--resume-from-checkpoint"],
        },
    )
    report_to: str = field(
        default="auto",
        metadata={
            "help": "Trackers, comma-separated (tensorboard, wandb, ...), `none`, or `auto`: tensorboard "
            "when installed."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Upload the final model directory to this hub repository (needs a login)."}
    )
    max_shard_size: str = field(default="2GB", metadata={"help": "Split model.safetensors into shards of this size."})

    def __post_init__(self) -> None:
        for key in ("train_files", "validation_files"):  # train(PretrainConfig(train_files="a.txt")) reads well too
            if isinstance(getattr(self, key), (str, os.PathLike)):
                setattr(self, key, [str(getattr(self, key))])



def run_length(cfg: PretrainConfig, steps_per_epoch: int | None, tokens_per_step: int = 1,
               non_embedding_parameters: int = 0) -> int:  # fmt: skip
    """Optimizer steps of the run: --max_train_steps; or the steps that reach --max_train_tokens, or
    --tokens_per_parameter x the non-embedding parameters (rounded up to whole steps); else
    --num_train_epochs passes over the data. With none, one pass over the user's data, but on the
    embedded corpus (0.46 MB: one pass is ~25 steps at size mini and leaves perplexity ~1300, word
    salad) the demo's budget, which reaches ~44."""
    if cfg.max_train_steps:
        return cfg.max_train_steps
    tokens = planned_tokens(cfg, non_embedding_parameters)
    if tokens is not None:
        return max(1, math.ceil(tokens / tokens_per_step))
    if cfg.num_train_epochs is None and not (cfg.train_files or cfg.dataset_name):
        return EMBEDDED_CORPUS_STEPS
    return max(1, math.ceil((cfg.num_train_epochs or 1.0) * steps_per_epoch))



def planned_tokens(cfg: PretrainConfig, non_embedding_parameters: int) -> int | None:
    """The training tokens a compute-sized run asks for (None: the run is sized in steps or epochs)."""
    if cfg.max_train_tokens is not None:
        return cfg.max_train_tokens
    if cfg.tokens_per_parameter is not None:
        return math.ceil(cfg.tokens_per_parameter * non_embedding_parameters)
    return None


def non_embedding_parameters(model) -> int:
    """Parameters outside the token and position tables (Kaplan et al.'s N, what compute scales
    with): the embedding is a lookup, and a tied LM head shares its weight."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def training_flops(non_embedding: int, tokens: int) -> float:
    """The usual estimate of training compute: 6 N D (2 N D forward, 4 N D backward; Kaplan et al.
    2020, Chinchilla), attention's own term left out as the estimate does."""
    return 6.0 * non_embedding * tokens


def eval_interval(cfg: PretrainConfig, max_steps: int) -> int:
    """Steps between evaluations: --eval_steps, else about 20 a run, at most 200 steps apart."""
    if cfg.eval_steps is not None:
        return cfg.eval_steps
    return max(1, min(EVALUATIONS_MAX_APART, math.ceil(max_steps / EVALUATIONS_PER_RUN)))


def model_sizes(cfg: PretrainConfig) -> dict:
    """The size preset with every explicitly given flag laid over it."""
    sizes = {**SIZES[cfg.size]}
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "block_size", "learning_rate"):
        if getattr(cfg, key) is not None:
            sizes[key] = getattr(cfg, key)
    sizes["max_position_embeddings"] = cfg.max_position_embeddings or sizes["block_size"]
    return sizes



def check_config(cfg: PretrainConfig) -> None:
    """Fail on inconsistent flags before anything slow runs."""
    if cfg.size not in SIZES:
        raise ValueError(f"--size {cfg.size!r} is not one of {', '.join(SIZES)}")
    counts = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "vocab_size",
        "shuffle_buffer_size",
        "total_batch_size",
        "max_train_steps",
        "max_train_tokens",
        "max_eval_samples",
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "block_size",
    )
    for key in counts:
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"--{key} must be a positive integer, got {value}")
    if cfg.save_total_limit < 0:
        raise ValueError(f"--save_total_limit must be 0 (keep all) or more, got {cfg.save_total_limit}")
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {cfg.learning_rate}")
    for key in ("optimizer", "query_key_optimizer"):
        if getattr(cfg, key) not in OPTIMIZERS:
            raise ValueError(f"--{key} {getattr(cfg, key)!r} is not one of {', '.join(OPTIMIZERS)}")
    if cfg.lr_scheduler_type not in SCHEDULES:
        raise ValueError(f"--lr_scheduler_type {cfg.lr_scheduler_type!r} is not one of {', '.join(SCHEDULES)}")
    if not 0.0 < cfg.lr_decay_fraction <= 1.0:
        raise ValueError(f"--lr_decay_fraction must be in (0, 1], got {cfg.lr_decay_fraction}")
    if cfg.min_lr_ratio is not None and not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ValueError(f"--min_lr_ratio must be between 0 and 1, got {cfg.min_lr_ratio}")
    if not 0.0 < cfg.validation_fraction < 1.0:
        raise ValueError(f"--validation_fraction must be between 0 and 1, got {cfg.validation_fraction}")
    if cfg.num_train_epochs is not None and not cfg.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be positive, got {cfg.num_train_epochs}")
    if cfg.train_files and cfg.dataset_name:
        raise ValueError("give --train_files or --dataset_name, not both")
    if cfg.synthetic_data is not None:
        clashing = [f"--{k}" for k in ("train_files", "validation_files", "dataset_name", "streaming")
                    if getattr(cfg, k)]  # fmt: skip
        if clashing:
            raise ValueError(
                f"--synthetic_data generates its own rows: leave out {' and '.join(clashing)} (or --synthetic_data)"
            )
    if cfg.tokenizer is not None:
        require_dir(cfg.tokenizer, "tokenizer directory (e.g. written by `scratchformer tokenizer`)")
    lengths = [f"--{k}" for k in ("max_train_steps", "max_train_tokens", "tokens_per_parameter")
               if getattr(cfg, k) is not None]  # fmt: skip
    if len(lengths) > 1:
        raise ValueError(
            f"{' and '.join(lengths)} each set the run's length: give one of them (steps, tokens, or tokens per "
            "parameter)"
        )
    if cfg.tokens_per_parameter is not None and not cfg.tokens_per_parameter > 0:
        raise ValueError(f"--tokens_per_parameter must be positive, got {cfg.tokens_per_parameter} (Chinchilla: ~20)")
    if cfg.streaming and not lengths:
        raise ValueError(
            "--streaming reads a corpus of unknown length: give --max_train_steps, --max_train_tokens or "
            "--tokens_per_parameter"
        )
    sizes = model_sizes(cfg)
    if sizes["block_size"] < 2:
        raise ValueError(f"--block_size must be at least 2, got {sizes['block_size']}")
    if sizes["block_size"] > sizes["max_position_embeddings"]:
        raise ValueError(
            f"--block_size {sizes['block_size']} is longer than the model's positions (--max_position_embeddings "
            f"{sizes['max_position_embeddings']}): raise --max_position_embeddings or lower --block_size"
        )


def accumulation_steps(cfg: PretrainConfig, num_processes: int) -> int:
    if cfg.total_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_pass = cfg.per_device_train_batch_size * num_processes
    if cfg.total_batch_size % per_pass:
        raise ValueError(
            f"--total_batch_size {cfg.total_batch_size} is not a multiple of --per_device_train_batch_size "
            f"{cfg.per_device_train_batch_size} x {num_processes} process(es) = {per_pass}; pick a total that "
            f"{per_pass} divides, or change the per-device batch"
        )
    return cfg.total_batch_size // per_pass


def trackers(report_to: str) -> list[str]:
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if installed("tensorboard") or installed("tensorboardX") else []
    for name in names:
        if not installed("tensorboard" if name == "tensorboard" else name):
            raise ValueError(f"--report_to {name}: the {name} package is not installed (pip install {name})")
    return names


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None




def lr_schedule(cfg: PretrainConfig, max_steps: int, max_lr: float | None = None) -> dict:
    """The keyword arguments of `optim.lr_at` for this run (`max_lr`: the peak as resolved)."""
    max_lr = model_sizes(cfg)["learning_rate"] if max_lr is None else max_lr
    warmup = cfg.num_warmup_steps if cfg.num_warmup_steps is not None else round(0.05 * max_steps)
    ratio = cfg.min_lr_ratio if cfg.min_lr_ratio is not None else (0.0 if cfg.lr_scheduler_type == "wsd" else 0.1)
    return dict(max_lr=max_lr, warmup_steps=warmup, total_steps=max_steps, min_lr=max_lr * ratio,
                schedule=cfg.lr_scheduler_type, decay_fraction=cfg.lr_decay_fraction)


@dataclass(frozen=True)
class RunPlan:
    """The run as the flags resolve it, worked out once and then only read: the model's sizes (the
    preset under the flags given), the peak learning rate, the block, the batch, the run's length,
    its evaluations, schedule and optimizer. Every checkpoint stores it as is (`plan` in
    trainer_state.json) and a bare `--resume` reads the resolved numbers back from it, so a later
    change of a size's default never moves a run under way.

    Built in two strokes, as the numbers become knowable: `plan_run` from the flags and the number of
    processes (enough to build the tokenizer, the data and the model), then `for_length` once the
    data's epoch and the model's parameters are known (steps, evaluations, schedule)."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    block_size: int
    max_position_embeddings: int
    learning_rate: float
    gradient_accumulation_steps: int
    samples_per_step: int
    tokens_per_step: int
    optimizer: str
    query_key_optimizer: str
    weight_decay: float
    betas: tuple[float, float]
    max_train_steps: int | None = None
    eval_steps: int | None = None
    planned_tokens: int | None = None
    schedule: dict | None = None  # optim.lr_at's keyword arguments

    @property
    def sizes(self) -> dict:
        """The model's sizes and peak lr, under the flags' names (as `model_sizes` gives them)."""
        keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "block_size", "learning_rate",
                "max_position_embeddings")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def for_length(self, cfg: PretrainConfig, steps_per_epoch: int | None, non_embedding: int) -> RunPlan:
        """The plan completed with the run's length: --max_train_steps, the steps that reach the tokens
        asked for (--max_train_tokens, --tokens_per_parameter), or epochs."""
        steps = run_length(cfg, steps_per_epoch, self.tokens_per_step, non_embedding)
        return dataclasses.replace(self, max_train_steps=steps, eval_steps=eval_interval(cfg, steps),
                                   planned_tokens=steps * self.tokens_per_step,
                                   schedule=lr_schedule(cfg, steps, self.learning_rate))  # fmt: skip


def plan_run(cfg: PretrainConfig, num_processes: int) -> RunPlan:
    """The flags resolved for `num_processes` processes (see `RunPlan`); `check_config` first."""
    sizes = model_sizes(cfg)
    accumulation = accumulation_steps(cfg, num_processes)
    samples_per_step = cfg.per_device_train_batch_size * num_processes * accumulation
    return RunPlan(**sizes, gradient_accumulation_steps=accumulation, samples_per_step=samples_per_step,
                   tokens_per_step=samples_per_step * sizes["block_size"], optimizer=cfg.optimizer,
                   query_key_optimizer=cfg.query_key_optimizer, weight_decay=cfg.weight_decay,
                   betas=(cfg.adam_beta1, cfg.adam_beta2))  # fmt: skip
