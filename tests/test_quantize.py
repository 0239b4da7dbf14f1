"""int8 export (onnxruntime static QDQ) and the accuracy check every export runs on the run's validation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resnetlab.checkpoint import read_checkpoint, save_checkpoint
from resnetlab.classifier import load
from resnetlab.cli import main
from resnetlab.errors import ExportError
from resnetlab.export import export_model
from serving import assert_agrees, toy_images, train_tiny

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    """(best.pt, data): a private copy of the session's trained run; the checkpoint names its data folder."""
    return train_tiny(tmp_path / "model")


@pytest.fixture
def learned(tmp_path: Path) -> tuple[Path, Path]:
    """(best.pt, data): a private copy of the session's three-epoch run, whose labels follow the images."""
    return train_tiny(tmp_path / "learned", learned=True)


def test_int8_export_is_quantised_checked_and_used_like_a_checkpoint(learned, tmp_path: Path, capsys):
    best, data = learned
    out = tmp_path / "int8.onnx"
    result = export_model(best, format="onnx", out=out, dynamic_batch=True, quantize="int8", calib_images=12,
                          data=str(data))  # the default --max-drop: at most 1 point lost
    sidecar = json.loads(Path(result["sidecar"]).read_text(encoding="utf-8"))
    assert sidecar["quantization"]["type"] == "int8" and sidecar["quantization"]["calibration_images"] == 12
    validation = sidecar["validation"]
    assert validation["images"] == 24 and validation["drop_points"] <= 1.0
    files = toy_images(data)
    reference = np.stack([p.probabilities for p in load(best, device="cpu").predict(files)])
    got = np.stack([p.probabilities for p in load(out).predict(files)])
    assert_agrees(got, reference, "int8")
    assert validation["drop_points"] == pytest.approx(100 * (validation["accuracy_pytorch"] -
                                                             validation["accuracy_exported"]))
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really int8, in QDQ form
    printed = capsys.readouterr().err
    assert "validation accuracy on 24 images: PyTorch" in printed and "exported" in printed
    # the int8 file predicts and evaluates like a checkpoint, on the split the run validated on
    assert main(["predict", str(out), str(data / "Val"), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    assert main(["evaluate", str(out), str(data), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 24 and metrics["accuracy"] == pytest.approx(validation["accuracy_exported"])
    assert (tmp_path / "eval" / "predictions.png").is_file() and not (tmp_path / "eval" / "misclassified.png").exists()


def test_an_export_that_loses_too_much_accuracy_writes_nothing(model, tmp_path: Path, capsys):
    best, data = model
    folder = tmp_path / "exports"
    folder.mkdir()
    with pytest.raises(ExportError, match=r"more than --max-drop -101; nothing was written"):
        export_model(best, format="onnx", out=folder / "m.onnx", quantize="int8", calib_images=8, data=str(data),
                     max_drop=-101.0)  # a drop is at least -100 points: always refused
    assert list(folder.iterdir()) == []  # no model, no sidecar, no temp folder
    assert main(["export", str(best), "--format", "onnx", "--out", str(folder / "m.onnx"), "--data", str(data),
                 "--max-drop", "-101"]) == 1  # fp32 too: the same check, the same refusal
    assert "nothing was written" in capsys.readouterr().err and list(folder.iterdir()) == []


def test_int8_needs_the_runs_images_and_fp32_exports_check_when_they_can(model, tmp_path: Path, capsys):
    best, data = model
    payload = read_checkpoint(best)
    payload["config"]["data"] = None  # a checkpoint that does not say what it was trained on
    save_checkpoint(tmp_path / "anonymous.pt", payload)
    with pytest.raises(ExportError, match="names no data set; pass --data DATA"):
        export_model(tmp_path / "anonymous.pt", format="onnx", out=tmp_path / "a.onnx", quantize="int8")
    assert not (tmp_path / "a.onnx").exists()
    result = export_model(best, format="onnx", out=tmp_path / "b.onnx", data=str(data))
    assert result["validation"]["drop_points"] == pytest.approx(0.0, abs=1e-9)  # fp32: the same predictions
    export_model(best, format="torchscript", out=tmp_path / "c.torchscript", check=False)
    assert "validation" not in json.loads((tmp_path / "c.torchscript.json").read_text(encoding="utf-8"))
    assert main(["export", str(best), "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "--quantize int8 is not available for torchscript" in capsys.readouterr().err


def test_serve_runtime_choice(model, tmp_path: Path):
    from resnetlab.errors import ConfigError
    from resnetlab.serve import _load_for

    best, _ = model
    plain, explainer = _load_for(best, "torch", "cpu", tmp_path)
    assert plain.runtime == "torch" and explainer is plain
    fast, explainer = _load_for(best, "onnxruntime", "cpu", tmp_path)  # exported for the server's lifetime
    assert fast.runtime == "onnxruntime" and (tmp_path / "model.onnx").is_file()
    assert explainer.runtime == "torch"  # /explain still has the network
    exported, explainer = _load_for(tmp_path / "model.onnx", "auto", "cpu", tmp_path)
    assert exported.runtime == "onnxruntime" and explainer is None
    with pytest.raises(ConfigError, match="runs in onnxruntime"):
        _load_for(tmp_path / "model.onnx", "torch", "cpu", tmp_path)
    with pytest.raises(ConfigError, match="--format openvino"):
        _load_for(tmp_path / "model.onnx", "openvino", "cpu", tmp_path)
