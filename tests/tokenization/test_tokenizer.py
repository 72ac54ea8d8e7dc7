"""The tokenizer `train_bpe` returns: lossless on any Unicode, fixed special-token ids, a stock
`AutoTokenizer` round trip without remote code, a chat template, padding and truncation for
generation, and ids that drive a scratchformer model through `pipeline`."""

import json

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast, pipeline

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import (
    ASSISTANT_ID,
    BOS_ID,
    DEFAULT_CHAT_TEMPLATE,
    END_ID,
    EOS_ID,
    MASK_ID,
    MIN_VOCAB_SIZE,
    PAD_ID,
    SPECIAL_TOKENS,
    SYSTEM_ID,
    UNK_ID,
    USER_ID,
    bytes_per_token,
    train_bpe,
)
from scratchformer.training.library.data import default_corpus

VOCAB = 400
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A mutable sequence."},
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(default_corpus("train"), vocab_size=VOCAB, model_max_length=64, show_progress=False)


@pytest.fixture(scope="module")
def reloaded(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path), path


# -- lossless on any text -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
@example("")
@example("\r\n\r\n")
@example(" " * 300 + "\t\t\n\n  ")
@example("👩‍👩‍👧‍👦 🇺🇦 🤗")  # emoji joined by zero-width joiners, flags
@example("東京都の天気は晴れ")  # CJK, never seen in training
@example("e\u0301 n\u0303 \u0915\u094d\u0937")  # combining marks: must not be normalized away
@example("\x00\x01\x07\x1b[0m\x7f\u200b\ufeff")  # control characters, escape codes, zero-width, BOM
@example("<s> literal </s>")
def test_round_trip_any_unicode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert UNK_ID not in ids  # every byte has a token
    assert tok.encode(text) == [BOS_ID] + ids


def test_round_trip_skipping_the_special_tokens_the_tokenizer_adds(tok):
    text = "  Hello,\tworld!\r\n\u00e9\u0301"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


# -- special tokens -------------------------------------------------------------------------------


def test_special_token_ids_are_fixed(tok):
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
        UNK_ID,
        MASK_ID,
    )
    assert tok.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]) == [
        SYSTEM_ID,
        USER_ID,
        ASSISTANT_ID,
        END_ID,
    ]
    assert tok.extra_special_tokens == list(SPECIAL_TOKENS[SYSTEM_ID:])
    # special tokens in text are single ids, never split into bytes
    ids = tok.encode("<|user|>hi<|end|>", add_special_tokens=False)
    assert ids[0] == USER_ID and ids[-1] == END_ID


def test_ids_do_not_depend_on_the_corpus():
    other = train_bpe(["zzz qqq " * 50, "日本語"], vocab_size=MIN_VOCAB_SIZE + 5, show_progress=False)
    assert other.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert other.decode(other.encode("日本語 and English", add_special_tokens=False)) == "日本語 and English"


def test_vocab_size_is_respected_and_checked(tok):
    assert len(tok) == VOCAB
    assert len(train_bpe(["abc"], vocab_size=MIN_VOCAB_SIZE, show_progress=False)) == MIN_VOCAB_SIZE
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small: the 256 byte symbols and 9 special.*265"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe(["abc"], vocab_size=300, min_frequency=0)


# -- save, reload, no remote code -----------------------------------------------------------------


def test_reload_with_auto_tokenizer_keeps_everything(tok, reloaded):
    again, path = reloaded
    assert isinstance(again, PreTrainedTokenizerFast)  # the stock class: nothing of ours to import
    assert sorted(p.name for p in path.iterdir()) == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TokenizersBackend" and "auto_map" not in config
    assert again.get_vocab() == tok.get_vocab()
    assert again.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert again.all_special_ids == tok.all_special_ids
    assert (again.model_max_length, again.padding_side, again.truncation_side) == (64, "left", "right")
    assert again.chat_template == DEFAULT_CHAT_TEMPLATE
    for text in ["The for statement", " spaces  and\ttabs\n", "🤗 <|end|>"]:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
        assert again.decode(again.encode(text, add_special_tokens=False)) == text


def test_tokenizer_json_alone_gives_the_same_ids(tok, reloaded):
    # Users of the bare `tokenizers` library (or any port of it) read only tokenizer.json.
    from tokenizers import Tokenizer

    _, path = reloaded
    bare = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert bare.encode("Hello there").ids == tok("Hello there")["input_ids"]


# -- chat template --------------------------------------------------------------------------------


def test_chat_template_renders_the_markers(reloaded):
    again, _ = reloaded
    assert again.apply_chat_template(CHAT, tokenize=False) == (
        "<s><|system|>\nBe brief.<|end|><|user|>\nWhat is a list?<|end|><|assistant|>\nA mutable sequence.<|end|>"
    )
    prompt = again.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is a list?<|end|><|assistant|>\n")
    prefill = again.apply_chat_template(CHAT, tokenize=False, continue_final_message=True)
    assert prefill.endswith("<|assistant|>\nA mutable sequence.")  # the pipeline's assistant prefill
    ids = again.apply_chat_template(CHAT[:2], add_generation_prompt=True)["input_ids"]
    assert ids[:2] == [BOS_ID, SYSTEM_ID] and ids[-2] == ASSISTANT_ID  # then the "\n" token
    with pytest.raises(Exception, match="roles are system, user and assistant"):
        again.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_tokens_mask_covers_the_reply_and_its_end(reloaded):
    again, _ = reloaded
    out = again.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    reply = [i for i, m in zip(ids, mask) if m]
    assert again.decode(reply) == "A mutable sequence.<|end|>"
    assert reply[-1] == END_ID and sum(mask) == len(reply) and mask[-len(reply) :] == [1] * len(reply)


# -- padding and truncation -----------------------------------------------------------------------


def test_batch_padding_is_on_the_left(tok):
    batch = tok(["Hi", "A much longer prompt than the first"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long)
    n_pad = len(long) - len(tok("Hi")["input_ids"])
    assert short[:n_pad] == [PAD_ID] * n_pad and short[n_pad] == BOS_ID
    assert batch["attention_mask"][0] == [0] * n_pad + [1] * (len(short) - n_pad)
    assert batch["attention_mask"][1] == [1] * len(long)


def test_truncation_keeps_bos_and_defaults_to_model_max_length(tok):
    long = "word " * 500
    ids = tok(long, truncation=True)["input_ids"]
    assert len(ids) == tok.model_max_length == 64 and ids[0] == BOS_ID
    ids = tok([long, "short"], truncation=True, max_length=10, padding="max_length")["input_ids"]
    assert [len(x) for x in ids] == [10, 10]
    assert ids[0][0] == BOS_ID and ids[1][-1] != PAD_ID and ids[1][0] == PAD_ID


def test_bytes_per_token_beats_raw_bytes(tok):
    bpt = bytes_per_token(tok, default_corpus("validation"))
    assert 1.5 < bpt < 8
    with pytest.raises(ValueError):
        bytes_per_token(tok, [])


# -- drives a scratchformer model -----------------------------------------------------------------


def test_ids_drive_a_scratchformer_model_through_pipeline(tok):
    torch.manual_seed(0)
    config = ScratchformerConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = ScratchformerForCausalLM(config).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tok)

    prompt = "The assert statement"
    out = generator(prompt, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert isinstance(out, str) and out.startswith(prompt) and len(out) > len(prompt)

    batch = generator(["Hi", "A longer prompt here"], max_new_tokens=3, do_sample=False, batch_size=2)
    assert [b[0]["generated_text"][: len(p)] for b, p in zip(batch, ["Hi", "A longer prompt here"])] == [
        "Hi",
        "A longer prompt here",
    ]

    chat = generator(CHAT[:2], max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert chat[:2] == CHAT[:2] and chat[-1]["role"] == "assistant" and isinstance(chat[-1]["content"], str)
