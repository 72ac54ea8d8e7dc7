"""`scratchformer pretrain`: text in, a Hugging Face model directory out; one CPU or many GPUs.

    scratchformer pretrain --output_dir runs/mini                      # default corpus, default sizes
    scratchformer pretrain --train_files a.txt --validation_files b.txt --size small --max_train_steps 2000
    scratchformer pretrain --output_dir runs/mini --resume             # continue the newest checkpoint

The same command under `accelerate launch` (data parallel; the flags after `pretrain` are the same):

    accelerate launch --multi_gpu --num_processes 4 -m scratchformer.training pretrain --mixed_precision bf16 ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m scratchformer.training pretrain ...

(The last is several CPU processes joined by gloo: accelerate's own `--cpu` flag starts only one.)
Several machines: add `--num_machines N --machine_rank R --main_process_ip HOST` on each, with
`--output_dir` on a file system they share. The run itself is `library.pretraining.train`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from accelerate import PartialState

from scratchformer.training.arguments import HfParser, command, given_fields
from scratchformer.training.library.loop import lost_a_process, lost_a_process_message
from scratchformer.training.library.pretraining import PretrainConfig, train
from scratchformer.training.library.run_dir import with_flags_of_resumed_run
from scratchformer.training.viz.curves import draw_run_curves
from scratchformer.training.viz.timeline import draw_timeline

EXIT_NON_FINITE = 1  # the loss became NaN/inf (--on_nonfinite stop)
EXIT_LOST_PROCESS = 3  # another process of a multi-process run died or hung
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"
# The pictures every run draws into its directory and its model card (the library draws none itself).
PICTURES = dict(draw_curves=draw_run_curves, draw_timeline=draw_timeline)


def build_parser() -> HfParser:
    return HfParser(
        PretrainConfig,
        prog="scratchformer pretrain",
        description="Pretrain a scratchformer on text and write a Hugging Face model directory to "
        "OUTPUT_DIR/model. Runs as one process, or under `accelerate launch` on several processes, GPUs "
        "or machines. With no data flags it trains on the embedded default corpus.",
    )


@command("pretrain")
def main(argv: list[str]) -> int:
    (cfg,) = build_parser().parse(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    cfg, taken = with_flags_of_resumed_run(cfg, given_fields(argv, {f.name for f in dataclasses.fields(cfg)}))
    if taken and os.environ.get("RANK", "0") == "0":
        print(f"--resume: continuing with the run's own {', '.join('--' + k for k in taken)}", file=sys.stderr)
    try:
        result = train(cfg, **PICTURES)
    except FloatingPointError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_NON_FINITE
    except RuntimeError as e:
        if not lost_a_process(e):
            raise
        print(f"error: {lost_a_process_message(e, cfg.output_dir, cfg.ddp_timeout)}", file=sys.stderr, flush=True)
        return EXIT_LOST_PROCESS
    summary = {
        k: result[k] for k in ("output_dir", "steps", "tokens_seen", "eval_loss", "eval_ppl", "eval_bpb") if k in result
    }
    if PartialState().is_main_process:
        print(json.dumps(summary, indent=2))
    return EXIT_INTERRUPTED if result["interrupted"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
