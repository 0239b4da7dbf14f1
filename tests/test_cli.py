"""End-to-end: the real CLI (in-process and as a subprocess) on tiny generated data sets."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

import resnetlab
from conftest import FAST, TOY_CLASSES
from processes import run
from resnetlab.cli import main
from resnetlab.data.cache import decode_split
from resnetlab.data.sources import open_data

TRAIN = ["--img-size", "16", "--lr", "0.05", *FAST, "--batch-size", "16"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.real_figures  # the confusion matrix as drawn
def test_train_evaluate_predict_on_split_folders(split_folders: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--epochs", "5", "--out", str(run), *TRAIN]) == 0
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "curves.png", "data_report.json"):
        assert (run / name).is_file(), name
    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "img_per_s",
                             "val_f1"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    best_acc = max(float(r["val_acc"]) for r in rows)
    assert best_acc > 0.9, "the toy set is learnable in seconds"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 5 and config["img_size"] == 16

    checkpoint = torch.load(run / "best.pt", weights_only=True)  # plain types only
    assert checkpoint["classes"] == sorted(TOY_CLASSES)
    assert checkpoint["img_size"] == 16 and checkpoint["model_spec"]["stem"] == "small"
    assert checkpoint["model_spec"]["arch"] == "resnet18" and len(checkpoint["mean"]) == 3
    assert checkpoint["metrics"]["val_acc"] == pytest.approx(best_acc, abs=1e-5)
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "epoch"} <= set(last) and last["epoch"] == 5

    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), str(split_folders), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    # the reloaded checkpoint scores exactly what the in-memory model scored during training
    assert metrics["accuracy"] == pytest.approx(best_acc, abs=1e-6)
    assert metrics["images"] == 24 and "top5_accuracy" not in metrics  # only 3 classes
    assert set(metrics["per_class"]) == set(TOY_CLASSES)
    assert {"precision", "recall", "f1"} <= set(metrics["macro_avg"])
    assert f"accuracy {metrics['accuracy']:.4f}" in printed
    matrix = read_csv(out / "confusion_matrix.csv")
    assert sum(int(v) for row in matrix for k, v in row.items() if k != "true \\ predicted") == 24
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    with open(out / "misclassified.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "path,true,predicted,confidence"

    broken = split_folders / "Val" / "red" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    predictions = tmp_path / "preds.csv"
    assert main(["predict", str(run / "best.pt"), str(split_folders / "Val"), "--out", str(predictions),
                 "--topk", "3", "--no-progress"]) == 1  # one input could not be read (--allow-errors: 0)
    rows = read_csv(predictions)
    assert list(rows[0]) == ["path", "label", "confidence", "top2_label", "top2_prob", "top3_label", "top3_prob",
                             "error"]
    assert len(rows) == 25
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg") and "not an image" in bad[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert sum(Path(r["path"]).parent.name == r["label"] for r in good) / len(good) > 0.9
    for r in good:
        probabilities = [float(r["confidence"]), float(r["top2_prob"]), float(r["top3_prob"])]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, 1e-4)
    assert "1 failed" in capsys.readouterr().err


def test_csv_and_class_folder_layouts(csv_dataset: Path, class_folders: Path, tmp_path: Path):
    for data, name in ((csv_dataset, "csv"), (class_folders, "folders")):
        run = tmp_path / name
        assert main(["train", str(data), "--epochs", "2", "--out", str(run), *TRAIN]) == 0
        assert main(["evaluate", str(run / "best.pt"), str(data), "--out", str(run / "eval"), "--no-progress"]) == 0
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        checkpoint = torch.load(run / "best.pt", weights_only=True)
        assert metrics["accuracy"] == pytest.approx(checkpoint["metrics"]["val_acc"], abs=1e-6)
    split_rows = read_csv(tmp_path / "folders" / "split.csv")
    assert {r["split"] for r in split_rows} == {"train", "val"} and len(split_rows) == 60


def test_reloaded_checkpoint_predicts_exactly_what_the_model_did(split_folders: Path, tmp_path: Path):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "r"), epochs=1, img_size=16, width=0.25,
                             batch_size=32, progress=False, workers=1)
    source = open_data(str(split_folders))
    images = decode_split(source.splits["val"], 16, use_cache=False).images[:8]
    classifier = resnetlab.load(result.last_checkpoint, device="cpu")
    from resnetlab.data.transforms import preprocess_batch, stats_tensor

    x = preprocess_batch(images, stats_tensor(classifier.meta.mean, "cpu"), stats_tensor(classifier.meta.std, "cpu"))
    with torch.inference_mode():
        in_memory = result.model(x)
    assert torch.equal(classifier.logits(images), in_memory)
    # paths, PIL images and tensors all go through the stored preprocessing
    path = source.splits["val"].paths[0]
    from PIL import Image

    by_path = classifier.predict(path)[0]
    by_pil = classifier.predict(Image.open(path))[0]
    assert by_path.label == by_pil.label and by_path.confidence == pytest.approx(by_pil.confidence)
    assert len(by_path.top) == 3 and by_path.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_resume_continues_at_the_saved_epoch(split_folders: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--epochs", "2", "--out", str(run), *TRAIN]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert [int(r["epoch"]) for r in read_csv(run / "metrics.csv")] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_config_file_values_are_overridden_by_flags(split_folders: Path, tmp_path: Path):
    config = tmp_path / "settings.yaml"
    config.write_text("epochs: 1\nimg_size: 16\nwidth: 0.25\nlabel_smoothing: 0.0\n")
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--config", str(config), "--epochs", "2", "--out", str(run),
                 "--no-progress", "--workers", "1"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["label_smoothing"] == 0.0 and saved["img_size"] == 16


def test_bad_settings_fail_before_training_with_clear_messages(split_folders: Path, tmp_path: Path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "metrics.csv").write_text("x")
    assert main(["train", str(split_folders), "--out", str(existing), *TRAIN]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", str(split_folders), "--model", "resnet81", "--out", str(tmp_path / "m"), *TRAIN]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["train", str(split_folders), "--pretrained", "hub", "--out", str(tmp_path / "h"), *TRAIN]) == 1
    err = capsys.readouterr().err
    assert "could not download pretrained weights" in err and "Traceback" not in err


def test_batch_sizes_below_one_are_refused_before_loading(split_folders: Path, tmp_path: Path, capsys):
    missing = str(tmp_path / "never-loaded.pt")  # the count is checked first, so no checkpoint is needed
    for verb, args in (("predict", [missing, str(split_folders / "Val")]),
                       ("evaluate", [missing, str(split_folders)])):
        for value in ("0", "-1"):
            assert main([verb, *args, "--batch-size", value, "--no-progress"]) == 2, (verb, value)
            err = capsys.readouterr().err
            assert err.startswith(f"resnetlab {verb}: error: --batch-size must be at least 1, got {value}"), err


def test_unknown_setting_suggests_the_right_name(split_folders: Path, tmp_path: Path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("epocs: 3\n")
    assert main(["train", str(split_folders), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'epocs'" in err and "did you mean 'epochs'" in err


def test_bare_state_dict_needs_and_accepts_model_and_classes(split_folders: Path, tmp_path: Path, capsys):
    import timm

    model = timm.create_model("resnet18", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "best.pth")
    assert main(["predict", str(tmp_path / "best.pth"), str(split_folders / "Val"), "--no-progress"]) == 1
    assert "--model" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    classes = ",".join(sorted(TOY_CLASSES))
    assert main(["predict", str(tmp_path / "best.pth"), str(split_folders / "Val"), "--model", "resnet18",
                 "--classes", classes, "--img-size", "32", "--out", str(out), "--no-progress"]) == 0
    assert len(read_csv(out)) == 24
    assert main(["predict", str(tmp_path / "best.pth"), str(split_folders / "Val"), "--model", "resnet18",
                 "--classes", "a,b", "--no-progress"]) == 1
    assert "3 classes but 2 class names" in capsys.readouterr().err


def test_module_and_console_script_entry_points(tmp_path: Path):
    for command in ([sys.executable, "-m", "resnetlab", "--help"], [str(Path(sys.executable).parent / "resnetlab"),
                                                                     "train", "--help"]):
        done = run(command, timeout=120)  # in a session of its own, killed with its children however it ends
        assert done.returncode == 0, done.stderr
    assert "--freeze-backbone" in done.stdout and "--balance" in done.stdout
