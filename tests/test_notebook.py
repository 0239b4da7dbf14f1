"""examples/quickstart.ipynb run headless in a real Jupyter kernel (nbclient): it trains, evaluates, predicts, explains
and exports without an error, and its outputs hold what a notebook user should see without configuring anything:
progress bars, the per-epoch lines and the final metrics (issue 29: a notebook once showed nothing for minutes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"  # tqdm.auto's bar when ipywidgets is installed


@pytest.mark.slow
def test_quickstart_notebook_shows_progress_epochs_and_metrics(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp() data and run land here
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits conftest's environment: CPU only, HF_HUB_OFFLINE, one thread, the test's decode cache
    nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    streams = {"stdout": "", "stderr": ""}
    shown: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                streams[output["name"]] += output["text"]
            else:
                shown += list(output.get("data", {}))
    err, out = streams["stderr"], streams["stdout"]
    # resnetlab's messages, on stderr, with no logging.basicConfig in the notebook
    assert "epoch   1/2: train loss" in err and "epoch   2/2: train loss" in err
    assert WIDGET in shown or re.search(r"epoch 1/2: +\d+%\|", err), "no progress bar in the outputs"
    assert re.search(r"val: 19 images, accuracy \d\.\d{4}", err)  # evaluate's summary
    assert re.search(r"final metrics: accuracy \d\.\d{3}, macro F1", out)
    assert "19 images predicted" in out
    assert "explaining the 1 most confident mistake(s)" in err and "image/png" in shown  # the mislabelled square
    assert re.search(r"best\.onnx onnxruntime \w+", out)
