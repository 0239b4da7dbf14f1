"""Photos as timm and torchvision use them: the standard evaluation crop (equal to timm's eval transform), the
whole-image training cache, grey sets in one channel, frozen features computed once, and a photo folder of mixed
sizes, modes and aspect ratios end to end."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw

import resnetlab
from resnetlab.checkpoint import read_checkpoint
from resnetlab.data.cache import decode_split
from resnetlab.data.images import Crop, decode_image, letterbox, open_rgb
from resnetlab.data.loaders import Batches, Order
from resnetlab.data.splits import SplitData
from resnetlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment, preprocess_batch, stats_tensor

# (width, height): 1:2 to 2:1, 60 to 900 px
SHAPES = [(60, 120), (120, 60), (97, 61), (300, 300), (640, 480), (480, 900), (900, 450), (213, 401)]


def textured(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth gradients plus noise and a few shapes: every resize filter and crop offset shows in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + y) * 3) % 256], -1)
    array = (array + rng.integers(0, 40, array.shape)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(5, 30))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image.convert(mode)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50.tv_in1k"])
def test_eval_crop_equals_timms_eval_transform_and_gives_the_same_logits(tmp_path, arch):
    model = timm.create_model(arch, pretrained=False, num_classes=5).eval()
    config = timm.data.resolve_data_config({}, model=model)
    reference = timm.data.create_transform(**config)
    size = config["input_size"][-1]
    crop = Crop(config["crop_pct"], config["interpolation"])
    assert (crop.pct, crop.interpolation) == ((0.95, "bicubic") if arch == "resnet18" else (0.875, "bilinear"))
    mean, std = stats_tensor(config["mean"], "cpu"), stats_tensor(config["std"], "cpu")
    ours, theirs = [], []
    for i, (width, height) in enumerate(SHAPES):
        path = tmp_path / f"image{i}.png"
        textured(width, height, i).save(path)
        ours.append(preprocess_batch(decode_image(path, size, crop)[None], mean, std)[0])
        with Image.open(path) as image:
            theirs.append(reference(image.convert("RGB")))
    ours, theirs = torch.stack(ours), torch.stack(theirs)
    pixel = (ours - theirs) * std  # back in 0-1 units
    assert pixel.abs().max() <= 1 / 255 + 1e-6
    with torch.no_grad():
        torch.testing.assert_close(model(ours), model(theirs), atol=1e-4, rtol=1e-4)


def test_a_trained_run_stores_its_crop_and_every_verb_uses_it(tmp_path):
    data = tmp_path / "photos"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(6):
            seed = zlib.crc32(name.encode()) % 100 + i  # not hash(): str hashes change with every process
            textured(int(90 + 20 * i), int(150 - 10 * i), seed=seed).save(data / name / f"{i}.png")
    # the centre crop (auto's view from scratch is the whole picture, tests/test_whole_view.py)
    result = resnetlab.train(data=str(data), img_size=72, epochs=1, width=0.25, batch_size=8, workers=1,
                             progress=False, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                             crop_mode="center")
    saved = read_checkpoint(result.run_dir / "best.pt")
    assert (saved["crop_pct"], saved["interpolation"]) == (0.875, "bilinear")  # photo-sized input: 72 px > 64
    classifier = resnetlab.load(result.run_dir / "best.pt", device="cpu")
    path = data / "a" / "5.png"
    expected = decode_image(path, 72, Crop(0.875))
    assert torch.equal(classifier.decode(str(path)), expected)
    assert not torch.equal(expected, decode_image(path, 72))  # the crop matters on this 190 x 100 image
    split = SplitData("x", np.zeros(1, dtype=np.int64), [str(path)])
    assert torch.equal(decode_split(split, 72, crop=classifier.meta.crop, use_cache=False, workers=1).images[0],
                       expected)


def test_the_crop_rule_small_images_pretrained_weights_and_flags(tmp_path):
    from resnetlab.config import TrainConfig
    from resnetlab.training.data import resolve_crop

    def rule(**settings):
        crop, _ = resolve_crop(TrainConfig(**settings), settings.pop("img_size_", 224))
        return crop.pct, crop.interpolation

    assert rule() == (0.875, "bilinear")
    assert resolve_crop(TrainConfig(), 64)[0] == Crop(1.0, "bilinear")  # small images are never cut
    assert rule(model="resnet50", pretrained="w.safetensors") == (0.95, "bicubic")  # resnet50.a1_in1k
    assert rule(model="resnet50.tv_in1k", pretrained="w.pth") == (0.875, "bilinear")
    assert rule(model="resnet50", pretrained="w.pth", crop_pct=0.9) == (0.9, "bicubic")
    assert rule(crop_pct=1.0, interpolation="bicubic") == (1.0, "bicubic")


def test_letterbox_keeps_the_whole_picture_with_its_edges_repeated():
    image = textured(200, 100, 0)
    array, height, width = letterbox(image, 96)
    assert (height, width) == (48, 96) and array.shape == (96, 96, 3)
    resized = np.asarray(image.resize((96, 48), Image.Resampling.BILINEAR))
    assert np.array_equal(array[:48], resized)
    assert np.array_equal(array[48], array[47]) and not array[49:].any()  # one edge row, then padding


def _marked(width: int, height: int) -> Image.Image:
    """Grey picture with a white bar along its left edge: outside the centre square of a wide image."""
    image = Image.new("RGB", (width, height), (90, 90, 90))
    ImageDraw.Draw(image).rectangle([0, 0, width // 10, height], fill=(255, 255, 255))
    return image


def test_random_resized_crops_of_the_whole_cache_reach_the_sides_the_square_cache_cuts(tmp_path):
    path = tmp_path / "wide.png"
    _marked(400, 200).save(path)
    split = SplitData("train", np.zeros(1, dtype=np.int64), [str(path)])
    seen = {}
    for layout in ("whole", "square"):
        decoded = decode_split(split, 96, layout=layout, use_cache=False, workers=1)
        repeat = decoded.images.expand(64, -1, -1, -1)
        content = None if decoded.content is None else decoded.content.expand(64, -1)
        augment = BatchAugment("standard", 96, hflip=False)
        x = augment(repeat.float() / 255, torch.Generator().manual_seed(0), content)
        assert x.shape == (64, 3, 96, 96)
        seen[layout] = int((x.amax(dim=(1, 2, 3)) > 0.65).sum())  # the white bar (grey stays below 0.47)
    assert decode_split(split, 96, layout="whole", use_cache=False, workers=1).content.tolist() == [[72, 144]]
    assert seen["whole"] > 10 and seen["square"] == 0


def test_unaugmented_view_of_a_whole_image_is_its_centre_square():
    image = textured(160, 100, 3)
    array, height, width = letterbox(image, 144)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    view = BatchAugment("none", 96)(x, torch.Generator(), torch.tensor([[height, width]]))
    expected = decode_image(image, 96).float() / 255
    assert (view[0] - expected).abs().mean() < 0.03  # two bilinear resamplings of a noisy picture


def test_grey_data_sets_are_cached_with_one_channel(tmp_path):
    paths = []
    for i, mode in enumerate(["L", "L", "RGB"]):  # the RGB file holds a grey picture: three equal channels
        path = tmp_path / f"{i}.png"
        textured(80 + 10 * i, 70, i).convert("L").convert(mode).save(path)
        paths.append(str(path))
    split = SplitData("train", np.zeros(3, dtype=np.int64), paths)
    for layout in ("whole", "square"):
        decoded = decode_split(split, 72, layout=layout, cache_dir=str(tmp_path / "cache"), workers=1)
        assert decoded.images.shape[1] == 1
        again = decode_split(split, 72, layout=layout, cache_dir=str(tmp_path / "cache"), workers=1)
        assert torch.equal(again.images, decoded.images) and again.cache_file == decoded.cache_file
    colour = tmp_path / "colour.png"
    textured(90, 70, 9).save(colour)
    mixed = SplitData("train", np.zeros(4, dtype=np.int64), paths + [str(colour)])
    assert decode_split(mixed, 72, use_cache=False, workers=1).images.shape[1] == 3
    batches = Batches(decoded.images, decoded.labels, batch_size=3, device="cpu", mean=IMAGENET_MEAN,
                      std=IMAGENET_STD)
    x, _, _ = next(batches.epoch(0))
    assert x.shape == (3, 3, 72, 72)
    red, green = (x[:, c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in (0, 1))
    torch.testing.assert_close(red, green)


def _photo_folder(root: Path, per_class: int = 8, seed: int = 0, toned: bool = False) -> Path:
    """Two classes told apart by a shape anywhere in the picture; mixed sizes, aspect ratios, modes, formats.
    ``toned``: the circles on dark pictures and the boxes on light ones (in every mode, grey included), which a
    randomly initialised network learns in a few epochs; the shape alone it does not."""
    rng = np.random.default_rng(seed)
    for label, shape in enumerate(("circle", "box")):
        folder = root / shape
        folder.mkdir(parents=True)
        for i in range(per_class):
            width, height = int(rng.integers(70, 260)), int(rng.integers(70, 260))
            image = textured(width, height, int(rng.integers(0, 1000)))
            if toned:  # 0-89 or 165-254
                image = Image.fromarray((np.asarray(image) * 0.35 + 165 * label).astype(np.uint8))
            x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if label == 0 else draw.rectangle)([x, y, x + 30, y + 30], fill=(255, 255, 255))
            mode = ["RGB", "L", "RGBA", "P"][i % 4]
            image.convert(mode).save(folder / f"{shape} {i}.{'jpg' if mode in ('RGB', 'L') else 'png'}")
    return root


FROZEN = {"img_size": 72, "width": 0.25, "batch_size": 8, "workers": 1, "progress": False, "freeze_backbone": True,
          "aug": "none", "epochs": 3, "opt": "adamw", "lr": 0.01, "label_smoothing": 0.0}


@pytest.mark.parametrize("layout", ["whole", "square"])
def test_frozen_features_train_the_same_head_as_the_plain_frozen_loop(tmp_path, no_figures, layout):
    data = _photo_folder(tmp_path / "photos")
    heads = {}
    for views in (1, 0):  # 1: features computed once; 0: the plain loop runs the backbone every epoch
        result = resnetlab.train(data=str(data), feature_views=views, cache_layout=layout,
                                 out=str(tmp_path / f"run{views}"), cache_dir=str(tmp_path / "cache"), **FROZEN)
        saved = read_checkpoint(result.run_dir / "last.pt")
        heads[views] = saved["model"]["fc.weight"], [(row["train_loss"], row["val_loss"]) for row in result.history]
    torch.testing.assert_close(heads[1][0], heads[0][0], atol=1e-5, rtol=1e-4)
    assert np.allclose(heads[1][1], heads[0][1], rtol=1e-4)  # validation on cached features scores the same
    assert heads[1][1][-1][0] < heads[1][1][0][0]  # the head did train


def test_augmented_feature_views_and_unfreezing_continue_to_a_full_model(tmp_path, no_figures, caplog):
    data = _photo_folder(tmp_path / "photos")
    settings = {**FROZEN, "aug": "standard", "feature_views": 2, "unfreeze_at": 3}
    run = tmp_path / "run"
    weights = []  # last.pt's weights after each epoch

    def after_epoch(row: dict) -> None:
        weights.append(read_checkpoint(run / "last.pt")["model"])

    with caplog.at_level("INFO", logger="resnetlab"):
        result = resnetlab.train(data=str(data), out=str(run), cache_dir=str(tmp_path / "cache"), on_epoch=after_epoch,
                                 **settings)
    assert "computed once (2 augmented views" in caplog.text and "epoch 3: backbone unfrozen" in caplog.text
    assert len(result.history) == 3 and all(np.isfinite(row["train_loss"]) for row in result.history)
    first, frozen, unfrozen = weights
    backbone = [name for name in first if not name.startswith("fc.")]
    assert all(torch.equal(first[name], frozen[name]) for name in backbone)  # epochs 1-2: the head alone learns
    convolutions = [name for name in backbone if first[name].ndim == 4]
    assert len(convolutions) >= 20 and "layer4.1.conv2.weight" in convolutions
    assert [name for name in convolutions if torch.equal(frozen[name], unfrozen[name])] == []  # epoch 3: all train
    stem = (unfrozen["conv1.weight"] - frozen["conv1.weight"]).norm() / frozen["conv1.weight"].norm()
    assert stem > 0.05, float(stem)  # measured 0.20 in its one unfrozen epoch
    # each residual block's last BN scale starts at 0 (timm's zero_init_last) and gets no weight decay: only a
    # gradient through the block moves it
    residual = [name for name in backbone if name.startswith("layer") and name.endswith("bn2.weight")]
    assert len(residual) == 8
    assert all(not frozen[name].any() and unfrozen[name].any() for name in residual)
    assert not torch.equal(first["fc.weight"], frozen["fc.weight"])  # while the head did learn


def test_a_photo_folder_trains_evaluates_predicts_and_explains_end_to_end(tmp_path):
    data = _photo_folder(tmp_path / "photos", per_class=10, toned=True)
    (data / "box" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # a frozen random backbone for 1 epoch (validation at chance), then 3 epochs of the whole network: 100 %
    # validation accuracy from epoch 3 on, with data seeds 0, 1 and 2
    result = resnetlab.train(data=str(data), img_size=72, epochs=4, width=0.25, batch_size=8, workers=1,
                             progress=False, aug="standard", freeze_backbone=True, unfreeze_at=2, opt="adamw",
                             lr=0.01, seed=0, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                             crop_mode="center")
    checkpoint = result.run_dir / "best.pt"
    assert read_checkpoint(checkpoint)["crop_pct"] == 0.875
    report = resnetlab.evaluate(checkpoint, str(data), split="val", out=str(tmp_path / "eval"), workers=1,
                                progress=False, device="cpu")
    assert report["images"] == 4 and report["accuracy"] == 1.0  # the 4 photos the run held out for validation
    held_out = _photo_folder(tmp_path / "held out", per_class=10, seed=1, toned=True)  # new pictures, new sizes
    files = sorted(held_out.rglob("*.*"))
    predicted = resnetlab.load(checkpoint, device="cpu").predict(files)
    right = sum(p.label == file.parent.name for p, file in zip(predicted, files))
    assert right >= 18, f"{right} of 20 held-out photos right"  # measured: 20 of 20
    resnetlab.predict_files(checkpoint, [str(data)], out=str(tmp_path / "p.csv"), workers=1, progress=False,
                            device="cpu")
    rows = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 21 and sum("broken.jpg" in row for row in rows) == 1  # 20 images, the broken one, head
    from resnetlab.explain import explain

    explain(checkpoint, [str(data / "circle")], out=str(tmp_path / "cams"), workers=1, progress=False, device="cpu")
    assert len(list((tmp_path / "cams").glob("*.png"))) >= 10
    classifier = resnetlab.load(checkpoint, device="cpu")
    features = classifier.embed([str(data / "circle" / "circle 0.jpg"), str(data / "box" / "box 2.png")])
    assert features.shape == (2, classifier.model.num_features) and np.isfinite(features).all()


def test_streamed_whole_images_match_the_cached_ones(tmp_path):
    from resnetlab.data.stream import StreamBatches

    paths = []
    for i, (width, height) in enumerate(SHAPES[:4]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        textured(width, height, i).save(paths[-1], quality=95)
    split = SplitData("train", np.zeros(4, dtype=np.int64), paths)
    cached = decode_split(split, 72, layout="whole", use_cache=False, workers=1)
    options = {"batch_size": 4, "device": "cpu", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
               "augment": BatchAugment("standard", 72), "order": Order(seed=3)}
    streamed = StreamBatches(split, 72, workers=0, layout="whole", **options)
    memory = Batches(cached.images, cached.labels, content=cached.content, **options)
    (x_stream, _, _), (x_memory, _, _) = next(streamed.epoch(1)), next(memory.epoch(1))
    assert x_stream.shape == (4, 3, 72, 72)
    torch.testing.assert_close(x_stream, x_memory)  # the same pictures, the same crops


def test_open_rgb_draft_keeps_the_longer_side_for_whole_images(tmp_path):
    path = tmp_path / "big.jpg"
    textured(1600, 800, 1).save(path, quality=90)
    image = open_rgb(path, draft_longer=300)
    assert image.size == (400, 200)  # libjpeg's 1/4 scale: the longer side stays >= 300


def test_the_photos_recipe_fine_tunes_timm_and_torchvision_weight_files(tmp_path, no_figures):
    import torchvision
    from safetensors.torch import save_file

    from resnetlab.config import TrainConfig, recipe_values

    data = _photo_folder(tmp_path / "photos", per_class=6)
    files = {"timm.safetensors": timm.create_model("resnet18", num_classes=1000).state_dict(),
             "torchvision.pth": torchvision.models.resnet18(weights=None).state_dict()}
    for name, state in files.items():
        path = tmp_path / name
        save_file(state, path) if name.endswith(".safetensors") else torch.save(state, path)
        cfg = TrainConfig.from_sources(None, {"data": str(data), "model": "resnet18", "pretrained": str(path),
                                              "img_size": 72, "epochs": 1, "batch_size": 8, "workers": 1,
                                              "progress": False, "out": str(tmp_path / f"run-{name}"),
                                              "cache_dir": str(tmp_path / "cache")}, base=recipe_values("photos"))
        result = resnetlab.train(cfg)
        saved = read_checkpoint(result.run_dir / "last.pt")
        assert torch.equal(saved["model"]["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])  # frozen, loaded
        assert saved["model"]["fc.weight"].shape == (2, 512)  # a new head for the two classes
        assert (saved["crop_pct"], saved["interpolation"]) == (0.95, "bicubic")  # resnet18's timm config


@pytest.mark.slow
def test_the_photos_recipe_offline_without_a_file_says_what_to_pass(tmp_path):
    import sys

    from processes import run

    data = _photo_folder(tmp_path / "photos", per_class=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = run([sys.executable, "-m", "resnetlab", "train", str(data), "--recipe", "photos", "--out",
                str(tmp_path / "run")], timeout=120, env=env)
    assert done.returncode == 1
    assert "--pretrained FILE" in done.stderr and "--pretrained none" in done.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder or any decoding
