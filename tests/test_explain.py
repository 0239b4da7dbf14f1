"""Heat maps: where the mass lies on a toy set decided by one corner, batching, hooks, every method, the CLI."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.cam import CAM_METHODS, compute_cams, default_target_layer, overlay, overlay_name, resolve_layer
from resnetlab.checkpoint import load_model
from resnetlab.cli import main
from resnetlab.data.images import decode_image
from resnetlab.data.transforms import preprocess_batch, stats_tensor
from resnetlab.evaluation import plot_misclassified
from resnetlab.metrics import rank_mistakes
from resnetlab.models import ModelSpec, TTAModel, build_model, set_backbone_trainable

explain_module = importlib.import_module("resnetlab.explain")  # `resnetlab.explain` is the function

pytestmark = pytest.mark.real_figures  # these tests look at the grids matplotlib draws

SIZE = 32
PATCH = 10
# Class -> the colour of a square that sits in the top-left or bottom-right corner of dark noise. The colour
# decides the class and the corner varies, so a good heat map must follow the square. Accent/space on purpose.
COLOURS = {"réd patch": (230, 30, 30), "blue patch": (30, 60, 240)}


def corner_image(rng: np.random.Generator, colour: tuple[int, int, int], corner: str) -> Image.Image:
    """Dark noise everywhere, a coloured square in corner 'tl' or 'br' (jittered by up to 3 px)."""
    pixels = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    offset = rng.integers(1, 4, 2)
    top, left = (offset[0], offset[1]) if corner == "tl" else (SIZE - PATCH - offset[0], SIZE - PATCH - offset[1])
    pixels[top:top + PATCH, left:left + PATCH] = colour
    return Image.fromarray(pixels)


def write_corner_set(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            corner = "tl" if i % 2 else "br"
            corner_image(rng, colour, corner).save(root / name / f"img {i:03d} {corner}.png")


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory) -> tuple[Path, Path]:
    """(best.pt, data): a quarter-width ResNet-18 trained on the corner set; Val holds 3 mislabelled images."""
    root = tmp_path_factory.mktemp("corners")
    data = root / "data"
    write_corner_set(data / "Train", 32, seed=1)
    write_corner_set(data / "Val", 8, seed=2)
    rng = np.random.default_rng(3)
    for i in range(3):  # red squares filed under "blue patch": certain, confident mistakes
        corner_image(rng, COLOURS["réd patch"], "tl").save(data / "Val" / "blue patch" / f"wrong {i}.png")
    result = resnetlab.train(data=str(data), out=str(root / "run"), epochs=3, img_size=SIZE, width=0.25,
                             batch_size=16, lr=0.05, aug="none", progress=False, workers=1,
                             cache_dir=str(root / "cache"))
    return Path(result.best_checkpoint), data


def tiny_model(**spec) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec("resnet18", 3, stem="small", width=0.25, **spec)).eval()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_heat_map_mass_lies_in_the_deciding_corner(corner_run):
    checkpoint, data = corner_run
    classifier = resnetlab.load(checkpoint, device="cpu")
    files = sorted((data / "Val").glob("*/img *.png"))
    truth = [f.parent.name for f in files]
    predictions = classifier.predict([str(f) for f in files])
    correct = np.asarray([p.label == t for p, t in zip(predictions, truth)])
    assert correct.mean() >= 0.9, "the model learned the colour rule"

    batch = torch.stack([decode_image(f, SIZE) for f in files])
    x = preprocess_batch(batch, stats_tensor(classifier.meta.mean, "cpu"), stats_tensor(classifier.meta.std, "cpu"))
    cams = compute_cams(classifier.model, x, [classifier.classes.index(name) for name in truth])
    assert cams.shape == (len(files), SIZE, SIZE) and cams.dtype == np.float32
    half = SIZE // 2
    total = cams.sum(axis=(1, 2))
    top_left = cams[:, :half, :half].sum(axis=(1, 2)) / total  # share of the heat, per image
    bottom_right = cams[:, half:, half:].sum(axis=(1, 2)) / total
    square_top_left = np.asarray([f.stem.endswith("tl") for f in files])
    at_square = np.where(square_top_left, top_left, bottom_right)
    opposite = np.where(square_top_left, bottom_right, top_left)
    # where the model is right, the heat lies on the square: medians, so one odd map cannot decide the test
    at_square, opposite = at_square[correct], opposite[correct]
    assert np.median(at_square) > 0.5, at_square  # a uniform map would put 0.25 in each quadrant
    assert np.median(at_square - opposite) > 0.25, (at_square, opposite)


def test_cams_are_batched_and_release_their_hooks():
    model = tiny_model()
    calls = []
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    x = torch.randn(64, 3, 16, 16)
    cams = compute_cams(model, x, method="gradcam", batch_size=32)
    handle.remove()
    assert cams.shape == (64, 16, 16)
    assert calls == [32, 32]  # two forward passes of 32, not 64 of one
    layer = default_target_layer(model)
    assert not layer._forward_hooks and not layer._backward_hooks and not model._forward_hooks


def test_model_state_is_restored_and_frozen_backbones_work():
    model = tiny_model()
    set_backbone_trainable(model, False)  # conv weights requires_grad=False: gradients must come via the input
    model.train()
    # gradients a caller had accumulated (mid training step) must come back untouched, not zeroed or replaced
    kept = {name: torch.full_like(p, 0.5) for name, p in model.named_parameters()
            if name in ("fc.weight", "fc.bias", "layer4.1.conv2.weight")}
    for name, p in model.named_parameters():
        p.grad = kept[name].clone() if name in kept else None
    cams = compute_cams(TTAModel(model, "flip"), torch.randn(3, 3, 16, 16), [0, 1, 2])
    assert cams.shape == (3, 16, 16) and cams.max() > 0.99  # not an all-zero map: the gradient reached layer4
    assert model.training and not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    for name, p in model.named_parameters():
        if name in kept:
            assert p.grad is not None and torch.equal(p.grad, kept[name]), name
        else:
            assert p.grad is None, name  # no weight gradients left behind
    with torch.inference_mode():  # callers inside inference mode still get maps
        assert compute_cams(model, torch.randn(2, 3, 16, 16)).shape == (2, 16, 16)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_gives_maps_in_unit_range(method, corner_run):
    # the trained corner model on its own images: a random net may hold no positive evidence for a class at all
    checkpoint, data = corner_run
    model, meta = load_model(checkpoint)
    files = [data / "Val" / name / "img 000 br.png" for name in COLOURS]
    files.append(data / "Val" / "réd patch" / "img 001 tl.png")
    x = preprocess_batch(torch.stack([decode_image(f, SIZE) for f in files]), stats_tensor(meta.mean, "cpu"),
                         stats_tensor(meta.std, "cpu"))
    cams = compute_cams(model, x, [meta.classes.index(f.parent.name) for f in files], method=method, batch_size=64,
                        progress=False)
    assert cams.shape == (3, SIZE, SIZE) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0 and np.isfinite(cams).all()
    for cam in cams:  # clipping alone would pass an all-zero map: each one must actually show something
        assert cam.max() > 0.5 and cam.std() > 0, (method, cam.max(), cam.std())
    assert not default_target_layer(model)._forward_hooks
    assert default_target_layer(model) is model.layer4[-1]  # AblationCAM swapped it out and back


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_no_progress_silences_the_librarys_per_channel_bars(method, capsys, monkeypatch):
    model = tiny_model()
    x = torch.randn(1, 3, 16, 16)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on a terminal only
    compute_cams(model, x, [0], method=method)
    assert "it/s" in capsys.readouterr().err  # grad-cam draws a bar by default...
    quiet = compute_cams(model, x, [0], method=method, progress=False)
    assert capsys.readouterr().err == ""  # ...and none with progress=False (explain --no-progress, serve)
    assert quiet.shape == (1, 16, 16) and quiet.max() > 0
    compute_cams(model, x, [0], method=method)
    assert "it/s" in capsys.readouterr().err  # the library's own tqdm is back afterwards


def test_default_and_named_layers():
    for arch in ("resnet18", "resnet50"):
        model = build_model(ModelSpec(arch, 4, width=0.25))
        assert default_target_layer(model) is model.layer4[-1]
    small = tiny_model()
    assert default_target_layer(small) is small.layer4[-1]
    mlp = tiny_model(head="mlp")
    assert isinstance(mlp.fc, torch.nn.Sequential) and default_target_layer(mlp) is mlp.layer4[-1]
    assert resolve_layer(small, None) is small.layer4[1]
    assert resolve_layer(small, "layer3.1") is small.layer3[1]
    assert resolve_layer(small, "layer4.-1") is small.layer4[-1]
    with pytest.raises(ValueError, match="unknown --layer 'layer9'.*layer4"):
        resolve_layer(small, "layer9")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'.*gradcam\\+\\+"):
        compute_cams(small, torch.randn(1, 3, 16, 16), method="gradkam")
    with pytest.raises(ValueError, match="'fc' gives no 2-D feature map"):
        compute_cams(small, torch.randn(1, 3, 16, 16), layer="fc")


def test_overlay_keeps_the_original_size_and_heat_where_the_map_is_hot():
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[:8, :8] = 1.0  # hot top-left of the centred 30 x 30 square the model saw
    result = overlay(image, cam)
    assert result.size == (40, 30) and result.mode == "RGB"
    pixels = np.asarray(result).astype(int)
    hot, cold = pixels[5, 10], pixels[25, 30]  # (row, column) inside the square: x 5..35
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet colour map: red where hot, blue where cold
    assert (pixels[:, :5] < 128).all()  # the strip the model never saw is dimmed, not coloured


def test_plot_misclassified_shows_only_mistakes(tmp_path):
    model = tiny_model()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 9], [1, 0, 0], [0, 3, 0], [0, 0, 1]])
    targets = torch.tensor([0, 1, 0, 1, 2, 2])  # 3 wrong: rows 2 (p high), 3, 4
    path = tmp_path / "misclassified.png"
    assert rank_mistakes(logits, targets).tolist() == [2, 4, 3]  # most confident first: p 1.00, 0.91, 0.58
    tied = torch.zeros(4, 3)  # equal confidence: the split's order, so every caller lists the same mistakes
    assert rank_mistakes(tied, torch.tensor([1, 0, 2, 2])).tolist() == [0, 2, 3]
    shown = plot_misclassified(model, images, targets, logits, ["a", "b", "c"], [0.5] * 3, [0.25] * 3, path,
                               limit=2)
    assert shown == 2 and path.stat().st_size > 1000
    right = plot_misclassified(model, images[:2], targets[:2], logits[:2], ["a", "b", "c"], [0.5] * 3, [0.25] * 3,
                               tmp_path / "none.png")
    assert right == 0 and not (tmp_path / "none.png").exists()


def test_cli_explains_a_folder_at_original_sizes(corner_run, tmp_path, capsys, monkeypatch):
    checkpoint, data = corner_run
    inputs = tmp_path / "in"
    for folder in ("a", "b"):  # the same base name in two folders
        (inputs / folder).mkdir(parents=True)
        Image.open(data / "Val" / "réd patch" / "img 000 br.png").save(inputs / folder / "cat phöto.png")
    Image.new("RGB", (40, 30), (90, 20, 20)).save(inputs / "wide.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["explain", str(checkpoint), str(inputs), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert "broken.png" in capsys.readouterr().err  # named, and the rest still ran

    rows = read_csv(out / "explain.csv")
    assert list(rows[0]) == ["path", "overlay", "true", "predicted", "probability", "target", "error"]
    explained = [r for r in rows if r["overlay"]]
    assert len(explained) == 3 and len({r["overlay"] for r in explained}) == 3
    (broken,) = [r for r in rows if r["error"]]
    assert rows[0] is broken  # input order: broken.png sorts first in the folder
    assert broken["path"].endswith("broken.png") and "not an image" in broken["error"]
    for row in explained:
        picture = Image.open(out / row["overlay"])
        assert picture.size == Image.open(row["path"]).size  # 40 x 30 stays 40 x 30 for a 32 px model
        assert picture.text["predicted"] == row["predicted"] == row["target"]
        assert float(picture.text["probability"]) == pytest.approx(float(row["probability"]), abs=1e-6)
        assert picture.text["method"] == "gradcam" and picture.text["layer"] == "layer4.1"
    # numbered by position among the inputs (broken.png, wide.png, a/..., b/...): same base names stay apart
    assert sorted(r["overlay"] for r in explained) == ["0001_wide.png", "0002_cat phöto.png", "0003_cat phöto.png"]
    assert (out / "explain_grid.png").stat().st_size > 1000

    # decoded in rounds of FILE_CHUNK files (bounded memory): numbering and CSV order do not depend on it
    monkeypatch.setattr(explain_module, "FILE_CHUNK", 3)  # rounds of 3 + 1, the broken file in the first
    chunked = tmp_path / "chunked"
    assert main(["explain", str(checkpoint), str(inputs), "--out", str(chunked), "--no-progress", "--workers",
                 "1", "--batch-size", "2"]) == 0
    again = read_csv(chunked / "explain.csv")
    columns = ["path", "overlay", "true", "predicted", "target", "error"]
    assert [[r[c] for c in columns] for r in again] == [[r[c] for c in columns] for r in rows]
    assert [float(r["probability"] or 0) for r in again] == pytest.approx([float(r["probability"] or 0) for r in rows],
                                                                          abs=1e-4)
    assert sorted(p.name for p in chunked.glob("0*.png")) == sorted(r["overlay"] for r in explained)


def test_cli_explains_the_most_confident_mistakes(corner_run, tmp_path):
    checkpoint, data = corner_run
    out = tmp_path / "mistakes"
    assert main(["explain", str(checkpoint), "--misclassified", str(data), "--limit", "4", "--target", "true",
                 "--method", "gradcam++", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    rows = read_csv(out / "explain.csv")
    assert 3 <= len(rows) <= 4 and all(r["true"] != r["predicted"] for r in rows)
    assert {Path(r["path"]).name for r in rows} >= {"wrong 0.png", "wrong 1.png", "wrong 2.png"}
    assert all(r["target"] == r["true"] for r in rows)
    probabilities = [float(r["probability"]) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)  # most confident first
    assert len(list(out.glob("0*.png"))) == len(rows) and (out / "explain_grid.png").is_file()
    assert Image.open(out / rows[0]["overlay"]).text["method"] == "gradcam++"


def test_cli_errors_name_the_wrong_value(corner_run, tmp_path, capsys):
    checkpoint, data = corner_run
    image = str(data / "Val" / "réd patch" / "img 000 br.png")
    base = ["explain", str(checkpoint), image, "--out", str(tmp_path / "x"), "--no-progress"]
    for flags, expected in ((["--method", "gradkam"], "gradkam"), (["--layer", "layer7"], "layer7"),
                            (["--target", "zebra"], "zebra' is not pred, true or one of the model's classes: "
                                                    "blue patch, réd patch"),
                            (["--target", "true"], "--misclassified"),
                            (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
                            (["--batch-size", "-4"], "--batch-size must be at least 1, got -4")):
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("resnetlab explain: error:") and expected in err, err
    exported = tmp_path / "best.onnx"
    exported.write_bytes(b"onnx")  # refused by its suffix, before it is read
    assert main(["explain", str(exported), image, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab explain: error: explain needs a PyTorch checkpoint (heat maps need gradients)")


def test_overlay_names_stay_under_the_file_name_limit_in_any_script():
    for stem in ("𝒳" * 200, "猫" * 200, "a" * 300):  # 4, 3 and 1 byte(s) per character
        name = overlay_name(12, f"/photos/{stem}.jpg", 100_000)
        assert name.startswith("00012_") and name.endswith(".png"), name
        assert len(name.encode("utf-8")) <= 255 and len(name[6:-4].encode("utf-8")) <= 120, name
        assert name[6:-4] == stem[:len(name) - 10]  # whole characters only, cut at the end
    assert overlay_name(3, "cat phöto.png", 10) == "0003_cat phöto.png"


def test_predict_cam_writes_overlays_and_a_column(corner_run, tmp_path):
    checkpoint, data = corner_run
    folder = data / "Val" / "réd patch"
    csv_path, cam_dir = tmp_path / "preds.csv", tmp_path / "cams"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(csv_path), "--cam", str(cam_dir),
                 "--no-progress", "--workers", "1"]) == 0
    rows = read_csv(csv_path)
    assert list(rows[0]) == ["path", "label", "confidence", "top2_label", "top2_prob", "cam", "error"]
    assert len(rows) == 8 and all(Path(r["cam"]).is_file() for r in rows)
    assert len(list(cam_dir.glob("*.png"))) == 8
    first = Image.open(rows[0]["cam"])
    assert first.size == (SIZE, SIZE) and first.text["predicted"] == rows[0]["label"]
