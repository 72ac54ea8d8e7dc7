"""`scratchformer eval`: a checkpoint's loss, perplexity and bits per byte on your text, computed as
pretraining computes its validation figures (the same packing into blocks, the same arithmetic):

    scratchformer eval --model runs/mini/model                                  # the embedded corpus's validation split
    scratchformer eval --model runs/mini/model --validation_files notes.txt --output_file results.json
    scratchformer eval --model mini-llama --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1
    scratchformer eval --model runs/mini/model --tasks hellaswag,arc_easy       # needs `pip install lm-eval`

Any causal-LM directory works: scratchformer's own, or a stock LlamaForCausalLM / GPT2LMHeadModel.
"""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from scratchformer.training.arguments import Parser, command
from scratchformer.training.library.evaluation import (
    EvalConfig,
    check_eval_config,
    check_output_file,
    evaluate_checkpoint,
    parse_tasks,
    require_lm_eval,
    run_harness,
    write_json_atomically,
)


def build_parser() -> Parser:
    p = Parser(
        prog="scratchformer eval",
        description="Score a causal-LM checkpoint on text: validation loss (nats/token), perplexity and bits "
        "per byte, as pretraining reports them. With no data flag: the embedded corpus's validation split.",
    )
    p.add("--model", required=True, metavar="DIR", help="checkpoint directory (e.g. runs/mini/model)")
    p.add("--validation_files", nargs="+", metavar="FILE",
          help="local text files, all of one type (.txt, .jsonl, .json, .csv, .parquet)")  # fmt: skip
    p.add("--dataset_name", help="a Hugging Face hub dataset (needs network) or a local dataset folder")
    p.add("--dataset_config_name", help="the dataset's configuration name")
    p.add("--validation_split", default="validation", help="split of --dataset_name to score (default: validation)")
    p.add("--text_column", default="text", help="column holding the text (default: text)")
    p.add(
        "--block_size",
        type=int,
        default=None,
        help="tokens per block (default: the checkpoint's pretraining block size, else its positions up to 1024)",
    )
    p.add("--per_device_eval_batch_size", type=int, default=8, help="blocks per forward pass (default: 8)")
    p.add("--max_eval_samples", type=int, default=None, help="score at most this many blocks (default: all)")
    p.add("--output_file", metavar="FILE", help="also write the results here, as JSON")
    p.add(
        "--tasks",
        default=None,
        help="lm-evaluation-harness tasks to run too, comma-separated (needs `pip install lm-eval`)",
    )
    p.add("--trust_remote_code", action="store_true", help="allow a non-scratchformer model's own code")
    p.add("--no_document_masking", action="store_true",
          help="score documents joined under one causal mask (pretrain --no_document_masking's blocks); by default "
          "each document is scored alone, as pretraining scores its validation documents")  # fmt: skip
    return p


@command("eval")
def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    tasks = None
    if args.tasks is not None:
        tasks = parse_tasks(args.tasks)
        require_lm_eval()
    cfg = EvalConfig(
        model=args.model, validation_files=args.validation_files, dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name, validation_split=args.validation_split,
        text_column=args.text_column, block_size=args.block_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size, max_eval_samples=args.max_eval_samples,
        trust_remote_code=args.trust_remote_code, document_masking=not args.no_document_masking,
    )  # fmt: skip
    check_eval_config(cfg)
    if args.output_file:
        check_output_file(args.output_file)
    hf_logging.disable_progress_bar()
    results = evaluate_checkpoint(cfg)
    print(f"model:          {results['model']} ({results['model_class']})")
    print(f"data:           {results['validation_data']}")
    print(f"scored:         {results['eval_tokens']:,} tokens, {results['eval_bytes']:,} bytes "
          f"({results['eval_blocks']} blocks of {results['block_size']} tokens)")  # fmt: skip
    print(f"eval_loss:      {results['eval_loss']:.4f} nats/token")
    print(f"perplexity:     {results['eval_ppl']:.2f}")
    print(f"bits per byte:  {results['eval_bpb']:.4f}")
    if tasks:
        results["tasks"] = run_harness(cfg.model, tasks, batch_size=cfg.per_device_eval_batch_size,
                                       trust_remote_code=cfg.trust_remote_code)  # fmt: skip
        for task, metrics in results["tasks"].items():
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"{task}: {shown}")
    if args.output_file:
        print(f"wrote {write_json_atomically(results, args.output_file)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
