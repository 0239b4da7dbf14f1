"""The whole-picture view of grey photo-sized data: timm's crop_mode "squash" (the evaluation crop resizes both
sides), training windows that span the whole picture, average + max pooling, and all of it stored in the
checkpoint and the exported sidecar so every verb and a plain onnxruntime client see the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import resnetlab
from resnetlab.checkpoint import read_checkpoint
from resnetlab.data.images import Crop, decode_image, letterbox
from resnetlab.data.transforms import BatchAugment, preprocess_batch, stats_tensor
from resnetlab.export import export_model
from resnetlab.models import ModelSpec, build_model
from test_photos import SHAPES, textured


def test_squash_equals_timms_eval_transform_with_crop_mode_squash(tmp_path):
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    config = {**timm.data.resolve_data_config({}, model=model), "crop_mode": "squash", "crop_pct": 0.9}
    reference = timm.data.create_transform(**config)
    crop, size = Crop(0.9, config["interpolation"], "squash"), config["input_size"][-1]
    mean, std = stats_tensor(config["mean"], "cpu"), stats_tensor(config["std"], "cpu")
    for i, (width, height) in enumerate(SHAPES):
        path = tmp_path / f"image{i}.png"
        textured(width, height, i).save(path)
        ours = preprocess_batch(decode_image(path, size, crop)[None], mean, std)[0]
        with Image.open(path) as image:
            theirs = reference(image.convert("RGB"))
        assert ((ours - theirs) * std).abs().max() <= 1 / 255 + 1e-6, (width, height)
        if width != height:  # the centre crop would have cut this picture: squash keeps its ends
            centre = decode_image(path, size, Crop(0.9, crop.interpolation))
            assert not torch.equal(decode_image(path, size, crop), centre)


def test_the_unaugmented_training_view_of_a_whole_image_is_the_squashed_picture():
    image = textured(160, 100, 3)
    array, height, width = letterbox(image, 144)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    view = BatchAugment("none", 96, crop=Crop(mode="squash"))(x, torch.Generator(), torch.tensor([[height, width]]))
    expected = decode_image(image, 96, Crop(1.0, "bilinear", "squash")).float() / 255
    assert (view[0] - expected).abs().mean() < 0.03  # two bilinear resamplings of a noisy picture
    centre = decode_image(image, 96).float() / 255
    assert (view[0] - centre).abs().mean() > 0.05  # ... and not the centre square


@pytest.mark.parametrize("aug", ["flip", "standard"])
def test_the_whole_view_trains_on_what_evaluation_sees(tmp_path, aug):
    """Flips of the whole picture: the training split is stored squashed at the training size, pixel for pixel
    the evaluation view (a wide picture's shorter side is not stretched from a letterbox, nor its longer side
    shrunk on the batch's grid); random-resized crops keep the letterboxed whole picture to crop from."""
    from resnetlab.config import TrainConfig
    from resnetlab.training.data import prepare_data

    root = tmp_path / "wide"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            textured(300 + 40 * i, 100, i + (10 if name == "b" else 0)).save(root / name / f"{i}.png")
    cfg = TrainConfig.from_dict({"data": str(root), "img_size": 96, "crop_mode": "squash", "crop_pct": 1.0,
                                 "aug": aug, "val_split": 0.25, "cache_dir": str(tmp_path / "cache"),
                                 "progress": False, "workers": 1})
    (tmp_path / "run").mkdir()
    data = prepare_data(cfg, tmp_path / "run")
    crop = Crop(1.0, "bilinear", "squash")
    expected = torch.stack([decode_image(path, 96, crop) for path in data.source.splits["train"].paths])
    if aug == "flip":
        assert data.layout == "square" and data.train.content is None
        assert torch.equal(data.train.images, expected)
    else:
        assert data.layout == "whole" and tuple(data.train.images.shape[-2:]) == (144, 144)


def test_a_mark_at_the_edge_stays_in_every_light_view():
    """A bar along the left sixth of a wide picture: the centre crop never shows it, squashed views always do
    (light: shifts of up to 1/8 of the side and +-10 degree turns, padded with black)."""
    picture = np.full((100, 300, 3), 200, dtype=np.uint8)
    picture[:, :50] = 80
    array, height, width = letterbox(Image.fromarray(picture), 144)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].repeat(16, 1, 1, 1).float() / 255
    content = torch.tensor([[height, width]] * 16)
    generator = torch.Generator().manual_seed(0)

    def bar_share(views: torch.Tensor) -> torch.Tensor:
        return ((views[:, 0] - 80 / 255).abs() < 0.02).flatten(1).float().mean(dim=1)

    squashed = BatchAugment("light", 64, hflip=False, crop=Crop(mode="squash"))(x, generator, content)
    assert bar_share(squashed).min() > 0.02  # a 1/6 bar, at worst shifted 1/8 of the view out
    assert bar_share(BatchAugment("light", 64, hflip=False)(x, generator, content)).max() < 0.01


@pytest.mark.parametrize("pool", ["max", "avgmax"])
def test_the_pooling_is_timms_and_survives_a_checkpoint_round_trip(pool):
    spec = ModelSpec("resnet18", 3, width=0.25, pool=pool)
    model = build_model(spec).eval()
    assert model.global_pool.pool_type == pool
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "pool"}).pool == "avg"  # older


def _grey_marks(root: Path) -> Path:
    """Two classes of wide grey pictures: a dark spot near one end (``spot``) or none (``clean``)."""
    rng = np.random.default_rng(0)
    for name in ("clean", "spot"):
        (root / name).mkdir(parents=True)
        for i in range(8):
            width, height = int(rng.integers(150, 220)), int(rng.integers(80, 110))
            array = rng.normal(150, 10, (height, width)).clip(0, 255)
            if name == "spot":
                x = int(rng.integers(5, 20)) if i % 2 else width - int(rng.integers(10, 25))
                array[height // 2 - 6:height // 2 + 6, x:x + 10] = 40
            Image.fromarray(array.astype(np.uint8), "L").save(root / name / f"{i}.png")
    return root


def test_auto_trains_grey_pictures_whole_and_every_verb_and_the_export_see_them_so(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    data = _grey_marks(tmp_path / "grey")
    result = resnetlab.train(data=str(data), recipe="auto", epochs=1, img_size=72, width=0.25, batch_size=8, workers=1,
                             progress=False, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    best = result.run_dir / "best.pt"
    saved = read_checkpoint(best)
    assert (saved["crop_mode"], saved["crop_pct"], saved["model_spec"]["pool"]) == ("squash", 1.0, "avg")
    chosen = saved["config"]["chosen"]
    assert chosen["crop_mode"]["value"] == "squash" and "whole field of view" in chosen["crop_mode"]["why"]
    classifier = resnetlab.load(best, device="cpu")
    path = data / "spot" / "1.png"  # the spot lies within 25 px of the left edge of a 150-220 px wide picture
    assert torch.equal(classifier.decode(str(path)), decode_image(path, 72, Crop(1.0, "bilinear", "squash")))
    exported = export_model(best, format="onnx", out=tmp_path / "m.onnx")
    sidecar = json.loads(Path(exported["sidecar"]).read_text(encoding="utf-8"))
    assert sidecar["crop_mode"] == "squash" and any("aspect ratio not kept" in s for s in sidecar["preprocessing"])
    from test_sidecar import plain_client_input

    session = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": plain_client_input(path, sidecar)[None]})[0][0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probabilities, classifier.predict([str(path)])[0].probabilities, atol=1e-4)
