"""Every image mode becomes RGB at the requested size; broken files fail with a named reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data.images import ImageReadError, decode_image, list_images


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str):
    base = Image.new("RGB", (30, 20), (200, 100, 50))
    image = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        (np.arange(600).reshape(20, 30) * 50).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    ext = {"CMYK": "jpg", "YCbCr": "jpg", "F": "tiff", "I": "tiff", "LA": "png"}.get(mode, "png")
    path = tmp_path / f"img.{ext}"
    image.save(path)
    tensor = decode_image(path, 16)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 16, 16)
    if mode in ("I;16", "I", "F"):  # rescaled to the full 0-255 range, not clipped to white
        assert int(tensor.max()) - int(tensor.min()) > 200


def test_transparent_pixels_become_white(tmp_path: Path):
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.save(tmp_path / "t.png")
    assert decode_image(tmp_path / "t.png", 8).float().mean() == 255


def test_exif_rotation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when shown
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = decode_image(tmp_path / "r.jpg", 20)  # 20 x 40 after rotation, fitted to 20 x 20: centre crop
    upright = Image.open(tmp_path / "r.jpg")
    assert upright.size == (40, 20)
    # after the rotation the white half is on top: the centre crop's top rows are bright, bottom rows dark
    assert shown[:, :5].float().mean() > 200 and shown[:, -5:].float().mean() < 50


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"<html>not an image</html>", "not an image"),
     (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "")],
)
def test_broken_files_raise_with_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        decode_image(path, 16)
    assert caught.value.path == str(path) and reason in caught.value.reason


def test_truncated_jpeg_raises(tmp_path: Path):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        decode_image(tmp_path / "cut.jpg", 16)


def test_list_images_is_recursive_sorted_and_skips_hidden(tmp_path: Path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "sub/c.tif", ".git/d.png", "e.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "sub/c.tif"]
