"""Embeddings: `resnetlab embed` and Classifier.embed give the pooled features the classifier head receives."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from processes import run
from resnetlab.classifier import Classifier, OnnxBackend, load
from resnetlab.cli import main
from resnetlab.embed import labelled_files, pretrained_classifier
from resnetlab.errors import ModelError
from resnetlab.models import unwrap

QUIET = ["--no-progress", "--workers", "2"]
# input order (a folder's files, then its sub-folders, sorted) and the label each readable file gets
EXPECTED = [("loose.png", ""), ("blue sky/grey.png", "blue sky"), ("green léaf/rgba.png", "green léaf"),
            ("red/square.png", "red"), ("unknown/wide.jpg", "unknown")]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Sub-folders named as the trained run's classes and one that is not; grey, RGBA, non-square and broken files."""
    root = tmp_path / "photos"
    for folder in ("blue sky", "green léaf", "red", "unknown"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 30, 30)).save(root / "loose.png")
    Image.new("L", (18, 18), 90).save(root / "blue sky" / "grey.png")
    Image.new("RGBA", (16, 16), (20, 220, 40, 128)).save(root / "green léaf" / "rgba.png")
    Image.new("RGB", (16, 16), (230, 40, 40)).save(root / "red" / "square.png")
    (root / "red" / "zz broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (30, 14), (40, 60, 230)).save(root / "unknown" / "wide.jpg", quality=95)
    return root


def embed(*argv: str) -> int:
    return main(["embed", *map(str, argv), *QUIET])


def test_npz_holds_the_head_input_and_matches_classifier_embed(trained_run, photos: Path, tmp_path: Path, capsys):
    out = tmp_path / "out" / "embeddings.npz"
    assert embed(trained_run.checkpoint, photos, "--out", out) == 0
    printed = capsys.readouterr().err
    assert "zz broken.jpg: not an image" in printed and "skipped 1 unreadable file(s)" in printed
    data = np.load(out)  # plain arrays: no allow_pickle needed
    assert [str(Path(p).relative_to(photos).as_posix()) for p in data["paths"]] == [name for name, _ in EXPECTED]
    assert list(data["labels"]) == [label for _, label in EXPECTED]
    assert str(data["model"]) == "resnet18" and int(data["img_size"]) == 16

    classifier = load(trained_run.checkpoint, device="cpu")
    network = unwrap(classifier.model)
    features = data["features"]
    assert features.dtype == np.float32 and features.shape == (5, network.num_features)
    np.testing.assert_allclose(classifier.embed(list(data["paths"]), batch_size=2), features, atol=1e-5)
    # the features are what the linear head receives: fc(features) gives the classifier's logits
    batch = torch.stack([classifier.decode(p) for p in data["paths"]])
    with torch.no_grad():
        logits = network.fc(torch.from_numpy(features))
    torch.testing.assert_close(logits, classifier.logits(batch), atol=1e-4, rtol=0)
    # PIL images and uint8 tensors are embedded as their files are; no images give an empty N x D
    grey = photos / "blue sky" / "grey.png"
    np.testing.assert_allclose(classifier.embed(Image.open(grey)), features[1:2], atol=1e-5)
    np.testing.assert_allclose(classifier.embed(classifier.decode(grey)), features[1:2], atol=1e-5)
    assert classifier.embed([]).shape == (0, network.num_features)


def test_normalised_fp16_and_csv(trained_run, photos: Path, tmp_path: Path):
    out = tmp_path / "unit.npz"
    assert embed(trained_run.checkpoint, photos, "--out", out, "--l2-normalize", "--dtype", "fp16") == 0
    unit = np.load(out)["features"]
    assert unit.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float32), axis=1), 1.0, atol=2e-3)
    classifier = load(trained_run.checkpoint, device="cpu")
    paths = [str(photos / name) for name, _ in EXPECTED]
    expected = classifier.embed(paths, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit.astype(np.float32), expected, atol=1e-3)

    assert embed(trained_run.checkpoint, photos / "red", photos / "loose.png", "--out", tmp_path / "e.csv") == 0
    with open(tmp_path / "e.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    dim = expected.shape[1]
    assert rows[0] == ["path", "label"] + [f"f{j}" for j in range(dim)]
    # a folder given directly has no class sub-folder above its files: no label
    assert [(Path(r[0]).name, r[1]) for r in rows[1:]] == [("square.png", ""), ("loose.png", "")]
    values = np.array([[float(v) for v in r[2:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_allclose(values, classifier.embed([paths[3], paths[0]]), atol=1e-6)


def test_parquet_output_or_a_clear_error(trained_run, photos: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "e.parquet"
    with monkeypatch.context() as patched:  # neither pyarrow nor pandas importable
        patched.setitem(sys.modules, "pyarrow", None)
        patched.setitem(sys.modules, "pandas", None)
        assert embed(trained_run.checkpoint, photos, "--out", out) == 2
    assert "needs pyarrow (pip install pyarrow)" in capsys.readouterr().err and not out.exists()
    parquet = pytest.importorskip("pyarrow.parquet")
    assert embed(trained_run.checkpoint, photos, "--out", out) == 0
    table = parquet.read_table(out).to_pydict()
    assert list(table)[:3] == ["path", "label", "f0"] and table["label"] == [label for _, label in EXPECTED]


def test_errors_and_exit_codes(trained_run, photos: Path, tmp_path: Path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "e.npz"
    assert embed(trained_run.checkpoint, broken, "--out", out) == 1
    err = capsys.readouterr().err
    assert "none of the 2 input file(s) could be read" in err and "a.png: empty file" in err and not out.exists()
    assert embed(trained_run.checkpoint, photos, "--out", tmp_path / "e.txt") == 2
    assert ".npz, .csv, .parquet" in capsys.readouterr().err
    assert embed(trained_run.checkpoint, "--out", out) == 2  # no inputs
    assert embed(trained_run.checkpoint, photos, "--model", "resnet18", "--pretrained", tmp_path / "w.pth") == 2
    assert embed(photos, "--model", "resnet18") == 2
    # weights of another width do not fit resnet18: refused, not silently re-initialised
    assert embed("--model", "resnet18", "--pretrained", trained_run.checkpoint, photos, "--out", out) == 1
    assert "does not fit" in capsys.readouterr().err and not out.exists()


def test_pretrained_timm_weights_give_its_pre_logits(photos: Path, tmp_path: Path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    weights = tmp_path / "resnet18.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    out = tmp_path / "e.npz"
    assert embed("--model", "resnet18", "--pretrained", weights, photos, "--img-size", "32", "--out", out) == 0
    data = np.load(out)
    # without a checkpoint's classes, a sub-folder's name is the label
    assert list(data["labels"]) == ["", "blue sky", "green léaf", "red", "unknown"]
    assert data["features"].shape == (5, reference.num_features) and int(data["img_size"]) == 32
    classifier = pretrained_classifier("resnet18", weights, img_size=32, device="cpu")
    x = classifier.preprocess(torch.stack([classifier.decode(p) for p in data["paths"]]))
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x.contiguous()), pre_logits=True)
    np.testing.assert_allclose(data["features"], expected.numpy(), atol=1e-4)


def test_labels_from_class_folders(tmp_path: Path):
    for folder in ("Val/red", "Val/odd", "cat/2019"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "x.png")
    labelled = [(Path(p).relative_to(tmp_path).as_posix(), label)
                for p, label in labelled_files([tmp_path], ["red", "blue"])]
    # the nearest folder that is a class wins; otherwise the first below the input folder
    assert labelled == [("Val/odd/x.png", "Val"), ("Val/red/x.png", "red"), ("cat/2019/x.png", "cat")]
    assert [label for _, label in labelled_files([tmp_path / "Val"], None)] == ["odd", "red"]


def test_tta_embeds_the_plain_model_and_onnx_is_refused(trained_run, photos: Path):
    plain = load(trained_run.checkpoint, device="cpu")
    paths = [photos / name for name, _ in EXPECTED]
    np.testing.assert_allclose(load(trained_run.checkpoint, device="cpu", tta="flip").embed(paths), plain.embed(paths),
                               atol=1e-6)
    exported = Classifier(OnnxBackend.__new__(OnnxBackend), plain.meta)  # an ONNX backend has no torch network
    with pytest.raises(ModelError, match="embeddings need the PyTorch checkpoint"):
        exported.embed(paths)


def test_cli_subprocess(trained_run, photos: Path, tmp_path: Path):
    out = tmp_path / "e.csv"
    done = run([sys.executable, "-m", "resnetlab", "embed", str(trained_run.checkpoint), str(photos), "--out", str(out),
                "--workers", "1", "--batch-size", "2", "--no-progress"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "zz broken.jpg" in done.stderr and "embedded 5 of 6 image(s)" in done.stderr  # messages: stderr
    with open(out, newline="", encoding="utf-8") as handle:
        assert [row["label"] for row in csv.DictReader(handle)] == [label for _, label in EXPECTED]
