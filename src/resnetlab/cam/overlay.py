"""Heat maps drawn on pictures: the overlay at the image's original size, PNG files that carry their label,
probability and method as text chunks, and overlay file names that are unique and short enough for any disk.

    picture = overlay(Image.open("cat.jpg"), cam)          # cam: H x W in [0, 1], the model's square view
    save_png(picture, "0001_cat.png", {"predicted": "cat"})
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pytorch_grad_cam.utils.image import show_cam_on_image

from ..data.crop import Crop
from ..fileio import readable


def model_view_box(width: int, height: int, crop: Crop = Crop(), size: int | None = None
                   ) -> tuple[int, int, int, int]:
    """The centred part of a width x height image that decode_image(image, size, crop) shows the model: a square of
    the crop's share of the shorter side (``crop.view_fraction(size)``; without ``size``: the whole centre square),
    or with crop mode "squash" that share of each side (1.0: the whole image)."""
    fraction = crop.view_fraction(size) if size else 1.0
    box_w, box_h = ((max(1, round(width * fraction)), max(1, round(height * fraction))) if crop.mode == "squash" else
                    (max(1, round(min(width, height) * fraction)),) * 2)
    left, top = (width - box_w) // 2, (height - box_h) // 2
    return left, top, left + box_w, top + box_h


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.5, crop: Crop = Crop(), size: int | None = None
            ) -> Image.Image:
    """The heat map (H x W in [0, 1], the model's square view) blended on ``image`` at its original size; RGB.

    The model sees the centred square of a non-square image (the evaluation ``crop``'s share of its shorter side at
    input ``size``: ModelMeta.crop and .img_size), so the map covers that square (crop mode squash: that part of the
    whole image, stretched back); the parts it never saw are kept but dimmed.
    """
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D map (H x W), got shape {tuple(cam.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    box = model_view_box(*image.size, crop, size)
    seen = image.crop(box)
    heat = cv2.resize(np.clip(cam, 0.0, 1.0).astype(np.float32), seen.size, interpolation=cv2.INTER_LINEAR)
    blended = show_cam_on_image(np.asarray(seen, dtype=np.float32) / 255.0, heat, use_rgb=True,
                                image_weight=1.0 - alpha)
    result = image.copy() if seen.size == image.size else image.point(lambda v: v // 2)
    result.paste(Image.fromarray(blended), box[:2])
    return result


def save_png(image: Image.Image, path: str | Path, text: dict[str, str]) -> None:
    """PNG with ``text`` as tEXt/iTXt chunks (label, probability, method...), readable with PIL's ``.text``."""
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, readable(str(value)))  # iTXt: UTF-8, so accented class names and paths survive
    image.save(path, format="PNG", pnginfo=info)


OVERLAY_STEM_BYTES = 120  # file names are limited to 255 bytes: 120 leave room for the number in any script


def overlay_name(index: int, source: str, total: int) -> str:
    """'0003_cat photo.png': a running number (unique even for equal base names) and the readable stem,
    cut to OVERLAY_STEM_BYTES of UTF-8 (4 bytes a character in some scripts) at a character boundary."""
    stem = Path(source).stem if source else "image"
    stem = re.sub(r"[^\w\- .()+]+", "_", stem)
    stem = stem.encode("utf-8")[:OVERLAY_STEM_BYTES].decode("utf-8", errors="ignore").strip(" .") or "image"
    return f"{index:0{max(4, len(str(max(total - 1, 0))))}d}_{stem}.png"


def caption(true: str | None, predicted: str, probability: float) -> str:
    """Gallery titles everywhere: 'true / predicted (p)', or 'predicted (p)' when the truth is unknown."""
    return f"{true} / {predicted} ({probability:.2f})" if true is not None else f"{predicted} ({probability:.2f})"
