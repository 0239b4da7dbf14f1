"""The streamed data path (sets larger than memory) gives the cached path's batches and survives bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from conftest import write_class_folders
from resnetlab.data.cache import decode_split
from resnetlab.data.images import decode_image
from resnetlab.data.loaders import Batches, Order
from resnetlab.data.sources import DataError, open_data
from resnetlab.data.stream import FileImages, StreamBatches, choose_loader, jpeg_frame, torchvision_fit
from resnetlab.data.transforms import BatchAugment

CPU = torch.device("cpu")


def _both(split, size: int, workers: int, *, shuffle: bool = False, drop_last: bool = False, **options
          ) -> tuple[Batches, StreamBatches]:
    decoded = decode_split(split, size, workers=1, progress=False, use_cache=False)
    common = {"batch_size": 8, "device": CPU, "mean": [0.5] * 3, "std": [0.25] * 3,
              "order": Order(shuffle=shuffle, drop_last=drop_last, seed=7), **options}
    return (Batches(decoded.images, decoded.labels, **common),
            StreamBatches(split, size, workers=workers, **common))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_cached_ones(class_folders: Path, workers: int):
    split = open_data(str(class_folders)).splits["train"]
    cached, streamed = _both(split, 16, workers, shuffle=True, augment=BatchAugment("crop", 16), drop_last=True)
    assert len(streamed) == len(cached) == len(split) // 8
    for (x1, y1, i1), (x2, y2, i2) in zip(cached.epoch(2), streamed.epoch(2), strict=True):
        assert torch.equal(i1, i2) and torch.equal(y1, y2)
        assert torch.equal(x1, x2)  # same pixels, same augmentation draw
    # resume from step 3 of an epoch: the same batches as the full epoch's steps 3+
    full = [i for _, _, i in streamed.epoch(5)]
    resumed = [i for _, _, i in streamed.epoch(5, start_step=3)]
    assert [i.tolist() for i in resumed] == [i.tolist() for i in full[3:]]


def test_an_unreadable_file_is_left_out_of_its_batch_and_listed(class_folders: Path, capsys):
    split = open_data(str(class_folders)).splits["train"]
    broken = split.paths[5]
    Path(broken).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    streamed = StreamBatches(split, 16, workers=1, batch_size=8, device=CPU, mean=[0.5] * 3, std=[0.25] * 3)
    seen = torch.cat([i for _, _, i in streamed.epoch(0)])
    assert 5 not in seen.tolist() and len(seen) == len(split) - 1
    assert [entry["path"] for entry in streamed.skipped_files()] == [broken]
    assert broken in capsys.readouterr().err
    strict = StreamBatches(split, 16, workers=0, batch_size=8, device=CPU, mean=[0.5] * 3, std=[0.25] * 3,
                           strict=True)
    with pytest.raises(DataError, match=f"--strict: unreadable image {re.escape(broken)}: not an image"):
        list(strict.epoch(0))


def test_auto_streams_only_what_does_not_fit(class_folders: Path):
    split = open_data(str(class_folders)).splits["train"]
    size_needed = len(split) * 3 * 64 * 64
    assert choose_loader("auto", split, 64, memory=100 * size_needed) == "memory"
    assert choose_loader("auto", split, 64, memory=size_needed) == "stream"  # over half the free memory
    assert choose_loader("memory", split, 64, memory=1) == "memory"
    assert choose_loader("stream", split, 64, memory=1 << 40) == "stream"
    arrays = open_data("digits").splits["train"]  # a built-in set arrives decoded: nothing to stream
    assert choose_loader("stream", arrays, 64) == "memory"
    with pytest.raises(ValueError, match="loader must be one of"):
        choose_loader("disk", split, 64)


def test_a_streamed_run_trains_and_reports_its_skipped_files(tmp_path: Path, capsys):
    data = tmp_path / "toy"
    write_class_folders(data / "train", 24, seed=5)
    write_class_folders(data / "val", 8, seed=6)
    broken = data / "train" / "red" / "img 003.png"
    broken.write_bytes(b"GIF89a truncated")
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), epochs=3, loader="stream", norm="dataset",
                             img_size=16, width=0.25, batch_size=16, progress=False, workers=2, lr=0.05, seed=1)
    out = capsys.readouterr().err
    assert "data path: streamed" in out and "2 DataLoader workers" in out
    assert "skipped 1 unreadable training image(s) while streaming" in out and str(broken) in out
    assert result.best_val_acc >= 0.9, out
    report = json.loads((result.run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert [(entry["path"], entry["split"]) for entry in report["skipped"]] == [(str(broken), "train")]
    assert (result.run_dir / "best.pt").is_file() and (result.run_dir / "report.html").is_file()
    assert np.isfinite(result.history[-1]["train_loss"])


def _photo(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(8)
    w, h = size
    gradient = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))  # smooth: JPEG keeps it well
    rgb = np.stack([gradient, gradient[::-1], np.full((h, w), 90.0)], axis=2) + rng.normal(0, 2, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).convert(mode)


def test_torchvision_reads_jpegs_near_the_training_size_like_pil(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    _photo((90, 60)).save(path, quality=95)
    fitted = torchvision_fit(path.read_bytes(), 48)
    assert fitted is not None and fitted.shape == (48, 48, 3) and fitted.dtype == np.uint8
    reference = decode_image(path, 48).permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(fitted.astype(np.int16) - reference).mean() < 3  # same picture, same crop, same scale
    # EXIF orientation 6 (rotate 90 degrees): applied by both readers
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    _photo((90, 60)).save(rotated, quality=95, exif=exif)
    turned = torchvision_fit(rotated.read_bytes(), 48)
    assert np.abs(turned.astype(np.int16) - decode_image(rotated, 48).permute(1, 2, 0).numpy()).mean() < 3
    assert np.abs(turned.astype(np.int16) - fitted).mean() > 10  # and it did turn
    # where PIL is faster or the only reader: None, and FileImages falls back to it
    big, cmyk, png = tmp_path / "big.jpg", tmp_path / "cmyk.jpg", tmp_path / "flat.png"
    _photo((400, 300)).save(big, quality=90)
    _photo((90, 60), "CMYK").save(cmyk, quality=95)
    _photo((90, 60)).save(png)
    for file in (big, cmyk, png):
        assert torchvision_fit(file.read_bytes(), 48) is None, file.name
    assert torchvision_fit(b"\xff\xd8\xff truncated", 48) is None
    assert jpeg_frame(path.read_bytes()) == (60, 90, 3) and jpeg_frame(cmyk.read_bytes())[2] == 4
    assert jpeg_frame(png.read_bytes()) is None
    images = FileImages([str(path), str(big), str(cmyk), str(png), str(tmp_path / "gone.jpg")], 48)
    results = [images[i][1] for i in range(len(images))]
    assert all(isinstance(r, np.ndarray) and r.shape == (48, 48, 3) for r in results[:4])
    assert results[4] == "file not found"
