"""Scale: how time and memory grow with the number of images, as a folder, a CSV and tar shards.

For each size (default 1k, 10k, 100k) the script writes that many tiny generated JPEGs (32 x 32, 10 classes, a
coloured blob on noise) as class folders, a CSV of ``path,label`` rows naming the same files, and WebDataset
shards (``resnetlab shards``, 1,000 records each). Then, for each source, each step in its own process:

- index: ``open_data(SOURCE)``, the call alone (list the files or rows, split train/val; shards: read each
  shard's member index from its tar headers once into the cache folder, so the first open is timed and a second
  one too), beside torchvision's ``ImageFolder`` indexing the same folder (the plain recipe's listing) as the
  ratio's reference;
- check: ``resnetlab check SOURCE --no-near-dups`` (reads every image);
- train, cache: ``resnetlab train SOURCE --recipe plain --epochs 2 --loader memory`` (ResNet-18 at width 0.25
  with the ImageNet stem, 32 px, batch 256: a small network, so the data path's cost shows): start (listing,
  decoding into the cache, final evaluation and report: the process's wall time less its epochs) and the first
  and second epoch from metrics.csv;
- train, stream: the same with ``--loader stream`` (each batch decoded from the files by DataLoader workers;
  shards: read in sequence, each worker its own shards, through a shuffle buffer);
- predict: ``resnetlab predict RUN/best.pt`` on every image (the folder, or the shards' tar files; a CSV is not a
  predict input, so that cell is empty).

Time is wall seconds and microseconds per image; memory is the peak resident set of the step's largest process
(``wait4``'s ``ru_maxrss``: the process or one of its DataLoader workers, whichever was largest). The table ends
with the growth from 10k to 100k per image and per peak, the issue's targets (per-image time <= 1.3x, stream
and shard peaks <= 1.2x, shards within 10 % of the folder's images/s).

    python benchmarks/scale.py                                 # 1k, 10k, 100k; about 30 minutes on 2 cores
    python benchmarks/scale.py --sizes 1000,10000 --formats folder,shards
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name, load_average  # noqa: E402
from photos import print_markdown  # noqa: E402

CLASSES = 10
SIDE = 32
FORMATS = ("folder", "csv", "shards")
TRAIN = ["--recipe", "plain", "--epochs", "2", "--img-size", "32", "--width", "0.25", "--stem", "standard",
         "--aug", "flip", "--batch-size", "256", "--no-progress", "--seed", "0", "--exist-ok"]
INDEX = """import json, sys, time
from resnetlab.data.sources import open_data
started = time.perf_counter()
source = open_data(sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({"images": sum(len(s) for s in source.splits.values()), "s": time.perf_counter() - started}))
"""
IMAGEFOLDER = """import json, sys, time
from torchvision.datasets import ImageFolder
started = time.perf_counter()
folder = ImageFolder(sys.argv[1])
print(json.dumps({"images": len(folder), "s": time.perf_counter() - started}))
"""


# ---------------------------------------------------------------------- data
def _write_images(task: tuple[Path, int, int]) -> None:
    """Images start..stop-1 of class ``i % CLASSES``: a blob of the class's hue on noise, as a 32 px JPEG."""
    folder, start, stop = task
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(start, stop):
        label = i % CLASSES
        pixels = rng.integers(0, 90, (SIDE, SIDE, 3)).astype(np.float32)
        cy, cx, radius = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(4, 9)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
        pixels[blob] += 160 * np.array([label % 3 == 0, label % 3 == 1, label % 3 == 2]) + 15 * label
        path = folder / f"class{label}" / f"{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_data(root: Path, count: int) -> dict[str, str]:
    """root/folder/classK/*.jpg, root/data.csv and root/shards/ (made once; a .complete marker says done)."""
    sources = {"folder": str(root / "folder"), "csv": str(root / "data.csv"), "shards": str(root / "shards")}
    if (root / ".complete").is_file():
        return sources
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / "folder" / f"class{label}").mkdir(parents=True)
    chunks = [(root / "folder", start, min(count, start + 2000)) for start in range(0, count, 2000)]
    with multiprocessing.Pool(min(4, os.cpu_count() or 1)) as pool:
        pool.map(_write_images, chunks)
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i in range(count):
            writer.writerow([f"folder/class{i % CLASSES}/{i:06d}.jpg", f"class{i % CLASSES}"])
    return sources


# ---------------------------------------------------------------------- measuring
def measured(command: list[str], log: Path) -> tuple[float, int, str]:
    """Run ``command``; (wall seconds, peak resident MiB of its largest process, stdout). Fails loudly."""
    started = time.perf_counter()
    with open(log, "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss // 1024, out


def _resnetlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnetlab", *args]


def epochs_of(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as handle:
        return [float(row["epoch_s"]) for row in csv.DictReader(handle)]


def train_cells(source: str, run: Path, loader: str, cache: Path, log: Path) -> dict:
    wall, peak, _ = measured(_resnetlab("train", source, *TRAIN, "--loader", loader, "--cache-dir", str(cache),
                                        "--out", str(run)), log)
    epochs = epochs_of(run)
    return {"wall": wall, "start": wall - sum(epochs), "epoch1": epochs[0], "epoch2": epochs[-1], "peak": peak}


def measure(name: str, source: str, count: int, work: Path, log: Path) -> dict:
    """Every step for one source of ``count`` images."""
    cache, runs = work / "cache" / str(count), work / "runs" / str(count) / name
    runs.mkdir(parents=True, exist_ok=True)
    row: dict = {"format": name, "images": count}
    if name == "shards" and not Path(source, "train-000000.tar").is_file():
        wall, peak, _ = measured(_resnetlab("shards", str(Path(source).parent / "folder"), source,
                                            "--shard-size", "1000"), log)
        row["write"] = {"s": wall, "peak": peak}
        shutil.rmtree(cache, ignore_errors=True)  # the first open below unpacks
    for key in ("index", "index_again"):
        wall, peak, out = measured([sys.executable, "-c", INDEX, source, str(cache)], log)
        row[key] = {"s": json.loads(out)["s"], "wall": wall, "peak": peak}
    if name == "folder":
        wall, peak, out = measured([sys.executable, "-c", IMAGEFOLDER, source], log)
        row["imagefolder"] = {"s": json.loads(out)["s"], "wall": wall, "peak": peak}
    wall, peak, _ = measured(_resnetlab("check", source, "--no-near-dups", "--no-progress", "--cache-dir",
                                        str(cache), "--json", str(runs / "check.json")), log)
    row["check"] = {"s": wall, "peak": peak}
    for loader in ("memory", "stream"):
        row[loader] = train_cells(source, runs / loader, loader, cache, log)
    if name != "csv":
        inputs = sorted(str(p) for p in Path(source).glob("*.tar")) if name == "shards" else [source]
        wall, peak, _ = measured(_resnetlab("predict", str(runs / "memory" / "best.pt"), *inputs, "--out",
                                            str(runs / "predictions.csv"), "--no-progress"), log)
        row["predict"] = {"s": wall, "peak": peak}
    return row


# ---------------------------------------------------------------------- the table
def _us(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e6:,.0f}"


def _step(step: dict | None, count: int) -> str:
    return "" if step is None else f"{step['s']:.1f} s ({_us(step['s'], count)} µs), {step['peak']} MiB"


def _train(cells: dict, count: int) -> str:
    train_n = round(0.9 * count)  # the train split: a tenth is held out for validation
    return (f"start {cells['start']:.0f} s; epochs {cells['epoch1']:.1f} / {cells['epoch2']:.1f} s "
            f"({_us(cells['epoch2'], train_n)} µs); {cells['peak']} MiB")


def rows_of(results: list[dict]) -> list[list[str]]:
    """One row per source and size: seconds (µs per image) and peak MiB per step."""
    rows = []
    for r in results:
        n = r["images"]
        index = f"{r['index']['s']:.2f} s / {r['index_again']['s']:.2f} s ({_us(r['index_again']['s'], n)} µs)"
        if "imagefolder" in r:
            index += f"; ImageFolder {r['imagefolder']['s']:.2f} s"
        rows.append([r["format"], f"{n:,}", _step(r.get("write"), n), index, _step(r["check"], n),
                     _train(r["memory"], n), _train(r["stream"], n), _step(r.get("predict"), n)])
    return rows


def growth(results: list[dict], small: int, large: int) -> list[str]:
    """Lines: per-image time and peak memory at ``large`` over ``small`` images, shards against the folder."""
    by = {(r["format"], r["images"]): r for r in results}
    lines = []
    for name in FORMATS:
        a, b = by.get((name, small)), by.get((name, large))
        if not (a and b):
            continue
        ratio = large / small
        parts = [f"{step} time {b[step]['s'] / a[step]['s'] / ratio:.2f}x" for step in ("index_again", "check")]
        parts += [f"{loader} epoch {b[loader]['epoch2'] / a[loader]['epoch2'] / ratio:.2f}x, peak "
                  f"{b[loader]['peak'] / a[loader]['peak']:.2f}x" for loader in ("memory", "stream")]
        if "predict" in a:
            parts.append(f"predict {b['predict']['s'] / a['predict']['s'] / ratio:.2f}x")
        lines.append(f"{name}, {large:,} against {small:,} per image: " + "; ".join(parts))
    for count in sorted({r["images"] for r in results}):
        folder, shards = by.get(("folder", count)), by.get(("shards", count))
        if folder and shards:
            lines.append(f"shards against the folder at {count:,}: images/s "
                         + ", ".join(f"{loader} {folder[loader]['epoch2'] / shards[loader]['epoch2']:.2f}x"
                                     for loader in ("memory", "stream")))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma list of image counts")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/resnetlab-scale"),
                        help="data, caches and runs (the data is made once per size and kept)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not sizes or any(s < 100 for s in sizes) or not set(formats) <= set(FORMATS):
        parser.error(f"--sizes: counts of 100 or more; --formats: some of {', '.join(FORMATS)}")
    print(f"host: {cpu_name()}, {os.cpu_count()} cores; load average before: {load_average()}", flush=True)
    results = []
    for count in sizes:
        made = time.perf_counter()
        sources = make_data(args.workdir / "data" / str(count), count)
        print(f"{count:,} images ready ({time.perf_counter() - made:.0f} s)", flush=True)
        for name in formats:
            results.append(measure(name, sources[name], count, args.workdir, args.workdir / "step.log"))
            print(json.dumps(results[-1]), flush=True)
        (args.workdir / "data" / str(count) / ".complete").write_text("ok")
        (args.workdir / "scale.json").write_text(json.dumps(results, indent=1))
    print(f"\nscale: seconds (µs per image) and peak MiB of the largest process; load average after: {load_average()}")
    print_markdown(["source", "images", "write shards", "index first / again", "check", "train, cache",
                    "train, stream", "predict"], rows_of(results))
    if len(sizes) > 1:
        print()
        for line in growth(results, sorted(sizes)[-2], sorted(sizes)[-1]):
            print(line)


if __name__ == "__main__":
    main()
