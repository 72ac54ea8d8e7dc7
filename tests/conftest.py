"""Shared fixtures: a tiny config factory and a subprocess runner that cannot import scratchformer.

Other test files use these through pytest fixtures only (tests/ is not a package)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchformer.modeling import ScratchformerConfig

# tests/interop runs real external tools (lm-eval, TRL, gguf, llama.cpp, vLLM...), installed in
# their own environment by `make interop` / `make interop-ci`, which set SCRATCHFORMER_INTEROP=1.
# The main suite does not collect them: its environment lacks those tools by design.
collect_ignore = [] if os.environ.get("SCRATCHFORMER_INTEROP") == "1" else ["interop"]

# Tests run tiny models under `pytest -n 2` on two cores. One intra-op thread per worker: with more,
# OpenMP threads spin-wait between millisecond-sized ops, which measured 3x the CPU time for the same
# tests (and worse when the two workers oversubscribe the cores).
torch.set_num_threads(1)

# Width 32, 2 layers, 4 heads: every test runs in milliseconds on a CPU. 97 is prime, so a vocabulary
# index can never be confused with a width or a length in a shape error.
TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


@pytest.fixture
def tiny_config() -> Callable[..., ScratchformerConfig]:
    """`tiny_config(**overrides)`, or `tiny_config(preset="paper", **overrides)` for a named family."""

    def make(preset: str | None = None, **overrides) -> ScratchformerConfig:
        fields = {**TINY, **overrides}
        if preset is not None:
            return ScratchformerConfig.from_preset(preset, **fields)
        return ScratchformerConfig(**fields)

    return make


# Prepended to every script run by `run_without_scratchformer`. A `None` entry in sys.modules makes
# any later `import scratchformer` raise ImportError, whatever the installed editable finder would do,
# so the script sees only what a checkpoint directory ships.
_BLOCK_SCRATCHFORMER = """\
import sys
sys.modules["scratchformer"] = None
try:
    import scratchformer  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("scratchformer is importable; this subprocess must not see it")
"""


def _run_without_scratchformer(code: str, cwd: str | os.PathLike, timeout: float = 180) -> subprocess.CompletedProcess:
    cwd = Path(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME", "TRANSFORMERS_CACHE")}
    # A private HF_HOME: remote code is copied into $HF_HOME/modules, so nothing cached by an earlier
    # run (or another test) can stand in for the checkpoint's own files. Offline: no Hub lookups.
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    script = cwd / "run_without_scratchformer.py"
    script.write_text(_BLOCK_SCRATCHFORMER + textwrap.dedent(code))
    # cwd is the caller's tmp dir, never the repo root, so no bare `modeling/` folder is on sys.path.
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_without_scratchformer() -> Callable[..., subprocess.CompletedProcess]:
    """`run_without_scratchformer(code, cwd)` runs `code` in a fresh interpreter (cwd=`cwd`, a tmp dir)
    where `import scratchformer` raises ImportError, HF_HOME points inside `cwd` and the Hub is offline.
    Returns the CompletedProcess (text stdout/stderr); assert on `returncode` yourself."""
    return _run_without_scratchformer


def _assert_same_decoding(
    a, b, input_ids: torch.Tensor, *, a_kwargs: dict | None = None, b_kwargs: dict | None = None,
    min_distinct: int = 4, atol: float = 1e-5, **kwargs,
) -> torch.Tensor:
    """Greedy (or beam, via kwargs) decoding with `a` and `b` must agree token for token AND step for
    step: every step's logits within `atol`. Tokens alone are not enough: a model that repeats one
    token hides a cache bug, so each row's continuation must also hold `min_distinct` distinct
    tokens. Returns the sequences."""
    runs = []
    for model, extra in ((a, a_kwargs or {}), (b, b_kwargs or {})):
        with torch.no_grad():
            runs.append(
                model.generate(input_ids, do_sample=False, output_logits=True, return_dict_in_generate=True,
                               **kwargs, **extra)
            )
    first, second = runs
    assert torch.equal(first.sequences, second.sequences), (
        f"tokens differ:\n{first.sequences.tolist()}\n{second.sequences.tolist()}"
    )
    assert len(first.logits) == len(second.logits)
    for step, (la, lb) in enumerate(zip(first.logits, second.logits, strict=True)):
        # Relative to the logits' scale: float32 rounds logits of 10 at ~1e-6 relative, while a cache
        # bug (an empty slot attended, a position off by one) moves them by a tenth or more.
        scale = max(1.0, la.float().abs().max().item())
        diff = (la.float() - lb.float()).abs().max().item()
        assert diff <= atol * scale, f"step {step}: logits differ by {diff:.2e} (> {atol:.0e} x {scale:.1f})"
    # An encoder-decoder's sequences are the decoder's: its start token, then the new tokens.
    prompt_length = 1 if a.config.is_encoder_decoder else input_ids.shape[1]
    new_tokens = first.sequences[:, prompt_length:]
    distinct = [len(set(row.tolist())) for row in new_tokens]
    assert min(distinct) >= min_distinct, f"decoding is degenerate ({distinct} distinct tokens a row): liven the model"
    return first.sequences


@pytest.fixture
def assert_same_decoding() -> Callable[..., torch.Tensor]:
    """`assert_same_decoding(model_a, model_b, input_ids, a_kwargs=..., b_kwargs=..., **generate_kwargs)`:
    the one way two decoders are compared in this suite (see `_assert_same_decoding`)."""
    return _assert_same_decoding


def _ggml_error_bound(x: np.ndarray, ggml_type: str) -> np.ndarray:
    """How far from `x` (float32, rows along the last axis) a value of ggml type `ggml_type` may
    land, element by element: the type's own arithmetic (ggml-quants.c's reference code, which the
    gguf package ports), written out here independently of the exporter.

    Blocks of 32 along a row share a scale d (and Q4_1/Q5_1 an offset m), stored as float16:
    - Q8_0: d = amax/127, q = round(x/d) in [-127, 127]: within d/2.
    - Q4_0/Q5_0: d = -max/8 (/16) (max: the value of largest |x|, which lands on -8 (-16) exactly),
      q = trunc(x/d + 8.5) clipped to [0, 15] ([0, 31]): values of the other sign near amax clip one
      step short, so within |d|.
    - Q4_1/Q5_1: d = (max-min)/15 (/31), q = trunc((x-min)/d + 0.5) in [0, 15] ([0, 31]): within d/2.
    Storing d in float16 moves every level k*d by |k| times its rounding (2^-11 relative, or 2^-25
    absolute below float16's normal range), and m likewise. F16 and BF16 round each value to 11 and
    8 significant bits. A float32 slack of 1e-6 * amax covers the order of the numpy operations."""
    f16_round = lambda v: np.maximum(np.abs(v) * 2.0**-11, 2.0**-25)  # noqa: E731
    if ggml_type == "F32":
        return np.zeros_like(x)
    if ggml_type == "F16":
        return f16_round(x)
    if ggml_type == "BF16":
        return np.abs(x) * 2.0**-8 + 1e-38
    blocks = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    if ggml_type == "Q8_0":
        d = amax / 127
        bound = d / 2 + 127 * f16_round(d)
    elif ggml_type in ("Q4_0", "Q5_0"):
        levels = 8 if ggml_type == "Q4_0" else 16
        d = amax / levels
        bound = d + levels * f16_round(d)
    elif ggml_type in ("Q4_1", "Q5_1"):
        levels = 15 if ggml_type == "Q4_1" else 31
        d = (hi - lo) / levels
        bound = d / 2 + levels * f16_round(d) + f16_round(lo)
    else:
        raise ValueError(f"no error bound for {ggml_type}")
    return np.broadcast_to(bound + 1e-6 * amax, blocks.shape).reshape(x.shape)


@pytest.fixture
def ggml_error_bound() -> Callable[[np.ndarray, str], np.ndarray]:
    """`ggml_error_bound(x, "Q4_0")`: the largest |x - stored| each element of `x` may have once
    stored as that ggml type (see `_ggml_error_bound`)."""
    return _ggml_error_bound


# The compatibility suite (`pytest -m compat`, run by `make compat` on the lowest supported and the
# newest released transformers): every test is in it unless its file is listed here, so a new test
# is checked across versions by default. Left out, with the reason:
NOT_COMPAT = {
    "test_faults.py": "kill -9 / disk-full runs of our own checkpoint code: 50 s, the pinned run covers them",
    "test_benchmark_harness.py": "the benchmark scripts' own arithmetic",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in NOT_COMPAT:
            item.add_marker(pytest.mark.compat)


def pytest_report_header(config) -> str:
    import importlib.metadata

    names = ("transformers", "torch", "tokenizers", "accelerate", "datasets", "huggingface_hub", "peft")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return "versions: " + ", ".join(versions)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """`trained_checkpoint(preset)` -> the model/ directory of a `scratchformer pretrain` run of that
    preset ("llama", "gpt2" or "paper"): size tiny (2 layers x 64, context 128), a 512-token BPE
    tokenizer, 300 steps on the embedded corpus. Built on first use, shared by the session."""
    from scratchformer.training.library.pretraining import PretrainConfig, train

    built: dict[str, Path] = {}

    def make(preset: str) -> Path:
        if preset not in built:
            out = tmp_path_factory.mktemp(f"pretrain-{preset}")
            train(PretrainConfig(
                output_dir=str(out), preset=preset, size="tiny", vocab_size=512, max_train_steps=300,
                learning_rate=3e-3, report_to="none", seed=0, logging_steps=100, eval_steps=300, save_steps=300,
            ))
            built[preset] = out / "model"
        return built[preset]

    return make


# Lively models: a default-initialised model decodes one token over and over, with or without a
# working cache, so every decoding comparison runs on a model trained for a second or two on a task
# that needs its context. Built once per session for each config.
_LIVELY: dict = {}


def _learn_lag_4_successor(model, steps: int = 300):
    """Token t is a fixed permutation of token t-4: predicting it takes attention four positions
    back, so a decoding step that loses its context (an empty cache slot, a position off by one)
    picks other tokens."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    succ = torch.arange(V)
    succ[3:] = 3 + torch.randperm(V - 3, generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x = torch.randint(3, V, (16, 4), generator=g)
        while x.shape[1] < 24:
            x = torch.cat([x, succ[x[:, -4:-3]]], dim=1)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _learn_to_reverse(model, steps: int = 600):
    """An untrained encoder-decoder's output barely depends on its own input; learning to reverse
    the source makes every decoding step depend on both the source and the target so far."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        source = torch.randint(3, V, (16, 10), generator=g)
        loss = model(input_ids=source, labels=source.flip(1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def lively_lm() -> Callable[..., torch.nn.Module]:
    """`lively_lm(preset=None, **overrides)`: a tiny ScratchformerForCausalLM (TINY sizes, no eos, no
    dropout, init spread 0.2) trained on the lag-4 task, in eval mode; the same object for the same
    arguments."""
    from scratchformer.modeling import ScratchformerForCausalLM

    def make(preset: str | None = None, **overrides):
        key = ("lm", preset, tuple(sorted(overrides.items())))
        if key not in _LIVELY:
            # A spread of 0.2 lets the embeddings be heard over unit-amplitude sinusoids within 300 steps.
            fields = {**TINY, "eos_token_id": None, "hidden_dropout": 0.0, "embedding_dropout": 0.0,
                      "attention_dropout": 0.0, "initializer_range": 0.2, **overrides}
            config = ScratchformerConfig.from_preset(preset, **fields) if preset else ScratchformerConfig(**fields)
            torch.manual_seed(0)
            # Post-norm (the paper's) learns more slowly, the reason pre-norm won: after 300 steps half
            # its continuations still repeat one or two tokens, after 600 they vary.
            steps = 600 if config.norm_position == "post" else 300
            _LIVELY[key] = _learn_lag_4_successor(ScratchformerForCausalLM(config), steps=steps)
        return _LIVELY[key]

    return make


@pytest.fixture
def lively_seq2seq() -> Callable[..., torch.nn.Module]:
    """`lively_seq2seq(**overrides)`: a tiny paper-preset encoder-decoder (vocabulary 31) trained to
    reverse its source, in eval mode; the same object for the same arguments."""
    from scratchformer.modeling import ScratchformerForConditionalGeneration, ScratchformerSeq2SeqConfig

    def make(**overrides):
        key = ("seq2seq", tuple(sorted(overrides.items())))
        if key not in _LIVELY:
            fields = dict(vocab_size=31, hidden_size=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, embedding_dropout=0.0,
                          hidden_dropout=0.0, attention_dropout=0.0, eos_token_id=None, **overrides)
            torch.manual_seed(0)
            model = ScratchformerForConditionalGeneration(ScratchformerSeq2SeqConfig.from_preset("paper", **fields))
            _LIVELY[key] = _learn_to_reverse(model)
        return _LIVELY[key]

    return make



# Servers: started on 127.0.0.1 by the test, spoken to by real clients, stopped by their PID on every
# path (pass, fail, timeout), and checked to leave nothing behind.
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on `port` and a new server could bind it (as servers do, with SO_REUSEADDR: the
    connections of a stopped server linger in TIME_WAIT for a minute, which that allows)."""
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_env(root: Path) -> dict[str, str]:
    """A server's environment: offline, one thread, a private (empty) Hugging Face cache."""
    (root / "hf_home" / "hub").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class Server:
    """A server process: `url`, `process`, its `log` so far, and `stop()`, which sends SIGTERM to its PID
    and reports how it ended: its exit code, whether SIGKILL was needed, the child processes (a
    spawned model process) still alive afterwards, and whether its port is free again."""

    def __init__(self, argv: list[str], port: int, root: Path, env: dict[str, str] | None = None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log_path = root / f"server-{port}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(argv, cwd=root, env=env or server_env(root), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.report: dict | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_healthy(self, timeout: float = 240) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"the server exited ({code}) before answering:\n{self.log[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"no answer on {self.url}/health within {timeout:.0f} s:\n{self.log[-4000:]}")

    def stop(self, timeout: float = 30) -> dict:
        import signal

        import psutil

        if self.report is not None:
            return self.report
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
                killed = True
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:  # left behind: reported, then stopped so nothing outlives the test
            child.kill()
        self.report = {"returncode": self.process.returncode, "killed": killed,
                       "orphans": [c.pid for c in alive], "port_free": port_is_free(self.port)}
        return self.report


@pytest.fixture(scope="session")
def launch_server():
    """`launch_server(argv, root, port=None, env=None)` starts a server command line (with `--port N`
    appended when no port is given: a free one), waits until /health answers and returns a `Server`.
    The caller stops it (`server.stop()`, in a finally); one that fails to come up is stopped at once,
    and any still running when the session ends is stopped then."""
    servers: list[Server] = []

    def launch(argv: list[str], root: Path, port: int | None = None, env: dict[str, str] | None = None) -> Server:
        if port is None:
            port = free_port()
            argv = [*argv, "--port", str(port)]
        server = Server(argv, port, root, env)
        servers.append(server)
        try:
            server.wait_until_healthy()
        except BaseException:
            server.stop()
            raise
        return server

    yield launch
    for server in servers:
        server.stop()
