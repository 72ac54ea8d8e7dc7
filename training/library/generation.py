"""Decoding from a checkpoint: load a causal LM (checked to be one), the generation config with a
command line's choices on top, prompts from arguments or stdin, streaming token by token.
`scratchformer generate` is the command on top."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, TextStreamer

from .errors import UserError
from .finetuning import check_model_dir, check_task
from .model_dir import load_model_dir

CHAT_END_TOKEN = "<|end|>"  # closes every chat turn in scratchformer's template (tokenization.bpe)


# What a checkpoint saved with another head is for, by its class name's ending.
HEAD_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "fill-mask",
}


def load(model_dir: str, device: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) for generation, after checking that `model_dir` holds a causal LM."""
    import scratchformer.modeling  # noqa: F401  (registers our classes: no remote code needed)

    config = check_model_dir(model_dir, trust_remote_code=trust_remote_code)
    if getattr(config, "is_causal", True) is False:
        raise UserError(
            f"{model_dir} is a bidirectional encoder (is_causal=False): it fills in blanks but cannot continue "
            "text. Use pipeline('fill-mask', model=...) with it, or a decoder checkpoint here"
        )
    check_task(config, "causal-lm", model_dir)
    heads = config.architectures or []
    if heads and not any(h.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for h in heads):
        task = next((t for suffix, t in HEAD_TASKS.items() if heads[0].endswith(suffix)), "feature-extraction")
        raise UserError(
            f"{model_dir} holds a {heads[0]}, not a language model, so it cannot generate text. Use it with "
            f"pipeline({task!r}, model=...), or generate with the checkpoint it was fine-tuned from"
        )
    model, tokenizer = load_model_dir(model_dir, AutoModelForCausalLM, trust_remote_code=trust_remote_code)
    model.to(device or best_device()).eval()
    return model, tokenizer


def generation_config(model, tokenizer, args: argparse.Namespace) -> GenerationConfig:
    """The checkpoint's own generation config with the command line's choices on top."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise UserError(f"--temperature={args.temperature} must be 0 (greedy) or positive")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p={args.top_p} must be in (0, 1]")
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
        raise UserError(
            f"--max_new_tokens={max_new_tokens} does not fit this model's context of {limit} positions; "
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
    # The length as max_length, prompt included: with a checkpoint's saved max_length (pretraining saves
    # the context), a max_new_tokens would make transformers warn at every prompt that both are set.
    call = copy.deepcopy(gen)
    call.update(max_length=input_ids.shape[-1] + gen.max_new_tokens, max_new_tokens=None)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=call, streamer=streamer
        )
    return tokenizer.decode(output[0, input_ids.shape[-1] :], skip_special_tokens=True)


def prompts_from(args: argparse.Namespace, stdin=None) -> Iterator[str]:
    """The prompt given as arguments, or else each non-blank line of stdin."""
    if args.prompt:
        prompt = " ".join(args.prompt)
        if not prompt.strip():
            raise UserError(_EMPTY_PROMPT)
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
        raise UserError(_EMPTY_PROMPT)


_EMPTY_PROMPT = (
    "empty prompt: give the text to continue, as an argument (scratchformer generate --model DIR "
    "'Once upon a time') or on stdin, one prompt per line"
)


def run(args: argparse.Namespace, stdin=None) -> None:
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load(args.model, args.device, args.trust_remote_code)
    if args.chat and not tokenizer.chat_template:
        raise UserError(f"{args.model}'s tokenizer has no chat template; drop --chat")
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


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
