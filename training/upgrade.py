"""`scratchformer upgrade-checkpoint`: replace the model code inside a saved checkpoint with this
version's (e.g. when an older checkpoint generates badly after a transformers upgrade); weights,
tokenizer and everything else untouched. See `scratchformer.training.library.upgrade`.

    scratchformer upgrade-checkpoint runs/mini/model            # rewrite, and say what changed
    scratchformer upgrade-checkpoint runs/mini/model --dry_run  # only say what would change
"""

from __future__ import annotations

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.errors import UserError
from scratchformer.training.library.upgrade import upgrade_checkpoint


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer upgrade-checkpoint",
        description=(
            "Replace the model code (remote code) inside a saved scratchformer checkpoint with this version's, "
            "e.g. when an older checkpoint generates badly after a transformers upgrade. Weights, tokenizer and "
            "everything else are left untouched."
        ),
    )
    p.add_argument("model_dir", nargs="?", metavar="DIR", help="a checkpoint directory written by scratchformer")
    p.add("--model", metavar="DIR", help="the same, as a flag like every other command's")
    p.add("--dry_run", action="store_true", help="only print what would change; write nothing")
    return p


@command("upgrade-checkpoint")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    if bool(args.model_dir) == bool(args.model):
        raise UserError("give the checkpoint directory once: `scratchformer upgrade-checkpoint DIR` (or --model DIR)")
    model_dir = args.model_dir or args.model
    changes = upgrade_checkpoint(model_dir, dry_run=args.dry_run)
    for change in changes:
        print(change)
    changed = [c for c in changes if c.action != "unchanged"]
    if not changed:
        print(f"{model_dir}: already up to date")
    elif args.dry_run:
        print(f"{model_dir}: {len(changed)} file(s) would change (dry run: nothing written)")
    else:
        print(f"{model_dir}: {len(changed)} file(s) upgraded; weights untouched")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
