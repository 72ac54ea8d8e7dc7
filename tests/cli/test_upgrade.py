"""`scratchformer upgrade-checkpoint`: replaces only the code files, says what it changed, writes
nothing on a dry run, refuses what is not a scratchformer checkpoint or what this code cannot load.
(The repair of a real pre-fix checkpoint on the newest transformers is in test_compat.py.)"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from scratchformer.modeling import ScratchformerForCausalLM
from scratchformer.training import cli, upgrade
from scratchformer.training.library.upgrade import upgrade_checkpoint

OLD = Path(__file__).parents[1] / "fixtures" / "checkpoints" / "v0.1.0" / "causal_llama"
MODELING = Path(upgrade.__file__).parents[1] / "modeling"  # the installed package's modeling/


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def old_checkpoint(tmp_path) -> Path:
    directory = tmp_path / "old"
    shutil.copytree(OLD, directory)
    return directory


def test_upgrade_replaces_the_code_files_and_nothing_else(old_checkpoint, capsys):
    before = digest(old_checkpoint)
    assert cli.main(["upgrade-checkpoint", str(old_checkpoint)]) == 0
    out = capsys.readouterr().out
    after = digest(old_checkpoint)
    changed = {name for name in after if before.get(name) != after[name]}
    updated = {"modeling_scratchformer.py", "configuration_scratchformer.py"}
    # 0.3 split the model file in four: what the new modeling_scratchformer.py imports is added.
    added = {"transformer_scratchformer.py", "loss_scratchformer.py", "checks_scratchformer.py"}
    assert changed == updated | added
    for name in changed:
        assert (old_checkpoint / name).read_bytes() == (MODELING / name).read_bytes()
        assert f"{'updated' if name in updated else 'added':<9} {name}" in out
    assert "-> " in out and "lines" in out  # how much each file changed
    assert set(after) == set(before) | added  # nothing else added, nothing removed, no temporary left


def test_dry_run_writes_nothing_and_a_second_run_finds_nothing_to_do(old_checkpoint, capsys):
    before = digest(old_checkpoint)
    assert upgrade.main([str(old_checkpoint), "--dry_run"]) == 0
    assert "would change (dry run: nothing written)" in capsys.readouterr().out
    assert digest(old_checkpoint) == before

    assert upgrade.main([str(old_checkpoint)]) == 0
    capsys.readouterr()
    assert upgrade.main([str(old_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "already up to date" in out and "updated" not in out


def test_a_fresh_checkpoint_is_already_up_to_date(tmp_path, tiny_config):
    ScratchformerForCausalLM(tiny_config()).save_pretrained(tmp_path)
    changes = upgrade_checkpoint(tmp_path)
    assert {c.action for c in changes} == {"unchanged"}
    assert {c.file for c in changes} == {p.name for p in tmp_path.glob("*.py")}


def test_auto_map_is_repointed_and_the_users_own_entries_kept(old_checkpoint):
    config_file = old_checkpoint / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_gone.OldName"
    config["auto_map"]["AutoModelForQuestionAnswering"] = "my_head.MyQA"
    config_file.write_text(json.dumps(config))
    changes = upgrade_checkpoint(old_checkpoint)
    assert any(c.file == "config.json" and c.action == "updated" for c in changes)
    auto_map = json.loads(config_file.read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_scratchformer.ScratchformerForCausalLM"
    assert auto_map["AutoModelForQuestionAnswering"] == "my_head.MyQA"


def test_a_config_this_code_cannot_load_is_refused_naming_the_field(old_checkpoint, capsys):
    config_file = old_checkpoint / "config.json"
    config = json.loads(config_file.read_text())
    config["position_embedding"] = "alibi"
    config_file.write_text(json.dumps(config))
    before = digest(old_checkpoint)
    assert upgrade.main([str(old_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "position_embedding" in err and "alibi" in err
    assert "left as it is" in err
    assert digest(old_checkpoint) == before


def test_a_checkpoint_of_another_library_is_refused(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    assert upgrade.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'llama' is not a scratchformer model" in err


def test_a_missing_directory_is_one_error_line(tmp_path, capsys):
    assert upgrade.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
