"""Decoding from a checkpoint: load a causal LM (checked to be one), the generation config with the
caller's choices on top, the prompt fitted to the context, new text handed to a streamer as it comes.
Plain arguments in, text out: `scratchformer generate` (training/generate.py) owns the command line,
the prompts from arguments or stdin and the printing."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

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


def generation_config(
    model,
    tokenizer,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_p: float = 0.95,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    chat: bool = False,
) -> GenerationConfig:
    """The checkpoint's own generation config with these choices on top (temperature 0: greedy;
    `chat`: an assistant turn also ends at the template's end-of-turn token)."""
    if max_new_tokens < 1:
        raise UserError(f"--max_new_tokens={max_new_tokens} must be at least 1")
    if temperature < 0:
        raise UserError(f"--temperature={temperature} must be 0 (greedy) or positive")
    if not 0 < top_p <= 1:
        raise UserError(f"--top_p={top_p} must be in (0, 1]")
    gen = copy.deepcopy(model.generation_config)
    sampling = temperature > 0
    updates = dict(max_new_tokens=max_new_tokens, do_sample=sampling, repetition_penalty=repetition_penalty)
    if sampling:
        updates |= dict(temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:  # greedy: unset the sampling knobs so transformers does not warn that they are ignored
        updates |= dict(temperature=None, top_p=None, top_k=None)
    gen.update(**updates)
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _as_list(gen.eos_token_id) or _as_list(tokenizer.eos_token_id)
    if chat:
        end = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
        if isinstance(end, int) and end != tokenizer.unk_token_id and end not in stops:
            stops.append(end)  # an assistant turn ends with <|end|>, not with </s>
    gen.eos_token_id = stops or None
    return gen


def context_room(model, max_new_tokens: int) -> int | None:
    """How many prompt tokens fit before `max_new_tokens` new ones in the positions a model with
    learned or sinusoidal positions has (None: rotary models take any length)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit or getattr(model.config, "position_embedding", None) == "rope":
        return None
    if max_new_tokens >= limit:
        raise UserError(
            f"--max_new_tokens={max_new_tokens} does not fit this model's context of {limit} positions; "
            f"ask for fewer than {limit}"
        )
    return limit - max_new_tokens


def fit_to_context(input_ids, model, max_new_tokens: int):
    """The prompt's last tokens, as many as `context_room` leaves (all of them for a rotary model)."""
    keep = context_room(model, max_new_tokens)
    return input_ids if keep is None or input_ids.shape[-1] <= keep else input_ids[:, -keep:]


def prompt_ids(tokenizer, prompt: str, history: list[dict[str, str]] | None = None):
    """The token ids to continue: the prompt itself, or with a chat `history` (the prompt already
    appended as the user's turn) the conversation through the template, opening the assistant's turn."""
    if history is None:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    return tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]  # fmt: skip


def generate_one(model, tokenizer, gen: GenerationConfig, input_ids, streamer=None) -> str:
    """Generate after `input_ids` (cut to fit the context), handing each new piece to `streamer`
    (a `transformers` streamer, e.g. `TextStreamer`) as it comes; return the new text."""
    input_ids = fit_to_context(input_ids, model, gen.max_new_tokens).to(model.device)
    # The length as max_length, prompt included: with a checkpoint's saved max_length (pretraining saves
    # the context), a max_new_tokens would make transformers warn at every prompt that both are set.
    call = copy.deepcopy(gen)
    call.update(max_length=input_ids.shape[-1] + gen.max_new_tokens, max_new_tokens=None)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=call, streamer=streamer
        )
    return tokenizer.decode(output[0, input_ids.shape[-1] :], skip_special_tokens=True)


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
