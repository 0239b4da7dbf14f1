"""Every image mode becomes RGB at the requested size; broken files fail with a named reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data.images import ImageReadError, decode_image, list_images, open_rgb


def _high_bit_depth(dtype) -> Image.Image:
    """2000 everywhere but one 0 and one 4000 pixel in opposite corners: rescaled to 0-255, the body is mid-grey."""
    array = np.full((20, 30), 2000, dtype=dtype)
    array[0, 0], array[-1, -1] = 0, 4000
    return Image.fromarray(array)


def _palette(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (30, 20), colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)


def _transparent_palette() -> Image.Image:
    image = Image.new("P", (30, 20), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)  # index 1: green, and the transparent one
    image.info["transparency"] = 1
    return image


# mode -> (the image, file extension, the RGB it must decode to). Alpha is composited over white, as a viewer
# shows it: a value v at alpha 128 becomes v * 128/255 + 255 * 127/255.
MODES = {
    "1": (lambda: Image.new("1", (30, 20), 1), "png", (255, 255, 255)),  # 1 bit set is white, not (1, 1, 1)
    "L": (lambda: Image.new("L", (30, 20), 124), "png", (124, 124, 124)),
    "P": (lambda: _palette((200, 100, 50)), "png", (200, 100, 50)),
    "P transparent": (_transparent_palette, "png", (255, 255, 255)),  # the green under transparency is not shown
    "RGB": (lambda: Image.new("RGB", (30, 20), (200, 100, 50)), "png", (200, 100, 50)),
    "RGBA": (lambda: Image.new("RGBA", (30, 20), (200, 100, 50, 128)), "png", (227, 177, 152)),
    "LA": (lambda: Image.new("LA", (30, 20), (124, 128)), "png", (189, 189, 189)),
    "CMYK": (lambda: Image.new("CMYK", (30, 20), (55, 155, 205, 0)), "jpg", (200, 100, 50)),
    "YCbCr": (lambda: Image.new("RGB", (30, 20), (200, 100, 50)).convert("YCbCr"), "jpg", (200, 100, 50)),
    "I;16": (lambda: _high_bit_depth(np.uint16), "png", (127, 127, 127)),  # 2000 of 0-4000 -> 127 of 0-255
    "I": (lambda: _high_bit_depth(np.int32), "tiff", (127, 127, 127)),
    "F": (lambda: _high_bit_depth(np.float32), "tiff", (127, 127, 127)),
}


@pytest.mark.parametrize("case", list(MODES))
def test_every_mode_becomes_rgb_of_the_right_colour(tmp_path: Path, case: str):
    make, ext, expected = MODES[case]
    image = make()
    assert image.mode == case.split()[0]
    path = tmp_path / f"img.{ext}"
    image.save(path)
    tensor = decode_image(path, 16)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 16, 16)
    tolerance = 3 if ext == "jpg" else 1  # JPEG is lossy even on a flat colour
    pixels = tensor.reshape(3, -1).T.int()  # every pixel of the centre crop
    assert (pixels - torch.tensor(expected)).abs().max() <= tolerance, (case, pixels[0].tolist(), expected)


@pytest.mark.parametrize("dtype,ext", [(np.uint16, "png"), (np.int32, "tiff"), (np.float32, "tiff")],
                         ids=["I;16", "I", "F"])
def test_high_bit_depth_images_are_rescaled_not_clipped(tmp_path: Path, dtype, ext: str):
    # three columns 1000, 2000, 3000 (all above 255): min -> 0, max -> 255, the middle -> 127 (255 * 1/2, truncated)
    array = np.repeat(np.array([[1000, 2000, 3000]], dtype=dtype), 4, axis=0)
    Image.fromarray(array).save(tmp_path / f"wide.{ext}")
    decoded = np.asarray(open_rgb(tmp_path / f"wide.{ext}"))
    assert decoded.shape == (4, 3, 3)
    assert decoded[0].tolist() == [[0, 0, 0], [127, 127, 127], [255, 255, 255]]
    assert (decoded == decoded[0]).all()  # every row alike: grey, channels equal


def test_alpha_of_palette_and_grey_images_is_composited_over_white():
    # in-memory images go through the same conversion as files (decode_image accepts a PIL image)
    palette = _palette((200, 100, 50)).convert("PA")
    palette.putalpha(0)  # fully transparent
    assert decode_image(palette, 8).reshape(3, -1).unique().tolist() == [255]
    grey = Image.new("LA", (8, 8), (0, 255))  # opaque black stays black
    assert decode_image(grey, 8).reshape(3, -1).unique().tolist() == [0]


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
    [(b"", "empty file (0 bytes)"), (b"<html>not an image</html>", "not an image (unrecognised format)"),
     # a PNG signature and nothing valid after it: PIL cannot identify it either
     (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image (unrecognised format)")],
    ids=["empty", "html", "png signature only"],
)
def test_broken_files_raise_with_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        decode_image(path, 16)
    assert caught.value.path == str(path) and caught.value.reason == reason
    assert str(caught.value) == f"{path}: {reason}"


def test_truncated_jpeg_raises(tmp_path: Path):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as caught:
        decode_image(tmp_path / "cut.jpg", 16)
    assert caught.value.path == str(tmp_path / "cut.jpg")
    assert caught.value.reason.startswith("image file is truncated")  # PIL's words; never decoded half an image


def test_list_images_is_recursive_sorted_and_skips_hidden(tmp_path: Path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "sub/c.tif", ".git/d.png", "e.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "sub/c.tif"]
