"""docs/tour.ipynb runs top to bottom, as a reader runs it, in a real Jupyter kernel (nbclient), and is
committed with its outputs stripped (the outputs of a run belong to the run, not to git)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tour.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 6
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "strip the outputs before committing"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_the_readme_links_the_notebook():
    assert "(docs/tour.ipynb)" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.long
def test_the_tour_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    # The notebook writes tour-out/ beside itself: a copy in a scratch folder, which is also the
    # kernel's working directory. The kernel inherits this environment.
    shutil.copy(NOTEBOOK, tmp_path / "tour.ipynb")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(tmp_path / "tour.ipynb", as_version=4)
    # The kernel speaks over Unix sockets in the scratch folder, not TCP ports.
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    NotebookClient(nb, km=km, timeout=900, resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    frames = [o for o in outputs if "text/html" in o.get("data", {}) and "<iframe srcdoc=" in o.data["text/html"]]
    assert len(images) >= 2 and len(frames) == 2  # attention and timeline, drawn and as pages
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "largest logit difference" in text
    difference = float(text.split("largest logit difference ")[1].split()[0])
    assert difference < 1e-4  # the exported Llama is the same model
    assert (tmp_path / "tour-out" / "run" / "timeline.png").is_file()
    assert (tmp_path / "tour-out" / "llama" / "config.json").is_file()
