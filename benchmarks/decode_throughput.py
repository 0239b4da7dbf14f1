"""Decoding images/s: which JPEG reader the streamed data path should use, measured rather than assumed.

On the 2,000 mixed-size JPEGs of ``predict_throughput.py`` (96-800 px), one process each, fitted to a
square of --img-size (shorter side resized, centre crop): (a) PIL, full decode then resize (the plain
recipe); (b) resnetlab's reader (``data/cache.decode_bytes``: PIL with JPEG draft scaling, so libjpeg-turbo
decodes at 1/2-1/8 scale, plus a content hash); (c) torchvision.io.decode_jpeg (libjpeg-turbo) then a
tensor resize and crop; (d) the streamed loader's reader (``data/stream.FileImages``), which picks (c) for a
JPEG whose shorter side is under 4x the size and (b) otherwise. The decode-once cache uses (b).

    python benchmarks/decode_throughput.py                  # 64 px and 224 px
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, print_table  # noqa: E402
from predict_throughput import jpeg_folder  # noqa: E402
from resnetlab.data.cache import decode_bytes  # noqa: E402
from resnetlab.data.stream import FileImages  # noqa: E402


def pil_full(path: Path, size: int) -> None:
    with Image.open(path) as image:
        ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BILINEAR)


def resnetlab_reader(path: Path, size: int) -> None:
    result = decode_bytes(str(path), None, size)
    assert not isinstance(result, str), result


def torchvision_io(path: Path, size: int) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    F.center_crop(F.resize(image, size, antialias=True), [size, size])


def stream_reader(path: Path, size: int) -> None:
    index, result = FileImages([str(path)], size)[0]
    assert not isinstance(result, str), result


def rate(reader, files: list[Path], size: int) -> float:
    for path in files[:20]:  # warm the page cache and the libraries
        reader(path, size)
    started = time.perf_counter()
    for path in files:
        reader(path, size)
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", default="64,224")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one process per reader, as one DataLoader worker
    files = sorted(jpeg_folder(args.images).glob("*.jpg"))
    print(f"load average before: {load_average()}; {len(files)} JPEGs of 96-800 px")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        plain, ours, tv, streamed = (rate(reader, files, size) for reader in (pil_full, resnetlab_reader,
                                                                              torchvision_io, stream_reader))
        rows.append([f"{size} px", f"{plain:.0f}", f"{ours:.0f}", f"{tv:.0f}", f"{streamed:.0f}", f"{ours / plain:.2f}",
                     f"{tv / plain:.2f}", f"{ours / tv:.2f}", f"{streamed / max(ours, tv):.2f}"])
    print_table(["fit to", "(a) PIL full img/s", "(b) cache reader img/s", "(c) torchvision.io img/s",
                 "(d) stream reader img/s", "b/a", "c/a", "b/c", "d/max(b,c)"], rows,
                title="JPEG decode + fit, one process")


if __name__ == "__main__":
    main()
