"""Shard read: what one record costs to read from a tar shard, webdataset's tar iterator against indexed offsets.

The sequential shard stream (src/resnetlab/data/shardstream.py) reads each shard front to back at the offsets its
index holds (read once from the tar headers) instead of through webdataset's own tar iterator, which parses every
header again as it reads. This script measures both on the same shards, beside decoding the same JPEGs (the work
a record's bytes are read for), so the ratio shows when the reader matters: for small pictures.

It writes ``--images`` generated JPEGs (``--side`` px, 10 classes) as class folders, then shards with
``resnetlab shards`` (1,000 records each), into ``--workdir``, and times, over the training shards:

- webdataset: ``tar_file_iterator`` + ``group_by_keys`` (what ``wds.WebDataset`` runs per shard), every record;
- offsets: ``shard_index`` once per shard, then one open file per shard, a seek and a read per record;
- decode: ``decode_record`` of each record's JPEG at the training size (``--side``), for scale.

    python benchmarks/shard_read.py                       # 10,000 images of 32 px
    python benchmarks/shard_read.py --images 2000 --side 224
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name, load_average  # noqa: E402
from photos import print_markdown  # noqa: E402


def write_data(workdir: Path, images: int, side: int) -> Path:
    """Class folders of generated JPEGs and their shards; returns the shard folder (reused when it exists)."""
    from resnetlab.cli import main as resnetlab

    folder, shards = workdir / "folder", workdir / "shards"
    if (shards / "classes.json").is_file():
        return shards
    rng = np.random.default_rng(0)
    for i in range(images):
        cls = folder / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        picture = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        picture[side // 4:side // 2, side // 4:side // 2] = (25 * (i % 10), 255 - 25 * (i % 10), 128)
        Image.fromarray(picture).save(cls / f"{i:06d}.jpg", quality=90)
    with contextlib.redirect_stdout(io.StringIO()):  # its JSON summary
        if resnetlab(["shards", str(folder), str(shards), "--shard-size", "1000"]) not in (0, 1):
            raise SystemExit("resnetlab shards failed")
    return shards


def webdataset_pass(urls: list[str]) -> tuple[int, float]:
    from webdataset import ignore_and_continue
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    started, count = time.perf_counter(), 0
    for url in urls:
        with open(url, "rb") as stream:
            files = (dict(file, __url__=url) for file in tar_file_iterator(stream, handler=ignore_and_continue))
            for _ in group_by_keys(files, handler=ignore_and_continue):
                count += 1
    return count, time.perf_counter() - started


def offsets_pass(urls: list[str], root: Path) -> tuple[int, float, list[bytes]]:
    from resnetlab.data.shards import shard_index

    started, count, kept = time.perf_counter(), 0, []
    for url in urls:
        records = shard_index(url, root)["records"]
        with open(url, "rb") as stream:
            for _, _, _, _, offset, size, _ in records:
                stream.seek(offset)
                data = stream.read(size)
                count += 1
                if len(kept) < 2000:
                    kept.append(data)
    return count, time.perf_counter() - started, kept


def decode_pass(records: list[bytes], side: int) -> float:
    from resnetlab.data.stream import decode_record

    started = time.perf_counter()
    for data in records:
        decode_record("record.jpg", side, "square", data)
    return (time.perf_counter() - started) / max(1, len(records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000, help="generated images (default: 10000)")
    parser.add_argument("--side", type=int, default=32, help="their side in px, also the decode size (default: 32)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/resnetlab-shard-read"))
    args = parser.parse_args()
    print(f"host: {cpu_name()}; load average before: {load_average()}", flush=True)
    shards = write_data(args.workdir / f"{args.images}-{args.side}", args.images, args.side)
    urls = sorted(glob.glob(str(shards / "train-*.tar")))
    index_root = args.workdir / "index"
    offsets_pass(urls, index_root)  # the index is read once, as opening the data set does; then both are warm
    webdataset_pass(urls)
    count, wds_s = webdataset_pass(urls)
    _, offsets_s, sample = offsets_pass(urls, index_root)
    decode_s = decode_pass(sample, args.side)
    per = {"webdataset": wds_s / count, "offsets": offsets_s / count}
    print(f"\n{count} training records in {len(urls)} shards, {args.side} px JPEGs; load average after: "
          f"{load_average()}")
    print_markdown(["reader", "s", "µs a record", "time against webdataset's", "time against decoding the record"],
                   [[name, f"{value * count:.2f}", f"{value * 1e6:.0f}", f"{value / per['webdataset']:.2f}x",
                     f"{value / decode_s:.2f}x"] for name, value in per.items()]
                   + [["(decode the JPEG)", "", f"{decode_s * 1e6:.0f}", "", "1.00x"]])


if __name__ == "__main__":
    main()
