"""`scratchformer serve`: transformers' own OpenAI-compatible server on a scratchformer checkpoint,
spoken to by real clients (the `openai` package and `curl`) on 127.0.0.1, with and without
continuous batching. Every answer is the one greedy `generate()` gives in this process; a chat ends
at the end-of-turn token; a prompt longer than the model's positions is a 400 naming it; a reply
that would run past them ends cleanly; SIGTERM stops the server, its port free, nothing left behind.
The stock Llama export is served by plain `transformers serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
from scratchformer.tokenization import train_bpe
from scratchformer.training import serve
from scratchformer.training.library.run_dir import generation_config

openai = pytest.importorskip("openai", reason="the serve extra (transformers[serving]) is not installed")

BIN = Path(sys.executable).parent
CONTEXT = 64
CHATS = {"What is a list?": "A sequence of values.", "What is a dict?": "Keys mapped to values."}
ENDLESS = "The for statement iterates over a sequence. "
# transformers < 5.25 answers a streamed request from a worker thread: a prompt the model refuses
# there arrives as an error event of a stream that started with 200 (5.25 checks the length first).
CHECKS_LENGTH_FIRST = Version(transformers.__version__) >= Version("5.25")


def learn_the_chats(model, tokenizer, steps: int = 150):
    """A few seconds of training on two conversations, so that the model answers them and closes its
    turn with <|end|> (the server must stop there, not at max_tokens), and on a text that fills the
    context without ending (its continuation runs into the end of the positions)."""
    rows = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                          return_dict=True)["input_ids"] for q, a in CHATS.items()]  # fmt: skip
    rows.append(tokenizer(ENDLESS * 20)["input_ids"][:CONTEXT])
    length = max(len(r) for r in rows)
    batch = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows])
    labels = batch.masked_fill(batch == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A gpt2-preset checkpoint (learned positions: a table of 64), saved as pretraining saves one."""
    out = tmp_path_factory.mktemp("serve") / "model"
    texts = [f"{q} {a}" for q, a in CHATS.items()] * 30 + [ENDLESS] * 30
    tokenizer = train_bpe(texts, vocab_size=300, show_progress=False, model_max_length=CONTEXT)
    config = ScratchformerConfig.from_preset(
        "gpt2", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = learn_the_chats(ScratchformerForCausalLM(config), tokenizer)
    model.generation_config = generation_config(config, tokenizer)  # samples by default; ends at </s> and <|end|>
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reference(checkpoint):
    """Greedy generate() in this process, as the server's answers must be."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def greedy(ids: list[int], max_new_tokens: int) -> tuple[str, list[int]]:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, len(ids):].tolist()
        return tokenizer.decode(new, skip_special_tokens=True), new

    def chat(question: str, max_new_tokens: int = 20) -> tuple[str, list[int]]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]  # fmt: skip
        return greedy(ids, max_new_tokens)

    def completion(prompt: str, max_new_tokens: int) -> str:
        return greedy(tokenizer(prompt)["input_ids"], max_new_tokens)[0]

    def ends_by_itself(prompt: str, max_new_tokens: int) -> bool:
        return greedy(tokenizer(prompt)["input_ids"], max_new_tokens)[1][-1] in model.generation_config.eos_token_id

    completion.ends_by_itself = ends_by_itself
    return chat, completion


@pytest.fixture(scope="module", params=["plain", "continuous_batching"])
def server(request, checkpoint, launch_server, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"server-{request.param}")
    flags = ["--continuous_batching"] if request.param == "continuous_batching" else []
    running = launch_server([str(BIN / "scratchformer"), "serve", "--model", str(checkpoint), *flags], root)
    running.mode = request.param
    try:
        yield running
    finally:
        running.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120, max_retries=0)


def curl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args], capture_output=True, text=True,
                          timeout=timeout + 10)  # fmt: skip


def ask(question: str, **kwargs) -> dict:
    """A greedy chat request's fields, but the model's."""
    return {"messages": [{"role": "user", "content": question}], "temperature": 0, **kwargs}


@pytest.mark.slow
def test_chat_is_greedy_generate_and_ends_at_the_end_of_turn(server, checkpoint, reference):
    chat, _ = reference
    for question, answer in CHATS.items():
        expected, tokens = chat(question)
        assert expected == answer and len(tokens) < 20  # the premise: the model closes its turn by itself
        reply = client(server).chat.completions.create(**{**ask(question, max_tokens=20), "model": str(checkpoint)})
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens == len(tokens)  # <|end|> counted, not shown


@pytest.mark.slow
def test_streamed_chat_comes_in_chunks_then_a_finish_reason(server, checkpoint, reference):
    chat, _ = reference
    question = "What is a dict?"
    stream = client(server).chat.completions.create(
        **{**ask(question, max_tokens=20), "model": str(checkpoint)}, stream=True
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1 and "".join(texts) == chat(question)[0]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_text_completion_is_greedy_generate(server, checkpoint, reference):
    _, completion = reference
    for prompt in ("The for statement", "Keys"):
        reply = client(server).completions.create(model=str(checkpoint), prompt=prompt, max_tokens=6, temperature=0)
        assert reply.choices[0].text == completion(prompt, 6)
        stopped = completion.ends_by_itself(prompt, 6)
        assert reply.choices[0].finish_reason == ("stop" if stopped else "length"), prompt


@pytest.mark.slow
def test_curl_health_models_chat_and_its_stream(server, checkpoint, reference):
    chat, _ = reference
    assert json.loads(curl(f"{server.url}/health").stdout) == {"status": "ok"}
    models = json.loads(curl(f"{server.url}/v1/models").stdout)
    assert models["object"] == "list"
    if CHECKS_LENGTH_FIRST:  # before 5.25, /v1/models lists the Hugging Face cache only, not the served model
        assert [m["id"] for m in models["data"]] == [str(checkpoint)]
    body = json.dumps({**ask("What is a list?", max_tokens=20), "model": str(checkpoint)})
    answer = json.loads(curl(f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json",
                             "-d", body).stdout)  # fmt: skip
    assert answer["choices"][0]["message"]["content"] == chat("What is a list?")[0]
    streamed = curl("-N", f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d",
                    json.dumps({**json.loads(body), "stream": True})).stdout  # fmt: skip
    events = [line.removeprefix("data: ") for line in streamed.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == chat("What is a list?")[0]
    assert [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")][-1] == "stop"


@pytest.mark.slow
def test_a_prompt_longer_than_the_positions_is_a_400_naming_them(server, checkpoint):
    long = "The for statement iterates over a sequence. " * 20  # ~140 tokens for 64 positions
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).completions.create(model=str(checkpoint), prompt=long, max_tokens=5, temperature=0)
    assert "64" in str(refused.value.body) and "prompt" in str(refused.value.body).lower() or "input" in str(
        refused.value.body), refused.value.body
    status = curl("-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/v1/chat/completions", "-H",
                  "Content-Type: application/json", "-d",
                  json.dumps({**ask(long, max_tokens=5), "model": str(checkpoint)})).stdout  # fmt: skip
    assert status == "400"
    streamed = {**ask(long, max_tokens=5), "model": str(checkpoint), "stream": True}
    if CHECKS_LENGTH_FIRST or server.mode == "continuous_batching":  # refused before the stream starts
        with pytest.raises(openai.BadRequestError) as refused:
            client(server).chat.completions.create(**streamed)
        assert "64" in str(refused.value.body), refused.value.body
    else:  # see CHECKS_LENGTH_FIRST: the stream carries the refusal, which the client raises
        with pytest.raises(openai.APIError) as refused:
            list(client(server).chat.completions.create(**streamed))
        assert "64" in str(refused.value.body)


@pytest.mark.slow
def test_a_reply_that_would_run_past_the_positions_ends_where_they_do(server, checkpoint, reference):
    _, completion = reference
    prompt = ENDLESS  # the model continues it without ending: only the positions can end it
    expected = completion(prompt, 200)
    reply = client(server).completions.create(model=str(checkpoint), prompt=prompt, max_tokens=200, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == CONTEXT
    # The server goes on answering (with continuous batching, one forward past the table would have
    # stopped its batcher for every request).
    assert client(server).completions.create(model=str(checkpoint), prompt="The", max_tokens=3).choices[0].text


@pytest.mark.slow
def test_concurrent_streams_all_complete_each_as_greedy_alone(server, checkpoint, reference):
    """The load test, small: 8 streamed requests at once, each the answer it gets alone."""
    chat, completion = reference
    prompts = ["The for statement", "A sequence", "Keys mapped", "What is", "The", "values", "A list", "dict"]

    def stream(prompt: str) -> str:
        chunks = client(server).completions.create(model=str(checkpoint), prompt=prompt, max_tokens=8,
                                                   temperature=0, stream=True)  # fmt: skip
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(stream, prompts, timeout=300))
    assert answers == [completion(p, 8) for p in prompts]


@pytest.mark.slow
def test_sigterm_stops_the_server_and_leaves_nothing_behind(server):
    """Last in this file, so the server it stops is the one the tests above used."""
    report = server.stop()
    assert report["returncode"] in (0, -15) and not report["killed"], (report, server.log[-3000:])
    assert report["orphans"] == [] and report["port_free"], report


@pytest.mark.slow
def test_the_stock_llama_export_serves_with_plain_transformers_serve(tmp_path, launch_server):
    from scratchformer.training.library.export import export_stock

    tokenizer = train_bpe([f"{q} {a}" for q, a in CHATS.items()] * 30, vocab_size=290, show_progress=False)
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), hidden_size=32,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=CONTEXT, initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    ScratchformerForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export_stock(str(tmp_path / "model"), "llama", str(tmp_path / "llama"))
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert type(llama).__name__ == "LlamaForCausalLM"
    ids = tokenizer("The for statement")["input_ids"]
    expected = tokenizer.decode(llama.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):],
                                skip_special_tokens=True)  # fmt: skip

    server = launch_server([str(BIN / "transformers"), "serve", str(tmp_path / "llama"), "--host", "127.0.0.1"],
                           tmp_path)  # fmt: skip
    try:
        reply = client(server).completions.create(model=str(tmp_path / "llama"), prompt="The for statement",
                                                  max_tokens=6, temperature=0)  # fmt: skip
        assert reply.choices[0].text == expected
    finally:
        report = server.stop()
    assert report["orphans"] == [] and report["port_free"] and not report["killed"], report


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path, capsys):
    assert serve.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    from scratchformer.modeling import ScratchformerForSequenceClassification

    tokenizer = train_bpe(["a b c"] * 10, vocab_size=270, show_progress=False)
    config = ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, num_labels=2)  # fmt: skip
    ScratchformerForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    capsys.readouterr()
    assert serve.main(["--model", str(tmp_path / "clf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ScratchformerForSequenceClassification" in err[0] and "causal" in err[0], err
