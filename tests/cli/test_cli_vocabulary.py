"""One command-line vocabulary across every command, one error boundary, flags frozen so that a
rename is a deliberate change (edit FROZEN here, and say so in the release notes)."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from scratchformer.training import cli, convert, finetune, generate, pretrain, tokenizer
from scratchformer.training.arguments import DEPRECATED, _canonical, _option_strings, rewrite

# Every command's own flags, in their canonical (underscore) spelling. finetune also takes every
# TrainingArguments flag (checked separately: that set is transformers' to change).
FROZEN = {
    "demo": [
        "--max_train_steps", "--output_dir", "--preset", "--prompt", "--quick", "--seed", "--size", "--train_files",
    ],
    "tokenizer": ["--dataset_config_name", "--dataset_name", "--max_length", "--min_frequency", "--output_dir",
                  "--overwrite", "--quiet", "--text_column", "--train_files", "--train_split", "--vocab_size"],
    "pretrain": [
        "--adam_beta1", "--adam_beta2", "--block_size", "--dataset_config_name", "--dataset_name", "--ddp_timeout",
        "--document_masking", "--dropout", "--eval_steps", "--fused_lm_loss", "--gradient_accumulation_steps",
        "--gradient_checkpointing", "--hidden_size", "--intermediate_size", "--learning_rate", "--logging_steps",
        "--lr_decay_fraction", "--lr_scheduler", "--lr_scheduler_type", "--max_eval_samples", "--max_grad_norm",
        "--max_position_embeddings", "--max_shard_size", "--max_train_steps", "--max_train_tokens",
        "--mechanism_metrics", "--min_lr_ratio",
        "--mixed_precision", "--no_document_masking", "--no_fused_lm_loss", "--num_attention_heads",
        "--num_hidden_layers", "--num_key_value_heads", "--num_train_epochs", "--num_warmup_steps", "--on_nonfinite",
        "--optimizer", "--output_dir", "--per_device_train_batch_size", "--position_embedding",
        "--preprocessing_num_workers", "--preset", "--push_to_hub", "--qk_norm", "--query_key_optimizer",
        "--report_to", "--resume",
        "--resume_from_checkpoint", "--save_steps", "--save_total_limit", "--seed", "--shuffle_buffer_size", "--size",
        "--streaming", "--streaming_holdout_documents", "--synthetic_data", "--text_column", "--tokenizer",
        "--tokens_per_parameter",
        "--torch_compile", "--total_batch_size", "--train_files", "--validation_files", "--validation_fraction",
        "--validation_split", "--vocab_size", "--weight_decay",
    ],
    "finetune": [
        "--assistant_only_loss", "--bidirectional", "--dataset_config_name", "--dataset_name", "--document_masking",
        "--early_stopping_patience", "--keep_checkpoints", "--label_column", "--lora_alpha", "--lora_dropout",
        "--lora_r", "--lora_target_modules",
        "--max_length", "--messages_column", "--mlm_probability", "--model", "--overwrite", "--packing", "--task",
        "--text_column", "--train_files", "--train_split", "--trust_remote_code", "--validation_files",
        "--validation_fraction", "--validation_split",
    ],
    "generate": ["--chat", "--device", "--max_new_tokens", "--model", "--repetition_penalty", "--seed", "--system",
                 "--temperature", "--top_k", "--top_p", "--trust_remote_code"],
    "serve": ["--continuous_batching", "--device", "--host", "--model", "--port", "--trust_remote_code"],
    "eval": ["--block_size", "--dataset_config_name", "--dataset_name", "--max_eval_samples", "--model",
             "--no_document_masking", "--output_file", "--per_device_eval_batch_size", "--tasks", "--text_column",
             "--trust_remote_code", "--validation_files", "--validation_split"],
    "inspect": ["--head", "--html", "--k", "--layer", "--max_tokens", "--model", "--output_file", "--png",
                "--positions", "--run", "--source", "--target", "--token", "--tokenizer", "--words"],
    "convert": ["--model", "--output_dir"],
    "export": ["--dtype", "--model", "--output_dir", "--output_file", "--to"],
    "upgrade-checkpoint": ["--dry_run", "--model"],
    "doctor": ["--model", "--trust_remote_code"],
    # A new model from the command alone (pretrain's --preset/--size/size flags/--tokenizer/--vocab_size, the
    # seq2seq config's --encoder_layers/--decoder_layers), the shared training flags, the opt-in paper schedule.
    "finetune --task seq2seq": [
        "--decoder_layers", "--dropout", "--encoder_layers", "--gradient_accumulation_steps", "--hidden_size",
        "--intermediate_size", "--label_smoothing_factor", "--learning_rate", "--max_source_length", "--max_steps",
        "--max_target_length", "--model", "--no_paper_schedule", "--num_attention_heads", "--num_beams",
        "--num_hidden_layers", "--num_train_epochs", "--output_dir", "--overwrite", "--paper_schedule",
        "--per_device_train_batch_size", "--preset", "--seed", "--size", "--source_column", "--target_column",
        "--tokenizer", "--train_files", "--validation_files", "--vocab_size", "--warmup_steps",
    ],
}  # fmt: skip
FROZEN["seq2seq"] = FROZEN["finetune --task seq2seq"]  # its own command since 0.5; the finetune spelling is an alias
TRAINER_FLAGS = {"--" + f.name for f in dataclasses.fields(TrainingArguments)}


def parser_of(command: str):
    if command == "finetune --task seq2seq":
        return importlib.import_module("scratchformer.training.seq2seq").build_parser()
    module = importlib.import_module(f"scratchformer.training.{cli.SUBCOMMANDS[command][0]}")
    return module.build_parser("classification") if command == "finetune" else module.build_parser()


@pytest.mark.parametrize("command", sorted(FROZEN))
def test_each_commands_flags_are_frozen(command):
    flags = {_canonical(o) for o in _option_strings(parser_of(command))} - {"--help"}
    if command == "finetune":
        assert TRAINER_FLAGS - {"--output_dir"} <= flags | {"--output_dir"}, "every TrainingArguments flag works"
        flags = {f for f in flags if f not in TRAINER_FLAGS and not f.startswith("--no_")}
    assert sorted(flags) == FROZEN[command]


def test_the_frozen_table_covers_every_command():
    assert set(cli.SUBCOMMANDS) | {"finetune --task seq2seq"} == set(FROZEN)


def test_shared_names_mean_the_same_thing_everywhere():
    """A user who learned one command guesses right in the next."""

    def has(command: str, flag: str) -> bool:
        return flag in {_canonical(o) for o in _option_strings(parser_of(command))}

    writes_a_directory = ["tokenizer", "pretrain", "finetune", "convert", "export", "demo", "finetune --task seq2seq"]
    assert all(has(c, "--output_dir") for c in writes_a_directory)
    reads_a_model = ["finetune", "generate", "eval", "inspect", "convert", "export", "upgrade-checkpoint", "doctor",
                     "serve",
                     "finetune --task seq2seq"]  # fmt: skip
    assert all(has(c, "--model") for c in reads_a_model)
    reads_files = ["tokenizer", "pretrain", "finetune", "demo", "finetune --task seq2seq"]
    assert all(has(c, "--train_files") for c in reads_files)
    assert all(has(c, "--validation_files") for c in ["pretrain", "finetune", "eval", "finetune --task seq2seq"])
    assert all(has(c, "--dataset_name") for c in ["tokenizer", "pretrain", "finetune", "eval"])
    assert all(has(c, "--text_column") for c in ["tokenizer", "pretrain", "finetune", "eval"])
    assert all(has(c, "--seed") for c in ["pretrain", "finetune", "generate", "demo"])
    assert all(has(c, "--max_train_steps") for c in ["pretrain", "demo"])
    # No command keeps an old spelling as a visible flag.
    for command in FROZEN:
        visible = {_canonical(o) for o in _option_strings(parser_of(command))}
        assert not visible & {"--out", "--files", "--from", "--train_file", "--validation_file", "--steps"}, command


@pytest.mark.parametrize("command", sorted(FROZEN))
def test_both_spellings_of_every_flag(command):
    options = set(_option_strings(parser_of(command)))
    for flag in options:
        if "_" in flag[2:]:
            assert "--" + flag[2:].replace("_", "-") in options, flag


def test_old_spellings_still_work_for_one_release_and_say_so(capsys):
    argv = ["--out", "tok", "--files", "a.txt", "b.txt", "--config=c"]
    assert rewrite("tokenizer", argv) == [
        "--output_dir",
        "tok",
        "--train_files",
        "a.txt",
        "b.txt",
        "--dataset_config_name=c",
    ]
    err = capsys.readouterr().err
    assert "--out is deprecated, use --output_dir" in err and "--files is deprecated, use --train_files" in err
    assert rewrite("finetune", ["--train-file", "x", "--max_train_steps", "3"]) == [
        "--train_files",
        "x",
        "--max_steps",
        "3",
    ]
    assert rewrite("pretrain", ["--max-steps", "3"]) == ["--max_train_steps", "3"]  # a synonym: no warning
    assert "--max-steps" not in capsys.readouterr().err
    assert all(new.startswith("--") and "_" in new or new == "--model" for table in DEPRECATED.values()
               for new in table.values())  # fmt: skip


def test_a_deprecated_spelling_runs_the_command(tmp_path, capsys):
    assert convert.main(["--from", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--from is deprecated, use --model" in err and "error: " in err and "no config.json" in err


@pytest.mark.parametrize(
    ("main", "argv", "suggestion"),
    [
        (pretrain.main, ["--max_step", "3"], "--max_train_steps"),
        (pretrain.main, ["--epochs", "2"], "--num_train_epochs"),
        (
            finetune.main,
            ["--model", "m", "--task", "causal-lm", "--output_dir", "o", "--epochs", "2"],
            "--num_train_epochs",
        ),
        (generate.main, ["--model", "m", "--temprature", "0"], "--temperature"),
        (tokenizer.main, ["--output_dir", "t", "--vocab", "100"], "--vocab_size"),
        # Common short forms from other trainers: by spelling alone --lr was closest to --help.
        (pretrain.main, ["--lr", "1e-3"], "--learning_rate"),
        (finetune.main, ["--model", "m", "--task", "causal-lm", "--output_dir", "o", "--lr", "1e-3"],
         "--learning_rate"),  # fmt: skip
        (pretrain.main, ["--n_layer", "2"], "--num_hidden_layers"),
        (generate.main, ["--model", "m", "--temp", "0"], "--temperature"),
    ],
)
def test_a_mistyped_flag_is_one_line_naming_the_closest(main, argv, suggestion, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown option"), err
    assert f"did you mean {suggestion}" in err and "--help` lists every option" in err
    assert "Traceback" not in err


def test_every_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    for main, argv in (
        (convert.main, ["--model", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]),
        (generate.main, ["--model", str(tmp_path / "nowhere"), "hi"]),
        (pretrain.main, ["--size", "huge"]),
        (finetune.main, ["--model", str(tmp_path), "--task", "classification"]),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def test_unknown_command_and_version(capsys):
    assert cli.main(["pretrian"]) == 2
    assert "did you mean 'pretrain'" in capsys.readouterr().err
    script = Path(sys.executable).parent / "scratchformer"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    import importlib.metadata

    assert proc.returncode == 0 and proc.stdout.startswith(
        f"scratchformer {importlib.metadata.version('scratchformer')} "
    )
    assert "transformers" in proc.stdout and "torch" in proc.stdout
