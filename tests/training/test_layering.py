"""The arrows of the package's design, enforced: import cycles and a library that reaches up into the
commands or sideways into the pictures cannot come back.

    commands (training/*.py)  ->  library (training/library/), viz (training/viz/), modeling, tokenization
    viz                       ->  library, modeling
    library                   ->  modeling, tokenization          (never commands, never viz)
    tokenization              ->  nothing of ours
    modeling                  ->  nothing of ours                  (the remote-code payload)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {
    "scratchformer.modeling": ROOT / "modeling",
    "scratchformer.tokenization": ROOT / "tokenization",
    "scratchformer.training.library": ROOT / "training" / "library",
    "scratchformer.training.viz": ROOT / "training" / "viz",
    "scratchformer.training": ROOT / "training",
}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(name: str, path: Path, type_only_too: bool = False) -> set[str]:
    """Our modules that `name` imports (absolute or relative, at any depth of the file); with
    `type_only_too`, also those imported under `if TYPE_CHECKING:` for annotations."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    ours = set(modules())
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # Imports under `if TYPE_CHECKING:` exist for annotations only and never run: not dependencies.
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}  # fmt: skip
    for node in ast.walk(tree):
        if id(node) in type_only and not type_only_too:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target in ours:
                out.add(target)
            elif target.startswith("scratchformer.") and target.rsplit(".", 1)[0] in ours:
                out.add(target.rsplit(".", 1)[0])
    out.discard(name)
    return out


def layer(module: str) -> str:
    for prefix, name in (("scratchformer.training.library", "library"), ("scratchformer.training.viz", "viz"),
                         ("scratchformer.training", "commands"), ("scratchformer.modeling", "modeling"),
                         ("scratchformer.tokenization", "tokenization")):  # fmt: skip
        if module.startswith(prefix):
            return name
    raise AssertionError(module)


ALLOWED = {
    "commands": {"commands", "library", "viz", "modeling", "tokenization"},
    "viz": {"viz", "library", "modeling"},
    "library": {"library", "modeling", "tokenization"},
    "tokenization": {"tokenization"},
    "modeling": {"modeling"},
}


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_import_points_down_the_layers(name):
    path = modules()[name]
    wrong = {m for m in imports_of(name, path) if layer(m) not in ALLOWED[layer(name)]}
    assert not wrong, f"{name} ({layer(name)}) imports {sorted(wrong)}"


def test_commands_do_not_import_each_other_except_the_demo_and_the_dispatchers():
    """A command is parse -> library -> print. The demo tells the whole story, the CLI dispatches,
    and every command shares `arguments` (the vocabulary, the error boundary, and `run_command`, by
    which `finetune --task seq2seq` hands over to `seq2seq` by name)."""
    shared = {"scratchformer.training.arguments", "scratchformer.training"}
    for name, path in modules().items():
        if layer(name) != "commands" or name.endswith((".demo", ".cli", ".__main__")):
            continue
        others = {m for m in imports_of(name, path) if layer(m) == "commands"} - shared
        assert not others, f"{name} imports the commands {sorted(others)}"


def test_no_import_cycles():
    """Type-only imports count: a cycle hidden behind `TYPE_CHECKING` is still two modules that each
    need the other to be read, and the first refactoring that uses the type at run time breaks."""
    graph = {name: imports_of(name, path, type_only_too=True) for name, path in modules().items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_file_size_limits_of_the_design_hold():
    """No training module past 700 lines: a file that grows past it has two jobs."""
    for name, file in modules().items():
        if layer(name) in ("commands", "library", "viz"):
            lines = len(file.read_text(encoding="utf-8").splitlines())
            assert lines <= 700, f"{file.relative_to(ROOT)} has {lines} lines"


def private_imports(name: str, path: Path) -> list[str]:
    """`from <our module> import _name` in `name`, and `module._name` reached through an imported module of ours."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    ours = set(modules())
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in ours:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                elif base in ours and base != name and a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {base} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ours and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):  # fmt: skip
            found.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_private_name_is_borrowed_across_modules(name):
    """A `_name` is its module's own; a helper two modules need gets a public name in the module
    that owns it (files.py, data.py, model_dir.py...), so no module leans on another's internals."""
    borrowed = private_imports(name, modules()[name])
    assert not borrowed, f"{name} borrows private names: {borrowed}"


def command_line_uses(path: Path) -> list[str]:
    """What belongs to a command, found in a library module: argparse, stdin, printing to stdout."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports argparse" for n in names if n.split(".")[0] == "argparse"]
        elif isinstance(node, ast.Attribute) and ast.unparse(node) in ("sys.stdin", "sys.stdout"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "input"):
            # A signal handler may not take the logging lock, so its one note goes to stderr by print.
            if node.func.id == "input" or not any(k.arg == "file" for k in node.keywords):
                found.append(f"line {node.lineno}: bare {node.func.id}()")
    return found


@pytest.mark.parametrize("name", sorted(n for n in modules() if layer(n) == "library"))
def test_the_library_never_parses_reads_stdin_or_prints(name):
    """The library takes plain arguments and returns values; the command owns the command line,
    stdin and stdout (and so the library runs the same from a notebook, a test or a server)."""
    found = command_line_uses(modules()[name])
    assert not found, f"{name} does a command's work: {found}"
