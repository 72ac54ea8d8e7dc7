"""`scratchformer inspect`: pictures of what a model learned, from the command line. Every picture is
a function of `scratchformer.training.viz` (numbers as numpy arrays, or a matplotlib Figure) for
notebooks; this is the command on top.

    scratchformer inspect attention  --model DIR "The cat sat" --output_file a.png [--layer L] [--head H] [--html F]
    scratchformer inspect embeddings --model DIR --token cat [--k 10] [--words dog,house] [--output_file F]
    scratchformer inspect positions  --model DIR --output_file positions.png
    scratchformer inspect heads      --model DIR [--output_file heads.json]
    scratchformer inspect run        OUTPUT_DIR [--output_file curves.png]
    scratchformer inspect cross-attention --model DIR --source TEXT [--target TEXT] [--layer -1] [--output_file F]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers.utils import logging as hf_logging

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.evaluation import write_json_atomically
from scratchformer.training.library.head_scores import (
    HeadScores,
    entropy_scores,
    first_token_scores,
    head_scores,
    previous_token_scores,
)
from scratchformer.training.viz.attention import attention_html, attention_maps, plot_attention
from scratchformer.training.viz.common import _select, load_model, save, token_labels
from scratchformer.training.viz.curves import find_run_log, plot_run
from scratchformer.training.viz.embeddings import nearest_token_ids, plot_embedding_pca
from scratchformer.training.viz.positions import plot_positions


def build_parser() -> Parser:
    parser = Parser(
        prog="scratchformer inspect", description="Pictures of what a model learned. Layers and heads count from 0."
    )
    sub = parser.add_subparsers(
        dest="what", required=True, metavar="{attention,heads,embeddings,positions,run,cross-attention}"
    )

    def model_args(p: Parser, tokenizer: bool = True) -> None:
        p.add("--model", required=True, metavar="DIR", help="checkpoint directory (any scratchformer head)")
        if tokenizer:
            p.add("--tokenizer", metavar="DIR", help="tokenizer directory, if the checkpoint has none")

    p = sub.add_parser("attention", help="attention heatmaps for one text (PNG), optionally an HTML view")
    model_args(p)
    p.add_argument("text", help="the text to look at")
    p.add("--layer", type=int, help="only this layer (negative counts from the end)")
    p.add("--head", type=int, help="only this head")
    p.add("--output_file", default="attention.png", metavar="PNG", help="picture to write (default: %(default)s)")
    p.add("--html", metavar="FILE", help="also write a self-contained interactive HTML page")
    p.add("--max_tokens", type=int, default=48, help="truncate the text to this many tokens (%(default)s)")

    p = sub.add_parser(
        "heads", help="what each head does on fixed probes: previous-token, first-token, induction, entropy"
    )
    model_args(p)
    p.add("--output_file", metavar="JSON", help="also write every score as JSON")

    p = sub.add_parser("embeddings", help="nearest tokens by cosine similarity, and a PCA picture")
    model_args(p)
    p.add("--token", required=True, metavar="WORD", help="a word that is one token ('␣cat' for ' cat')")
    p.add("--k", type=int, default=10, help="how many nearest tokens, itself included (%(default)s)")
    p.add("--words", default="", help="comma-separated extra tokens for the PCA picture")
    p.add("--output_file", default="embeddings.png", metavar="PNG", help="PCA picture to write (default: %(default)s)")

    p = sub.add_parser("positions", help="the positional encodings and their similarity vs distance")
    model_args(p, tokenizer=False)
    p.add("--output_file", default="positions.png", metavar="PNG", help="picture to write (default: %(default)s)")
    p.add("--positions", type=int, help="how many positions to draw (default: up to 256)")

    p = sub.add_parser("run", help="loss, learning rate and throughput curves of a pretraining run")
    p.add_argument("run", metavar="OUTPUT_DIR", help="the run's output directory, or its .jsonl log")
    p.add("--output_file", metavar="PNG", help="picture to write (default: OUTPUT_DIR/training_curves.png)")

    p = sub.add_parser("cross-attention", help="an encoder-decoder's cross-attention: where each target token looked")
    model_args(p)
    p.add("--source", required=True, metavar="TEXT", help="the encoder's input")
    p.add("--target", metavar="TEXT", help="the decoder's output (default: the model's own greedy output)")
    p.add("--layer", type=int, default=-1, help="decoder layer (negative counts from the end; %(default)s)")
    p.add("--output_file", default="cross_attention.png", metavar="PNG", help="picture to write (default: %(default)s)")
    return parser


@command("inspect")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one line that matters
    if args.what == "run":
        log = find_run_log(args.run)
        out = Path(args.output_file) if args.output_file else log.parent / "training_curves.png"
        plot_run(log, out)
        print(f"wrote {out}")
        return 0
    if args.what == "cross-attention":
        return _cross_attention(args)

    auto_class = None
    if args.what == "heads":  # the in-context score reads the language model's loss
        from transformers import AutoModelForCausalLM

        auto_class = AutoModelForCausalLM
    model, tokenizer = load_model(args.model, getattr(args, "tokenizer", None), need_tokenizer=args.what != "positions",
                                  auto_class=auto_class)
    if args.what == "attention":
        tokens, maps = attention_maps(model, tokenizer, args.text, max_tokens=args.max_tokens)
        save(plot_attention(tokens, maps, layer=args.layer, head=args.head), args.output_file)
        print(f"{len(tokens)} tokens: {' '.join(tokens)}")
        print(f"wrote {args.output_file} (the model has {maps.shape[0]} layers × {maps.shape[1]} heads)")
        print(text_head_table(maps))
        if args.html:
            Path(args.html).write_text(attention_html(tokens, maps, title=f"Attention: {args.text[:60]}"), "utf-8")
            print(f"wrote {args.html}")
    elif args.what == "heads":
        scores = head_scores(model, tokenizer)
        print(probe_head_table(scores))
        if args.output_file:
            write_json_atomically(scores.to_dict(), args.output_file)
            print(f"wrote {args.output_file}")
    elif args.what == "embeddings":
        ids, sims = nearest_token_ids(model, tokenizer, args.token, args.k)
        labels = token_labels(tokenizer, ids)
        print(f"nearest tokens to {labels[0]!r} (cosine similarity of input embeddings):")
        for label, sim in zip(labels, sims):
            print(f"  {sim:+.3f}  {label}")
        extra = [w.strip() for w in args.words.split(",") if w.strip()]
        save(plot_embedding_pca(model, tokenizer, ids + extra, highlight=ids[0]), args.output_file)
        print(f"wrote {args.output_file}")
    else:
        save(plot_positions(model, args.positions), args.output_file)
        print(f"wrote {args.output_file}")
    return 0


def text_head_table(maps) -> str:
    """Per head, on the text just drawn: previous-token and first-token scores and the normalised
    entropy (library/head_scores.py defines them), and the strongest previous-token head."""
    prev, first, entropy = previous_token_scores(maps), first_token_scores(maps), entropy_scores(maps)
    L = maps.shape[-1]
    chance = sum(1.0 / (q + 1) for q in range(1, L)) / max(1, L - 1)
    lines = [f"heads on this text: previous-token / first-token / entropy (a uniform head: {chance:.2f} / "
             f"{chance:.2f} / 1.00)"]  # fmt: skip
    for layer in range(maps.shape[0]):
        cells = [f"h{h} {prev[layer, h]:.2f}/{first[layer, h]:.2f}/{entropy[layer, h]:.2f}"
                 for h in range(maps.shape[1])]  # fmt: skip
        lines.append(f"  layer {layer}: " + "   ".join(cells))
    layer, head = divmod(int(prev.argmax()), prev.shape[1])
    lines.append(f"strongest previous-token head: layer {layer}, head {head} ({prev[layer, head]:.2f} of its "
                 "weight on the token before)")  # fmt: skip
    return "\n".join(lines)


def probe_head_table(scores: HeadScores) -> str:
    """The probe scores, a row per layer, and the strongest head of each kind."""
    lines = [f"heads on the fixed probes ({scores.text_tokens} tokens of prose; {scores.induction_period} random "
             "tokens repeated): previous-token / first-token / induction / entropy"]  # fmt: skip
    for layer, row in enumerate(scores.entropy):
        cells = [f"h{h} {scores.previous_token[layer][h]:.2f}/{scores.first_token[layer][h]:.2f}/"
                 f"{scores.induction[layer][h]:.2f}/{row[h]:.2f}" for h in range(len(row))]  # fmt: skip
        lines.append(f"  layer {layer}: " + "   ".join(cells))
    for name, label in (("previous_token", "previous-token"), ("first_token", "first-token (sink)"),
                        ("induction", "induction")):  # fmt: skip
        layer, head, value = scores.best(name)
        lines.append(f"strongest {label} head: layer {layer}, head {head} ({value:.2f})")
    lines.append(f"mean entropy {float(sum(map(sum, scores.entropy))) / sum(map(len, scores.entropy)):.2f}; "
                 f"in-context: loss {scores.loss_first_copy:.2f} nats on the first copy, {scores.loss_repeat:.2f} on "
                 f"the repeat ({scores.in_context:+.2f})")  # fmt: skip
    return "\n".join(lines)


def _cross_attention(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from scratchformer.training.viz.cross_attention import cross_attention_maps, plot_cross_attention

    config_file = Path(args.model) / "config.json"
    if config_file.is_file() and not getattr(AutoConfig.from_pretrained(args.model), "is_encoder_decoder", False):
        raise UserError(f"{args.model} is not an encoder-decoder: cross-attention needs a source and a target.")
    model, tokenizer = load_model(args.model, args.tokenizer, auto_class=AutoModelForSeq2SeqLM)
    src, tgt, maps = cross_attention_maps(model, tokenizer, args.source, args.target)
    if not src or not tgt:
        raise UserError("The source or target encodes to no tokens: give some text to look at.")
    layer = _select(maps.shape[0], args.layer, "layer")[0]
    save(plot_cross_attention(src, tgt, maps, layer=layer), args.output_file)
    print(f"source: {' '.join(src)}")
    print(f"target: {' '.join(tgt)}")
    print(f"wrote {args.output_file} (decoder layer {layer} of {maps.shape[0]}, {maps.shape[1]} heads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
