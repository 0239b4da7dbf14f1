"""Reading one image file into the model's input: every mode to RGB, EXIF rotation applied, resized.

This is the single definition of the eval preprocessing on the file side: training caches,
evaluation, prediction and explanation all call ``decode_image``.

    tensor = decode_image("cat.jpg", size=224, crop=Crop(0.875))   # uint8, 3 x 224 x 224: the eval crop
    array, h, w = letterbox(open_rgb("cat.jpg"), 336)                # the whole picture, for training
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..errors import ImageReadError
from ..log import logger
from .crop import Crop
from .tarmembers import read_member, split_member

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


def list_images(folder: str | os.PathLike, *, notes: list[str] | None = None, root: str | os.PathLike | None = None,
                follow_links_out: bool = False, seen: set[str] | None = None) -> list[Path]:
    """All image files below ``folder``, recursively, in a stable order (a folder's files, sorted, then its
    sub-folders, sorted); hidden files and folders skipped.

    Each real folder is read once, so a link loop (``up -> ..``, ``self -> .``) or a second link to a folder adds
    nothing; a link that leads outside ``root`` (default: ``folder``) is not followed unless ``follow_links_out``;
    only regular files are listed (a named pipe called x.jpg would block a reader forever). What was left out is
    appended to ``notes`` ("warning: ..." lines), or logged as warnings when no list is given. ``seen``: real
    folders not to enter (shared across calls; ``folder`` itself is always read and joins it).
    """
    base = os.path.realpath(root if root is not None else folder)
    found: list[Path] = []
    skipped: list[str] = []
    seen = seen if seen is not None else set()

    def walk(directory: str, top: bool = False) -> None:
        real = os.path.realpath(directory)
        if real in seen and not top:
            skipped.append(f"{directory}: a link to a folder already read ({real}), not read again")
            return
        if not follow_links_out and os.path.commonpath([base, real]) != base:
            skipped.append(f"{directory}: a link that leads outside {base} (to {real}), not followed")
            return
        seen.add(real)
        with os.scandir(directory) as scan:
            entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in entries:
            if not entry.is_dir() and is_image_file(entry.name):
                if entry.is_file():
                    found.append(Path(entry.path))
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    skipped.append(f"{entry.path}: a broken link (to {os.readlink(entry.path)}, which does not "
                                   "exist), not read")
                else:
                    skipped.append(f"{entry.path}: not a regular file (a pipe, socket or device), not read")
        for entry in entries:
            if entry.is_dir():
                walk(entry.path)

    walk(os.fspath(folder), top=True)
    for text in skipped:
        if notes is None:
            logger.warning(text)
        else:
            notes.append(f"warning: {text}")
    return found


def read_regular(path: str | os.PathLike) -> bytes:
    """A regular file's bytes, or a tar shard member's (``SHARD.tar#MEMBER``, tarmembers.py); anything else (a FIFO,
    a device) is an ImageReadError instead of a read that blocks."""
    inside = split_member(path)
    if inside is not None:
        return read_member(*inside)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(path, f"a broken link (to {os.readlink(path)}, which does not exist)") from None
        raise ImageReadError(path, "file not found") from None
    except OSError as err:
        raise ImageReadError(path, f"cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise ImageReadError(path, "not a regular file (a pipe, socket, device or folder)")
    return Path(path).read_bytes()


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
             data: bytes | None = None, draft_longer: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB with EXIF orientation applied (``info["exif_rotated"]`` says so).

    ``data`` is the file's content when the caller has already read it.

    ``draft_size`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (libjpeg's DCT
    scaling), which is several times faster than decoding full size and resizing afterwards; both sides stay
    >= ``draft_size``. ``draft_longer``: the same, keeping the aspect ratio with the longer side >= it.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    try:
        if data is None:
            data = read_regular(path)
        if len(data) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                huge = image.width * image.height if caught else 0  # past PIL's warning limit, under its error limit
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                elif draft_longer and image.format == "JPEG":
                    scale = draft_longer / max(image.size)
                    image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
                image.load()
                rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
                image = to_rgb(ImageOps.exif_transpose(image))
        image.info["exif_rotated"] = rotated
        image.info["huge_pixels"] = huge
        return image
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"too many pixels (decompression-bomb limit): {err}") from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(path, f"a broken link (to {os.readlink(path)}, which does not exist)") from None
        raise ImageReadError(path, "file not found") from None
    except OSError as err:  # PIL raises UnidentifiedImageError/OSError for broken or non-image data
        reason = str(err).replace(str(path), "").strip(" :'") or type(err).__name__
        if "cannot identify image file" in str(err):
            reason = "not an image (unrecognised format)"
        raise ImageReadError(path, reason) from None
    except (ValueError, SyntaxError, IndexError, struct.error) as err:
        raise ImageReadError(path, f"corrupt image data ({type(err).__name__}: {err})") from None


INTERPOLATIONS = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}
WHOLE_SCALE = 1.5  # a whole-image cache keeps the longer side at this multiple of the training size
SMALL_SIZE = 64  # training sizes up to this keep the centre-square cache (the fast path of small images)


def default_layout_and_crop(size: int) -> tuple[str, Crop]:
    """How a split is decoded for training at ``size`` without pretrained weights: above 64 px the whole picture
    (cache layout "whole") and the 0.875 evaluation crop of photo-sized inputs; at 64 px and below the centre
    square and no crop (a crop would cut what little there is)."""
    return ("whole", Crop(0.875)) if size > SMALL_SIZE else ("square", Crop(1.0))


def eval_crop(image: Image.Image, size: int, crop: Crop = Crop()) -> Image.Image:
    """``crop`` applied to a PIL image with torchvision's own resize and centre-crop (what timm calls), so the
    pixels equal ``timm.data.create_transform``'s for the same settings."""
    mode, scale = INTERPOLATIONS[crop.interpolation], crop.scale_size(size)
    target = [scale, scale] if crop.mode == "squash" else [scale]
    return TF.center_crop(TF.resize(image, target, interpolation=mode), [size, size])


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """The whole centre square at size x size (eval_crop with a crop fraction of 1.0, bilinear)."""
    return eval_crop(image, size)


def letterbox(image: Image.Image, side: int) -> tuple[np.ndarray, int, int]:
    """The whole image resized (aspect kept) so its longer side is ``side``, at the top-left of a side x side
    uint8 array: (H x W x 3 array, content height, content width). The row and column past the content repeat
    its edge, so bilinear sampling at the border never blends in the padding."""
    width, height = image.size
    scale = side / max(width, height)
    new_w, new_h = max(1, min(side, round(width * scale))), max(1, min(side, round(height * scale)))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.zeros((side, side, 3), dtype=np.uint8)
    out[:new_h, :new_w] = np.asarray(image, dtype=np.uint8)
    if new_w < side:
        out[:new_h, new_w] = out[:new_h, new_w - 1]
    if new_h < side:
        out[new_h, :min(side, new_w + 1)] = out[new_h - 1, :min(side, new_w + 1)]
    return out, new_h, new_w


def is_grey(array: np.ndarray) -> bool:
    """True when an H x W x 3 image has three equal channels (stored as one)."""
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor, 3 x H x W."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def decode_image(source: str | os.PathLike | Image.Image, size: int, crop: Crop = Crop()) -> torch.Tensor:
    """File or PIL image -> uint8 tensor 3 x size x size, the model's view of it before normalisation."""
    return pil_to_uint8(eval_crop(open_rgb(source, draft_size=crop.scale_size(size)), size, crop))


def header_source(path: str | os.PathLike) -> str | os.PathLike | io.BytesIO:
    """What Image.open reads a header from: the path itself, or a shard member's bytes (tarmembers.py)."""
    inside = split_member(path)
    return io.BytesIO(read_member(*inside)) if inside is not None else path


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """Width and height from the header only (no decode); None when unreadable."""
    try:
        with Image.open(header_source(path)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any failure just means "unknown size" here
        return None
