"""PEFT LoRA on a real scratchformer checkpoint: train the adapters, merge them into the weights, save,
and reload the merged directory where scratchformer cannot be imported (remote code only).

The module names are Llama's (q_proj, v_proj ...), so LoRA needs no target mapping. The merged
model is a plain ScratchformerForCausalLM whose save_pretrained ships the remote-code files, so a
machine without scratchformer loads it with `trust_remote_code=True` and computes the same logits.

It needs only the dev set (peft), so it runs in the main suite, not the interop environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import scratchformer.modeling

pytestmark = pytest.mark.slow  # a 300-step training (the checkpoint) and a subprocess

PROMPTS = ["The import statement", "A tuple is an immutable"]
TRAIN_TEXTS = ["The for statement is used to iterate over a sequence.", "A list is a mutable sequence of items."]

RELOAD = """
import json
import torch
from transformers import AutoModelForCausalLM

probe = json.load(open("probe.json"))
model = AutoModelForCausalLM.from_pretrained("merged", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor(probe["input_ids"]), attention_mask=torch.tensor(probe["attention_mask"])).logits
torch.save({"logits": logits, "class": type(model).__module__}, "reloaded.pt")
"""


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint) -> Path:
    return trained_checkpoint("llama")


def test_lora_merge_and_reload_without_scratchformer(checkpoint, tmp_path, run_without_scratchformer):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    base = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    # lora_dropout=0: the trained adapter is then a deterministic function of the steps taken.
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint), config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable), trainable

    # A batch of two prompts of different lengths: left padding and the attention mask are exercised.
    probe = tok(PROMPTS, return_tensors="pt", padding=True)
    real = probe.attention_mask.bool()
    with torch.no_grad():
        base_logits = base(**probe).logits
        # LoRA's B starts at zero: before training the adapted model is the base model.
        assert torch.equal(model(**probe).logits[real], base_logits[real])

    batch = tok(TRAIN_TEXTS, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0], losses
    with torch.no_grad():
        peft_logits = model(**probe).logits
    assert (peft_logits - base_logits)[real].abs().max() > 0.1  # the adapters changed the output

    merged = model.merge_and_unload()
    assert type(merged) is scratchformer.modeling.ScratchformerForCausalLM
    with torch.no_grad():
        merged_logits = merged(**probe).logits
    # Merging W + BA into W changes the arithmetic's order only.
    assert (merged_logits - peft_logits)[real].abs().max() <= 1e-5

    merged.save_pretrained(tmp_path / "merged")
    saved = set(p.name for p in (tmp_path / "merged").iterdir())
    assert {"modeling_scratchformer.py", "configuration_scratchformer.py", "config.json"} <= saved, saved
    (tmp_path / "probe.json").write_text(json.dumps({k: v.tolist() for k, v in probe.items()}))

    result = run_without_scratchformer(RELOAD, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = torch.load(tmp_path / "reloaded.pt")
    assert reloaded["class"].startswith("transformers_modules."), reloaded["class"]
    diff_merged = (reloaded["logits"] - merged_logits)[real].abs().max().item()
    diff_peft = (reloaded["logits"] - peft_logits)[real].abs().max().item()
    diff_base = (reloaded["logits"] - base_logits)[real].abs().max().item()
    print(f"LoRA losses {losses[0]:.3f} -> {losses[-1]:.3f}; reloaded vs merged {diff_merged:.2e}, "
          f"vs PEFT {diff_peft:.2e}, vs base {diff_base:.2f}")
    assert diff_merged <= 1e-5 and diff_peft <= 1e-5
    assert diff_base > 0.1
