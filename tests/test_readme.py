"""The README runs as written: every ```bash and ```python block, in order, in one scratch directory,
each command line exactly as the README prints it. SCRATCHFORMER_SMOKE_TEST=1 caps the training and
generation lengths (training/arguments.py lists the flags it adds), so the run takes minutes, not
hours. A block that cannot run here says why in a `<!-- readme-test: skip (reason) -->` line just
above it; the reader's own files (notes.txt, train.jsonl, a saved GPT-2...) are written first, small."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from scratchformer.training.library.data import default_corpus

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Above a block: `skip (why)`, or `background (why)` for a server the blocks after it talk to: the test
# starts it, waits until it answers on its --port (8000 unless given), and stops it by its PID when
# the next background block starts or the README ends.
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|background)\s*\((?P<why>.+)\)\s*-->")

pytestmark = pytest.mark.slow


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    text: str
    skip: str | None
    background: str | None = None


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of `text` with its language, line and skip reason (the marker line directly
    above the fence)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.search(lines[i - 1]) if i else None
        why = {marker.group("kind"): marker.group("why")} if marker else {}
        blocks.append(Block(match.group(1), i + 1, "\n".join(lines[i + 1:end]), why.get("skip"), why.get("background")))
        i = end + 1
    return blocks


def write_the_readers_files(root: Path) -> None:
    """The files the README's commands name as the reader's own, small, from the embedded corpus."""
    docs = [d[:3000] for d in list(default_corpus("train"))[:30]]
    val = [d[:3000] for d in list(default_corpus("validation"))[:4]]
    (root / "notes.txt").write_text("\n\n".join(docs[:15]))
    (root / "more.txt").write_text("\n\n".join(docs[15:]))
    (root / "train.txt").write_text("\n\n".join(docs))
    (root / "val.txt").write_text("\n\n".join(val))

    def jsonl(name: str, rows: list[dict]) -> None:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("data.jsonl", [{"body": d} for d in docs])
    rng = random.Random(0)
    words = " ".join(docs).split()
    passages = [" ".join(words[i:i + 12]) for i in range(0, 12 * 120, 12)]
    scrambled = [" ".join(w[0] + "".join(rng.sample(w[1:-1], len(w) - 2)) + w[-1] if len(w) > 3 else w
                          for w in p.split()) for p in passages]
    rows = [{"text": p, "label": "original"} for p in passages] + [{"text": p, "label": "scrambled"} for p in scrambled]
    rng.shuffle(rows)
    jsonl("train.jsonl", rows[:200])
    jsonl("dev.jsonl", rows[200:])
    names = ["Carol", "Ada", "Guido", "Tim"]
    jsonl("ner.jsonl", [{"tokens": [rng.choice(names), "is", str(rng.randint(10, 99))], "ner_tags": ["B-PER", "O", "O"]}
                        for _ in range(40)])
    jsonl("chats.jsonl", [{"messages": [{"role": "user", "content": f"What is {w}?"},
                                        {"role": "assistant", "content": f"{w} is a word."}]}
                          for w in words[:40]])
    jsonl("pairs.jsonl", [{"source": " ".join(w), "target": " ".join(reversed(w))}
                          for w in (words[i:i + rng.randint(2, 5)] for i in range(0, 400, 5))])
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                           bos_token_id=0, eos_token_id=0))
    gpt2.save_pretrained(root / "my-gpt2")


def test_every_block_is_runnable_or_says_why_not():
    blocks = readme_blocks(README.read_text())
    runnable = [b for b in blocks if b.language in ("bash", "python") and not b.skip]
    assert len(runnable) >= 12, [b.line for b in runnable]
    for b in blocks:
        if b.language in ("bash", "python"):
            assert b.skip is None or len(b.skip) > 10, f"README line {b.line}: a skip needs its reason"
        if b.background:
            assert b.language == "bash" and "\n" not in b.text.strip(), f"README line {b.line}: one command"
        assert b.language in ("bash", "python", ""), f"README line {b.line}: unknown block language {b.language!r}"


def test_readme_blocks_parse_with_their_skip_reasons():
    text = "intro\n```bash\necho a\n```\n<!-- readme-test: skip (needs a GPU here) -->\n```python\nx = 1\n```\n"
    blocks = readme_blocks(text)
    assert [(b.language, b.line, b.text, b.skip) for b in blocks] == [
        ("bash", 2, "echo a", None), ("python", 6, "x = 1", "needs a GPU here")]
    (server,) = readme_blocks("<!-- readme-test: background (a server for the blocks below) -->\n```bash\nserve\n```\n")
    assert (server.skip, server.background) == (None, "a server for the blocks below")


# Minutes (every command of the README in order, servers included: 509 s of one core here), so a CI step
# of its own with the other long tests (make test-long), not in make test-pinned.
@pytest.mark.long
def test_the_readme_runs_as_written(tmp_path, launch_server):
    write_the_readers_files(tmp_path)
    env = {**os.environ, "SCRATCHFORMER_SMOKE_TEST": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran, servers = [], []
    try:
        run_the_blocks(tmp_path, env, launch_server, ran, servers)
    finally:
        reports = [server.stop() for server in servers]
    for server, report in zip(servers, reports):
        assert not report["killed"] and not report["orphans"] and report["port_free"], (report, server.log[-3000:])
    # What the blocks promise is there: the models, the pictures, the exports.
    for path in ("tok/tokenizer.json", "runs/mini/model/model.safetensors", "runs/gpt2/model/config.json",
                 "my-clf/config.json", "my-tagger/config.json", "my-chat/config.json", "my-encoder/config.json",
                 "lora-clf/config.json", "attention.png", "attention.html", "positions.png", "converted/config.json",
                 "mini-llama/config.json", "mini-qwen3/config.json", "mini-gpt2/config.json", "mini.gguf",
                 "qwen.gguf", "results.json", "my-model/config.json", "my-s2s/config.json",
                 "my-s2s/finetune_results.json", "my-s2s/README.md"):
        assert (tmp_path / path).exists(), path
    assert len(ran) >= 12 and len(servers) >= 1


def run_the_blocks(tmp_path: Path, env: dict, launch_server, ran: list, servers: list) -> None:
    for block in readme_blocks(README.read_text()):
        if block.language not in ("bash", "python") or block.skip:
            continue
        if block.background:
            if servers:
                servers[-1].stop()
            port = re.search(r"--port[ =](\d+)", block.text)
            server_env = {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
            (tmp_path / "hf_home" / "hub").mkdir(parents=True, exist_ok=True)
            servers.append(launch_server(["bash", "-c", "exec " + block.text.strip()], tmp_path,
                                         port=int(port.group(1)) if port else 8000, env=server_env))  # fmt: skip
            ran.append(block.line)
            continue
        shell = ["bash", "-euo", "pipefail", "-c"] if block.language == "bash" else [sys.executable, "-c"]
        argv = [*shell, block.text]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (
            f"README block at line {block.line} failed (exit {proc.returncode}):\n{block.text}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-3000:]}\n--- stdout (tail) ---\n{proc.stdout[-1500:]}")
        assert "Traceback" not in proc.stderr, f"README block at line {block.line}:\n{proc.stderr[-3000:]}"
        ran.append(block.line)
