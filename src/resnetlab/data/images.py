"""Reading one image file into the model's input: every mode to RGB, EXIF rotation applied, resized.

This is the single definition of the eval preprocessing on the file side: training caches,
evaluation, prediction and explanation all call ``decode_image``.

    tensor = decode_image("cat.jpg", size=224)   # uint8, 3 x 224 x 224
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ..errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Decompression-bomb guard (PIL's default): PIL raises DecompressionBombError above twice this many pixels.
MAX_IMAGE_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
EXIF_ORIENTATION = 0x0112
# Truncated files must fail loudly, not decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (whatever their extension) and image files found recursively in folders."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += [str(p) for p in list_images(path)]
        else:
            files.append(str(path))  # a missing or odd file still gets its row, with the error
    return files


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder``, recursively, in a stable (sorted) order; hidden files skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if is_image_file(f) and not f.startswith("."))
    return found


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. 16/32-bit and float images are rescaled to 0-255 rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as a viewer shows them; plain convert() would expose
        # whatever colour the encoder left under alpha = 0.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def open_rgb(source: str | os.PathLike | Image.Image, *, draft_size: int | None = None,
             data: bytes | None = None) -> Image.Image:
    """Open and fully decode an image as RGB with EXIF orientation applied (``info["exif_rotated"]`` says so).

    ``data`` is the file's content when the caller has already read it.

    ``draft_size`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (libjpeg's DCT
    scaling), which is several times faster than decoding full size and resizing afterwards.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
            image = to_rgb(ImageOps.exif_transpose(image))
            image.info["exif_rotated"] = rotated
            return image
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"too many pixels (decompression-bomb limit): {err}") from None
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as err:  # PIL raises UnidentifiedImageError/OSError for broken or non-image data
        reason = str(err).replace(str(path), "").strip(" :'") or type(err).__name__
        if "cannot identify image file" in str(err):
            reason = "not an image (unrecognised format)"
        raise ImageReadError(path, reason) from None
    except (ValueError, SyntaxError, IndexError, struct.error) as err:
        raise ImageReadError(path, f"corrupt image data ({type(err).__name__}: {err})") from None


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop a square: no distortion, nothing padded."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor, 3 x H x W."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def decode_image(source: str | os.PathLike | Image.Image, size: int) -> torch.Tensor:
    """File or PIL image -> uint8 tensor 3 x size x size, the model's view of it before normalisation."""
    return pil_to_uint8(fit_square(open_rgb(source, draft_size=size), size))


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """Width and height from the header only (no decode); None when unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any failure just means "unknown size" here
        return None
