"""docs/claims.md maps every README claim to its evidence. This keeps the map honest: every test it
names exists, every file it cites exists, and every section of the README has rows in it, so a new
section (and the claims in it) cannot land without saying what backs them."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = (ROOT / "docs" / "claims.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _references() -> list[str]:
    rows = [line for line in CLAIMS.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    refs = []
    for row in rows:
        evidence = row.rstrip(" |").rsplit(" | ", 1)[-1]
        refs += re.findall(r"`([^`]+)`", evidence)
    return refs


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_cited_test_and_file_exists():
    refs = _references()
    assert len(refs) > 60
    missing = []
    for ref in refs:
        path, _, name = ref.partition("::")
        if not (ROOT / path).exists():
            missing.append(ref)
        elif name and name not in _functions(ROOT / path):
            missing.append(ref)
    assert not missing, f"docs/claims.md cites what does not exist: {missing}"


def test_every_readme_section_has_its_claims_listed():
    sections = re.findall(r"^#{2,3} (.+)$", README, flags=re.M)
    listed = set(re.findall(r"^## (.+)$", CLAIMS, flags=re.M))
    # Subsections whose claims are listed under their parent section.
    grouped = {"Troubleshooting: an older checkpoint generates garbage after upgrading transformers": "Compatibility"}
    missing = [s for s in sections if s not in listed and grouped.get(s) not in listed and s != "A short tour"]
    assert not missing, f"README sections without rows in docs/claims.md: {missing}"


def test_every_claims_row_names_some_evidence():
    for line in CLAIMS.splitlines():
        if line.startswith("| ") and not line.startswith("| claim"):
            evidence = line.rstrip(" |").rsplit(" | ", 1)[-1]
            assert evidence.strip() and evidence.strip() != "|", line


def test_the_readme_attention_picture_is_what_its_commands_made():
    """docs/images/attention_grid.png comes from `benchmarks/readme_attention.py`, which runs the README's
    own pretrain and inspect commands and records the caption from what `inspect attention` printed:
    the README shows that sentence and that caption, so the picture cannot drift from its commands."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_attention", ROOT / "benchmarks" / "readme_attention.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    record = (ROOT / "docs" / "images" / "attention_grid.md").read_text(encoding="utf-8")
    caption = re.search(r"^Caption: (.+)$", record, flags=re.M)[1]
    assert f"![{caption}](docs/images/attention_grid.png)" in README
    for command in script.COMMANDS:
        typed = " ".join(f'"{word}"' if " " in word else word for word in command)
        assert typed in README, typed
    # The caption is the one `caption()` draws from the recorded output (its head and score).
    assert script.caption(record) == caption
