"""The fast path is also the correct one: decode-once cache, batch augmentation, bf16 training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from conftest import TOY_CLASSES, write_class_folders
from resnetlab.config import ConfigError, TrainConfig
from resnetlab.data.cache import decode_split
from resnetlab.data.images import decode_image
from resnetlab.data.loaders import Batches, Order
from resnetlab.data.sources import open_data
from resnetlab.data.transforms import BatchAugment
from resnetlab.device import amp_dtype_for, cpu_has_native_bf16
from resnetlab.models import ModelSpec, first_stage_side

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05}


def test_cached_tensors_equal_a_direct_decode(class_folders: Path, tmp_path: Path):
    split = open_data(str(class_folders)).splits["train"]
    first = decode_split(split, 20, cache_dir=str(tmp_path / "cache"), workers=2, progress=False)
    assert first.cache_file and Path(first.cache_file).is_file()
    again = decode_split(split, 20, cache_dir=str(tmp_path / "cache"), workers=2, progress=False)  # from the cache
    direct = torch.stack([decode_image(path, 20) for path in split.paths])
    assert first.images.dtype == torch.uint8 and tuple(first.images.shape) == (len(split), 3, 20, 20)
    assert torch.equal(first.images, direct) and torch.equal(again.images, direct)
    assert torch.equal(again.labels, torch.from_numpy(split.labels))


def test_a_changed_file_makes_the_cache_stale(class_folders: Path, tmp_path: Path):
    split = open_data(str(class_folders)).splits["train"]
    cache = str(tmp_path / "cache")
    before = decode_split(split, 16, cache_dir=cache, workers=1, progress=False)
    changed = split.paths[0]
    Image.new("RGB", (20, 20), (255, 255, 0)).save(changed)
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse file-system clocks
    after = decode_split(split, 16, cache_dir=cache, workers=1, progress=False)
    assert after.cache_file != before.cache_file
    assert torch.equal(after.images[0], decode_image(changed, 16))
    assert not torch.equal(after.images[0], before.images[0])
    assert torch.equal(after.images[1:], before.images[1:])


@pytest.mark.parametrize("preset", ["crop", "light", "standard", "strong"])
def test_batch_augmentation_keeps_labels_aligned(preset: str):
    # each image is one flat colour that encodes its label: after any augmentation the dominant
    # colour of every image must still be its own label's colour
    n, size, classes = 64, 16, 4
    palette = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)
    labels = torch.arange(n) % classes
    images = palette[labels].view(n, 3, 1, 1).expand(n, 3, size, size).contiguous()
    batches = Batches(images, labels, batch_size=16, device=torch.device("cpu"), mean=[0, 0, 0], std=[1, 1, 1],
                      order=Order(shuffle=True, seed=3), augment=BatchAugment(preset, size))
    seen = 0
    for x, y, index in batches.epoch(1):
        assert torch.equal(y, labels[index])
        centre = x[:, :, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2].mean(dim=(2, 3))  # N x 3
        if preset in ("crop", "light"):  # geometry only: the centre keeps the exact colour
            nearest = torch.cdist(centre, palette.float() / 255).argmin(dim=1)
            assert torch.equal(nearest, y)
        elif preset == "standard":  # colour jitter scales channels: the strongest channel still names the class
            assert torch.equal(centre.argmax(dim=1)[y < 3], y[y < 3])
        else:  # TrivialAugment may invert or solarize one image, random erasing may cover the centre
            agree = (centre.argmax(dim=1)[y < 3] == y[y < 3]).float().mean()
            assert agree >= 0.6, f"only {agree:.0%} of the images kept their label's colour"
        seen += len(y)
    assert seen == n


def test_augmentation_really_changes_images_and_is_reproducible():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.int64)
    make = lambda: Batches(images, labels, batch_size=8, device=torch.device("cpu"), mean=[0, 0, 0],  # noqa: E731
                           std=[1, 1, 1], order=Order(seed=5), augment=BatchAugment("light", 16))
    x1, _, _ = next(make().epoch(2))
    x2, _, _ = next(make().epoch(2))
    x3, _, _ = next(make().epoch(3))
    assert torch.equal(x1, x2), "the same (seed, epoch, step) gives the same batch (exact resume)"
    assert not torch.equal(x1, x3), "another epoch draws other augmentations"
    assert not torch.equal(x1, images.float() / 255)


@pytest.mark.parametrize("preset", ["none", "crop"])
def test_random_erasing_covers_a_box_of_some_images(preset: str):
    images = torch.full((400, 3, 16, 16), 0.5)
    x = BatchAugment(preset, 16, hflip=False, erase=0.3)(images.clone(), torch.Generator().manual_seed(2))
    if preset == "crop":  # a shift pads with zeros: count only the noise-filled pixels (neither 0.5 nor 0)
        changed = ((x - 0.5).abs() > 1e-6) & (x.abs() > 1e-6)
    else:
        changed = (x - 0.5).abs() > 1e-6
    per_image = changed.any(dim=1).float().mean(dim=(1, 2))  # share of each image's pixels erased
    erased = per_image > 0
    assert 0.2 < float(erased.float().mean()) < 0.4  # about the probability asked for
    assert float(per_image[erased].min()) >= 0.01 and float(per_image.max()) <= 0.3  # boxes of 2-25 % of the area
    unchanged = BatchAugment("none", 16)(images.clone(), torch.Generator().manual_seed(2))
    assert torch.equal(unchanged, images)
    with pytest.raises(ValueError, match="random erasing probability must be within 0-1"):
        BatchAugment("crop", 16, erase=1.5)
    with pytest.raises(ConfigError, match="erase must be a probability"):
        TrainConfig(data="x", erase=-0.1).validate()


def test_vflip_mirrors_about_half_the_images_top_to_bottom_and_nothing_else():
    """--vflip (the plain script's vertical flips): each image comes out as it was or mirrored top to bottom, exactly;
    without it the flip preset never turns one over, and the random stream of a run without it is unchanged."""
    images = torch.rand(64, 3, 16, 16)
    x = BatchAugment("flip", 16, hflip=False, vflip=True)(images.clone(), torch.Generator().manual_seed(4))
    same = [torch.allclose(a, b, atol=1e-6) for a, b in zip(x, images)]
    turned = [torch.allclose(a, b.flip(-2), atol=1e-6) for a, b in zip(x, images)]
    assert all(s != t for s, t in zip(same, turned)) and 16 < sum(turned) < 48
    kept = BatchAugment("flip", 16, hflip=False)(images.clone(), torch.Generator().manual_seed(4))
    assert torch.allclose(kept, images, atol=1e-6)
    plain = BatchAugment("crop", 16)(images.clone(), torch.Generator().manual_seed(5))
    again = BatchAugment("crop", 16, vflip=False)(images.clone(), torch.Generator().manual_seed(5))
    assert torch.equal(plain, again)


def test_crop_preset_shifts_by_whole_pixels_without_rotation():
    # crop = flip + whole-pixel shift: every output pixel is an input pixel (or zero padding), nothing is blended
    images = torch.randint(1, 256, (16, 3, 16, 16), dtype=torch.uint8)
    x = BatchAugment("crop", 16)(images.float() / 255, torch.Generator().manual_seed(1))
    values = torch.cat([(images.float() / 255).unique(), torch.zeros(1)])
    distance = (x.reshape(-1, 1) - values.view(1, -1)).abs().min(dim=1).values
    assert float(distance.max()) < 1e-3  # a rotation or half-pixel shift would blend neighbours (~1/255 or more)
    assert not torch.equal(x, images.float() / 255)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_fp32_and_bf16_training_both_learn_the_toy_set(tmp_path: Path, amp: str):
    data = write_class_folders(tmp_path / "toy", 24, seed=7)
    result = resnetlab.train(data=str(data), out=str(tmp_path / amp), epochs=4, amp=amp, val_split=0.25, **TINY)
    assert result.best_val_acc > 0.9, f"{amp}: {[round(r['val_acc'], 3) for r in result.history]}"
    assert result.classes == sorted(TOY_CLASSES)


def test_amp_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv("RESNETLAB_CPU_BF16", raising=False)  # conftest pins fp32; here the CPU's flags decide
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert amp_dtype_for("auto", torch.device("cpu")) == expected
    assert amp_dtype_for("off", torch.device("cpu")) is None
    # tiny first-stage maps (standard stem at 32 px: 8 x 8) train faster in fp32 on a CPU; large ones in bf16
    assert amp_dtype_for("auto", torch.device("cpu"), first_stage_side(ModelSpec("resnet18", 2), 32)) is None
    assert amp_dtype_for("auto", torch.device("cpu"),
                         first_stage_side(ModelSpec("resnet18", 2, stem="small"), 28)) == expected
    assert amp_dtype_for("bf16", torch.device("cpu"), 8) == torch.bfloat16  # an explicit choice is kept
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "amx_bf16" in flags.split() or " amx_bf16" in flags:
        assert cpu_has_native_bf16(), "an AMX CPU must train in bf16 by default"
    for forced, dtype in (("0", None), ("1", torch.bfloat16)):  # the override, whatever the CPU
        monkeypatch.setenv("RESNETLAB_CPU_BF16", forced)
        assert amp_dtype_for("auto", torch.device("cpu"), 32) == dtype


def test_decoded_images_are_what_the_model_sees(tmp_path: Path):
    image = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (30, 1, 3)))
    image.save(tmp_path / "wide.png")
    tensor = decode_image(tmp_path / "wide.png", 10)
    assert tuple(tensor.shape) == (3, 10, 10)  # shorter side to 10, centre crop: no distortion
    row = tensor[0, 0].tolist()
    assert row == sorted(row) and row[0] > 0 and row[-1] < 234  # the centre of a left-to-right ramp
