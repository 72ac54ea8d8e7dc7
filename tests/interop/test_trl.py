"""TRL's trainers on a real scratchformer checkpoint: `SFTTrainer` with our chat template and an
assistant-only loss, `DPOTrainer` on a small preference set, and when DPO needs `trust_remote_code`.

Settings every test shares, and why:
- `bf16=False`: TRL's configs default to bf16 autocast even on CPU. The numbers checked here (a DPO
  loss of exactly ln 2 before training) need the policy and reference to run the same float32 code;
  under the default the reference is wrapped in bf16 autocast at construction and the policy only
  when training starts, so before training they already disagree by ~0.05 in the logits.
- `use_cpu=True`, no saving, no reporting, one intra-op thread: CI machines have two shared cores.

DPO and remote code: with no `ref_model` given (and no PEFT), `DPOTrainer` builds the reference model
itself by loading the policy's path again, `from_pretrained(path, trust_remote_code=args.trust_remote_code)`
(False by default). That load works only where the Auto classes already know `model_type:
scratchformer`, i.e. after `import scratchformer.modeling`; a policy loaded through remote code (in
a process that did not import scratchformer, installed or not) needs `DPOConfig(trust_remote_code=True)`,
or an explicit `ref_model=`.

GRPO (`test_grpo_raises_the_reward`) runs where scratchformer cannot be imported: the policy given as a
path and, with `beta > 0`, the reference model are both loaded by `GRPOTrainer` itself through the
checkpoint's remote code (`GRPOConfig(model_init_kwargs={"trust_remote_code": True})`).

TRL's own command line (`trl sft`, `trl dpo`, `trl grpo`: `accelerate launch` of TRL's scripts) takes
our checkpoint with `--trust_remote_code`, a local dataset as a directory holding `train.jsonl`, and a
reward function as a dotted import path on PYTHONPATH; each writes a checkpoint with its remote code,
which stock `from_pretrained` loads (in a process without scratchformer) and generates from.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# No hub lookups from datasets / huggingface_hub (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

import scratchformer.modeling  # noqa: E402  (registers the Auto classes)
from scratchformer.training.library.doctor import config_verdicts  # noqa: E402

FACTS = [
    ("list", "a mutable sequence"),
    ("tuple", "an immutable sequence"),
    ("dict", "a mapping from keys to values"),
    ("set", "an unordered collection of distinct items"),
    ("str", "an immutable sequence of characters"),
    ("int", "an integer number"),
    ("float", "a floating point number"),
    ("bytes", "an immutable sequence of bytes"),
]
SYSTEM = "Answer in one sentence."

# What a DPO-trained model must come to prefer; the wrong answers are fluent but false.
PREFERENCES = [
    ("list", "a mutable sequence", "a kind of fish"),
    ("tuple", "an immutable sequence", "a loud noise"),
    ("dict", "a mapping from keys to values", "a small boat"),
    ("set", "a collection of distinct items", "a type of hat"),
    ("str", "a sequence of characters", "a fruit"),
    ("int", "a whole number", "a bird"),
]

COMMON = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0)


def conversation(name: str, what: str) -> dict:
    """Two assistant turns, so the mask must cover more than 'everything after the last user turn'."""
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is a {name}?"},
        {"role": "assistant", "content": f"A {name} is {what}."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "You are welcome."},
    ]}


def preference(name: str, good: str, bad: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"What is a {name}?"}],
        "chosen": [{"role": "assistant", "content": f"A {name} is {good}."}],
        "rejected": [{"role": "assistant", "content": f"A {name} is {bad}."}],
    }


def expected_tokens(tok, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Our chat template's rendering, token by token, built from its parts: `<s>`, then per message
    `<|role|>`, a newline, the content and `<|end|>`; the assistant's content and its `<|end|>` are
    the tokens to learn. Tokenizing the parts apart gives the whole's tokens: special tokens split
    the text, and the byte-level pre-tokenizer splits after the newline."""
    ids, learn = [tok.bos_token_id], [False]
    for m in messages:
        opener = [tok.convert_tokens_to_ids(f"<|{m['role']}|>"), *tok("\n", add_special_tokens=False).input_ids]
        body = [*tok(m["content"], add_special_tokens=False).input_ids, tok.convert_tokens_to_ids("<|end|>")]
        ids += opener + body
        learn += [False] * len(opener) + [m["role"] == "assistant"] * len(body)
    return ids, learn


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint) -> Path:
    return trained_checkpoint("llama")


def test_sft_assistant_only_loss(checkpoint, tmp_path):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    train = Dataset.from_list([conversation(*f) for f in FACTS[:6]] * 4)
    held_out = Dataset.from_list([conversation(*f) for f in FACTS[6:]])
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_steps=30, per_device_train_batch_size=8,
                     learning_rate=2e-3, logging_steps=10, **COMMON)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tok)

    # The batch the loss sees: labels are the input ids on exactly the assistant turns (content and
    # closing <|end|>), -100 on system, user, role markers, <s> and padding.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for row, example in enumerate(train.select(range(3))):
        ids, learn = expected_tokens(tok, example["messages"])
        real = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][real].tolist() == ids
        labels = batch["labels"][row][real].tolist()
        assert labels == [t if keep else -100 for t, keep in zip(ids, learn, strict=True)]
        assert (batch["labels"][row][~real] == -100).all()
        assert sum(learn) < len(ids) // 2  # the prompt really is the larger part: a mask of all ones would fail

    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"SFT held-out assistant-token loss: {before:.3f} -> {after:.3f}")
    assert after < 0.6 * before, (before, after)


def test_dpo_trains_with_scratchformer_imported(checkpoint, tmp_path):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    train = Dataset.from_list([preference(*p) for p in PREFERENCES] * 2)
    held_out = Dataset.from_list([preference(*p) for p in PREFERENCES[:3]])
    # trust_remote_code left at its default (False): scratchformer.modeling is imported in this process.
    args = DPOConfig(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
                     beta=0.1, logging_steps=5, **COMMON)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tok)
    # The reference DPOTrainer loaded from the checkpoint path is our class, not a remote-code copy.
    assert type(trainer.ref_model) is scratchformer.modeling.ScratchformerForCausalLM

    before = trainer.evaluate()
    # Policy == reference before any step: every reward is 0 and the loss is -log sigmoid(0) = ln 2.
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    trainer.train()
    after = trainer.evaluate()
    print(f"DPO held-out loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}, "
          f"margin {before['eval_rewards/margins']:.4f} -> {after['eval_rewards/margins']:.4f}")
    assert after["eval_loss"] < 0.5 * math.log(2)
    assert after["eval_rewards/margins"] > 0.5
    assert after["eval_rewards/accuracies"] == 1.0


# Run in processes that never import scratchformer: the policy comes through the checkpoint's remote
# code, as on a machine without scratchformer, and DPOTrainer is built three ways.
DPO_WITHOUT_IMPORT = """
import json, sys
import torch
torch.set_num_threads(1)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

path = {path!r}
data = Dataset.from_list(json.loads({data!r}))
tok = AutoTokenizer.from_pretrained(path)

def policy():
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)

def config(**overrides):
    return DPOConfig(output_dir="dpo", max_steps=2, per_device_train_batch_size=2, {common}, **overrides)

result = {{}}
try:
    DPOTrainer(model=policy(), args=config(), train_dataset=data, processing_class=tok)
    result["default"] = "built"
except ValueError as error:
    result["default"] = str(error)
# The same, with the reference model handed in: no trust_remote_code needed in the config.
DPOTrainer(model=policy(), ref_model=policy(), args=config(), train_dataset=data, processing_class=tok)
result["explicit_ref_model"] = "built"
trainer = DPOTrainer(model=policy(), args=config(trust_remote_code=True), train_dataset=data, processing_class=tok)
trainer.train()
result["trust_remote_code"] = dict(ref_model=type(trainer.ref_model).__module__,
                                   train_loss=trainer.state.log_history[-1]["train_loss"])
# (None, not absent, where the fixture blocks the import)
result["scratchformer_imported"] = sys.modules.get("scratchformer") is not None
print("RESULT " + json.dumps(result))
"""


def _result(stdout: str) -> dict:
    [line] = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_dpo_reference_model_needs_trust_remote_code_without_import(checkpoint, tmp_path, run_without_scratchformer):
    data = json.dumps([preference(*p) for p in PREFERENCES[:4]])
    common = ", ".join(f"{k}={v!r}" for k, v in COMMON.items())
    code = textwrap.dedent(DPO_WITHOUT_IMPORT.format(path=str(checkpoint), data=data, common=common))

    # scratchformer installed but not imported (the script never imports it), run alongside the
    # fixture's run where it cannot be imported at all.
    installed_dir = tmp_path / "installed"
    installed_dir.mkdir()
    (installed_dir / "dpo.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(installed_dir / "hf_home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    installed = subprocess.Popen([sys.executable, "dpo.py"], cwd=installed_dir, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    blocked_dir = tmp_path / "blocked"
    blocked_dir.mkdir()
    try:
        blocked = run_without_scratchformer(code, cwd=blocked_dir)
        installed_out, installed_err = installed.communicate(timeout=300)
    finally:  # a failure above must not leave the other run behind
        if installed.poll() is None:
            installed.kill()
            installed.communicate()

    assert blocked.returncode == 0, blocked.stderr[-3000:]
    assert installed.returncode == 0, installed_err[-3000:]
    for result in (_result(blocked.stdout), _result(installed_out)):
        assert result["scratchformer_imported"] is False
        # The default fails while loading the reference model (the explicit ref_model build succeeds),
        # with transformers' remote-code refusal.
        assert "trust_remote_code=True" in result["default"], result["default"]
        assert result["explicit_ref_model"] == "built"
        # With it, the reference is the checkpoint's own remote code and training runs.
        assert result["trust_remote_code"]["ref_model"].startswith("transformers_modules.")
        assert math.isfinite(result["trust_remote_code"]["train_loss"])


# A reward a 300-step model can climb in a few steps: the share of the letter "e" in the completion
# (about 0.09 before training). GRPO compares completions of one prompt with each other, so any
# reward that varies between samples gives it a direction.
GRPO_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

path = {path!r}
PROMPTS = ["The", "A list", "When the", "In Python", "This module", "An object", "If the", "For example"]


def letter_e(completions, **kwargs):
    return [c.count("e") / max(1, len(c)) for c in completions]


tok = AutoTokenizer.from_pretrained(path)


def mean_reward(model, samples=8):
    # The same draws before and after training: a fixed seed, 8 samples of 16 tokens per prompt.
    model.eval()
    torch.manual_seed(123)
    rewards = []
    for prompt in PROMPTS:
        ids = tok([prompt] * samples, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, max_new_tokens=16, min_new_tokens=16, temperature=1.0,
                                 top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
        rewards += letter_e(tok.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    model.train()
    return sum(rewards) / len(rewards)


args = GRPOConfig(output_dir="grpo", max_steps=8, per_device_train_batch_size=8, num_generations=8,
                  max_completion_length=16, beta=0.1, learning_rate=1e-3, temperature=1.0, logging_steps=1,
                  model_init_kwargs={{"trust_remote_code": True}}, {common})
trainer = GRPOTrainer(model=path, reward_funcs=letter_e, args=args,
                      train_dataset=Dataset.from_list([{{"prompt": p}} for p in PROMPTS * 4]), processing_class=tok)
start = {{k: v.clone() for k, v in trainer.model.state_dict().items()}}
before = mean_reward(trainer.model)
trainer.train()
after = mean_reward(trainer.model)
log = trainer.state.log_history
print("RESULT " + json.dumps(dict(
    before=before, after=after,
    changed=sum(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items()), tensors=len(start),
    policy=type(trainer.model).__module__, ref_model=type(trainer.ref_model).__module__,
    kl=[r["kl"] for r in log if "kl" in r], rewards=[r["reward"] for r in log if "reward" in r],
    scratchformer_imported=sys.modules.get("scratchformer") is not None)))
"""


def test_grpo_raises_the_reward(checkpoint, tmp_path, run_without_scratchformer):
    """8 GRPO steps on a reward function raise the mean reward of fixed-seed samples by half, move
    every parameter, and keep a KL term to a reference model that GRPOTrainer loaded itself, like the
    policy, through the checkpoint's remote code (no scratchformer in the process)."""
    common = ", ".join(f"{k}={v!r}" for k, v in COMMON.items())
    proc = run_without_scratchformer(GRPO_SCRIPT.format(path=str(checkpoint), common=common), cwd=tmp_path,
                                     timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(proc.stdout)
    print(f"GRPO mean reward {result['before']:.3f} -> {result['after']:.3f}, KL {result['kl']}")
    assert result["scratchformer_imported"] is False
    assert result["policy"].startswith("transformers_modules.") and result["ref_model"].startswith(
        "transformers_modules.")
    assert result["after"] > 1.3 * result["before"], result
    assert result["changed"] == result["tensors"]
    assert result["kl"][0] == 0.0 and max(result["kl"]) > 0  # the policy leaves the reference, which stays
    [verdict] = [v for v in config_verdicts(AutoConfig.from_pretrained(checkpoint)) if v.rule == "trl"]
    assert verdict.ok


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


REWARDS_MODULE = """def letter_e(completions, **kwargs):
    return [c.count("e") / max(1, len(c)) for c in completions]
"""

# The same command line for the three: CPU, float32, no reporting; each trainer's own defaults else.
CLI_COMMON = ["--trust_remote_code", "--use_cpu", "--bf16", "False", "--report_to", "none", "--logging_steps", "1",
              "--save_strategy", "no", "--max_steps", "6", "--per_device_train_batch_size", "4", "--seed", "0"]

RELOAD = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for path in sys.argv[1:]:
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # the tokenizer needs no code
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    ids = tok("What is a list?", return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, do_sample=False, max_new_tokens=12, min_new_tokens=12)[0]
    new = new[ids["input_ids"].shape[1]:]
    out[path] = dict(module=type(model).__module__, new_tokens=len(new), text=tok.decode(new),
                     weights=float(sum(p.double().sum() for p in model.parameters())))
print("RESULT " + json.dumps(out))
"""


def test_trl_command_line_trains_a_checkpoint(checkpoint, tmp_path, run_without_scratchformer):
    """`trl sft`, `trl dpo` and `trl grpo`, TRL's own command line, on local jsonl files: each trains our
    checkpoint through its remote code and saves one that stock `from_pretrained` loads without
    scratchformer and generates from, with weights that moved."""
    trl_cli = Path(sys.executable).parent / "trl"
    write_jsonl(tmp_path / "chats" / "train.jsonl", [conversation(*f) for f in FACTS] * 2)
    write_jsonl(tmp_path / "preferences" / "train.jsonl", [preference(*p) for p in PREFERENCES] * 2)
    write_jsonl(tmp_path / "prompts" / "train.jsonl", [{"prompt": f"A {name} is"} for name, _ in FACTS] * 2)
    (tmp_path / "my_rewards.py").write_text(REWARDS_MODULE, encoding="utf-8")
    commands = {
        "sft": ["sft", "--dataset_name", "chats", "--learning_rate", "1e-3"],
        "dpo": ["dpo", "--dataset_name", "preferences", "--learning_rate", "1e-4"],
        "grpo": ["grpo", "--dataset_name", "prompts", "--reward_funcs", "my_rewards.letter_e", "--beta", "0.1",
                 "--num_generations", "4", "--max_completion_length", "16", "--learning_rate", "1e-3"],
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(PYTHONPATH=str(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    outputs = []
    for name, argv in commands.items():
        out = tmp_path / f"{name}-out"
        proc = subprocess.run([str(trl_cli), *argv, "--model_name_or_path", str(checkpoint), "--output_dir", str(out),
                               *CLI_COMMON], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"trl {name}:\n{proc.stderr[-3000:]}"
        assert (out / "model.safetensors").is_file() and (out / "modeling_scratchformer.py").is_file(), name
        outputs.append(str(out))

    argv = ", ".join(repr(a) for a in [str(checkpoint), *outputs])
    proc = run_without_scratchformer(f"import sys\nsys.argv = ['reload', {argv}]\n" + RELOAD, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = _result(proc.stdout)
    base = loaded.pop(str(checkpoint))
    for path, model in loaded.items():
        print(f"{Path(path).name}: {model['text']!r}")
        assert model["module"].startswith("transformers_modules."), path
        assert model["new_tokens"] == 12, path
        assert model["weights"] != base["weights"], f"{path}: the weights did not move"
