"""The evaluation crop as one value: one to_dict/from_dict pair, the same flat keys in checkpoints and sidecars
as before it travelled whole, and files written before a key existed still loading with its old default."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetlab.checkpoint import ModelMeta, describe_model, load_model, save_checkpoint
from resnetlab.data.crop import Crop
from resnetlab.models import ModelSpec, build_model
from resnetlab.runtimes import meta_from_sidecar
from resnetlab.sidecar import describe

CROP_KEYS = ("crop_pct", "interpolation", "crop_mode")


@pytest.mark.parametrize("crop", [Crop(), Crop(0.875), Crop(0.95, "bicubic"), Crop(0.9, "bilinear", "squash")])
def test_crop_round_trips_through_to_dict_and_from_dict(crop: Crop):
    assert Crop.from_dict(crop.to_dict()) == crop
    assert tuple(crop.to_dict()) == CROP_KEYS  # the file keys, flat, as written before 0.5


def test_model_meta_keeps_the_crop_whole_and_writes_the_same_flat_keys():
    meta = ModelMeta(ModelSpec("resnet18", 2, stem="small"), ["a", "b"], 16, [0.5] * 3, [0.25] * 3,
                     crop=Crop(0.9, "bicubic", "squash"), task="multilabel", thresholds=[0.4, 0.6])
    saved = describe_model(meta, {})
    assert {k: saved[k] for k in CROP_KEYS} == {"crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "squash"}
    assert "crop" not in saved
    assert ModelMeta.from_dict(saved, "x.pt") == ModelMeta(meta.spec, meta.classes, 16, meta.mean, meta.std,
                                                          crop=meta.crop, task="multilabel",
                                                          thresholds=[0.4, 0.6], source="x.pt")
    sidecar = describe(meta, "onnx", dynamic_batch=True)
    assert {k: sidecar[k] for k in CROP_KEYS} == {k: saved[k] for k in CROP_KEYS} and "crop" not in sidecar
    assert meta_from_sidecar(sidecar, Path("m.onnx")).crop == meta.crop


@pytest.mark.parametrize(("missing", "expected"), [
    (("crop_mode",), Crop(0.875, "bicubic", "center")),  # 0.3-0.4: no crop_mode yet
    (CROP_KEYS, Crop(1.0, "bilinear", "center")),  # before 0.3: the whole square
])
def test_an_old_checkpoint_without_crop_keys_loads_with_the_old_defaults(tmp_path: Path, missing, expected):
    spec = ModelSpec("resnet18", 2, stem="small", width=0.25)
    model = build_model(spec)
    meta = ModelMeta(spec, ["a", "b"], 16, [0.5] * 3, [0.25] * 3, crop=Crop(0.875, "bicubic", "squash"))
    payload = {k: v for k, v in describe_model(meta, {}).items() if k not in missing}
    save_checkpoint(tmp_path / "old.pt", {**payload, "model": model.state_dict(), "epoch": 3})

    _, loaded = load_model(tmp_path / "old.pt")
    assert loaded.crop == expected and loaded.epoch == 3 and loaded.classes == ["a", "b"]


def test_an_old_sidecar_without_crop_keys_loads_with_the_old_defaults():
    meta = ModelMeta(ModelSpec("resnet18", 2, stem="small"), ["a", "b"], 16, [0.5] * 3, [0.25] * 3)
    sidecar = {k: v for k, v in describe(meta, "onnx", dynamic_batch=False).items() if k not in CROP_KEYS}
    assert meta_from_sidecar(sidecar, Path("m.onnx")).crop == Crop()
    assert Crop.from_dict({}).describe() == "center crop 1, bilinear"  # the report's line for such a file
