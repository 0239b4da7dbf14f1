"""A plain onnxruntime client (PIL, numpy and onnxruntime only) that follows the exported sidecar's preprocessing
steps gets the same probabilities as resnetlab itself, on every image mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import resnetlab
from resnetlab.export import export_model
from serving import train_tiny

ort = pytest.importorskip("onnxruntime")


def plain_client_input(path: Path, sidecar: dict) -> np.ndarray:
    """The sidecar's 'preprocessing' steps, one by one, without resnetlab."""
    s, mean, std = sidecar["img_size"], np.asarray(sidecar["mean"]), np.asarray(sidecar["std"])
    scale = int(math.floor(s / sidecar["crop_pct"]))
    with Image.open(path) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (scale, scale))
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    else:
        image = image.convert("RGB")
    w, h = image.size
    size = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    if sidecar["crop_mode"] == "squash":  # both sides to the scale, the aspect ratio not kept
        size = (scale, scale)
    if size != image.size:
        image = image.resize(size, getattr(Image.Resampling, sidecar["interpolation"].upper()))
    left, top = int(round((size[0] - s) / 2)), int(round((size[1] - s) / 2))
    image = image.crop((left, top, left + s, top + s))
    x = (np.asarray(image, dtype=np.float32) / 255 - mean) / std
    return x.transpose(2, 0, 1).astype(np.float32)


def _images(folder: Path) -> list[Path]:
    """One file per mode, non-square, with structure (gradients, a transparent half, a red square)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = np.zeros((30, 44, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 44)[None, :]
    rgb[5:20, 8:30] = (230, 40, 40)
    base = Image.fromarray(rgb)
    alpha = Image.fromarray(np.where(np.arange(44)[None, :] < 22, 0, 255).repeat(30, axis=0).astype(np.uint8))
    files = {"rgb.png": base, "l.png": base.convert("L"), "1.png": base.convert("1"), "p.png": base.convert("P"),
             "cmyk.jpg": base.convert("CMYK"), "rgb.jpg": base}
    rgba = base.copy()
    rgba.putalpha(alpha)
    files["rgba.png"] = rgba
    files["la.png"] = Image.merge("LA", (base.convert("L"), alpha))
    palette = base.convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    files["p-transparent.png"] = palette
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 200 + 1000).astype(np.uint16)
    files["i16.png"] = Image.fromarray(sixteen)  # mode I;16
    files["i32.tif"] = Image.fromarray(sixteen.astype(np.int32) * 3 - 5000)  # mode I
    files["f.tif"] = Image.fromarray(rng.normal(size=(30, 44)).astype(np.float32))  # mode F
    paths = []
    assert {files[n].mode for n in ("i16.png", "i32.tif", "f.tif")} == {"I;16", "I", "F"}
    for name, image in files.items():
        image.save(folder / name, **({"transparency": image.info["transparency"]} if name == "p-transparent.png"
                                     else {}))
        paths.append(folder / name)
    rotated = base.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: the client must apply it
    rotated.save(folder / "exif.jpg", exif=exif)
    paths.append(folder / "exif.jpg")
    return paths


def test_a_plain_client_reproduces_resnetlab_on_every_image_mode(tmp_path: Path):
    best, _ = train_tiny(tmp_path / "model")
    exported = export_model(best, format="onnx", out=tmp_path / "m.onnx", dynamic_batch=True)
    sidecar = json.loads(Path(exported["sidecar"]).read_text(encoding="utf-8"))
    assert any("exif_transpose" in step for step in sidecar["preprocessing"])
    files = _images(tmp_path / "modes")
    session = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    x = np.stack([plain_client_input(f, sidecar) for f in files])
    logits = session.run(None, {sidecar["input"]["name"]: x})[0]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    reference = resnetlab.load(best, device="cpu").predict([str(f) for f in files])
    for file, got, want in zip(files, probabilities, reference):
        np.testing.assert_allclose(got, want.probabilities, atol=1e-4, err_msg=file.name)
        assert sidecar["classes"][int(got.argmax())] == want.label, file.name
