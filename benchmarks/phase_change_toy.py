"""Induction heads on generated token ids, outside the pretraining loop: the bench on which the
phase-change recipe (`scratchformer pretrain --synthetic_data in_context_markov`) was found.

A ScratchformerForCausalLM trained with plain AdamW (constant learning rate, weight decay on every
parameter) on rows of one of these kinds, over the ids 3..V-1 (0 is <s>, 1 and 2 are left out):

    fixed     <s> r r, one random sequence of T ids written twice (the usual toy)
    segments  <s> then random sequences of random length (--min_period..--max_period), each written twice
    one       random ids with one random sequence written twice at a random place
    skip      as segments, each sequence drawn from a fixed chain x(t+1) = perm(x(t-1)) (prob --follow)
    icl       a Markov chain whose successor map is drawn afresh per row, x(t+1) = f(x(t)) (prob --follow)

Every --eval_every steps it prints the strongest induction score on `induction_probe` (period T, ids
3..V-1), the strongest previous-token score in layer 0 and in the top layer (on the same probe), and the
loss on the probe's first and second copy. At the end: where each head of the last model looks (the
most common offsets of its strongest key from the query, over the probe's second copy), which tells an
induction head (offset -(T-1)) from heads that look back a fixed number of positions.

    python benchmarks/phase_change_toy.py --mode fixed --layers 1               # 0.46: a positional cheat
    python benchmarks/phase_change_toy.py --mode icl --vocab 16 --heads 2 --length 32 --period 10 --lr 1e-2 --steps 2000
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
import torch.nn.functional as F

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.training.library.head_scores import induction_probe, induction_scores, previous_token_scores

FIRST_ID = 3  # 0: <s>; 1 and 2 stand for </s> and <pad>, never drawn


def rows_of(args, generator: torch.Generator):
    V, N = args.vocab, args.length

    def draw(n: int) -> list[int]:
        return torch.randint(FIRST_ID, V, (n,), generator=generator).tolist()

    def period() -> int:
        return int(torch.randint(args.min_period, args.max_period + 1, (1,), generator=generator))

    def coin() -> bool:
        return torch.rand(1, generator=generator).item() < args.follow

    perm = torch.randperm(V - FIRST_ID, generator=torch.Generator().manual_seed(7)) + FIRST_ID

    def skip_chain(n: int) -> list[int]:
        x = draw(2)
        while len(x) < n:
            x.append(int(perm[x[-2] - FIRST_ID]) if coin() else draw(1)[0])
        return x[:n]

    def repeated(make) -> list[int]:
        out = [0]
        while len(out) < N:
            r = make(period())
            out += r + r
        return out[:N]

    def one() -> list[int]:
        t = period()
        start = int(torch.randint(0, N - 1 - 2 * t + 1, (1,), generator=generator))
        noise, r = draw(N), draw(t)
        return ([0] + noise[:start] + r + r + noise[start:])[:N]

    def icl() -> list[int]:
        f = torch.randint(FIRST_ID, V, (V,), generator=generator)
        x = draw(1)
        while len(x) < N - 1:
            x.append(int(f[x[-1]]) if coin() else draw(1)[0])
        return [0] + x

    def fixed() -> list[int]:
        r = draw(args.period)
        return [0] + r + r

    return {"fixed": fixed, "segments": lambda: repeated(draw), "one": one, "skip": lambda: repeated(skip_chain),
            "icl": icl}[args.mode]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("fixed", "segments", "one", "skip", "icl"), default="fixed")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--period", type=int, default=24, help="T of the probe (and of --mode fixed)")
    p.add_argument("--length", type=int, default=None, help="row length (default 2T + 1)")
    p.add_argument("--min_period", type=int, default=4)
    p.add_argument("--max_period", type=int, default=None, help="default: --period")
    p.add_argument("--follow", type=float, default=0.6)
    p.add_argument("--preset", default="llama")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval_every", type=int, default=50)
    args = p.parse_args()
    T = args.period
    args.length = args.length or 2 * T + 1
    args.max_period = args.max_period or T
    torch.manual_seed(0)
    config = ScratchformerConfig.from_preset(
        args.preset, vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, max_position_embeddings=max(2 * T + 1, args.length), bos_token_id=0,
        eos_token_id=1, pad_token_id=2, embedding_dropout=0.0, hidden_dropout=0.0, attn_implementation="eager",
    )  # fmt: skip
    model = ScratchformerForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    row = rows_of(args, torch.Generator().manual_seed(1))
    probe = induction_probe(args.vocab, T, 16, 0, (0, 1, 2))
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                out = model(input_ids=probe, output_attentions=True, use_cache=False)
            model.train()
            maps = torch.stack(out.attentions, 1).float().numpy()  # [batch, layers, heads, L, L]
            induction = induction_scores(maps, T, 1)
            previous = previous_token_scores(maps.mean(0))
            nll = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), probe[:, 1:], reduction="none")
            print(f"step {step} ({time.time() - start:.0f} s): induction {induction.max():.3f} (layer "
                  f"{induction.max(1).argmax()}), previous-token layer 0 {previous[0].max():.2f}, top "
                  f"{previous[-1].max():.2f}; probe loss first copy {nll[:, 1:T].mean():.2f}, "
                  f"second {nll[:, 1 + T:2 * T].mean():.2f}", flush=True)  # fmt: skip
        if step == args.steps:
            break
        x = torch.tensor([row() for _ in range(args.batch)])
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    for layer, weights in enumerate(out.attentions):
        for head in range(weights.shape[1]):
            offsets = collections.Counter()
            for i in range(1 + T, 1 + 2 * T):
                offsets.update((j - i) for j in weights[:, head, i].argmax(-1).tolist())
            print(f"layer {layer} head {head}: strongest key at offsets {offsets.most_common(3)} (induction: {1 - T})")


if __name__ == "__main__":
    main()
