"""Photos: training on photo-like JPEGs of mixed sizes and shapes, the plain recipe against resnetlab's data paths.

The data set is generated (deterministic from --seed): JPEGs of 200-800 px sides, aspect ratios 1:2 to 2:1, on
textured backgrounds, a few of them grey; the class is the kind of the 1-3 objects drawn anywhere in the picture
(near the edges too) at 8-40 % of the shorter side, so a model that sees only the centre square misses some.
In one run, same data, epochs, model and batch size:

- plain: torchvision ImageFolder + RandomResizedCrop + flip (Resize 256/224 + CenterCrop to validate) +
  DataLoader(num_workers=2) + timm.create_model + SGD (momentum 0.9, peak lr 0.1, weight decay 5e-4, cosine
  per step) + fp32, default memory format, on the CPU;
- previous: ``resnetlab train --aug standard --cache-layout square --crop-pct 1.0 --feature-views 0`` (the
  centre-square cache, evaluation on the whole centre square);
- new: the same command with the new defaults;
- frozen: ``--freeze-backbone --aug none`` with the default feature path (backbone features computed once), and
  frozen-loop: the same with ``--feature-views 0`` (the backbone runs every epoch); both against one plain frozen
  epoch (requires_grad off except fc, BatchNorm in eval mode).

resnetlab runs through its CLI; its per-epoch numbers come from the run folder's metrics.csv, and its one-off
decode time from the time between its "data:" and "  train: N images" log lines (both stamped as they arrive).

    python benchmarks/photos.py                                   # resnet50, 224 px, every variant
    python benchmarks/photos.py --images-per-class 20 --classes 3 --epochs 1 --frozen-epochs 2 \\
        --model resnet18 --img-size 64 --batch-size 16            # a smoke test: under a minute
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name, load_average, plain_train_step, seed_everything  # noqa: E402

SHAPES = ("circle", "triangle", "star", "cross", "ring", "hexagon", "crescent", "diamond", "arrow", "frame")
VARIANTS = ("plain", "previous", "new", "frozen", "frozen-loop")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SUPERSAMPLE = 4  # object masks are drawn at 4x and box-filtered down: anti-aliased edges, as in a photo
GREY_EVERY = 16  # one image in 16 is saved as mode L


# ---------------------------------------------------------------------- the data set
def _rotated(points: list[tuple[float, float]], angle: float, centre: float, radius: float) -> list[tuple]:
    """Unit-circle points -> pixel coordinates of a mask ``2 * centre`` wide, rotated by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return [(centre + radius * (x * c - y * s), centre + radius * (x * s + y * c)) for x, y in points]


def _regular(corners: int, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular polygon, or a star when ``inner`` (the inner radius, unit 1) is given."""
    count = corners * (2 if inner else 1)
    return [((inner if inner and k % 2 else 1.0) * math.cos(2 * math.pi * k / count - math.pi / 2),
             (inner if inner and k % 2 else 1.0) * math.sin(2 * math.pi * k / count - math.pi / 2))
            for k in range(count)]


def _square(half: float) -> list[tuple[float, float]]:
    return [(-half, -half), (half, -half), (half, half), (-half, half)]


_OUTLINES = {
    "triangle": _regular(3), "hexagon": _regular(6), "star": _regular(5, inner=0.42),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3),
              (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "diamond": [(0, -1), (0.5, 0), (0, 1), (-0.5, 0)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
}


def _shape_mask(kind: str, side: int, angle: float) -> Image.Image:
    """An anti-aliased mode-L mask (side x side) of one object of class ``kind``, 255 inside."""
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    centre, radius = big / 2, big / 2 * 0.98

    def disc(r: float, dx: float = 0.0, dy: float = 0.0, fill: int = 255) -> None:
        draw.ellipse([centre + dx - r, centre + dy - r, centre + dx + r, centre + dy + r], fill=fill)

    if kind == "circle":
        disc(radius)
    elif kind == "ring":
        disc(radius)
        disc(radius * 0.55, fill=0)
    elif kind == "crescent":  # a disc with a shifted disc cut out, the cut in a random direction
        disc(radius)
        disc(radius * 0.85, radius * 0.45 * math.cos(angle), radius * 0.45 * math.sin(angle), fill=0)
    elif kind == "frame":
        draw.polygon(_rotated(_square(0.72), angle, centre, radius), fill=255)
        draw.polygon(_rotated(_square(0.42), angle, centre, radius), fill=0)
    else:
        draw.polygon(_rotated(_OUTLINES[kind], angle, centre, radius), fill=255)
    return mask.resize((side, side), Image.Resampling.BOX)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8: a colour gradient, smooth colour noise, or blurred blobs, each made at 1/8 or 1/4 of the
    size and resized up (a smooth texture needs no more), with per-pixel grain added later."""
    kind = rng.integers(3)
    if kind == 0:  # linear gradient between two colours in a random direction
        small_w, small_h = max(2, width // 8), max(2, height // 8)
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
        t = xs / small_w * math.cos(theta) + ys / small_h * math.sin(theta)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        start, end = rng.integers(0, 256, (2, 3)).astype(np.float32)
        small = Image.fromarray((start + (end - start) * t[..., None]).astype(np.uint8))
    elif kind == 1:  # smooth colour noise: a few random cells, resized up
        cells = int(rng.integers(3, 12))
        small = Image.fromarray(rng.integers(0, 256, (cells, max(2, cells * width // height), 3), dtype=np.uint8))
    else:  # blurred ellipses and rectangles of random colours on a random base colour
        small_w, small_h = max(8, width // 4), max(8, height // 4)
        small = Image.new("RGB", (small_w, small_h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(small)
        for _ in range(int(rng.integers(5, 16))):
            x0, y0 = rng.uniform(-0.2, 1.0) * small_w, rng.uniform(-0.2, 1.0) * small_h
            box = [x0, y0, x0 + rng.uniform(0.1, 0.6) * small_w, y0 + rng.uniform(0.1, 0.6) * small_h]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(3.0, 8.0)))  # soft edges: not like the objects
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour far enough from the mean colour of the background ``under`` the object."""
    mean = under.reshape(-1, 3).mean(0) if under.size else np.full(3, 128.0)
    for _ in range(6):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - mean) > 110:
            return tuple(int(v) for v in colour)
    return tuple(int(v) for v in 255 - mean)


def _photo(task: tuple) -> None:
    """Write one image: ``task`` = (path, class index, seed words, (min side, max side), grey)."""
    path, label, seed_words, (low, high), grey = task
    rng = np.random.default_rng(seed_words)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height, 1:2 to 2:1
    width = int(rng.uniform(low, high))
    height = int(np.clip(width / aspect, low, high))
    image = Image.fromarray(_background(rng, width, height))
    pixels = np.asarray(image)
    short = min(width, height)
    for _ in range(int(rng.integers(1, 4))):
        side = max(4, int(rng.uniform(0.08, 0.40) * short))
        # the centre anywhere at least 0.1 side inside: up to 40 % of an object may fall outside the picture
        x = int(rng.uniform(0.1 * side, width - 0.1 * side)) - side // 2
        y = int(rng.uniform(0.1 * side, height - 0.1 * side)) - side // 2
        under = pixels[max(0, y):y + side, max(0, x):x + side]
        colour = _object_colour(rng, under)
        image.paste(colour, (x, y, x + side, y + side), _shape_mask(SHAPES[label], side, rng.uniform(0, 2 * math.pi)))
    grain = int(rng.integers(0, 13))  # sensor noise, grey-level units
    if grain:
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-grain, grain + 1, (height, width, 1), dtype=np.int16)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.2)))  # a soft lens
    if grey:
        image = image.convert("L")
    image.save(path, quality=int(rng.integers(70, 96)))


def make_photos(root: str | Path, n_per_class: int, classes: int, seed: int,
                size_range: tuple[int, int] = (200, 800), *, val_per_class: int | None = None,
                workers: int | None = None) -> Path:
    """Generate JPEGs in ``root``/train/<class>/ and ``root``/val/<class>/ (resnetlab reads them as predefined
    splits); the same arguments give the same files. Returns ``root``; a finished set with the same arguments
    (recorded in ``root``/.complete) is reused as it is.

    ``classes``: how many of the shape kinds (at most len(SHAPES)); ``val_per_class``: default n_per_class // 4,
    at least 4.
    """
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be 2-{len(SHAPES)} (one per shape kind: {', '.join(SHAPES)}), got {classes}")
    root = Path(root)
    val_per_class = val_per_class or max(4, n_per_class // 4)
    recipe = {"n_per_class": n_per_class, "val_per_class": val_per_class, "classes": classes, "seed": seed,
              "size_range": list(size_range), "version": 2}
    done = root / ".complete"
    if done.is_file() and json.loads(done.read_text()) == recipe:
        return root
    shutil.rmtree(root, ignore_errors=True)
    tasks = []
    for split_id, (split, count) in enumerate((("train", n_per_class), ("val", val_per_class))):
        for label in range(classes):
            folder = root / split / SHAPES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                grey = len(tasks) % GREY_EVERY == 3  # counted across classes: small sets get some too
                tasks.append((folder / f"{SHAPES[label]}_{i:05d}.jpg", label, (seed, split_id, label, i),
                              tuple(size_range), grey))
    with multiprocessing.Pool(workers or os.cpu_count() or 2) as pool:
        for _ in pool.imap_unordered(_photo, tasks, chunksize=16):
            pass
    done.write_text(json.dumps(recipe))
    return root


# ---------------------------------------------------------------------- the plain recipe
def _plain_model(args, num_classes: int) -> torch.nn.Module:
    """timm.create_model with random weights, then the --pretrained file's tensors (its classifier left out)."""
    import timm

    seed_everything(args.seed)
    model = timm.create_model(args.model, num_classes=num_classes, pretrained=False)
    if args.pretrained:
        if args.pretrained.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(args.pretrained)
        else:
            state = torch.load(args.pretrained, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(kept, strict=False)
        print(f"plain: {len(kept)} of {len(own)} tensors from {args.pretrained}")
    return model


def _plain_loaders(args, root: Path):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = ImageFolder(str(root / "train"), transform=T.Compose(
        [T.RandomResizedCrop(args.img_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    val = ImageFolder(str(root / "val"), transform=T.Compose(
        [T.Resize(round(args.img_size * 256 / 224)), T.CenterCrop(args.img_size), T.ToTensor(), normalize]))
    # drop_last as resnetlab's training batches (a last batch of 1 would break BatchNorm)
    train_loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, num_workers=2,
                                               drop_last=len(train) > args.batch_size,
                                               generator=torch.Generator().manual_seed(args.seed))
    val_loader = torch.utils.data.DataLoader(val, batch_size=args.batch_size, num_workers=2)
    return train_loader, val_loader, len(train.classes)


def run_plain(args, root: Path, *, frozen: bool, epochs: int) -> list[dict]:
    """Per epoch: train img/s, train and epoch (train + validation) seconds, validation accuracy."""
    train_loader, val_loader, num_classes = _plain_loaders(args, root)
    model = _plain_model(args, num_classes)
    if frozen:
        for p in model.parameters():
            p.requires_grad = False
        for p in model.get_classifier().parameters():
            p.requires_grad = True
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        if frozen:  # the backbone's BatchNorm keeps its running statistics
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        started, seen = time.perf_counter(), 0
        for x, y in train_loader:  # the workers start again every epoch: the DataLoader default
            plain_train_step(model, optimizer, x, y)
            schedule.step()
            seen += len(y)
        train_s = time.perf_counter() - started
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        epoch_s = time.perf_counter() - started
        rows.append({"epoch": epoch, "img_per_s": seen / train_s, "epoch_s": epoch_s, "val_acc": correct / total})
        print(f"  plain{' frozen' if frozen else ''} epoch {epoch}/{epochs}: {seen / train_s:.1f} img/s, "
              f"{epoch_s:.1f}s, val acc {correct / total:.4f}", flush=True)
    return rows


def _timed_plain(args, root: Path, *, frozen: bool, epochs: int) -> dict:
    started = time.perf_counter()
    rows = run_plain(args, root, frozen=frozen, epochs=epochs)
    return {"rows": rows, "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------- resnetlab through its CLI
def run_resnetlab(args, name: str, root: Path, work: Path, flags: list[str]) -> dict:
    """Run ``resnetlab train`` with ``flags``; its metrics.csv rows, the call's wall seconds and the decode seconds.

    Each variant gets its own --cache-dir, so each one decodes (a second run would only map the cache).
    ``--stem standard``: the ImageNet stem the plain recipe's timm model has (resnetlab's default at > 64 px).
    """
    run_dir = work / "runs" / name
    command = [sys.executable, "-m", "resnetlab", "train", str(root), "--model", args.model,
               "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--out", str(run_dir),
               "--seed", str(args.seed), "--workers", "2", "--cache-dir", str(work / "cache" / name),
               "--stem", "standard", "--recipe", "plain", *flags]  # one fixed recipe: only the data path varies
    if args.pretrained:
        command += ["--pretrained", args.pretrained]
    print(f"  {name}: {' '.join(command[2:])}", flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    stamped: list[tuple[float, str]] = []  # (seconds since the call, line): the log has no clock of its own
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, \
            open(work / "runs" / f"{name}.log", "w", encoding="utf-8") as log:
        for line in proc.stdout:
            stamped.append((time.perf_counter() - started, line.rstrip("\n")))
            log.write(f"{stamped[-1][0]:8.2f}  {line}")
    wall = time.perf_counter() - started
    if proc.returncode:  # the other variants still run; the table marks this one failed
        tail = "\n".join(f"    {text}" for _, text in stamped[-8:])
        print(f"  {name}: resnetlab train exited with {proc.returncode} (log {work / 'runs' / f'{name}.log'}):\n{tail}")
        return {"rows": [], "wall_s": wall, "decode_s": math.nan, "failed": proc.returncode}
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    opened = next((t for t, text in stamped if text.startswith("data: ")), None)
    counted = next((t for t, text in stamped if text.startswith("  train: ")), None)
    decode_s = counted - opened if opened is not None and counted is not None else math.nan
    for row in rows:
        print(f"  {name} epoch {int(row['epoch'])}: {row['img_per_s']:.1f} img/s, {row['epoch_s']:.1f}s, "
              f"val acc {row['val_acc']:.4f}", flush=True)
    return {"rows": rows, "wall_s": wall, "decode_s": decode_s}


# ---------------------------------------------------------------------- the table
def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _summary(name: str, rows: list[dict], ratio: float | None, *, frozen: bool, decode_s: float = math.nan,
             wall_s: float = math.nan) -> list[str]:
    """One table row; img/s is the epochs' mean, or for a frozen row 'first epoch / later epochs' (features
    computed once make the two differ by orders of magnitude)."""
    later = [r["epoch_s"] for r in rows[1:]]
    if frozen and len(rows) > 1:
        img_per_s = f"{_rate(rows[0]['img_per_s'])} / {_rate(float(np.mean([r['img_per_s'] for r in rows[1:]])))}"
    else:
        img_per_s = _rate(float(np.mean([r["img_per_s"] for r in rows])))
    return [name, str(len(rows)), img_per_s, f"{rows[0]['epoch_s']:.1f}",
            f"{np.mean(later):.1f}" if later else "-", f"{rows[-1]['val_acc']:.2%}",
            "-" if ratio is None or math.isnan(ratio) else f"**{ratio:.2f}**",
            "-" if math.isnan(decode_s) else f"{decode_s:.1f}", "-" if math.isnan(wall_s) else f"{wall_s:.0f}"]


def print_markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-per-class", type=int, default=100, help="training images per class "
                        "(validation: a quarter of it, at least 4)")
    parser.add_argument("--classes", type=int, default=5, help=f"number of classes, 2-{len(SHAPES)}")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the plain, previous and new variants")
    parser.add_argument("--frozen-epochs", type=int, default=3, help="epochs of the frozen variants (>= 2 to "
                        "see an epoch after the first)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pretrained", default=None, help="a weights file (.pth/.safetensors) given to every variant")
    parser.add_argument("--workdir", type=Path, default=None, help="data, run folders and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and the run folders")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.pretrained and not Path(args.pretrained).is_file():
        parser.error(f"--pretrained {args.pretrained}: no such file")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="resnetlab-photos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"host: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average before: {load_average()}")
    print(f"{args.model} at {args.img_size} px, batch {args.batch_size}, seed {args.seed}"
          + (f", weights {args.pretrained}" if args.pretrained else ", random init") + f"; work folder {work}")
    seed_everything(args.seed)
    started = time.perf_counter()
    root = make_photos(work / "photos", args.images_per_class, args.classes, args.seed)
    count = sum(1 for _ in root.rglob("*.jpg"))
    print(f"data: {count} JPEGs, {args.classes} classes ({', '.join(SHAPES[:args.classes])}), "
          f"{time.perf_counter() - started:.1f}s to make or find", flush=True)

    results: dict[str, dict] = {}
    common = ["--epochs", str(args.epochs), "--aug", "standard"]
    frozen = ["--freeze-backbone", "--epochs", str(args.frozen_epochs), "--aug", "none"]
    if "plain" in variants:
        results["plain"] = _timed_plain(args, root, frozen=False, epochs=args.epochs)
    if "previous" in variants:
        results["previous"] = run_resnetlab(args, "previous", root, work, common + [
            "--cache-layout", "square", "--crop-pct", "1.0", "--feature-views", "0"])
    if "new" in variants:
        results["new"] = run_resnetlab(args, "new", root, work, common)
    if {"frozen", "frozen-loop"} & set(variants):
        results["plain-frozen"] = _timed_plain(args, root, frozen=True, epochs=1)
    if "frozen" in variants:
        results["frozen"] = run_resnetlab(args, "frozen", root, work, frozen)
    if "frozen-loop" in variants:
        results["frozen-loop"] = run_resnetlab(args, "frozen-loop", root, work, frozen + ["--feature-views", "0"])

    plain_rate = np.mean([r["img_per_s"] for r in results["plain"]["rows"]]) if "plain" in results else math.nan
    plain_frozen_s = results["plain-frozen"]["rows"][0]["epoch_s"] if "plain-frozen" in results else math.nan
    labels = {"plain": "plain recipe (ImageFolder + RandomResizedCrop, fp32)",
              "previous": "resnetlab previous (square cache, crop-pct 1.0)", "new": "resnetlab new (defaults)",
              "plain-frozen": "plain frozen epoch (requires_grad off, BN eval)",
              "frozen": "resnetlab frozen (features once)", "frozen-loop": "resnetlab frozen (--feature-views 0)"}
    table = []
    for name, result in results.items():
        rows = result["rows"]
        if not rows:
            table.append([labels[name], f"failed (exit {result['failed']})"] + ["-"] * 6 + [f"{result['wall_s']:.0f}"])
            continue
        frozen_row = "frozen" in name
        if frozen_row:
            # a frozen row's ratio: a plain frozen epoch's seconds over this row's later (else first) epochs'
            later = [r["epoch_s"] for r in rows[1:]] or [rows[0]["epoch_s"]]
            ratio = plain_frozen_s / float(np.mean(later))
        else:
            ratio = float(np.mean([r["img_per_s"] for r in rows])) / plain_rate
        table.append(_summary(labels[name], rows, ratio, frozen=frozen_row, decode_s=result.get("decode_s", math.nan),
                              wall_s=result.get("wall_s", math.nan)))
    print(f"\nphotos: {count} JPEGs (train {args.images_per_class}/class + val, {args.classes} classes, 200-800 px, "
          f"1:2-2:1), {args.model} {args.img_size} px, batch {args.batch_size}")
    print_markdown(["variant", "epochs", "train img/s", "epoch 1 s", "later epochs s", "val acc (last)",
                    "vs plain", "one-off decode s", "whole call s"], table)
    print("train img/s: the epochs' mean (frozen rows: epoch 1 / later epochs). "
          "vs plain: training rows, img/s over the plain recipe's; frozen rows, a plain frozen epoch's seconds over "
          "the row's later epochs' (epoch = training + validation). One-off decode: resnetlab's decode of both "
          "splits and data checks, not in its epochs; whole call: the CLI from start to exit (end-of-run "
          "evaluation and report included; for the plain rows, the loaders, model and epochs).")
    print(f"load average after: {load_average()}")
    if args.keep:
        print(f"kept: {work}")
    elif args.workdir:
        for folder in ("photos", "runs", "cache"):
            shutil.rmtree(work / folder, ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
