"""Tensor and pipeline parallelism plans, in Llama's vocabulary: every entry names a real module, and
`from_pretrained(..., tp_plan="auto")` on 2 CPU processes (gloo) shards the projections and
computes the unsharded model's logits and greedy tokens, for every preset, through remote code."""

import fnmatch
import json
import subprocess
import sys

import pytest
import torch

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM

PRESETS = ["llama", "qwen3", "gpt2", "paper"]


def config(preset: str) -> ScratchformerConfig:
    return ScratchformerConfig.from_preset(
        preset, vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2 if preset in ("llama", "qwen3") else None, max_position_embeddings=64,
        initializer_range=0.6, hidden_dropout=0.0, embedding_dropout=0.0, eos_token_id=None,
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_every_plan_entry_names_real_modules(preset):
    model = ScratchformerForCausalLM(config(preset))
    body = dict(model.model.named_modules())
    tp_plan = model.config.base_model_tp_plan
    assert tp_plan, "no tensor-parallel plan"
    for pattern, style in tp_plan.items():
        matches = [name for name in body if fnmatch.fnmatch(name, pattern.replace("*", "[0-9]*"))]
        assert len(matches) == model.config.num_hidden_layers or pattern == "embed_tokens", (pattern, matches)
        assert style in ("colwise", "rowwise", "embedding_rowwise", "replicated_with_grad_allreduce")
    # Every projection into the heads is split by columns, every projection out of them by rows; QK-norm's
    # per-head gains (qwen3) are whole on every rank, their gradients summed, as in Qwen3's own plan.
    layer = model.model.layers[0]
    split = {k.split(".", 2)[2]: v for k, v in tp_plan.items() if k.startswith("layers.")}
    linears = {name for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == {name for name, style in split.items() if style != "replicated_with_grad_allreduce"}
    norms = {"self_attn.q_norm", "self_attn.k_norm"} if model.config.qk_norm else set()
    assert {name for name, style in split.items() if style == "replicated_with_grad_allreduce"} == norms
    assert (model.config.mlp_type == "swiglu") == ("mlp.gate_proj" in split)
    for name in model.config.base_model_pp_plan:
        assert name in body
    assert model._tp_plan["lm_head"] == "colwise_gather_output" and "lm_head" in model._pp_plan


RUN = r"""
import json, sys, torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
results = {}
for path in sys.argv[1:]:
    # No `import scratchformer`: the checkpoint's own remote code runs, as it does in vLLM.
    sharded = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", trust_remote_code=True).eval()
    whole = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    x = torch.tensor([[5, 17, 29, 3, 44, 8, 23, 31, 12, 60]])
    with torch.no_grad():
        a, b = sharded(x).logits, whole(x).logits
        ga = sharded.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
        gb = whole.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    q = sharded.model.layers[0].self_attn.q_proj.weight
    rows = whole.model.layers[0].self_attn.q_proj.weight.shape[0]
    results[path] = dict(
        sharded=type(q).__name__ == "DTensor", local_rows=q.to_local().shape[0], rows=rows,
        diff=(a - b).abs().max().item() / b.abs().max().item(), same_tokens=bool(torch.equal(ga, gb)),
        distinct=len(set(gb[0, 10:].tolist())),
    )
if dist.get_rank() == 0:
    print("RESULTS " + json.dumps(results))
"""


@pytest.mark.slow
def test_tensor_parallel_on_two_processes_matches_one(tmp_path):
    dirs = []
    for preset in PRESETS:
        torch.manual_seed(0)
        ScratchformerForCausalLM(config(preset)).save_pretrained(tmp_path / preset)
        dirs.append(str(tmp_path / preset))
    script = tmp_path / "run.py"
    script.write_text(RUN)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), *dirs],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
             "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "match nothing" not in proc.stderr  # the plan fits every preset (no gate_proj rule without a gate)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    for path, r in results.items():
        assert r["sharded"] and r["local_rows"] * 2 == r["rows"], (path, r)
        assert r["diff"] < 1e-5, (path, r)
        assert r["same_tokens"] and r["distinct"] >= 3, (path, r)
