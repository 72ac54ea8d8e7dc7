"""What `scratchformer finetune` is asked to do: the task, the data and the model, as one dataclass
whose fields are the command's flags (everything about *how* to train is a `TrainingArguments` field).
Its own module so that the data preparation (`tasks`) and the run (`finetuning`) both read it and
neither imports the other's types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .data import BUILDERS

Task = Literal["classification", "token-classification", "causal-lm", "masked-lm"]


TASKS: tuple[str, ...] = ("classification", "token-classification", "causal-lm", "masked-lm")


@dataclass
class FinetuneArguments:
    """What to fine-tune, on what, for which task. Everything about *how* to train is a
    `TrainingArguments` field (`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, ...)."""

    model: str = field(metadata={"help": "checkpoint directory (from `scratchformer pretrain` or any save_pretrained)"})
    task: Task = field(
        metadata={"help": "what to fine-tune for (`--task seq2seq` trains an encoder-decoder: see its --help)"}
    )
    train_files: list[str] | None = field(
        default=None, metadata={"help": f"training data, one format: {', '.join(sorted(BUILDERS))}"}
    )
    validation_files: list[str] | None = field(default=None, metadata={"help": "validation data (same format)"})
    dataset_name: str | None = field(
        default=None, metadata={"help": "a hub dataset name or a local dataset folder, instead of files"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_split: str = field(default="train", metadata={"help": "the dataset's training split"})
    validation_split: str = field(
        default="validation", metadata={"help": "the dataset's validation split (carved from training if absent)"}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "share of the training data held out for validation when none is given (0: no validation)"},
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": "text column (default: 'text'; 'tokens', a list of words, for token-classification)"},
    )
    label_column: str | None = field(
        default=None, metadata={"help": "label column (default: 'label'; 'ner_tags' for token-classification)"}
    )
    messages_column: str = field(
        default="messages",
        metadata={"help": "causal-lm: column of chat records ([{'role', 'content'}, ...]); used when present"},
    )
    assistant_only_loss: bool = field(
        default=False, metadata={"help": "causal-lm on chat records: train on the assistant's turns only"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per example or block (default: the model's context, at most 1024)"}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "causal-lm/masked-lm on text: join rows into full blocks (--no_packing: one example per row)"
        },
    )
    document_masking: bool = field(
        default=True,
        metadata={
            "help": "causal-lm with packing: keep the documents of a block apart (position_ids restart at each, no "
            "attention across, no </s> -> <s> target), as pretrain does"
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "masked-lm: share of tokens masked"})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after this many evaluations without improvement"}
    )
    lora_r: int = field(default=0, metadata={"help": "train LoRA adapters of this rank (peft) instead of all weights"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 * lora_r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "module names that get adapters"}
    )
    bidirectional: bool = field(
        default=False,
        metadata={
            "help": "masked-lm/classification: load a decoder checkpoint as a bidirectional encoder "
            "(is_causal=False) and adapt it, as LLM2Vec does; the result is an encoder"
        },
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep Trainer's checkpoints in OUT/checkpoints after a successful run"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir directory"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow a non-scratchformer checkpoint's own code to run"}
    )
