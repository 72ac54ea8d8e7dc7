"""Serving under load: `scratchformer serve` (transformers' own server) against the same weights
exported to a stock `LlamaForCausalLM` and served by plain `transformers serve`, one request at a
time and with continuous batching, at 1, 4, 16 and 64 concurrent streamed requests.

    .venv/bin/python benchmarks/bench_serve.py                     # about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_serve.py --concurrency 1 4 --requests 8 --max_tokens 16   # a quick look

The model: a llama-preset checkpoint of `--size` (mini: 4 layers x 128, context 256) with a BPE of
8192 trained on the embedded corpus, its weights untrained (seeded): serving speed does not depend
on what the weights learned, greedy decoding gives both sides the same tokens, so the same work,
and every request runs its `--max_tokens` (an untrained model almost never ends a text). Prompts:
passages of the embedded corpus, 80 to 400 characters (about 20 to 100 tokens).

For each mode, both servers (ours, stock) are started on 127.0.0.1 and warmed up with two requests;
then each level sends max(`--requests`, 4 x concurrency) streamed completions to each, at most
`concurrency` at a time, in four quarters, ours and stock in turn, the order alternating (both see
the shared machine's load alike); then both are stopped with SIGTERM by their PID. Memory (resident,
the server's process and any it spawned) is read after the warm-up and after the last level. Per
level: requests completed and failed, latency and time to first token (p50, p95), generated tokens
per second over the level's wall time. The ratio is ours / stock (> 1: we serve faster). Before the
servers, the batching engine alone is compared in this process (`generate_batch`, no HTTP), which
shows the model's own share of the figures. Writes `serve.json` and `serve.md` under `--out`. Not
part of the test suite (tests/cli/test_serve.py runs the short version: 8 concurrent streams).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SIZES = {"tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, max_position_embeddings=128),
         "mini": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, max_position_embeddings=256),
         "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, max_position_embeddings=256)}


# -- the checkpoint and its stock export ------------------------------------------------------------


def build_models(work: Path, size: str) -> tuple[Path, Path]:
    import torch

    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.tokenization import train_bpe
    from scratchformer.training.library.data import default_corpus
    from scratchformer.training.library.export import export_stock
    from scratchformer.training.library.run_dir import generation_config

    ours, stock = work / "model", work / "model-llama"
    tokenizer = train_bpe(list(default_corpus("train")), vocab_size=8192, show_progress=False,
                          model_max_length=SIZES[size]["max_position_embeddings"])  # fmt: skip
    config = ScratchformerConfig.from_preset("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                             **SIZES[size])  # fmt: skip
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(config)
    model.generation_config = generation_config(config, tokenizer)  # as pretraining saves it
    model.save_pretrained(ours)
    tokenizer.save_pretrained(ours)
    export_stock(ours, "llama", stock)
    return ours, stock


def prompts(count: int) -> list[str]:
    from scratchformer.training.library.data import default_corpus

    passages = [d[:80 + (i * 37) % 320] for i, d in enumerate(default_corpus("validation")) if len(d) > 400]
    return [passages[i % len(passages)] for i in range(count)]


# -- a server, by PID ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str]):
        self.port = port
        with open(log, "w") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv} exited ({self.process.returncode}); see {log}")
            try:
                status, _ = request("GET", port, "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{argv} did not answer /health within 300 s; see {log}")

    def memory_mb(self) -> float:
        """Resident memory of the server and every process it spawned (transformers >= 5.25 runs the
        model in a process of its own)."""
        import psutil

        root = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> dict:
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
                killed = True
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        return {"returncode": self.process.returncode, "killed": killed, "orphans": len(alive)}


def request(method: str, port: int, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def streamed_completion(port: int, model: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    """One streamed text completion, timed: latency, time to first token, tokens generated."""
    start = time.perf_counter()
    first = None
    tokens = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        connection.request("POST", "/v1/completions", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {response.read()[:300]!r}"}
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                return {"error": str(chunk["error"])[:300]}
            if first is None and any(c.get("text") for c in chunk.get("choices") or []):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        connection.close()
    return {"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens}


def run_requests(port: int, model: str, texts: list[str], concurrency: int, max_tokens: int, timeout: float):
    """`texts` as streamed completions, at most `concurrency` at a time: (outcomes, wall seconds)."""
    results: list[dict] = []
    lock = threading.Lock()
    queue = list(texts)

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                prompt = queue.pop()
            outcome = streamed_completion(port, model, prompt, max_tokens, timeout)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def summary(concurrency: int, results: list[dict], wall: float) -> dict:
    done = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]

    def pct(values: list[float], q: float) -> float | None:
        values = sorted(v for v in values if v is not None)
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

    return {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(done),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "latency_p50_s": pct([r["latency"] for r in done], 0.5),
        "latency_p95_s": pct([r["latency"] for r in done], 0.95),
        "ttft_p50_s": pct([r["ttft"] for r in done], 0.5),
        "ttft_p95_s": pct([r["ttft"] for r in done], 0.95),
        "generated_tokens": sum(r["tokens"] for r in done),
        "tokens_per_s": round(sum(r["tokens"] for r in done) / wall, 1),
        "mean_tokens_per_request": round(statistics.mean([r["tokens"] for r in done]), 1) if done else None,
    }


def serve_pair_and_load(sides: list[tuple[str, list[str], str]], work: Path, args) -> list[dict]:
    """Both servers of a mode (ours, stock) up at once; each level's requests in four quarters, ours
    and stock in turn, the order alternating (ABBAABBA), so that both see the shared machine's load
    alike."""
    env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    (work / "hf_home" / "hub").mkdir(parents=True, exist_ok=True)
    servers, runs = [], []
    try:
        for name, argv, model in sides:
            port = free_port()
            print(f"== {name}: {' '.join(argv)} --port {port}", flush=True)
            servers.append(Server([*argv, "--port", str(port)], port, work / f"{len(runs)}-{port}.log", env))
            runs.append({"name": name, "command": " ".join(argv), "model": model, "levels": []})
        for server, run in zip(servers, runs):
            for text in prompts(2):  # warm-up: the first requests build what later ones reuse
                streamed_completion(server.port, run["model"], text, args.max_tokens, args.timeout)
            run["memory_mb_before"] = round(server.memory_mb(), 1)
        for concurrency in args.concurrency:
            texts = prompts(max(args.requests, 4 * concurrency))
            quarters = [texts[i::4] for i in range(4)]
            outcomes = [([], 0.0) for _ in servers]
            for quarter, order in zip(quarters, ((0, 1), (1, 0), (0, 1), (1, 0))):
                for i in order:
                    results, wall = run_requests(servers[i].port, runs[i]["model"], quarter, concurrency,
                                                 args.max_tokens, args.timeout)  # fmt: skip
                    outcomes[i] = (outcomes[i][0] + results, outcomes[i][1] + wall)
            for run, (results, wall) in zip(runs, outcomes):
                level = summary(concurrency, results, wall)
                run["levels"].append(level)
                print(f"   {run['name']}, concurrency {concurrency}: {level['completed']}/{level['requests']} in "
                      f"{level['wall_s']} s, {level['tokens_per_s']} tokens/s, p50 {level['latency_p50_s']} s, "
                      f"errors {level['errors']}", flush=True)  # fmt: skip
        for server, run in zip(servers, runs):
            run["memory_mb_after"] = round(server.memory_mb(), 1)
    finally:
        for server, run in zip(servers, runs):
            run["stopped"] = server.stop()
    return runs


def engine_ratios(ours: Path, stock: Path, args) -> list[dict]:
    """The batching engine alone, in this process, no HTTP: `generate_batch` of N prompts (N = each
    concurrency level) on ours and on the stock Llama, `--engine_repeats` paired runs in alternating
    order; the ratio is the median of the runs' stock time / our time (> 1: ours faster)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig

    import scratchformer.modeling  # noqa: F401  (registers our classes)

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(ours)
    models = {"ours": AutoModelForCausalLM.from_pretrained(ours).eval(),
              "stock": AutoModelForCausalLM.from_pretrained(stock).eval()}  # fmt: skip
    greedy = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=-1)
    rows = []
    for n in args.concurrency:
        batch = [tokenizer(text)["input_ids"] for text in prompts(n)]
        times: dict[str, list[float]] = {"ours": [], "stock": []}
        for repeat in range(args.engine_repeats):
            for name in ("ours", "stock") if repeat % 2 == 0 else ("stock", "ours"):
                paging = ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=1024)
                start = time.perf_counter()
                results = models[name].generate_batch(batch, generation_config=greedy,
                                                      continuous_batching_config=paging)  # fmt: skip
                times[name].append(time.perf_counter() - start)
                assert all(r.error is None and len(r.generated_tokens) == args.max_tokens for r in results.values())
        ratios = [s / o for s, o in zip(times["stock"], times["ours"])]
        rows.append({"prompts": n, "ours_s": round(statistics.median(times["ours"]), 3),
                     "stock_s": round(statistics.median(times["stock"]), 3),
                     "ratio": round(statistics.median(ratios), 3),
                     "ratios": [round(r, 3) for r in ratios]})  # fmt: skip
        print(f"   engine, {n} prompts: ours/stock speed {rows[-1]['ratio']} ({rows[-1]['ratios']})", flush=True)
    return rows


def machine() -> dict:
    import torch
    import transformers

    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def to_markdown(report: dict) -> str:
    m, a = report["machine_at_start"], report["args"]
    lines = [
        "# Serving under load",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpus']} CPU cores ({m['processor']}, {m['platform']}), shared: load average {m['load_average']} "
        f"at start, {report['machine_at_end']['load_average']} at end (1, 5, 15 min). Python {m['python']}, torch "
        f"{m['torch']}, transformers {m['transformers']}; servers with OMP_NUM_THREADS={a['threads']}, the load "
        "generator on the same cores.",
        "",
        f"Model: llama preset, size {a['size']}, untrained (seeded) weights, BPE 8192; the stock side is the same "
        f"weights exported with `scratchformer export --to llama`. Streamed text completions of {a['max_tokens']} "
        "tokens, greedy, prompts of about 20 to 100 tokens.",
        "",
        "| server | concurrency | completed | errors | latency p50 / p95 s | TTFT p50 / p95 s | tokens/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = {r["name"]: r for r in report["runs"]}
    for run in report["runs"]:
        stock = runs.get(run["name"].replace("scratchformer serve", "transformers serve (stock Llama)"))
        for i, level in enumerate(run["levels"]):
            ratio = ""
            if stock is not None and stock is not run and stock["levels"][i]["tokens_per_s"]:
                ratio = f"{level['tokens_per_s'] / stock['levels'][i]['tokens_per_s']:.2f}x"
            lines.append(
                f"| {run['name']} | {level['concurrency']} | {level['completed']}/{level['requests']} "
                f"| {level['errors']} | {level['latency_p50_s']} / {level['latency_p95_s']} "
                f"| {level['ttft_p50_s']} / {level['ttft_p95_s']} | {level['tokens_per_s']} | {ratio} |"
            )
    lines += ["", "| server | memory after warm-up MB | after every level MB | requests served | stopped by SIGTERM |",
              "|---|---:|---:|---:|---|"]
    for run in report["runs"]:
        served = sum(level["completed"] for level in run["levels"]) + 2
        clean = "cleanly" if not run["stopped"]["killed"] and not run["stopped"]["orphans"] else str(run["stopped"])
        lines.append(f"| {run['name']} | {run['memory_mb_before']} | {run['memory_mb_after']} | {served} | {clean} |")
    if report.get("engine"):
        lines += ["", "The batching engine alone (`generate_batch` in one process, no HTTP, no server; median of "
                  f"{a['engine_repeats']} paired runs, alternating order):", "",
                  "| prompts at once | ours s | stock Llama s | speed ratio ours / stock | the runs' ratios |",
                  "|---:|---:|---:|---:|---|"]  # fmt: skip
        for row in report["engine"]:
            lines.append(f"| {row['prompts']} | {row['ours_s']} | {row['stock_s']} | {row['ratio']:.2f}x | "
                         f"{', '.join(f'{r:.2f}' for r in row['ratios'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="mini")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=32, help="at least this many requests a level (and 4 x C)")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    parser.add_argument("--modes", nargs="+", default=["plain", "continuous_batching"],
                        choices=["plain", "continuous_batching"])  # fmt: skip
    parser.add_argument("--engine_repeats", type=int, default=5, help="paired generate_batch runs (0: none)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    report = {"command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "args": {k: v for k, v in vars(args).items() if k != "out"}, "machine_at_start": machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        ours, stock = build_models(work, args.size)
        if args.engine_repeats:
            report["engine"] = engine_ratios(ours, stock, args)
        for mode in args.modes:
            cb = mode == "continuous_batching"
            label = " --continuous_batching" if cb else ""
            pairs = [
                (f"scratchformer serve{label}",
                 [str(BIN / "scratchformer"), "serve", "--model", str(ours),
                  *(["--continuous_batching"] if cb else [])],
                 str(ours)),
                (f"transformers serve (stock Llama){label}",
                 [str(BIN / "transformers"), "serve", str(stock), "--host", "127.0.0.1",
                  *(["--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "1024"] if cb else [])],
                 str(stock)),
            ]  # fmt: skip
            report["runs"] += serve_pair_and_load(pairs, work, args)
    report["machine_at_end"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serve.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
