"""`scratchformer generate`: text from a checkpoint, printed token by token as it is produced.

    scratchformer generate --model run/final "Once upon a time"
    scratchformer generate --model run/final --temperature 0 --max-new-tokens 40 "def main():"
    echo "The cat" | scratchformer generate --model run/final          # one prompt per line of stdin
    scratchformer generate --model sft --chat                          # a conversation: type, Ctrl-D to end

Everything is stock transformers: `AutoModelForCausalLM`, `generate()` with a `GenerationConfig`,
`TextStreamer` for the streaming, and the tokenizer's chat template for `--chat`. The checkpoint may
be any causal-LM directory; scratchformer's own need no `--trust-remote-code` once installed.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator, Sequence

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, TextStreamer
from transformers.utils import logging as hf_logging

from scratchformer.training.checkpoint_io import CheckpointError, load_model_dir
from scratchformer.training.finetune import FinetuneError, check_model_dir, check_task, one_line

CHAT_END_TOKEN = "<|end|>"  # closes every chat turn in scratchformer's template (tokenization.bpe)
# What a checkpoint saved with another head is for, by its class name's ending.
HEAD_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "fill-mask",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchformer generate",
        description="Generate text from a causal-LM checkpoint, streaming tokens as they are produced. "
        "With no prompt argument, prompts are read from stdin, one per line.",
    )
    parser.add_argument("prompt", nargs="*", help="the text to continue (several words are joined with spaces)")
    parser.add_argument("--model", required=True, help="checkpoint directory (e.g. run/final)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default: 100)")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy decoding (default: 0.8)"
    )
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default: 0, off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    parser.add_argument("--chat", action="store_true", help="format prompts as user turns with the chat template")
    parser.add_argument("--system", default=None, help="--chat: a system message opening the conversation")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps, ... (default: the best available)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a non-scratchformer model's own code")
    return parser


def load(model_dir: str, device: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) for generation, after checking that `model_dir` holds a causal LM."""
    import scratchformer.modeling  # noqa: F401  (registers our classes: no remote code needed)

    config = check_model_dir(model_dir, trust_remote_code=trust_remote_code)
    if getattr(config, "is_causal", True) is False:
        raise FinetuneError(
            f"{model_dir} is a bidirectional encoder (is_causal=False): it fills in blanks but cannot continue "
            "text. Use pipeline('fill-mask', model=...) with it, or a decoder checkpoint here"
        )
    check_task(config, "causal-lm", model_dir)
    heads = config.architectures or []
    if heads and not any(h.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for h in heads):
        task = next((t for suffix, t in HEAD_TASKS.items() if heads[0].endswith(suffix)), "feature-extraction")
        raise FinetuneError(
            f"{model_dir} holds a {heads[0]}, not a language model, so it cannot generate text. Use it with "
            f"pipeline({task!r}, model=...), or generate with the checkpoint it was fine-tuned from"
        )
    model, tokenizer = load_model_dir(model_dir, AutoModelForCausalLM, trust_remote_code=trust_remote_code)
    model.to(device or _best_device()).eval()
    return model, tokenizer


def generation_config(model, tokenizer, args: argparse.Namespace) -> GenerationConfig:
    """The checkpoint's own generation config with the command line's choices on top."""
    if args.max_new_tokens < 1:
        raise FinetuneError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise FinetuneError(f"--temperature={args.temperature} must be 0 (greedy) or positive")
    if not 0 < args.top_p <= 1:
        raise FinetuneError(f"--top-p={args.top_p} must be in (0, 1]")
    gen = copy.deepcopy(model.generation_config)
    sampling = args.temperature > 0
    updates = dict(max_new_tokens=args.max_new_tokens, do_sample=sampling, repetition_penalty=args.repetition_penalty)
    if sampling:
        updates |= dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or None)
    else:  # greedy: unset the sampling knobs so transformers does not warn that they are ignored
        updates |= dict(temperature=None, top_p=None, top_k=None)
    gen.update(**updates)
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _as_list(gen.eos_token_id) or _as_list(tokenizer.eos_token_id)
    if args.chat:
        end = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
        if isinstance(end, int) and end != tokenizer.unk_token_id and end not in stops:
            stops.append(end)  # an assistant turn ends with <|end|>, not with </s>
    gen.eos_token_id = stops or None
    return gen


def fit_to_context(input_ids, model, max_new_tokens: int):
    """Keep the prompt's last tokens so prompt + new tokens fit the positions a model with learned or
    sinusoidal positions has; rotary models take any length. Warns on stderr when it cuts."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit or getattr(model.config, "position_embedding", None) == "rope":
        return input_ids
    if max_new_tokens >= limit:
        raise FinetuneError(
            f"--max-new-tokens={max_new_tokens} does not fit this model's context of {limit} positions; "
            f"ask for fewer than {limit}"
        )
    keep = limit - max_new_tokens
    if input_ids.shape[-1] > keep:
        print(f"(prompt cut to its last {keep} tokens to fit the {limit}-token context)", file=sys.stderr)
        return input_ids[:, -keep:]
    return input_ids


def generate_one(model, tokenizer, gen: GenerationConfig, input_ids, stream: bool = True) -> str:
    """Generate after `input_ids`, streaming the new text to stdout; return the new text."""
    input_ids = fit_to_context(input_ids, model, gen.max_new_tokens).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen, streamer=streamer
        )
    return tokenizer.decode(output[0, input_ids.shape[-1] :], skip_special_tokens=True)


def prompts_from(args: argparse.Namespace, stdin=None) -> Iterator[str]:
    """The prompt given as arguments, or else each non-blank line of stdin."""
    if args.prompt:
        prompt = " ".join(args.prompt)
        if not prompt.strip():
            raise FinetuneError(_EMPTY_PROMPT)
        yield prompt
        return
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
    seen = False
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        if line.strip():
            seen = True
            yield line.rstrip("\n")
    if not seen:
        raise FinetuneError(_EMPTY_PROMPT)


_EMPTY_PROMPT = (
    "empty prompt: give the text to continue, as an argument (scratchformer generate --model DIR "
    "'Once upon a time') or on stdin, one prompt per line"
)


def run(args: argparse.Namespace, stdin=None) -> None:
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load(args.model, args.device, args.trust_remote_code)
    if args.chat and not tokenizer.chat_template:
        raise FinetuneError(f"{args.model}'s tokenizer has no chat template; drop --chat")
    gen = generation_config(model, tokenizer, args)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    for prompt in prompts_from(args, stdin):
        if args.chat:
            history.append({"role": "user", "content": prompt})
            input_ids = tokenizer.apply_chat_template(
                history, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            reply = generate_one(model, tokenizer, gen, input_ids)
            history.append({"role": "assistant", "content": reply.strip()})
        else:
            input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            print(prompt, end="", flush=True)  # the continuation streams right after it
            generate_one(model, tokenizer, gen, input_ids)
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the streamed text
    try:
        run(args)
    except (FinetuneError, CheckpointError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def _best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


__all__ = ["build_parser", "generation_config", "load", "main", "prompts_from", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
