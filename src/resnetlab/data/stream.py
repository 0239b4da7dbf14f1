"""Stream: training batches decoded from the files by DataLoader workers, for sets too large to decode once.

The decode-once cache (``cache.py``) is the fast path, but it needs the whole split as uint8 at the training
size in memory or on disk (ImageNet at 224 px: ~190 GB). Above a memory budget a split streams instead:
each batch's files are decoded by ``torch.utils.data.DataLoader`` workers, then augmented as tensors on the
training device exactly as cached batches are. The reader is whichever measured faster
(``benchmarks/decode_throughput.py``, photos of 96-800 px): the cache's PIL reader with JPEG draft scaling
(libjpeg-turbo decoding at 1/2-1/8 size) when a JPEG is at least 4x the training size, 1.28x torchvision.io at
64 px; otherwise torchvision.io's decode_jpeg (libjpeg-turbo) plus a tensor resize, 1.66x PIL at 224 px.
The two agree to within a grey level or so and a sub-pixel crop offset, well inside what augmentation moves;
PNG and every other format, CMYK JPEGs and anything torchvision cannot read go through PIL.
Batch order and augmentation come from the same (seed, epoch, step) streams, so a resumed run replays an
epoch exactly either way.

    batches = StreamBatches(split, size=224, workers=8, batch_size=128, device=device, mean=m, std=s,
                            order=Order(shuffle=True, seed=0), augment=BatchAugment("standard", 224))
    for x, y, index in batches.epoch(3): ...   # an unreadable file is left out of its batch, and listed
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError, ImageReadError
from ..log import logger
from .cache import DecodedSplit, decode_bytes
from .images import MAX_IMAGE_PIXELS, read_regular
from .loaders import Batches
from .splits import SplitData

try:  # deprecated since torchvision 0.29 in favour of TorchCodec: without it every file goes through PIL
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - only on a torchvision that has removed it
    decode_jpeg = None

LOADERS = ("auto", "memory", "stream")
MEMORY_SHARE = 0.5  # auto streams when the decoded split would take more than this share of available memory


def decoded_bytes(count: int, side: int) -> int:
    """Bytes of ``count`` colour images stored in side x side squares (cache.storage_side)."""
    return count * 3 * side * side


def available_memory() -> int:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: assume plenty, the cache is memory-mapped anyway


def choose_loader(mode: str, split: SplitData, size: int, memory: int | None = None) -> str:
    """'memory' or 'stream' for ``split`` at ``size`` px; 'auto' streams what would not fit in memory."""
    if mode not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {mode!r}")
    if split.paths is None:  # built-in sets arrive decoded: there is nothing to stream
        return "memory"
    if mode != "auto":
        return mode
    budget = MEMORY_SHARE * (available_memory() if memory is None else memory)
    return "stream" if decoded_bytes(len(split), size) > budget else "memory"


def streamed_split(split: SplitData) -> DecodedSplit:
    """The split's description for a streamed run: labels and positions, no images (they stay in the files)."""
    return DecodedSplit(None, torch.from_numpy(np.asarray(split.labels, dtype=np.int64)), np.arange(len(split)))


DRAFT_GAIN = 4  # a JPEG whose shorter side is at least this many times the target: PIL's draft decode wins
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; C4/C8/CC are other segments


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, colour components) from a JPEG's start-of-frame segment, or None if it is not a JPEG.

    Hand-written rather than PIL's Image.open because only these three numbers are needed and opening the file
    with PIL costs about a quarter of decoding a small JPEG; the decoders still validate everything else."""
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS:
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return height, width, data[position + 9]
        if marker == 0xDA or length < 2:  # image data before any frame header, or a broken length
            return None
        position += 2 + length
    return None


def torchvision_fit(data: bytes, size: int) -> np.ndarray | None:
    """A JPEG that draft scaling cannot shrink much, decoded by torchvision.io and fitted (shorter side resized,
    centre crop) as H x W x 3 uint8; None when PIL should read it (other formats, CMYK, large, unreadable)."""
    frame = jpeg_frame(data) if decode_jpeg is not None else None
    if frame is None:
        return None
    height, width, components = frame
    if components not in (1, 3) or min(height, width) >= DRAFT_GAIN * size or height * width > MAX_IMAGE_PIXELS:
        return None  # CMYK, large enough for draft scaling, or over the decompression-bomb limit: PIL's case
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except Exception:  # noqa: BLE001 - PIL then reads the file and names what is wrong with it
        return None
    image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
    return image.permute(1, 2, 0).numpy()


class FileImages(Dataset):
    """Image ``i`` of a split as the cache would store it: (i, uint8 H x W x 3 array or why it failed, the whole
    image's content height and width in its letterboxed square, or None for the centre-square layout)."""

    def __init__(self, paths: list[str], size: int, layout: str = "square"):
        self.paths, self.size, self.layout = paths, size, layout

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str, tuple[int, int] | None]:
        return (i, *decode_record(self.paths[i], self.size, self.layout))


def decode_record(path: str, size: int, layout: str = "square", data: bytes | None = None
                  ) -> tuple[np.ndarray | str, tuple[int, int] | None]:
    """One image as the cache would store it (uint8 H x W x 3, or why it failed) and, for the whole-image layout,
    its content height and width in its letterboxed square; ``data``: its bytes when already read."""
    if layout == "whole":
        result = decode_bytes(path, data, size, layout="whole")
        return (result, None) if isinstance(result, str) else (result[0], result[4])
    if path.lower().endswith((".jpg", ".jpeg")):
        if data is None:
            try:
                data = read_regular(path)  # never a blocking read of a pipe
            except (OSError, ImageReadError):
                pass  # decode_bytes below says what is wrong with the file
        array = torchvision_fit(data, size) if data else None
        if array is not None:
            return array, None
    result = decode_bytes(path, data, size)
    return result if isinstance(result, str) else result[0], None


def collate(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]], torch.Tensor | None]:
    """The readable images as one uint8 N x 3 x S x S tensor, their positions, (position, reason) failures and
    the whole images' content sizes (N x 2, or None)."""
    good = [(i, array, content) for i, array, content in items if not isinstance(array, str)]
    failed = [(i, reason) for i, reason, _ in items if isinstance(reason, str)]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), failed, None
    images = torch.from_numpy(np.stack([array for _, array, _ in good])).permute(0, 3, 1, 2).contiguous()
    content = torch.tensor([c for _, _, c in good], dtype=torch.int64) if good[0][2] is not None else None
    return images, torch.tensor([i for i, _, _ in good], dtype=torch.int64), failed, content


class StreamBatches(Batches):
    """Batches of a file-backed split decoded per batch by DataLoader workers (same interface as Batches)."""

    def __init__(self, split: SplitData, size: int, *, workers: int, batch_size: int, device: torch.device,
                 mean, std, strict: bool = False, layout: str = "square", **options):
        labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        super().__init__(torch.zeros(0, dtype=torch.uint8), labels, batch_size=batch_size, device=device,
                         mean=mean, std=std, **options)
        self.split, self.files, self.workers = split, FileImages(split.paths, size, layout), workers
        self.skipped: dict[int, str] = {}  # position -> reason, found while streaming
        self.strict = strict

    def _keep_on_device(self, images: torch.Tensor) -> bool:
        return False  # nothing held: each batch is decoded from its files

    def _uint8_batches(self, indices: list[torch.Tensor]) -> Iterator[tuple]:
        if not indices:
            return
        loader = DataLoader(self.files, batch_sampler=[index.tolist() for index in indices], collate_fn=collate,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.workers else None)
        yield from self._received(loader)

    def _received(self, loader: Iterable[tuple]) -> Iterator[tuple]:
        """The loader's collated batches on the device; their unreadable images named once each (or, --strict, an
        error)."""
        for images, positions, failed, content in loader:
            for position, reason in failed:
                if self.strict:
                    raise DataError(f"--strict: unreadable image {self.split.describe(position)}: {reason}")
                if position not in self.skipped:
                    self.skipped[position] = reason
                    logger.warning(f"skipped unreadable image {self.split.describe(position)}: {reason}")
            if len(positions) == 0:
                first, reason = failed[0]
                raise DataError(f"every image of a batch was unreadable, first {self.split.describe(first)}: {reason}")
            yield (images.to(self.device, non_blocking=True),
                   self.labels[positions].to(self.device, non_blocking=True), positions, content)

    def skipped_files(self) -> list[dict]:
        return [{"path": self.split.describe(i), "reason": r} for i, r in sorted(self.skipped.items())]
