"""One import name: the repo's folders install as scratchformer.modeling / .tokenization / .training,
nothing bare like `modeling` leaks into site-packages, and the console script runs."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import scratchformer.modeling

BARE = ("modeling", "tokenization", "training")

CHILD = """
import importlib.util, json, sys
import scratchformer.modeling, scratchformer.tokenization, scratchformer.training.cli
BARE = ("modeling", "tokenization", "training")
print(json.dumps({
    "files": [m.__file__ for m in (scratchformer.modeling, scratchformer.tokenization, scratchformer.training.cli)],
    "in_sys_modules": [name for name in BARE if name in sys.modules],
    "specs": {name: repr(importlib.util.find_spec(name)) for name in BARE},
}))
"""


@pytest.mark.slow
def test_only_scratchformer_names_are_importable(tmp_path):
    # cwd is an empty tmp dir: the repo root (which holds bare `modeling/` etc.) is not on sys.path.
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["in_sys_modules"] == []
    assert report["specs"] == {name: "None" for name in BARE}
    assert [Path(f).parent.name for f in report["files"]] == ["modeling", "tokenization", "training"]


def test_console_script_help(tmp_path):
    from scratchformer.training.cli import SUBCOMMANDS

    script = Path(sys.executable).parent / "scratchformer"
    assert script.exists(), "pip install -e . should install the `scratchformer` console script"
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: scratchformer")
    for name in SUBCOMMANDS:
        assert f"  {name} " in proc.stdout, name


def test_modeling_imports_nothing_of_ours():
    """modeling/ is the remote-code payload and the bottom of the dependency graph."""
    files = sorted(Path(scratchformer.modeling.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "configuration_scratchformer.py", "modeling_scratchformer.py"}
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in ("scratchformer", *BARE), f"{file.name} imports {module}"


REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list:
    """The installed distribution's requirements (pyproject.toml as pip read it): the core ones and
    the optional extras users install (plots, tracking, peft, ner, gguf, bleu, serve); dev tools are not runtime
    claims."""
    import importlib.metadata

    from packaging.requirements import Requirement

    kept = []
    for line in importlib.metadata.requires("scratchformer") or []:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        extras = ("plots", "tracking", "peft", "ner", "gguf", "bleu", "serve")
        if not marker or any(f'extra == "{extra}"' in marker for extra in extras):
            kept.append(requirement)
    return kept


def test_declared_lower_bounds_are_the_versions_the_lowest_ci_leg_installs():
    """pyproject.toml claims each `>=` floor works; .ci/compat-leg lowest installs exactly those
    floors and runs the compat suite. The two lists must agree, or the claim is untested."""
    pins = {}
    for line in (REPO / ".ci" / "constraints-lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    from packaging.version import Version

    floors = {}
    for requirement in _requirements():
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{requirement}: one >= lower bound, tested by the lowest leg"
        name = requirement.name.lower()  # transformers twice: as itself and as transformers[serving]
        assert floors.setdefault(name, lower[0]) == lower[0], f"{name}: two different lower bounds"
    assert set(floors) == set(pins)
    for name, floor in floors.items():
        assert Version(pins[name]) == Version(floor), f"{name}: pyproject says >={floor}, the lowest leg: {pins[name]}"


def test_transformers_upper_bound_is_the_next_major_release():
    transformers = [r for r in _requirements() if r.name == "transformers"]
    assert transformers and all("<6" in str(r.specifier) for r in transformers)


@pytest.mark.slow
def test_console_script_help_of_every_subcommand(tmp_path):
    # The README's promise: `scratchformer <command> --help` lists every option. Through the installed
    # console script, as a user runs it, so a command whose module fails to import or whose parser
    # breaks fails here, not on a user's machine. Every command is run before failing, to name them all.
    from scratchformer.training.cli import SUBCOMMANDS

    script = Path(sys.executable).parent / "scratchformer"
    problems = {}
    for name in SUBCOMMANDS:
        proc = subprocess.run([str(script), name, "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        usage = " ".join(proc.stdout.split())  # argparse wraps a long usage line
        if proc.returncode != 0:
            problems[name] = f"exit {proc.returncode}: {proc.stderr[-1500:]}"
        elif not usage.startswith(f"usage: scratchformer {name} ") or "-h, --help" not in proc.stdout:
            problems[name] = f"usage does not name the command: {proc.stdout[:300]!r}"
    assert not problems, problems
