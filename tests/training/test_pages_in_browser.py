"""The HTML pages, looked at in a real browser: Debian's headless Chromium opens the timeline and the
attention page that `scratchformer inspect` writes for a real (tiny) run, from file URLs. They render
without a console error, request nothing beyond their own file, have their elements, and answer the
reader: numbers on hover, a score picked, a step moved, a head clicked. Skipped, saying why, where
Chromium is not installed (`make browser` installs it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from headless_chromium import Browser, chromium
from pretrain_runs import run_config

from scratchformer.training import inspect
from scratchformer.training.library.pretraining import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium; make browser)"),
]


@pytest.fixture(scope="module")
def pages(corpus, tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("run")
    train(run_config(out, corpus, tokenizer=tokenizer_dir, max_train_steps=6, eval_steps=2, save_steps=100))
    timeline, attention = out / "timeline.html", out / "attention.html"
    assert inspect.main(["timeline", "--run", str(out), "--output_file", str(timeline)]) == 0
    text = "The assert statement raises an AssertionError when its expression is false. " * 3
    assert inspect.main(["attention", "--model", str(out / "model"), text, "--max_tokens", "40", "--html",
                         str(attention), "--output_file", str(out / "attention.png")]) == 0  # fmt: skip
    return {"timeline": timeline, "attention": attention, "run": out}


@pytest.fixture(scope="module")
def browser():
    with Browser(chromium()) as b:  # stopped by its PID when the module's tests are done, however they end
        yield b


def hover(selector: str) -> str:
    """JavaScript: a mouse move over the middle of `selector`, then the tooltip's state."""
    return (f"(function () {{ var r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " document.querySelector(" + json.dumps(selector) + ").dispatchEvent(new MouseEvent('mousemove',"
            " {clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true}));"
            " var t = document.getElementById('tooltip'); return [t.style.display, t.textContent]; })()")


def test_the_timeline_renders_and_answers(pages, browser):
    url = pages["timeline"].resolve().as_uri()
    report = browser.open(url, {
        "title": "document.title",
        "summary": "document.getElementById('summary').textContent",
        "loss_series": "document.querySelectorAll('#loss path.series').length",
        "head_series": "document.querySelectorAll('#heads path.series').length",
        "lens_series": "document.querySelectorAll('#lens path.series').length",
        "grid_cells": "document.querySelectorAll('#allheads .cell canvas').length",
        "selected": "document.querySelector('#allheads .cell.selected').title",
        "hover_loss": hover("#loss rect.hover"),
        "hover_heads": hover("#heads rect.hover"),
        "score": "(function () { var s = document.getElementById('score'); s.value = 'previous_token';"
                 " s.dispatchEvent(new Event('change'));"
                 " return document.querySelector('#heads .title').textContent; })()",
        "step": "(function () { var s = document.getElementById('step'); s.value = '0';"
                " s.dispatchEvent(new Event('input')); return document.getElementById('steplabel').textContent; })()",
        "click": "(function () { var cells = document.querySelectorAll('#allheads .cell'); cells[1].click();"
                 " return document.querySelector('#allheads .cell.selected').title; })()",
    })  # fmt: skip
    assert report.errors == []
    assert report.requests == [url]  # nothing fetched: the page is self-contained
    v = report.values
    data = json.loads(pages["timeline"].read_text("utf-8").split('id="data">')[1].split("</script>")[0])
    layer, head = data["strongest_induction"]
    assert v["title"] == f"How {pages['run'].name} learned"
    assert f"strongest induction head: layer {layer}, head {head}" in v["summary"]
    assert v["loss_series"] == 2 and v["head_series"] == 2 * 4 and v["lens_series"] == 1 + 2
    assert v["grid_cells"] == 2 * 4 and v["selected"] == f"layer {layer}, head {head}"
    display, text = v["hover_loss"]
    assert display == "block" and re.fullmatch(r"step \d+(train: \d\.\d{3})?(validation: \d\.\d{3})?", text), text
    display, text = v["hover_heads"]
    assert display == "block" and text.count("layer ") >= 8  # every head's value at that step
    assert v["score"] == "previous-token score of every head"
    assert v["step"] == "step 2 (1 of 3)"
    assert v["click"] == "layer 0, head 1"


def test_the_attention_page_renders_and_answers(pages, browser):
    url = pages["attention"].resolve().as_uri()
    report = browser.open(url, {
        "title": "document.getElementById('title').textContent",
        "cells": "document.querySelectorAll('#allheads .cell canvas').length",
        "selected": "document.querySelector('#allheads .cell.selected').title",
        "opened": "document.getElementById('opened').textContent",
        "truncated": "document.getElementById('truncated').style.display + ' ' + "
                     "document.getElementById('truncated').textContent",
        "lines": "document.querySelectorAll('#headview line').length",
        "legend": "document.querySelectorAll('.colorbar').length",
        "overlay": "(function () { var o = document.getElementById('overlay'); o.checked = true;"
                   " o.dispatchEvent(new Event('change'));"
                   " return document.querySelectorAll('#headview .legend .item').length; })()",
        "hover": hover("#matrix canvas"),
    })  # fmt: skip
    assert report.errors == []
    assert report.requests == [url]
    v = report.values
    data = json.loads(pages["attention"].read_text("utf-8").split('id="data">')[1].split("</script>")[0])
    start = data["start"]
    assert v["title"].startswith("Attention: The assert statement") and len(v["title"]) > 200  # not cut at 60
    assert v["cells"] == 2 * 4 and v["selected"] == f"layer {start['layer']}, head {start['head']}"
    assert v["opened"].startswith(f"Opened on layer {start['layer']}, head {start['head']}: ")
    assert v["truncated"].startswith("block The text is ") and "the first 40 are drawn" in v["truncated"]
    assert v["lines"] > 40 and v["legend"] == 2
    assert v["overlay"] == 4  # one colour per head of the layer
    display, text = v["hover"]
    assert display == "block" and ("weight " in text or "masked" in text)
