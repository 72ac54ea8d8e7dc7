"""One import name: the repo's folders install as scratchformer.modeling / .tokenization / .training,
nothing bare like `modeling` leaks into site-packages, and the console script runs."""

import ast
import json
import subprocess
import sys
from pathlib import Path

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
