"""`scratchformer inspect timeline` reads what a run logged and draws it: on a log written here with
known numbers (no training), the timeline finds the losses, the epochs, every head's scores, the logit
lens and the snapshots; it marks the phase change where the induction score jumped, not elsewhere;
the page is self-contained (data inline, nothing fetched) and carries those numbers; the PNG is
written; a log without mechanism metrics still draws its losses; and a file that is no run's log is
refused with a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from scratchformer.training import inspect
from scratchformer.training.library.errors import UserError
from scratchformer.training.viz.timeline import full_map, plot_timeline, read_timeline, timeline_html, write_timeline

LAYERS, HEADS, T = 2, 3, 4
EVALS = [10, 20, 30, 40, 50]
# The strongest induction head (layer 1, head 2) jumps between steps 30 and 40: the phase change.
INDUCTION = {10: 0.02, 20: 0.03, 30: 0.05, 40: 0.61, 50: 0.72}


def heads_at(step: int) -> dict[str, list[list[float]]]:
    induction = [[0.02 + 0.001 * (layer * HEADS + h) for h in range(HEADS)] for layer in range(LAYERS)]
    induction[1][2] = INDUCTION[step]
    return {
        "induction": induction,
        "previous_token": [[0.1 * (step / 50)] * HEADS for _ in range(LAYERS)],
        "first_token": [[0.05] * HEADS for _ in range(LAYERS)],
        "entropy": [[1.0 - 0.01 * step / 5] * HEADS for _ in range(LAYERS)],
    }


def snapshot(step: int) -> dict:
    n = 1 + 2 * T
    rows = [[round(1.0 / (q + 1), 3)] * (q + 1) for q in range(n)]
    return {"step": step, "tokens": [f"t{i}" for i in range(n)], "maps": [[rows] * HEADS] * LAYERS}


def write_log(run: Path, mechanisms: bool = True) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 51):
        # 16 steps an epoch: the log's fractional epochs give the epoch boundaries
        lines.append({"step": step, "loss": 6.0 - 0.05 * step, "epoch": round(step / 16, 4), "lr": 1e-3})
        if step in EVALS:
            record = {"step": step, "eval_loss": 6.5 - 0.04 * step}
            if mechanisms:
                record |= {"heads": heads_at(step), "in_context_score": round(INDUCTION[step] * 2, 3),
                           "heads_induction_max": INDUCTION[step],
                           "logit_lens_loss": [7.0, 6.0 - step / 100, 5.0 - step / 50]}  # fmt: skip
            lines.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if mechanisms:
        (run / "attention_snapshots.jsonl").write_text("".join(json.dumps(snapshot(s)) + "\n" for s in EVALS))
    return run


def test_the_timeline_reads_what_the_run_logged(tmp_path):
    t = read_timeline(write_log(tmp_path / "run"))
    assert t.train_steps == list(range(1, 51)) and t.train_loss[0] == pytest.approx(5.95)
    assert t.eval_steps == EVALS and t.mech_steps == EVALS
    assert t.epochs() == pytest.approx([16.0, 32.0, 48.0])
    assert np.asarray(t.heads["induction"]).shape == (len(EVALS), LAYERS, HEADS)
    assert t.in_context == pytest.approx([2 * INDUCTION[s] for s in EVALS])
    assert t.logit_lens[0] == pytest.approx([7.0, 5.9, 4.8])
    assert [s["step"] for s in t.snapshots] == EVALS and len(t.snapshots[0]["tokens"]) == 1 + 2 * T


def test_the_phase_change_is_where_the_induction_score_jumped(tmp_path):
    t = read_timeline(write_log(tmp_path / "run"))
    assert t.strongest_induction() == (1, 2)
    assert t.phase_change() == 40  # the evaluation after the largest rise (0.05 -> 0.61), not the last one


def test_a_wiggle_at_chance_is_no_phase_change_and_the_picture_follows_the_previous_token_head(tmp_path, capsys):
    run = write_log(tmp_path / "run")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in lines:  # the induction score never clears chance; it wiggles most into step 40 (0.02 -> 0.05)
        if "heads" in r:
            r["heads"]["induction"][1][2] = 0.05 if r["step"] == 40 else 0.02
            r["heads"]["previous_token"][0][1] = 0.6
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    t = read_timeline(run)
    assert t.phase_change() is None
    assert t.featured_head() == ("previous_token", 0, 1)
    figure = plot_timeline(run)
    titles = [ax.get_title() for ax in figure.axes]
    assert "step 30: previous-token 0.60" in titles  # the middle snapshot stands in for the phase change
    assert "No induction head formed" in figure.get_supxlabel()
    assert not any("induction jump" in text.get_text() for ax in figure.axes if ax.get_legend()
                   for text in ax.get_legend().get_texts())  # fmt: skip
    assert inspect.main(["timeline", "--run", str(run)]) == 0
    assert "no induction head formed" in capsys.readouterr().out


def test_a_snapshots_causal_rows_become_a_square_map():
    rows = snapshot(10)["maps"][0][0]
    square = full_map(rows)
    assert square.shape == (len(rows), len(rows))
    assert np.allclose(np.triu(square, k=1), 0.0) and square[3, :4] == pytest.approx([0.25] * 4)


def test_the_page_is_self_contained_and_carries_the_numbers(tmp_path):
    html = timeline_html(write_log(tmp_path / "run"))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert "fetch(" not in html and "XMLHttpRequest" not in html
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1))
    assert data["phase_change"] == 40 and data["strongest_induction"] == [1, 2]
    assert data["mech_steps"] == EVALS and data["heads"]["induction"][3][1][2] == pytest.approx(0.61)
    assert data["epochs"] == pytest.approx([16.0, 32.0, 48.0])


def test_the_command_writes_the_page_and_the_picture(tmp_path, capsys):
    run = write_log(tmp_path / "run")
    out, png = tmp_path / "page" / "timeline.html", tmp_path / "timeline.png"
    out.parent.mkdir()
    assert inspect.main(["timeline", "--run", str(run), "--output_file", str(out), "--png", str(png)]) == 0
    said = capsys.readouterr().out
    assert "layer 1, head 2: 0.02 at step 10 -> 0.72 at step 50" in said
    assert out.read_text().startswith("<!DOCTYPE html>") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp*"))  # written under a temporary name, then renamed
    assert inspect.main(["timeline", "--run", str(run)]) == 0  # default: beside the log
    assert (run / "timeline.html").is_file()


def test_a_run_without_mechanism_metrics_still_draws_its_losses(tmp_path, capsys):
    run = write_log(tmp_path / "run", mechanisms=False)
    t = write_timeline(run, tmp_path / "t.html", png=tmp_path / "t.png")
    assert not t.has_mechanisms and t.phase_change() is None and t.eval_steps == EVALS
    assert (tmp_path / "t.png").is_file()
    assert len(plot_timeline(run).axes) == 1  # the loss alone
    assert inspect.main(["timeline", "--run", str(run), "--output_file", str(tmp_path / "u.html")]) == 0
    assert "logged no mechanism metrics" in capsys.readouterr().out


def test_a_file_that_is_no_runs_log_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "note": "nothing to draw"}) + "\n")
    with pytest.raises(UserError, match="no training or validation losses"):
        read_timeline(run)
