"""Export: ONNX / TorchScript files and their sidecar reproduce PyTorch's logits; predict and serve run ONNX."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageOps

import resnetlab
from conftest import TOY_CLASSES
from resnetlab.checkpoint import load_model
from resnetlab.classifier import load_onnx
from resnetlab.cli import main
from resnetlab.errors import ExportError
from resnetlab.export import export_model

TOLERANCE = 1e-4  # the bar for |onnxruntime - PyTorch|


@pytest.fixture(scope="module")
def exported(tmp_path_factory, learned_run) -> dict:
    """The session's three-epoch tiny model (its labels follow the images, so a label that matches the checkpoint's
    means something), exported once as dynamic-batch ONNX, batch-1 ONNX and TorchScript (into a copy of its run
    folder: the default export path is beside best.pt)."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = learned_run.copy_to(root / "run") / "best.pt"
    files = {"checkpoint": checkpoint, "data": learned_run.data, "root": root}
    files["dynamic"] = Path(export_model(checkpoint, format="onnx", dynamic_batch=True)["path"])
    files["fixed"] = Path(export_model(checkpoint, format="onnx", out=root / "fixed" / "b1.onnx")["path"])
    files["torchscript"] = Path(export_model(checkpoint, format="torchscript")["path"])
    return files


def random_inputs(n: int, size: int, seed: int) -> torch.Tensor:
    """Normalised-looking random images, N x 3 x S x S float32."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_onnx_matches_pytorch_for_batch_1_and_a_dynamic_batch(exported):
    model, meta = load_model(exported["checkpoint"])
    assert exported["dynamic"] == exported["checkpoint"].with_suffix(".onnx")
    session = ort.InferenceSession(str(exported["dynamic"]), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "image" and image_input.shape[1:] == [3, 16, 16]
    assert isinstance(image_input.shape[0], str), "the batch dimension is symbolic"
    for n, seed in ((1, 0), (5, 1), (17, 2)):
        x = random_inputs(n, meta.img_size, seed)
        with torch.inference_mode():
            expected = model(x).numpy()
        (logits,) = session.run(["logits"], {"image": x.numpy()})
        assert logits.shape == (n, len(TOY_CLASSES))
        assert np.abs(logits - expected).max() < TOLERANCE

    fixed = ort.InferenceSession(str(exported["fixed"]), providers=["CPUExecutionProvider"])
    assert fixed.get_inputs()[0].shape == [1, 3, 16, 16]
    x = random_inputs(1, meta.img_size, 3)
    with torch.inference_mode():
        assert np.abs(fixed.run(None, {"image": x.numpy()})[0] - model(x).numpy()).max() < TOLERANCE


def test_sidecar_is_enough_for_a_consumer_without_resnetlab(exported):
    """Only the sidecar, PIL, numpy and onnxruntime: the same probabilities as resnetlab's own predict."""
    sidecar = json.loads(exported["dynamic"].with_name("best.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["classes"] == sorted(TOY_CLASSES) and sidecar["img_size"] == 16
    assert sidecar["input"]["layout"] == "NCHW" and sidecar["input"]["shape"] == ["batch", 3, 16, 16]
    assert len(sidecar["mean"]) == len(sidecar["std"]) == 3 and sidecar["output"]["name"] == "logits"
    assert sidecar["check"]["max_abs_diff_logits"] < TOLERANCE and sidecar["check"]["batch_sizes"] == [1, 3]
    embedded = {p.key: p.value for p in onnx.load(exported["dynamic"]).metadata_props}
    assert json.loads(embedded["resnetlab"]) == {k: v for k, v in sidecar.items() if k != "check"}

    files = sorted((exported["data"] / "Val").rglob("*.png"))[:6]
    pixels = []
    for file in files:  # the sidecar's recipe: RGB, shorter side to S, centre crop, /255, -mean, /std
        image = ImageOps.fit(Image.open(file).convert("RGB"), (16, 16), method=Image.Resampling.BILINEAR)
        pixels.append((np.asarray(image, dtype=np.float32) / 255 - sidecar["mean"]) / sidecar["std"])
    x = np.stack(pixels).transpose(0, 3, 1, 2).astype(np.float32)
    session = ort.InferenceSession(str(exported["dynamic"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {sidecar["input"]["name"]: x})[0]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    reference = resnetlab.load(exported["checkpoint"], device="cpu").predict([str(f) for f in files])
    np.testing.assert_allclose(probabilities, np.stack([p.probabilities for p in reference]), atol=TOLERANCE)


def test_onnx_classifier_same_predictions_as_pytorch(exported):
    files = [str(f) for f in sorted((exported["data"] / "Val").rglob("*.png"))]
    reference = resnetlab.load(exported["checkpoint"], device="cpu").predict(files, topk=3)
    for path in (exported["dynamic"], exported["fixed"]):  # the batch-1 model is run image by image
        onnx_classifier = resnetlab.load(path)
        assert onnx_classifier.classes == sorted(TOY_CLASSES) and onnx_classifier.meta.img_size == 16
        got = onnx_classifier.predict(files, topk=3, batch_size=7)
        assert [p.label for p in got] == [p.label for p in reference]
        np.testing.assert_allclose(np.stack([p.probabilities for p in got]),
                                   np.stack([p.probabilities for p in reference]), atol=TOLERANCE)


def test_onnx_metadata_in_the_file_replaces_a_missing_sidecar(exported, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(exported["fixed"].read_bytes())  # no lone.onnx.json beside it
    assert load_onnx(lone).classes == sorted(TOY_CLASSES)

    proto = onnx.load(lone)
    del proto.metadata_props[:]
    onnx.save(proto, lone)
    with pytest.raises(ExportError, match="no sidecar lone.onnx.json"):
        load_onnx(lone)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="cannot load ONNX model .*garbage.onnx"):
        load_onnx(garbage)


def test_torchscript_matches_pytorch(exported):
    model, meta = load_model(exported["checkpoint"])
    assert exported["torchscript"].suffix == ".torchscript"
    extra = {"resnetlab.json": ""}
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated upstream; the format still loads
        traced = torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    assert json.loads(extra["resnetlab.json"])["classes"] == sorted(TOY_CLASSES)
    sidecar = json.loads(Path(str(exported["torchscript"]) + ".json").read_text(encoding="utf-8"))
    assert sidecar["format"] == "torchscript" and sidecar["input"]["shape"][0] == "batch"
    x = random_inputs(6, meta.img_size, 4)
    with torch.inference_mode():
        assert (traced(x) - model(x)).abs().max().item() < TOLERANCE


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cli_predict_runs_an_exported_onnx_file(exported, tmp_path, capsys):
    val = str(exported["data"] / "Val")
    assert main(["predict", str(exported["checkpoint"]), val, "--out", str(tmp_path / "pt.csv"),
                 "--no-progress"]) == 0
    assert main(["predict", str(exported["dynamic"]), val, "--out", str(tmp_path / "onnx.csv"),
                 "--no-progress"]) == 0
    torch_rows, onnx_rows = read_rows(tmp_path / "pt.csv"), read_rows(tmp_path / "onnx.csv")
    assert len(onnx_rows) == 24 and [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows):
        assert abs(float(a["confidence"]) - float(b["confidence"])) < TOLERANCE

    capsys.readouterr()
    broken = tmp_path / "broken.onnx"
    broken.write_text("not onnx")
    assert main(["predict", str(broken), val, "--out", str(tmp_path / "x.csv"), "--no-progress"]) == 1  # bad input
    assert "resnetlab predict: error: cannot load ONNX model" in capsys.readouterr().err


def test_cli_export_flags_and_errors(exported, tmp_path, capsys):
    out = tmp_path / "nested" / "model.torchscript.pt"
    assert main(["export", str(exported["checkpoint"]), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and Path(str(out) + ".json").is_file()
    assert "max |torchscript - PyTorch|" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), "--format", "onnx"]) == 1  # bad input, not usage
    assert "resnetlab export: error: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(exported["checkpoint"]), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_serve_runs_an_onnx_model(exported):
    from fastapi.testclient import TestClient

    from resnetlab.serve import create_app
    from serving import one_per_class, png_bytes, uploads

    pictures = one_per_class(exported["data"])
    expected = [p.label for p in resnetlab.load(exported["checkpoint"], device="cpu").predict(pictures)]
    assert expected == sorted(TOY_CLASSES)  # the checkpoint gets each class's picture right
    with TestClient(create_app(load_onnx(exported["dynamic"]))) as client:
        health = client.get("/health").json()
        assert health["runtime"] == "onnxruntime" and health["classes"] == 3
        response = client.post("/predict", files=uploads(pictures))
        assert response.status_code == 200
        assert [p["label"] for p in response.json()["predictions"]] == expected  # what the checkpoint says
        explained = client.post("/explain", files={"file": ("red.png", png_bytes(), "image/png")})
        assert explained.status_code == 501 and "explanations" in explained.json()["detail"]
