"""Why did Muon leave attention diffuse? Candidate causes, one change each, side by side.

Under 0.3's recipe (Muon on every matrix of the blocks, `--query_key_optimizer muon`) a model's heads
ended near uniform; under AdamW they were sharp. Each candidate below changes one thing and trains the
recipes benchmark's model (`bench_recipes.py`: Tiny Shakespeare at nanoGPT's budget, 4 x 128, 1053
steps, one seed) to report validation bits/byte, the head scores of the final model
(`scratchformer.training.library.head_scores`, on the validation text's first 64 tokens) and the
largest singular value of each layer's query projection (which, with the key projection's, bounds the
attention logits). Candidates that are not flags of `scratchformer pretrain` are applied here, by
replacing one function for the run, and say so:

    muon           0.3's recipe: Muon on q, k, v, o and the MLP (lr 2e-3, WSD 40 %)
    adamw          AdamW on every parameter, same schedule
    muon-qkadamw   Muon, but AdamW moves the query and key projections   (--query_key_optimizer adamw)
    muon-qknorm    Muon on everything, QK-norm in the model              (--qk_norm)
    adamw-qknorm   AdamW with QK-norm
    muon-qklr5     Muon with 5x the learning rate on q and k             (here only)
    muon-keller    Muon's original scaling (adjust_lr_fn="original", lr 0.02 for its matrices) (here only)
    muon-qkwd0     Muon without weight decay on q and k                  (here only)
    muon-wu20      a 20-step warm-up instead of 100                      (--num_warmup_steps 20)
    muon-scale2    attention logits scaled by 2 / sqrt(K) instead of 1 / sqrt(K) (here only)

    .venv/bin/python benchmarks/bench_muon_attention.py                  # every candidate, 1 seed
    .venv/bin/python benchmarks/bench_muon_attention.py muon-qklr5 muon-keller

Writes `muon_attention.json` and `.md` under `--out`, merging by candidate and seed. Validation only:
the held-out texts judge the chosen recipe in `bench_recipes.py`, not these candidates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench_pretrain_shakespeare import split
from bench_recipes import MODEL, PROBE_CHARS, VOCAB

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
WSD = dict(lr_scheduler_type="wsd", learning_rate=2e-3, lr_decay_fraction=0.4)
CANDIDATES: dict[str, dict] = {
    "muon": dict(optimizer="muon", query_key_optimizer="muon", **WSD),
    "adamw": dict(optimizer="adamw", **WSD),
    "muon-qkadamw": dict(optimizer="muon", query_key_optimizer="adamw", **WSD),
    "muon-qknorm": dict(optimizer="muon", query_key_optimizer="muon", qk_norm=True, **WSD),
    "adamw-qknorm": dict(optimizer="adamw", qk_norm=True, **WSD),
    "muon-qklr5": dict(optimizer="muon", query_key_optimizer="muon", **WSD, _query_key_lr=5.0),
    "muon-keller": dict(optimizer="muon", query_key_optimizer="muon", **WSD, _muon_lr=0.02, _adjust="original"),
    "muon-qkwd0": dict(optimizer="muon", query_key_optimizer="muon", **WSD, _query_key_decay=0.0),
    "muon-wu20": dict(optimizer="muon", query_key_optimizer="muon", **WSD, num_warmup_steps=20),
    "muon-scale2": dict(optimizer="muon", query_key_optimizer="muon", **WSD, _attention_scale=2.0),
}


def apply_here_only(spec: dict) -> None:
    """The candidates that are no flag: replace Muon's parameter groups (a learning-rate multiplier or
    no decay for q and k, or Muon's original scaling at its own learning rate) or the attention scale,
    in this worker process only (each run gets a fresh process)."""
    import torch

    from scratchformer.training.library import optim, pretraining

    qk_lr, qk_decay = spec.get("_query_key_lr"), spec.get("_query_key_decay")
    muon_lr, adjust = spec.get("_muon_lr"), spec.get("_adjust")
    if qk_lr or qk_decay is not None or muon_lr or adjust:

        def muon_with_groups(self, model, lr, weight_decay, betas=(0.9, 0.95), momentum=0.95, query_key="muon"):
            hidden = set(optim.hidden_matrices(model))
            params = dict(model.named_parameters())
            qk = [p for n, p in params.items() if n in hidden and n.endswith(("q_proj.weight", "k_proj.weight"))]
            qk_ids = {id(p) for p in qk}
            other = [p for n, p in params.items() if n in hidden and id(p) not in qk_ids]
            rest = [p for n, p in params.items() if n not in hidden and p.requires_grad]
            scale = muon_lr / lr if muon_lr else 1.0
            groups = [{"params": other, "optimizer": "muon", "lr_scale": scale},
                      {"params": qk, "optimizer": "muon", "lr_scale": scale * (qk_lr or 1.0),
                       "weight_decay": weight_decay if qk_decay is None else qk_decay}]  # fmt: skip
            self.muon = torch.optim.Muon(groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                         adjust_lr_fn=adjust or "match_rms_adamw")  # fmt: skip
            self.adamw = torch.optim.AdamW(
                [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay, "optimizer": "adamw"},
                 {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0, "optimizer": "adamw"}],
                lr=lr, betas=betas)  # fmt: skip
            torch.optim.Optimizer.__init__(self, self.muon.param_groups + self.adamw.param_groups, {"lr": lr})
            self._link()

        def set_lr_with_scales(optimizer, lr):
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

        optim.MuonWithAdamW.__init__ = muon_with_groups
        pretraining.set_lr = set_lr_with_scales
    if spec.get("_attention_scale"):
        from scratchformer.modeling import transformer_scratchformer as tf

        build = tf.ScratchformerAttention.__init__

        def scaled(self, *args, **kwargs):
            build(self, *args, **kwargs)
            self.scaling *= spec["_attention_scale"]

        tf.ScratchformerAttention.__init__ = scaled


def run_one(name: str, seed: int, steps: int, work: str) -> dict:
    import torch

    torch.set_num_threads(1)
    spec = CANDIDATES[name]
    apply_here_only(spec)
    from transformers import AutoTokenizer

    from scratchformer.modeling import ScratchformerForCausalLM
    from scratchformer.training.library.head_scores import head_scores
    from scratchformer.training.library.pretraining import PretrainConfig, train

    out = Path(work) / f"run-{name}-{seed}"
    flags = {k: v for k, v in spec.items() if not k.startswith("_")}
    cfg = PretrainConfig(train_files=[str(Path(work) / "train.txt")], validation_files=[str(Path(work) / "val.txt")],
                         tokenizer=str(Path(work) / "tokenizer"), output_dir=str(out), max_train_steps=steps,
                         logging_steps=50, eval_steps=steps, save_steps=steps, report_to="none", seed=seed,
                         **{**MODEL, **flags})  # fmt: skip
    result = train(cfg)
    model = ScratchformerForCausalLM.from_pretrained(out / "model")
    probe = (Path(work) / "val.txt").read_text(encoding="utf-8")[:PROBE_CHARS]
    heads = head_scores(model, AutoTokenizer.from_pretrained(out / "model"), text=probe)
    sigma = [round(torch.linalg.matrix_norm(layer.self_attn.q_proj.weight.float(), ord=2).item(), 3)
             for layer in model.model.layers]  # fmt: skip
    return {"candidate": name, "seed": seed, "steps": steps, "val_bpb": result["eval_bpb"],
            "heads": heads.summary(), "entropy": heads.entropy, "previous_token": heads.previous_token,
            "q_proj_top_singular_value": sigma}  # fmt: skip


def write_markdown(path: Path, data: dict) -> None:
    lines = [
        "# Why Muon left attention diffuse: one change at a time",
        "",
        "`python benchmarks/bench_muon_attention.py` (one seed per candidate; see its docstring for what each "
        "changes). Tiny Shakespeare at nanoGPT's budget, the recipes benchmark's model. Validation bits/byte "
        "(the split recipes are chosen on); head scores of the final model on the validation text's first 64 "
        "tokens (entropy: 1 = uniform; previous-token: a uniform head scores 0.06); the largest singular value "
        "of each layer's query projection (0.45 at initialisation).",
        "",
        "| candidate | val bits/byte | mean entropy | previous-token (best head) | first-token (best) | "
        "W_q top singular value by layer |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(data["runs"], key=lambda r: r["val_bpb"]):
        h = r["heads"]
        lines.append(f"| {r['candidate']} | {r['val_bpb']:.3f} | {h['heads_entropy_mean']:.2f} | "
                     f"{h['heads_previous_token_max']:.2f} | {h['heads_first_token_max']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['q_proj_top_singular_value'])} |")  # fmt: skip
    m = data["machine"]
    lines += ["", f"Machine: {m['cpus']} CPU cores ({m['platform']}), torch {m['torch']}, one thread per run.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="*", metavar="CANDIDATE", help=f"default: all of {', '.join(CANDIDATES)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    unknown = sorted(set(args.candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}: choose from {', '.join(CANDIDATES)}")
    args.candidates = args.candidates or list(CANDIDATES)
    import torch
    from transformers import AutoTokenizer

    from scratchformer.tokenization import bytes_per_token
    from scratchformer.training.library.tokenizer_training import train_tokenizer

    json_path = args.out / "muon_attention.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_file, _ = split(args.data, work)
        train_tokenizer(work / "tokenizer", files=[str(train_file)], vocab_size=VOCAB, max_length=64,
                        show_progress=False, overwrite=True)  # fmt: skip
        chars_per_token = bytes_per_token(AutoTokenizer.from_pretrained(work / "tokenizer"), [train_file.read_text()])
        steps = math.ceil(12 * 64 * 2000 / (MODEL["per_device_train_batch_size"] * 63 * chars_per_token))
        # A fresh process per run: the candidates that replace a function must not leak into the next run.
        with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
            futures = [pool.submit(run_one, name, args.seed, steps, tmp) for name in args.candidates]
            for future in futures:
                run = future.result()
                print(f"{run['candidate']}: {run['val_bpb']:.4f} bits/byte, {run['heads']}", flush=True)
                data = json.loads(json_path.read_text()) if json_path.exists() else {"runs": []}
                key = (run["candidate"], run["seed"])
                data["runs"] = [r for r in data["runs"] if (r["candidate"], r["seed"]) != key] + [run]
                data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
                json_path.write_text(json.dumps(data, indent=1) + "\n")
                write_markdown(args.out / "muon_attention.md", data)


if __name__ == "__main__":
    main()
