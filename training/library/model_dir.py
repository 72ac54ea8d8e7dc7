"""Loading a model directory someone handed us: checked first, safetensors only, errors that say the fix.

Every command that opens a checkpoint (`generate`, `inspect`, `convert`, `finetune`, seq2seq training,
pretrain's `--tokenizer`) goes through here, so a damaged or foreign directory fails the same way
everywhere: a `UserError` (a `ValueError`) naming the file, what is wrong with it, and what to
do (re-save, re-download, re-run pretraining), never a traceback from deep inside a loader.

Weights load only from `*.safetensors`, which hold tensors and nothing else. A `pytorch_model.bin`
(or any pickle) can run arbitrary code when unpickled, so a directory holding only those is refused
with the one-line conversion to do in a trusted environment, and `from_pretrained` is called with
`use_safetensors=True` so transformers never falls back to them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .errors import UserError, one_line

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILE = "tokenizer.json"


# A damaged or foreign model directory is a UserError like any other (`UserError` was its own
# class before 0.3; the name stays for code that catches it).
UserError = UserError


def require_dir(path: str | os.PathLike, what: str = "model directory") -> Path:
    """`path` as a Path, checked to be a directory here. Commands take local directories only (nothing
    downloads at run time), so a name that is not one fails at once, naming it; when it reads like a
    hub repository id, the message says how to fetch it (instead of a minute of hub retries)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UserError(f"{path} is a file, not a {what}; pass the directory that holds it")
    text = str(path)
    hub_like = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None and not text.endswith((".", "-"))
    fetch = (f"; if you mean the Hugging Face Hub repository {text!r}, download it first "
             f"(`hf download {text} --local-dir {text.split('/')[-1]}`) and pass that directory") if hub_like else ""
    raise UserError(f"{path}: no such directory here ({Path.cwd()}); pass a {what}{fetch}")


def read_config(path: str | os.PathLike, trust_remote_code: bool = False) -> dict:
    """`path/config.json` as a dict, checked to be JSON with a `model_type` transformers knows (or,
    with `trust_remote_code`, one whose code the directory ships)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import scratchformer.modeling  # noqa: F401  (registers scratchformer's model types)

    p = require_dir(path, "model directory (e.g. the model/ of a pretrain run)")
    config_file = p / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"{p} has no config.json, so it is not a Hugging Face model directory; pass a directory written by "
            "save_pretrained (e.g. the model/ of a `scratchformer pretrain` run)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{config_file} is not valid JSON ({one_line(e)}): the file is damaged; re-save the model with "
            "save_pretrained or download it again"
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file} holds a JSON {type(config).__name__}, not an object: re-save the model")
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING and not (trust_remote_code and "auto_map" in config):
        ships_code = " (the directory ships its own code: pass --trust-remote-code if you trust it)"
        raise UserError(
            f"{config_file} has model_type {model_type!r}, which neither transformers nor scratchformer knows"
            f"{ships_code if 'auto_map' in config else ''}; it was written by another library or a newer "
            "transformers (upgrade it), or the file is damaged"
        )
    return config


def check_weights(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of `path`, each checked to be complete; refuses pickle-only directories."""
    p = Path(path)
    index = p / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index} is damaged ({one_line(e)}): re-save or re-download the model") from None
        shards = [p / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise UserError(
                f"{index} lists {len(shards)} weight shards but {', '.join(missing)} is missing from {p}: the copy "
                "or download stopped part way; copy or download the whole directory again"
            )
    elif (p / SAFE_WEIGHTS).is_file():
        shards = [p / SAFE_WEIGHTS]
    else:
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(
                f"{p} holds weights only as {', '.join(pickles)} (pickle), which can run arbitrary code when loaded, "
                "so scratchformer loads safetensors only. If you trust the file, convert it once: "
                f"AutoModel.from_pretrained({str(p)!r}, use_safetensors=False).save_pretrained(NEW_DIR), "
                "which writes model.safetensors"
            )
        raise UserError(
            f"{p} has a config.json but no weights ({SAFE_WEIGHTS}); re-run the save (or pretraining), or copy "
            "the whole directory again"
        )
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise UserError(
                f"{shard} is damaged or truncated ({one_line(e)}); the file was cut short by a full disk, an "
                "interrupted copy or download: copy or download it again, or re-run the save (pretraining writes "
                "model/ again at the end of `--resume`)"
            ) from None
    return shards


def check_tokenizer(path: str | os.PathLike) -> Path:
    """`path/tokenizer.json`, checked to exist and be JSON."""
    p = require_dir(path, "tokenizer directory (e.g. written by `scratchformer tokenizer`)")
    file = p / TOKENIZER_FILE
    if not file.is_file():
        raise UserError(
            f"{p} has no {TOKENIZER_FILE}; save the tokenizer beside the model with tokenizer.save_pretrained("
            f"{str(p)!r}), or pass the directory the tokenizer was saved to (e.g. by `scratchformer tokenizer`)"
        )
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is damaged ({one_line(e)}): save or download the tokenizer again") from None
    return file


def load_tokenizer_dir(path: str | os.PathLike, **kwargs: Any):
    """`AutoTokenizer.from_pretrained(path)` for a local directory, after `check_tokenizer`."""
    from transformers import AutoTokenizer

    check_tokenizer(path)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{path}: the tokenizer could not be loaded ({one_line(e)})") from None


def load_model_dir(
    path: str | os.PathLike,
    auto_class: Any,
    *,
    architectures: tuple[str, ...] = (),
    need_tokenizer: bool = True,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """(model, tokenizer or None) from a local model directory, checked first.

    `architectures`: name endings the command can use (e.g. ("ForCausalLM", "LMHeadModel")); a
    directory whose config.json names another architecture is refused before any weight is read.
    `kwargs` go to `auto_class.from_pretrained` (`dtype`, `config`, ...)."""
    p = Path(path)
    config = read_config(p, trust_remote_code)
    heads = config.get("architectures") or []
    if architectures and heads and not any(h.endswith(architectures) for h in heads):
        raise UserError(
            f"{p} holds a {heads[0]} ({config.get('model_type')}), and this command needs a model ending in "
            f"{' or '.join(architectures)}; pass a checkpoint of that kind"
        )
    check_weights(p)
    tokenizer = load_tokenizer_dir(p, trust_remote_code=trust_remote_code) if need_tokenizer else None
    caller_wants_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = auto_class.from_pretrained(
            p, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs
        )
    except (ValueError, OSError, KeyError, SafetensorError) as e:
        if isinstance(e, UserError):
            raise
        what = auto_class.__name__
        raise UserError(f"{p}: the weights could not be loaded as {what}: {one_line(e)}") from None
    # A new head may start untrained (fine-tuning adds one), but a body with most of its weights
    # missing means config.json and the weights come from different models: transformers would
    # otherwise hand back a randomly initialised model with only a warning.
    total = len(model.state_dict())
    if total and len(info.get("missing_keys", ())) > total // 2:
        raise UserError(
            f"{p}: the weights do not fit the {type(model).__name__} that config.json describes "
            f"({len(info['missing_keys'])} of {total} tensors missing, e.g. {sorted(info['missing_keys'])[0]}); "
            "config.json and the weights come from different models: re-save or re-download the directory"
        )
    return (model, info) if caller_wants_info else model, tokenizer
