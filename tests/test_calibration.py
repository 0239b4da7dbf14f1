"""Calibration: ECE, adaptive ECE, Brier and NLL on hand-computed values; temperature scaling of a deliberately
over-confident model (the session's learned run with its head's logits x8, scored on a validation split where a
quarter of the labels are wrong): ECE falls, accuracy stays, and predict, evaluate, an exported ONNX file, the
service and train --calibrate all give softmax(logits / T)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import resnetlab
from resnetlab.calibration import (
    brier_score,
    calibration_scores,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from resnetlab.checkpoint import read_checkpoint, save_checkpoint
from resnetlab.cli import main

# four predictions: three at 0.9 (two right), one at 0.58 (right)
CONFIDENCE = np.array([0.9, 0.9, 0.9, 0.58])
CORRECT = np.array([True, True, False, True])


def test_ece_on_hand_computed_values() -> None:
    # 15 equal-width bins: 0.9 falls in (0.867, 0.933]: accuracy 2/3, gap 0.9 - 2/3, weight 3/4; 0.58 in
    # (0.533, 0.6]: accuracy 1, gap 0.42, weight 1/4
    assert expected_calibration_error(CONFIDENCE, CORRECT) == pytest.approx((0.9 - 2 / 3) * 3 / 4 + 0.42 / 4)
    assert [n for _, _, n in reliability_bins(CONFIDENCE, CORRECT)] == [1, 3]
    # equal mass, 2 bins: sorted (0.58 right, 0.9 right) and (0.9 right, 0.9 wrong)
    assert expected_calibration_error(CONFIDENCE, CORRECT, 2, adaptive=True) == pytest.approx(
        abs(1 - 0.74) / 2 + abs(0.5 - 0.9) / 2)
    # 15 equal-mass bins over 4 images: one image each
    assert expected_calibration_error(CONFIDENCE, CORRECT, adaptive=True) == pytest.approx((0.1 + 0.1 + 0.9 + 0.42) / 4)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_brier_and_nll_on_hand_computed_values() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    assert brier_score(probabilities, targets) == pytest.approx((0.01 + 0.01 + 0.81 + 0.81) / 2)
    scores = calibration_scores(probabilities.log(), targets)  # log-probabilities are logits of these softmaxes
    assert scores["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1)) / 2)
    assert scores["brier"] == pytest.approx(0.82)
    assert scores["ece"] == pytest.approx(0.4)  # both at 0.9, one right: |0.5 - 0.9|


def test_fit_temperature_finds_the_temperature_the_labels_were_drawn_with() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=generator) * 4
    targets = torch.multinomial((logits / 2.5).softmax(dim=1), 1, generator=generator).flatten()
    assert fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)
    right = logits.argmax(dim=1)  # every prediction right: sharper is always better, down to the lower bound
    assert fit_temperature(logits, right) == pytest.approx(0.05, rel=1e-3)


@dataclass(frozen=True)
class Calibrated:
    over: Path  # the over-confident checkpoint
    calibrated: Path  # what `resnetlab calibrate` wrote from it
    data: Path  # the learned run's toy set, a quarter of its validation labels wrong
    temperature: float

    def images(self) -> list[Path]:
        return sorted((self.data / "Val").rglob("*.png"))

    def raw_logits(self, paths: list[Path]) -> torch.Tensor:
        classifier = resnetlab.load(self.over, device="cpu")
        return classifier.logits(torch.stack([classifier.decode(path) for path in paths]))


@pytest.fixture(scope="module")
def calibrated(learned_run, tmp_path_factory) -> Calibrated:
    root = tmp_path_factory.mktemp("calibrated")
    payload = read_checkpoint(learned_run.checkpoint)
    for key in ("fc.weight", "fc.bias"):  # logits x8: the same predictions, far too sure of them
        payload["model"][key] = payload["model"][key] * 8
    save_checkpoint(root / "over.pt", payload)
    data = shutil.copytree(learned_run.data, root / "noisy")
    classes = sorted(p.name for p in (data / "Val").iterdir())
    for i, name in enumerate(classes):  # 2 of each class's 8 validation images moved to the next class
        for image in sorted((data / "Val" / name).iterdir())[:2]:
            image.rename(data / "Val" / classes[(i + 1) % len(classes)] / f"moved {image.name}")
    assert main(["calibrate", str(root / "over.pt"), str(data), "--out", str(root / "calibrated.pt"),
                 "--no-progress", "--workers", "1", "--device", "cpu"]) == 0
    saved = torch.load(root / "calibrated.pt", map_location="cpu", weights_only=True)
    return Calibrated(root / "over.pt", root / "calibrated.pt", data, saved["temperature"])


def test_calibrate_lowers_ece_and_keeps_accuracy(calibrated: Calibrated, tmp_path: Path) -> None:
    saved = torch.load(calibrated.calibrated, map_location="cpu", weights_only=True)["calibration"]
    assert calibrated.temperature > 1.5  # over-confident: softened
    assert saved["after"]["ece"] < saved["before"]["ece"] / 2 and saved["after"]["nll"] < saved["before"]["nll"]
    assert saved["accuracy"] == pytest.approx(0.75) and saved["images"] == 24

    metrics = resnetlab.evaluate(calibrated.calibrated, str(calibrated.data), out=tmp_path / "eval", progress=False,
                                 workers=1, device="cpu")
    assert metrics["accuracy"] == pytest.approx(0.75) and metrics["temperature"] == calibrated.temperature
    assert metrics["ece"] == pytest.approx(saved["after"]["ece"], abs=1e-6)
    assert metrics["before_calibration"]["ece"] == pytest.approx(saved["before"]["ece"], abs=1e-6)
    assert metrics["nll"] == pytest.approx(metrics["loss"], abs=1e-6)  # the loss is of the calibrated probabilities
    assert (tmp_path / "eval" / "reliability.png").is_file()
    report = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "Calibration" in report and f"after (T = {calibrated.temperature:.3g})" in report
    assert "reliability.png" in report


def test_predict_gives_tempered_probabilities_and_unsure(calibrated: Calibrated, tmp_path: Path) -> None:
    paths = calibrated.images()
    expected = (calibrated.raw_logits(paths) / calibrated.temperature).softmax(dim=1)
    predictions = resnetlab.load(calibrated.calibrated, device="cpu").predict(paths)
    assert np.allclose(np.stack([p.probabilities for p in predictions]), expected.numpy(), atol=1e-5)

    cut = float(np.median([p.confidence for p in predictions]))
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(calibrated.calibrated), str(calibrated.data / "Val"), "--out", str(out),
                 "--min-confidence", str(cut), "--no-progress", "--workers", "1", "--device", "cpu"]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = {Path(row["path"]): row for row in csv.DictReader(handle)}
    for path, p in zip(paths, predictions):
        row = rows[path]
        assert float(row["confidence"]) == pytest.approx(p.confidence, abs=1e-5)
        assert row["label"] == ("unsure" if p.confidence < cut else p.label)
    assert 0 < sum(row["label"] == "unsure" for row in rows.values()) < len(rows)


def test_tta_divides_each_view_before_averaging(calibrated: Calibrated) -> None:
    paths = calibrated.images()[:6]
    batch = torch.stack([resnetlab.load(calibrated.over, device="cpu").decode(path) for path in paths])
    views = torch.cat([calibrated.raw_logits(paths), resnetlab.load(calibrated.over, device="cpu").logits(
        batch.flip(dims=[3]))])  # the image and its mirror, as --tta flip
    expected = (views / calibrated.temperature).softmax(dim=1).view(2, len(paths), -1).mean(dim=0)
    predictions = resnetlab.load(calibrated.calibrated, device="cpu", tta="flip").predict(paths)
    assert np.allclose(np.stack([p.probabilities for p in predictions]), expected.numpy(), atol=1e-5)


@pytest.mark.slow  # torch's ONNX exporter: 4-10 s on 2 cores
def test_onnx_export_holds_the_temperature(calibrated: Calibrated, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from resnetlab.export import export_model

    result = export_model(calibrated.calibrated, format="onnx", out=tmp_path / "model.onnx", check=False)
    sidecar = json.loads(Path(result["sidecar"]).read_text(encoding="utf-8"))
    assert sidecar["temperature"] == pytest.approx(calibrated.temperature)
    paths = calibrated.images()[:6]
    classifier = resnetlab.load(calibrated.over, device="cpu")
    x = classifier.preprocess(torch.stack([classifier.decode(path) for path in paths])).contiguous().numpy()
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])  # a plain client, batch 1
    logits = np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
    expected = (calibrated.raw_logits(paths) / calibrated.temperature).softmax(dim=1).numpy()
    assert np.allclose(torch.from_numpy(logits).softmax(dim=1).numpy(), expected, atol=1e-4)


def test_service_reports_temperature_and_unsure(calibrated: Calibrated) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resnetlab.serve import create_app

    with TestClient(create_app(resnetlab.load(calibrated.calibrated, device="cpu"))) as client:
        assert client.get("/health").json()["temperature"] == pytest.approx(calibrated.temperature)
        image = calibrated.images()[0]
        answer = client.post("/predict", params={"min_confidence": 1.0},
                             files={"file": (image.name, image.read_bytes(), "image/png")}).json()
    assert answer["predictions"][0]["label"] == "unsure" and answer["predictions"][0]["top"][0]["label"] != "unsure"


def test_train_calibrate_stores_the_temperature_in_best_and_last(learned_run, tmp_path: Path) -> None:
    from resnetlab.config import TrainConfig
    from resnetlab.data.cache import decode_split
    from resnetlab.data.sources import open_data
    from resnetlab.training.finish import finish_run

    run_dir = learned_run.copy_to(tmp_path / "run")
    meta = resnetlab.load(run_dir / "best.pt", device="cpu").meta
    source = open_data(str(learned_run.data))
    data = SimpleNamespace(source=source, val_name="val", val=decode_split(
        source.splits["val"], meta.img_size, crop=meta.crop, workers=1, progress=False, use_cache=False))
    cfg = TrainConfig(data=str(learned_run.data), calibrate=True, batch_size=16, amp="off", progress=False)
    finish_run(run_dir, data, torch.device("cpu"), cfg)
    best, last = (torch.load(run_dir / name, map_location="cpu", weights_only=True) for name in ("best.pt", "last.pt"))
    # the toy's validation images are all right: the fit runs to its bound (every probability ~1) and T = 1 is kept
    assert best["calibration"]["accuracy"] == 1.0 and best["temperature"] == last["temperature"] == 1.0
    assert best["calibration"]["fitted_on"].endswith("(val)") and "calibration" in last
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["temperature"] == 1.0 and "before_calibration" not in metrics


def test_multilabel_is_not_calibrated(capsys, tmp_path: Path) -> None:
    from resnetlab.calibrate import store_temperatures

    data = SimpleNamespace(source=SimpleNamespace(task="multilabel"))
    store_temperatures(tmp_path, data, torch.device("cpu"), SimpleNamespace())
    assert "not calibrated" in capsys.readouterr().err


def test_the_flat_name_is_the_function() -> None:
    import resnetlab.calibrate  # noqa: F401 - the module of the same name, imported first
    from resnetlab.calibrate import calibrate

    assert resnetlab.calibrate is calibrate and "calibrate" in resnetlab.__all__
