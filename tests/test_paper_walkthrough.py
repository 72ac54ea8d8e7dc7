"""docs/paper_walkthrough.md points at code by file and line range: [`ScratchformerRMSNorm`](../modeling/
transformer_scratchformer.py#L52-L68). Every such link must land on the symbol it names, exactly its
definition's lines, so code that moves breaks this test instead of leaving the page wrong.

When code moves, `python tests/test_paper_walkthrough.py --update` rewrites the ranges from the code
(the names stay: a renamed or deleted symbol still fails, naming the link)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "paper_walkthrough.md"
LINK = re.compile(r"\[`(?P<symbol>[A-Za-z_][\w.]*)`\]\((?P<path>\.\./[^)#\s]+\.py)#L(?P<start>\d+)-L(?P<end>\d+)\)")


def definitions(path: Path) -> dict[str, tuple[int, int]]:
    """Every class, function, method and module- or class-level assignment of `path`, by dotted name,
    with its first line (decorators included) and last line."""
    found: dict[str, tuple[int, int]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                found[prefix + node.name] = (start, node.end_lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[prefix + target.id] = (node.lineno, node.end_lineno)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, "")
    return found


def links(text: str) -> list[re.Match]:
    return list(LINK.finditer(text))


def test_the_walkthrough_has_links_for_both_architectures():
    found = links(DOC.read_text(encoding="utf-8"))
    files = {m["path"] for m in found}
    assert len(found) >= 30
    assert {"../modeling/transformer_scratchformer.py", "../modeling/modeling_scratchformer.py",
            "../modeling/modeling_scratchformer_seq2seq.py", "../modeling/loss_scratchformer.py"} <= files
    # Every `...py` reference in the tables is a checked link, not a bare file name.
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("| Paper") and "---" not in line:
            assert LINK.search(line), f"a table row without a line-range link: {line}"


def problems(text: str) -> list[str]:
    """Every link of `text` that does not land exactly on the symbol it names."""
    wrong = []
    for m in links(text):
        path = (DOC.parent / m["path"]).resolve()
        if not path.is_file():
            wrong.append(f"{m[0]}: no file {m['path']}")
            continue
        where = definitions(path).get(m["symbol"])
        if where is None:
            wrong.append(f"{m[0]}: {m['symbol']} is not defined in {m['path']}")
        elif where != (int(m["start"]), int(m["end"])):
            wrong.append(f"{m[0]}: {m['symbol']} is at lines {where[0]}-{where[1]} now")
    return wrong


def test_every_link_lands_on_the_symbol_it_names():
    wrong = problems(DOC.read_text(encoding="utf-8"))
    fix = "python tests/test_paper_walkthrough.py --update"
    assert not wrong, f"docs/paper_walkthrough.md is out of date ({fix}):\n" + "\n".join(wrong)


def test_a_link_that_drifted_or_names_the_wrong_symbol_fails():
    text = DOC.read_text(encoding="utf-8")
    m = next(m for m in links(text) if m["symbol"] == "ScratchformerRMSNorm")
    start, end = int(m["start"]), int(m["end"])
    drifted = text.replace(m[0], m[0].replace(f"#L{start}-L{end}", f"#L{start + 1}-L{end + 1}"))
    renamed = text.replace(m[0], m[0].replace("ScratchformerRMSNorm", "ScratchformerLayerNorm"))
    gone = text.replace(m[0], m[0].replace("ScratchformerRMSNorm", "ScratchformerNorm"))
    assert problems(text) == []
    assert len(problems(drifted)) == 1 and "is at lines" in problems(drifted)[0]
    assert len(problems(renamed)) == 1 and "ScratchformerLayerNorm is at lines" in problems(renamed)[0]
    assert "ScratchformerNorm is not defined" in problems(gone)[0]


def test_a_moved_symbol_is_caught(tmp_path):
    """The check itself: a link one line off, or naming a symbol its range does not hold, fails."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\n\nclass A:\n    x = 1\n\n    def f(self):\n        return 1\n\n\n"
                      "@staticmethod\ndef g():\n    pass\n")
    found = definitions(module)
    assert found["A"] == (4, 8) and found["A.f"] == (7, 8) and found["A.x"] == (5, 5) and found["g"] == (11, 13)
    assert found.get("A.g") is None


def update() -> int:
    text = DOC.read_text(encoding="utf-8")

    def fix(m: re.Match) -> str:
        where = definitions((DOC.parent / m["path"]).resolve()).get(m["symbol"])
        if where is None:
            raise SystemExit(f"{m[0]}: {m['symbol']} is not defined in {m['path']}; fix the link by hand")
        return f"[`{m['symbol']}`]({m['path']}#L{where[0]}-L{where[1]})"

    new = LINK.sub(fix, text)
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_paper_walkthrough.py --update")
    raise SystemExit(update())
