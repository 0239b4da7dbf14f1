"""Deployment formats beyond ONNX fp32: OpenVINO IR (fp32, int8 through NNCF, fp16 weights), fp16 ONNX and
TorchScript (--half), the calibration method, and serve's runtime choice: each file works like a checkpoint."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from resnetlab.classifier import load
from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.export import export_model
from serving import assert_agrees, one_per_class, png_bytes, running_server, toy_images, train_tiny, uploads

pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("deploy"), learned=True)  # labels that follow the images


@pytest.fixture(scope="module")
def reference(model) -> np.ndarray:
    """The checkpoint's probabilities on the 96 toy images, in toy_images order."""
    best, data = model
    return _probabilities(load(best, device="cpu"), data)


def _probabilities(classifier, data: Path) -> np.ndarray:  # noqa: ANN001 - a Classifier
    return np.stack([p.probabilities for p in classifier.predict(toy_images(data))])


@pytest.mark.slow
def test_openvino_fp32_and_int8_work_like_a_checkpoint(model, reference, tmp_path: Path, capsys):
    best, data = model
    fp32 = export_model(best, format="openvino", out=tmp_path / "m.xml", data=str(data))
    assert (tmp_path / "m.bin").is_file() and fp32["precision"] == "fp32" and fp32["max_abs_diff"] < 1e-4
    assert fp32["validation"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    classifier = load(tmp_path / "m.xml")
    assert classifier.runtime == "openvino" and classifier.model is None
    np.testing.assert_allclose(_probabilities(classifier, data), reference, atol=1e-5)
    (tmp_path / "m.xml.json").unlink()  # the sidecar inside the IR (rt_info) is enough
    assert load(tmp_path / "m.xml").classes == classifier.classes

    int8 = export_model(best, format="openvino", out=tmp_path / "q.xml", quantize="int8", calib_images=12,
                        data=str(data))  # the default --max-drop: at most 1 point lost
    assert_agrees(_probabilities(load(tmp_path / "q.xml"), data), reference, "int8")
    sidecar = json.loads((tmp_path / "q.xml.json").read_text(encoding="utf-8"))
    assert sidecar["precision"] == "int8" and "NNCF" in sidecar["quantization"]["method"]
    assert sidecar["validation"] == int8["validation"]
    model_ir = ov.Core().read_model(str(tmp_path / "q.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in model_ir.get_ops())  # really quantised
    assert main(["evaluate", str(tmp_path / "q.xml"), str(data), "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] == pytest.approx(int8["validation"]["accuracy_exported"])
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "q.xml"), str(data / "Val")]) == 2
    assert "runs in openvino: use the .pt file" in capsys.readouterr().err


@pytest.mark.slow
def test_half_exports_keep_float32_io_and_the_predictions(model, reference, tmp_path: Path):
    best, data = model
    for fmt, name in (("onnx", "h.onnx"), ("torchscript", "h.torchscript"), ("openvino", "h.xml")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = export_model(best, format=fmt, out=tmp_path / name, half=True, dynamic_batch=True,
                                  data=str(data))
        # the fp16 wrapper is in eval mode too: no false "Exporting a model while it is in training mode"
        assert not [w for w in caught if "training mode" in str(w.message)], fmt
        sidecar = json.loads(Path(result["sidecar"]).read_text(encoding="utf-8"))
        assert sidecar["precision"] == "fp16" and sidecar["input"]["dtype"] == "float32", fmt
        assert_agrees(_probabilities(load(tmp_path / name), data), reference, "fp16")
    import onnx

    weights = [i for i in onnx.load(tmp_path / "h.onnx").graph.initializer if len(i.dims) == 4]  # conv kernels
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    ir = ov.Core().read_model(str(tmp_path / "h.xml"))
    constants = [op for op in ir.get_ops() if op.get_type_name() == "Constant"]
    assert any(op.get_element_type() == ov.Type.f16 for op in constants)  # the IR stores fp16 weights


def test_options_that_do_not_go_together_are_refused_before_anything_is_written(model, reference, tmp_path: Path,
                                                                                 capsys):
    best, data = model
    with pytest.raises(ConfigError, match="--half and --quantize int8 exclude each other"):
        export_model(best, format="onnx", out=tmp_path / "x.onnx", half=True, quantize="int8")
    with pytest.raises(ConfigError, match="--calib-method applies to --format onnx"):
        export_model(best, format="openvino", out=tmp_path / "x.xml", quantize="int8", calib_method="entropy")
    assert main(["export", str(best), "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "use --format onnx or openvino" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    percentile = export_model(best, format="onnx", out=tmp_path / "p.onnx", quantize="int8", calib_images=12,
                              calib_method="percentile", data=str(data))
    assert "(percentile)" in json.loads(Path(percentile["sidecar"]).read_text())["quantization"]["method"]
    assert_agrees(_probabilities(load(tmp_path / "p.onnx"), data), reference, "int8")


def test_serve_auto_predicts_in_openvino_and_explains_in_torch(model, tmp_path: Path):
    import httpx

    from resnetlab.serve import _load_for
    from resnetlab.serve.app import create_app

    best, data = model
    classifier, explainer = _load_for(best, "auto", "cpu", tmp_path)  # on a CPU: the fastest installed runtime
    assert classifier.runtime == "openvino" and explainer.runtime == "torch"
    pictures = one_per_class(data)
    expected = [p.label for p in load(best, device="cpu").predict([str(f) for f in pictures])]
    assert expected == classifier.classes  # the checkpoint gets each class's picture right
    with running_server(create_app(classifier, explainer=explainer)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["runtime"] == "openvino" and health["explain"] is True
        predicted = httpx.post(f"{url}/predict", files=uploads(pictures)).json()["predictions"]
        assert [p["label"] for p in predicted] == expected  # the served file predicts what the checkpoint does
        heat = httpx.post(f"{url}/explain", files={"file": ("a.png", png_bytes(), "image/png")})
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    exported, none = _load_for(tmp_path / "model.xml", "auto", "cpu", tmp_path)
    with running_server(create_app(exported, explainer=none)) as url:
        assert httpx.get(f"{url}/health").json()["explain"] is False
        refused = httpx.post(f"{url}/explain", files={"file": ("a.png", png_bytes(), "image/png")})
        assert refused.status_code == 501 and "openvino" in refused.json()["detail"]
