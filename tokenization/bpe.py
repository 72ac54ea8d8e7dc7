"""Train a byte-level BPE tokenizer and hand it back as a stock `PreTrainedTokenizerFast`.

Everything a tokenizer needs to be loaded by `AutoTokenizer.from_pretrained(dir)` without remote
code lives in the files `save_pretrained` writes (`tokenizer.json`, `tokenizer_config.json`,
`chat_template.jinja`), so no tokenizer class of ours ever ships. This module only builds that
object; reading files and datasets is `scratchformer.training`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# The one ordered table of special tokens. A token's id is its index here, forever: the trainer
# puts special tokens first, in this order, so the ids survive retraining on any corpus and a
# model config can hard-code them.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",  # 0: padding; distinct from </s>, so masking padding never masks a real end of text
    "<s>",  # 1: start of text; prepended by the post-processor, the attention sink every sequence shares
    "</s>",  # 2: end of text; the packer appends it between documents, generation stops on it
    "<unk>",  # 3: never produced (every byte has a token), kept because tools expect one to exist
    "<mask>",  # 4: for masked-language-model heads and fill-mask pipelines
    "<|system|>",  # 5-7: chat turn openers, see DEFAULT_CHAT_TEMPLATE
    "<|user|>",
    "<|assistant|>",
    "<|end|>",  # 8: closes every chat turn; an assistant stops on it
)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID, SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = range(len(SPECIAL_TOKENS))

# The byte-level pre-tokenizer maps each of the 256 byte values to one printable character.
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)

# <s><|user|>\nHi<|end|><|assistant|>\nHello<|end|>
# The markers are special tokens, so no whitespace is needed around them. The assistant's text
# *and* its <|end|> sit inside {% generation %}: fine-tuning on assistant tokens only
# (`return_assistant_tokens_mask=True`) then teaches the model to close its turn.
DEFAULT_CHAT_TEMPLATE = """\
{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}
    {%- endif %}
    {{- '<|' + message['role'] + '|>\\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}
    {%- else %}
        {{- message['content'] + '<|end|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\\n' }}
{%- endif %}
"""


def check_bpe_args(vocab_size: int, min_frequency: int, model_max_length: int) -> None:
    """Raise `ValueError` for settings `train_bpe` cannot honour; callers check before reading data."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {BYTE_ALPHABET_SIZE} byte symbols and "
            f"{len(SPECIAL_TOKENS)} special tokens alone take {MIN_VOCAB_SIZE} ids; choose at least "
            f"{MIN_VOCAB_SIZE} (a few thousand is typical)"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be at least 1")
    if model_max_length < 1:
        raise ValueError(f"model_max_length={model_max_length} must be at least 1")


def train_bpe(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = True,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Learn a byte-level BPE vocabulary from `texts` (strings, or batches of strings, streamed once).

    The choices, and why:

    - **No normalizer.** Unicode normalization (NFC, lowercasing, stripping accents) would change
      the user's text, and `decode(encode(s)) == s` must hold for every string.
    - **Byte-level pre-tokenizer** (GPT-2's): text is split by a regex into words, numbers,
      punctuation runs and whitespace runs (merges never cross those boundaries, so tokens stay
      meaningful), then each UTF-8 byte becomes one of 256 printable symbols. With all 256 in the
      initial alphabet, whatever bytes come later (emoji, CJK, control characters, a script the
      corpus never showed) encode without `<unk>`. No prefix space is added: it would be one more
      thing `decode` has to undo.
    - **BPE model**, merges learned greedily by pair frequency; `min_frequency` keeps one-off
      pairs out of the vocabulary. Special tokens come first in the vocabulary, in the order of
      `SPECIAL_TOKENS`, so their ids are fixed.
    - **Post-processor** prepends `<s>` (as Llama does) and adds nothing at the end, so a prompt
      can be continued; the packer of a pretraining corpus appends `</s>` itself.
    - **Byte-level decoder**: the inverse of the byte mapping, so decoding is exact.
    - **Left padding**: a batch of prompts then ends in real tokens, where generation continues.
    - **`model_max_length`** is the context the model is built for; left unset, transformers v5
      records 1e30 and truncation would never trigger.
    - **Chat template** (`DEFAULT_CHAT_TEMPLATE`), so chat-message lists work in
      `pipeline("text-generation")` and in `apply_chat_template`.

    `length` (the number of items `texts` yields) only makes the progress bar show a total. The
    result may have fewer than `vocab_size` tokens if the corpus has too few distinct pairs.
    """
    check_bpe_args(vocab_size, min_frequency, model_max_length)
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]

    tok = Tokenizer(models.BPE(unk_token=None))  # no byte is ever unknown, so no fallback to <unk>
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    bos = SPECIAL_TOKENS[BOS_ID]
    # Written into tokenizer.json too, so users of the bare `tokenizers` library get the same ids.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, BOS_ID)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[PAD_ID],
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        unk_token=SPECIAL_TOKENS[UNK_ID],
        mask_token=SPECIAL_TOKENS[MASK_ID],
        extra_special_tokens=list(SPECIAL_TOKENS[SYSTEM_ID:]),
        # No add_bos_token=True here: v5 neither saves nor reads that flag when a tokenizer.json
        # exists, so the post-processor above is the one source of truth, fresh or reloaded.
        model_max_length=model_max_length,
        padding_side="left",
        truncation_side="right",
        clean_up_tokenization_spaces=False,  # that clean-up deletes spaces before punctuation: lossy
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )


def bytes_per_token(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], batch_size: int = 1000) -> float:
    """UTF-8 bytes per token over `texts`, special tokens not counted: the compression a vocabulary
    achieves (1.0 is raw bytes; English prose with an 8k vocabulary is around 4)."""
    n_bytes = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_bytes, n_tokens
        # Through the tokenizer's __call__, not its backend: a backend keeps whatever truncation
        # the last call asked for, and would cut long texts short.
        ids = tokenizer(batch, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        n_tokens += sum(map(len, ids))
        n_bytes += sum(len(t.encode("utf-8")) for t in batch)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if n_tokens == 0:
        raise ValueError("bytes_per_token needs at least one non-empty text")
    return n_bytes / n_tokens
