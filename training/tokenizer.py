"""`scratchformer tokenizer`: train a byte-level BPE tokenizer on your text, saved where
`AutoTokenizer.from_pretrained(OUTPUT_DIR)` loads it, and say what it achieved.

    scratchformer tokenizer --output_dir tok                                  # the embedded default corpus
    scratchformer tokenizer --output_dir tok --train_files a.txt b.txt --vocab_size 16000
    scratchformer tokenizer --output_dir tok --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.data import BUILDERS
from scratchformer.training.library.tokenizer_training import STATS_FILE, format_stats, train_tokenizer


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer tokenizer",
        description="Train a byte-level BPE tokenizer that `AutoTokenizer.from_pretrained(OUTPUT_DIR)` loads. With "
        "neither --train_files nor --dataset_name, it trains on the embedded default corpus (Python's help topics).",
    )
    p.add("--output_dir", required=True, metavar="DIR", help="output directory (written atomically)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--train_files", "--train-files", nargs="+", metavar="F",
        help=f"local text files, all of one type: {', '.join(sorted(BUILDERS))}",
    )
    source.add_argument(
        "--dataset_name", "--dataset-name", metavar="NAME_OR_PATH",
        help="a Hugging Face hub dataset (needs network) or a local dataset folder",
    )
    p.add("--dataset_config_name", metavar="C", help="the dataset's configuration name")
    p.add("--train_split", default="train", metavar="S", help="the dataset's split (default: train)")
    p.add("--text_column", default="text", metavar="NAME", help="column holding the text (default: text)")
    p.add("--vocab_size", type=int, default=8192, metavar="N", help="vocabulary size (default: 8192)")
    p.add("--min_frequency", type=int, default=2, metavar="N", help="minimum count of a merged pair (default: 2)")
    p.add("--max_length", type=int, default=1024, metavar="N", help="the model's context length (model_max_length)")
    p.add("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.add("--quiet", action="store_true", help="no progress bars")
    return p


@command("tokenizer")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    stats = train_tokenizer(
        args.output_dir,
        files=args.train_files,
        dataset=args.dataset_name,
        dataset_config=args.dataset_config_name,
        split=args.train_split,
        text_column=args.text_column,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        max_length=args.max_length,
        show_progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(format_stats(stats))
    print(
        f"saved to {args.output_dir} (stats in {STATS_FILE}); load it with "
        f"AutoTokenizer.from_pretrained({args.output_dir!r})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
