"""examples/notebooks/quickstart.ipynb runs, top to bottom, in a fresh kernel, and draws its plots.

The notebook is executed with nbclient (what Jupyter itself runs cells with) on the tiny
synthetic data set (`PROBE_NOTEBOOK_SYNTHETIC=1`); the committed file keeps no outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "quickstart.ipynb"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_the_quickstart_notebook_runs_and_shows_its_plots(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("PROBE_NOTEBOOK_SYNTHETIC", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the recorded run goes under the test's folder
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the plots
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the Hessian, the surface and the CKA matrix
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in h for h in html)  # a result shows itself as a table
    written = list(tmp_path.rglob("report/index.html"))
    assert len(written) == 1
