"""`scratchformer inspect`: pictures of what a model learned, from the command line. Every picture is
a function of `scratchformer.training.viz` (numbers as numpy arrays, or a matplotlib Figure) for
notebooks; this is the command on top.

    scratchformer inspect attention  --model DIR "The cat sat" --output_file a.png [--layer L] [--head H] [--html F]
    scratchformer inspect embeddings --model DIR --token cat [--k 10] [--words dog,house] [--output_file F]
    scratchformer inspect positions  --model DIR --output_file positions.png
    scratchformer inspect heads      --model DIR [--output_file heads.json]
    scratchformer inspect run        OUTPUT_DIR [--output_file curves.png]
    scratchformer inspect timeline   --run OUTPUT_DIR [--output_file timeline.html] [--png timeline.png]
    scratchformer inspect cross-attention --model DIR --source TEXT [--target TEXT] [--layer -1] [--output_file F]

Imports are made where a subcommand needs them: `--help` answers without torch or transformers, and
`inspect run` / `inspect timeline` read a log without loading either.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError

if TYPE_CHECKING:
    from scratchformer.training.library.head_scores import HeadScores


def build_parser() -> Parser:
    parser = Parser(
        prog="scratchformer inspect", description="Pictures of what a model learned. Layers and heads count from 0."
    )
    sub = parser.add_subparsers(
        dest="what", required=True, metavar="{attention,heads,embeddings,positions,run,timeline,cross-attention}"
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
    p.add("--output_file", metavar="PNG", help="picture to write (default: the run's own loss_curve.png, redrawn)")

    p = sub.add_parser("timeline", help="one page of how a run learned: loss, head scores, logit lens, attention")
    p.add("--run", required=True, metavar="OUTPUT_DIR", help="the pretraining run's output directory")
    p.add("--output_file", metavar="HTML", help="the page to write (default: OUTPUT_DIR/timeline.html)")
    p.add("--png", metavar="FILE", help="also draw the timeline as a picture (for a README or a model card)")

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
    if args.what == "run":
        return _run(args)
    if args.what == "timeline":
        return _timeline(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one line that matters
    if args.what == "cross-attention":
        return _cross_attention(args)
    from scratchformer.training.viz.common import load_model

    auto_class = None
    if args.what == "heads":  # the in-context score reads the language model's loss
        from transformers import AutoModelForCausalLM

        auto_class = AutoModelForCausalLM
    model, tokenizer = load_model(args.model, getattr(args, "tokenizer", None), need_tokenizer=args.what != "positions",
                                  auto_class=auto_class)
    if args.what == "attention":
        return _attention(args, model, tokenizer)
    if args.what == "heads":
        from scratchformer.training.library.files import write_text_atomically
        from scratchformer.training.library.head_scores import head_scores
        from scratchformer.training.library.mechanisms import probe_text_ids
        from scratchformer.training.library.synthetic import SYMBOLS, trained_symbols

        symbols = trained_symbols(args.model, tokenizer)
        if symbols is not None:
            print(f"its run trained on generated rows (--synthetic_data): probed with their letters {SYMBOLS}")
        scores = head_scores(model, tokenizer, token_ids=symbols, text_ids=probe_text_ids(model, tokenizer, symbols))
        print(probe_head_table(scores))
        if args.output_file:
            write_text_atomically(args.output_file, json.dumps(scores.to_dict(), indent=2) + "\n")
            print(f"wrote {args.output_file}")
    elif args.what == "embeddings":
        from scratchformer.training.viz.common import save, token_labels
        from scratchformer.training.viz.embeddings import nearest_token_ids, plot_embedding_pca

        ids, sims = nearest_token_ids(model, tokenizer, args.token, args.k)
        labels = token_labels(tokenizer, ids)
        print(f"nearest tokens to {labels[0]!r} (cosine similarity of input embeddings):")
        for label, sim in zip(labels, sims):
            print(f"  {sim:+.3f}  {label}")
        extra = [w.strip() for w in args.words.split(",") if w.strip()]
        save(plot_embedding_pca(model, tokenizer, ids + extra, highlight=ids[0]), args.output_file)
        print(f"wrote {args.output_file}")
    else:
        from scratchformer.training.viz.common import save
        from scratchformer.training.viz.positions import plot_positions, positions_note

        save(plot_positions(model, args.positions), args.output_file)
        print(positions_note(model))
        print(f"wrote {args.output_file}")
    return 0


def _attention(args: argparse.Namespace, model, tokenizer) -> int:
    from scratchformer.training.viz.attention import attention_html, attention_maps, plot_attention
    from scratchformer.training.viz.common import save

    tokens, maps = attention_maps(model, tokenizer, args.text, max_tokens=args.max_tokens)
    total = len(tokenizer(args.text, verbose=False)["input_ids"])
    note = None
    if total > len(tokens):  # said, not silent: the rest of the text is not in the picture
        limit = "--max_tokens" if len(tokens) == args.max_tokens else "the positions the model has"
        note = f"The text is {total} tokens; the first {len(tokens)} are drawn (the limit: {limit})."
    title = None
    if args.layer is None and args.head is None:
        title = f"Attention weights of {maps.shape[0]} layers x {maps.shape[1]} heads" + (
            f" (first {len(tokens)} of {total} tokens)" if note else "")
    save(plot_attention(tokens, maps, layer=args.layer, head=args.head, title=title), args.output_file)
    print(f"{len(tokens)} tokens: {' '.join(tokens)}")
    if note:
        print(note)
    print(f"wrote {args.output_file} (the model has {maps.shape[0]} layers × {maps.shape[1]} heads)")
    print(text_head_table(maps))
    if args.html:
        from scratchformer.training.library.files import write_text_atomically

        write_text_atomically(args.html, attention_html(tokens, maps, title=f"Attention: {args.text}", note=note))
        print(f"wrote {args.html}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from scratchformer.training.library.layout import RunLayout
    from scratchformer.training.viz.curves import find_run_log, plot_run

    log = find_run_log(args.run)
    # The run's own picture, redrawn (a run still going, or one drawn by an older release): one file, not a copy.
    out = Path(args.output_file) if args.output_file else RunLayout(log.parent).loss_curve
    plot_run(log, out)
    print(f"wrote {out}")
    return 0


def _timeline(args: argparse.Namespace) -> int:
    from scratchformer.training.viz.timeline import INDUCTION_CLEAR, write_timeline

    run = Path(args.run)
    out = Path(args.output_file) if args.output_file else (run if run.is_dir() else run.parent) / "timeline.html"
    t = write_timeline(run, out, png=args.png)
    print(f"wrote {out}" + (f" and {args.png}" if args.png else ""))
    if not t.has_mechanisms:
        print("this run logged no mechanism metrics (--mechanism_metrics false, or an older release): "
              "the page shows its losses only")
    else:
        layer, head = t.strongest_induction()
        first, last = t.heads["induction"][0][layer][head], t.heads["induction"][-1][layer][head]
        print(f"strongest induction head: layer {layer}, head {head}: {first:.2f} at step {t.mech_steps[0]} -> "
              f"{last:.2f} at step {t.mech_steps[-1]}; in-context score {t.in_context[0]:+.2f} -> "
              f"{t.in_context[-1]:+.2f} nats")
        if t.phase_change() is None:
            print(f"no induction head formed (no induction score reached {INDUCTION_CLEAR}): no phase change is "
                  "marked, and the picture follows the strongest previous-token head")
    return 0


def text_head_table(maps) -> str:
    """Per head, on the text just drawn: previous-token and first-token scores and the normalised
    entropy (library/head_scores.py defines them), and the strongest previous-token head."""
    from scratchformer.training.library.head_scores import entropy_scores, first_token_scores, previous_token_scores

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

    from scratchformer.training.viz.common import load_model, save, select_indices
    from scratchformer.training.viz.cross_attention import cross_attention_maps, plot_cross_attention

    config_file = Path(args.model) / "config.json"
    if config_file.is_file() and not getattr(AutoConfig.from_pretrained(args.model), "is_encoder_decoder", False):
        raise UserError(f"{args.model} is not an encoder-decoder: cross-attention needs a source and a target.")
    model, tokenizer = load_model(args.model, args.tokenizer, auto_class=AutoModelForSeq2SeqLM)
    src, tgt, maps = cross_attention_maps(model, tokenizer, args.source, args.target)
    if not src or not tgt:
        raise UserError("The source or target encodes to no tokens: give some text to look at.")
    layer = select_indices(maps.shape[0], args.layer, "layer")[0]
    save(plot_cross_attention(src, tgt, maps, layer=layer), args.output_file)
    print(f"source: {' '.join(src)}")
    print(f"target: {' '.join(tgt)}")
    print(f"wrote {args.output_file} (decoder layer {layer} of {maps.shape[0]}, {maps.shape[1]} heads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
