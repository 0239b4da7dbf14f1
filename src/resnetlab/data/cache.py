"""Decode once: a split becomes one uint8 tensor (N x C x S x S) kept in memory, cached on disk.

Per-epoch JPEG/PNG decoding is the main cost of the plain ImageFolder recipe on small images, so
files are decoded a single time (in parallel), stored as a memory-mapped ``.npy`` keyed by the file
list, sizes, modification times and the layout, and reused until any of those change.

Two layouts: ``square`` stores what evaluation feeds the model (the eval crop at the training size, see
``images.Crop``); ``whole`` stores each whole picture letterboxed in a square whose side is 1.5x the training
size (``images.letterbox``; 224 px training: 336 x 336, 339 KB per colour image, 113 KB per grey one) with its
content height and width, so training's random-resized-crop samples from all of the picture, as timm's and
torchvision's do from the file. A split whose images are all grey is stored with one channel.

    decoded = decode_split(source.splits["train"], size=224, layout="whole")
    decoded.images.shape, decoded.content   # (N, 3, 336, 336) uint8, (N, 2) content heights and widths
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from .._version import __version__
from ..errors import ImageReadError
from ..fileio import write_json
from ..log import logger, progress_enabled
from ..signals import raise_if_terminated
from .images import WHOLE_SCALE, Crop, eval_crop, is_grey, letterbox, open_rgb, read_regular
from .splits import SplitData
from .tarmembers import stat_of
from .workers import default_workers, worker_map

CACHE_FORMAT = 3
LAYOUTS = ("square", "whole")
DEFAULT_CACHE_DIR = "~/.cache/resnetlab"
UNEXPECTED = "unexpected error: "  # failures that are not the file's fault are never cached


@dataclass
class DecodedSplit:
    images: torch.Tensor | None  # uint8, N x C x S x S (C is 1 for grey data); None: streamed (stream.py)
    labels: torch.Tensor  # int64, N
    kept: np.ndarray  # positions in the SplitData of the images that decoded
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"} of images that did not
    cache_file: str | None = None
    digests: list[str] = field(default_factory=list)  # content hash per kept image (leakage checks)
    rotated: list[int] = field(default_factory=list)  # positions (in the SplitData) of EXIF-rotated files
    huge: list[list[int]] = field(default_factory=list)  # [position, pixels] past PIL's warning limit (89 MP)
    content: torch.Tensor | None = None  # whole layout: int64 N x 2, each image's height and width in its square

    def __len__(self) -> int:
        return len(self.labels)


def storage_side(size: int, layout: str) -> int:
    """The side of the squares a split is stored in: the training size, or 1.5x it for whole images."""
    return int(round(size * WHOLE_SCALE)) if layout == "whole" else size


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where resnetlab keeps what it makes once (decoded arrays, shard indexes, exported Hugging Face images):
    --cache-dir, else $RESNETLAB_CACHE, else ~/.cache/resnetlab."""
    return Path(cache_dir or os.environ.get("RESNETLAB_CACHE", DEFAULT_CACHE_DIR)).expanduser()


def decode_split(split: SplitData, size: int, *, crop: Crop = Crop(), layout: str = "square",
                 cache_dir: str | None = None, workers: int | None = None, progress: bool = True,
                 use_cache: bool = True) -> DecodedSplit:
    """Decode every image of ``split`` (the eval ``crop`` at ``size`` x ``size``, or the whole picture with
    ``layout="whole"``); unreadable files are skipped and listed. Built-in sets arrive decoded: resized only."""
    if layout not in LAYOUTS:
        raise ValueError(f"cache layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if split.images is not None:
        return DecodedSplit(_resize_array(split.images, size), torch.from_numpy(split.labels),
                            np.arange(len(split)))
    cache_root = cache_folder(cache_dir)
    job = (size, crop, layout)
    squashed = crop.mode == "squash" and layout == "square"  # the only case the mode changes what is stored
    named = (size, crop.pct, crop.interpolation, layout) + ((crop.mode,) if squashed else ())  # existing keys kept
    key = _cache_key(split.paths, "-".join(map(str, named)))
    array_file, meta_file = cache_root / f"{key}.npy", cache_root / f"{key}.json"
    if use_cache and array_file.is_file() and meta_file.is_file():
        try:
            return _load_cached(array_file, meta_file, split)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    out, tmp_file = _allocate(len(split.paths), storage_side(size, layout), array_file if use_cache else None)
    try:
        info = _decode_files(split.paths, job, out, workers or default_workers(), progress, split.name)
    except BaseException:  # Ctrl-C, SIGTERM (the CLI raises it as an exception), anything: no temp array left
        del out
        if tmp_file is not None:
            tmp_file.unlink(missing_ok=True)
        raise
    images = _compact(out, info, len(split.paths))
    if tmp_file and any(reason.startswith(UNEXPECTED) for _, reason in info["skipped"]):
        tmp_file.unlink(missing_ok=True)
        tmp_file = None
    cache_file = _finish_cache(images, tmp_file, info, array_file, meta_file) if tmp_file else None
    return _decoded(images, split, info, cache_file)


def _compact(out: np.ndarray, info: dict, count: int) -> np.ndarray:
    """The decoded array without the images that failed, and with one channel when every image is grey."""
    kept, grey = info["kept"], bool(len(info["kept"])) and info["colour"] == 0
    if grey:
        return np.ascontiguousarray(out[:, :1] if len(kept) == count else out[kept, :1])
    return out if len(kept) == count else np.ascontiguousarray(out[kept])


def _decoded(images: np.ndarray, split: SplitData, info: dict, cache_file: str | None) -> DecodedSplit:
    kept = np.asarray(info["kept"], dtype=np.int64)
    skipped = [{"path": split.describe(i), "reason": r} for i, r in info["skipped"]]
    content = torch.tensor(info["content"], dtype=torch.int64).view(-1, 2) if info.get("content") else None
    return DecodedSplit(torch.from_numpy(images), torch.from_numpy(split.labels[kept]), kept, skipped, cache_file,
                        list(info["digests"]), list(info["rotated"]), [list(h) for h in info.get("huge", [])],
                        content)


def _cache_key(paths: list[str], layout: str) -> str:
    digest = hashlib.sha256(f"resnetlab-cache-{CACHE_FORMAT}-{__version__}-{layout}".encode())
    for path in paths:
        # os.fsencode: the name's own bytes; a name that is not valid UTF-8 (latin1_\xe9.png) arrives as a str with
        # surrogate escapes, which a plain .encode() refuses
        name = os.fsencode(os.path.abspath(path))
        try:
            stat = stat_of(path)  # a shard member: its shard's size and time
            digest.update(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(name + b"\0missing\n")
    return digest.hexdigest()[:32]


Decoded = tuple  # (H x W x 3 uint8 array, content digest, EXIF-rotated?, pixels past PIL's warning limit or 0,
#                  (content height, content width) for whole images else None, grey?)


def _decode_one(job: tuple) -> Decoded | str:
    path, size, crop, layout = job
    return decode_bytes(path, None, size, crop, layout)


def decode_bytes(path: str, data: bytes | None, size: int, crop: Crop = Crop(), layout: str = "square"
                 ) -> Decoded | str:
    """One file as the cache stores it (runs in a worker process), or why it failed. ``data``: the file's
    content when it is already in memory."""
    try:
        if data is None:
            data = read_regular(path)  # read once: hashed for leakage checks, decoded from memory
        if layout == "whole":
            side = storage_side(size, layout)
            image = open_rgb(path, data=data, draft_longer=side)
            array, height, width = letterbox(image, side)
            content = (height, width)
        else:
            image = open_rgb(path, draft_size=crop.scale_size(size), data=data)
            array, content = np.asarray(eval_crop(image, size, crop), dtype=np.uint8), None
        return (array, hashlib.blake2b(data, digest_size=16).hexdigest(), bool(image.info.get("exif_rotated")),
                int(image.info.get("huge_pixels", 0)), content, is_grey(array))
    except FileNotFoundError:
        return "file not found"
    except ImageReadError as err:
        return err.reason
    except Exception as err:  # noqa: BLE001 - one odd file must never end the run
        return f"{UNEXPECTED}{type(err).__name__}: {err}"


def _decode_files(paths: list[str], job: tuple, images: np.ndarray, workers: int, progress: bool, name: str
                  ) -> dict:
    """Fills ``images`` in place; returns kept positions, (position, reason) skips, digests, rotations, content
    sizes and the number of colour images."""
    info: dict = {"kept": [], "skipped": [], "digests": [], "rotated": [], "huge": [], "content": [], "colour": 0}
    jobs = [(p, *job) for p in paths]
    bar = tqdm(total=len(paths), desc=f"decode {name}", unit="img", disable=not progress_enabled(progress), leave=False)
    if workers > 1 and len(paths) >= 64:
        with worker_map(_decode_one, jobs, workers) as results:
            _collect(results, images, info, bar)
    else:
        _collect(map(_decode_one, jobs), images, info, bar)
    bar.close()
    info["kept"] = np.asarray(info["kept"], dtype=np.int64)
    if not any(info["content"]):
        info["content"] = []
    return info


def _collect(results, images: np.ndarray, info: dict, bar: tqdm) -> None:
    for i, result in enumerate(results):
        raise_if_terminated()
        if isinstance(result, str):
            info["skipped"].append((i, result))
        else:
            array, digest, rotated, huge, content, grey = result
            images[i] = array.transpose(2, 0, 1)
            info["kept"].append(i)
            info["digests"].append(digest)
            info["content"].append(list(content) if content else None)
            info["colour"] += not grey
            if rotated:
                info["rotated"].append(i)
            if huge:
                info["huge"].append([i, huge])
        bar.update(1)


def _allocate(count: int, size: int, array_file: Path | None) -> tuple[np.ndarray, Path | None]:
    """Decode straight into a file-backed array when caching, so a large split is never held twice.

    The file's blocks are reserved before anything is written: a memory-mapped write to a sparse file on a full
    disk is a SIGBUS that kills the process, a failed reservation is an OSError we can recover from.
    """
    shape = (count, 3, size, size)
    if array_file is not None:
        tmp_file = array_file.with_name(f"{array_file.stem}.tmp{os.getpid()}.npy")
        try:
            array_file.parent.mkdir(parents=True, exist_ok=True)
            array = np.lib.format.open_memmap(tmp_file, mode="w+", dtype=np.uint8, shape=shape)
            _reserve(tmp_file)
            return array, tmp_file
        except OSError as err:  # read-only or full cache folder: decode in memory, cache nothing
            tmp_file.unlink(missing_ok=True)
            logger.warning(f"cannot cache in {array_file.parent} ({err.strerror or err}; "
                           f"{np.prod(shape) / 2**20:.0f} MiB needed): decoding into memory without a cache")
    return np.empty(shape, dtype=np.uint8), None


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` now (posix_fallocate; zeros written where the filesystem lacks it)."""
    length = path.stat().st_size
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, length)  # not on macOS: AttributeError, zeros below
            return
        except AttributeError:
            pass
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        chunk = b"\0" * (16 * 2**20)
        for _ in range(0, length, len(chunk)):
            handle.write(chunk[:length - handle.tell()])
        handle.flush()
        os.fsync(handle.fileno())


def _finish_cache(images: np.ndarray, tmp_file: Path, info: dict, array_file: Path, meta_file: Path) -> str | None:
    """Publish the cache entry: the array renamed into place, then its index (written atomically), so a reader
    never finds an index without its array; any OSError (full disk) only loses the cache."""
    try:
        if isinstance(images, np.memmap):
            images.flush()
        else:  # some images failed: the compacted array replaces the one decoded in place
            np.save(tmp_file, images)
        os.replace(tmp_file, array_file)
        write_json(meta_file, {**info, "kept": info["kept"].tolist()})
        return str(array_file)
    except OSError:
        tmp_file.unlink(missing_ok=True)
        return None


def _load_cached(array_file: Path, meta_file: Path, split: SplitData) -> DecodedSplit:
    info = json.loads(meta_file.read_text())
    # copy-on-write map: pages are read lazily and never written back to the cache file
    images = np.load(array_file, mmap_mode="c")
    if images.shape[0] != len(info["kept"]) or len(info["digests"]) != len(info["kept"]):
        raise ValueError("cache entry does not match its index")
    return _decoded(images, split, info, str(array_file))


def _resize_array(images: np.ndarray, size: int) -> torch.Tensor:
    """N x H x W x C uint8 -> N x C x size x size uint8, antialiased, in chunks to bound memory."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    if tensor.shape[-1] == size and tensor.shape[-2] == size:
        return tensor.contiguous()
    out = torch.empty((tensor.shape[0], tensor.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, tensor.shape[0], 4096):
        chunk = tensor[start:start + 4096].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + 4096] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor, content: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (fractions of 255) of a uint8 N x C x H x W tensor, in chunks; with ``content``
    (whole images in letterboxed squares) over each image's own pixels only, never the padding."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    if content is not None:
        for image, (height, width) in zip(images, content.tolist()):
            pixels = image[:, :height, :width].to(torch.float64) / 255.0
            total += pixels.sum(dim=(1, 2))
            total_sq += (pixels * pixels).sum(dim=(1, 2))
            count += height * width
    else:
        for start in range(0, images.shape[0], 2048):
            chunk = images[start:start + 2048].to(torch.float64) / 255.0
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
        count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean * mean).clamp_min(1e-12).sqrt()
    if channels == 1:
        mean, std = mean.repeat(3), std.repeat(3)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]
