"""Defaults: ``--recipe auto`` against the previous fixed defaults (``--recipe plain``) and against a plain
PyTorch script (benchmarks/plain_script.py) on seven data sets, each run given the same time budget, scored on a
held-out test split.

Every data set is written once as train/ val/ test/ class folders under WORKDIR/data (the test split is never
seen in training: best.pt is picked on val/), then for each one and each budget, three columns (``--columns``):

- auto: ``resnetlab train DATA --recipe auto --time-limit BUDGET``, then previous: the same with ``--recipe plain``
  (both ``--out RUN --no-progress --seed SEED --cache-dir WORKDIR/cache``; auto runs first, so a decoded cache the
  two share can only help the previous defaults: the time limit counts the decode), each followed by
  ``resnetlab evaluate RUN/best.pt DATA --split test --out RUN/test``;
- plain-script: ``python benchmarks/plain_script.py DATA --budget SECONDS --out RUN`` (full-width ResNet-18 at
  160 px, or at the native size where the images are under 64 px; it reads the same folders, ignores val/, fits
  its epochs into 80 % of the budget and scores its last epoch on test/ itself).

Accuracy, balanced accuracy (mean recall per class) and macro F1 on the test split. Prints one markdown table
(those three and the whole process's wall time per column, the differences auto - each other column in points,
an average row per budget), the "auto:" lines each auto run logged, and writes every figure to
WORKDIR/defaults.json.

    python benchmarks/defaults.py                                         # 7 data sets x 3 runs x 90 s
    python benchmarks/defaults.py --budgets 90s,5m,15m --datasets digits,fmnist-1k,grey-imbalanced
    python benchmarks/defaults.py --budget 15s --datasets digits --scale 0.2 --columns plain-script,auto  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name, load_average  # noqa: E402
from photos import make_photos, print_markdown  # noqa: E402
from resnetlab.config import parse_duration  # noqa: E402

RECIPES = {"auto": "auto", "previous": "plain"}  # table name -> --recipe; auto runs first
COLUMNS = ("auto", "previous", "plain-script")  # run and printed in this order
PLAIN_SCRIPT = Path(__file__).with_name("plain_script.py")
PLAIN_SIZE, PLAIN_NATIVE_BELOW = 160, 64  # the plain script's side in px; smaller pictures keep their own size
DEFECTS = ("clean", "spot", "scratch", "crack")  # grey-imbalanced classes, most to fewest images
DEFECT_TRAIN = (600, 200, 80, 40)  # training images per class (val: a quarter of it, test: a half)
DATA_VERSION = 1  # bump when a data set's recipe changes: the folders are made again


# ---------------------------------------------------------------------- data sets
def _scaled(count: int, scale: float, least: int = 2) -> int:
    return max(least, round(count * scale))


def _write_grey(root: Path, split: str, class_name: str, images: np.ndarray, start: int = 0) -> None:
    """N x H x W uint8 -> root/split/class_name/00000.png ..."""
    folder = root / split / class_name
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images, start):
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def _fmnist(root: Path, train: int, test: int, scale: float, seed: int) -> None:
    """A stratified, seeded draw of ``train`` official training images (a tenth of them in val/) and ``test``
    official test images, as PNG class folders."""
    from resnetlab.data.builtin import load_builtin

    source = load_builtin("fashion-mnist")
    rng = np.random.default_rng(seed)
    per_class = {"train": _scaled(train // len(source.classes), scale, 4),
                 "test": _scaled(test // len(source.classes), scale)}
    for label, name in enumerate(source.classes):
        folder = name.replace("/", "-")  # "T-shirt/top" is not a folder name
        for official in ("train", "test"):
            data = source.splits[official]
            picked = rng.choice(np.flatnonzero(data.labels == label), per_class[official], replace=False)
            images = data.images[np.sort(picked), ..., 0]  # N x 28 x 28
            if official == "test":
                _write_grey(root, "test", folder, images)
                continue
            val = max(1, round(len(images) * 0.1))
            _write_grey(root, "val", folder, images[:val])
            _write_grey(root, "train", folder, images[val:], start=val)


def _digits(root: Path, scale: float, seed: int) -> None:
    """scikit-learn's 8x8 digits (0-16 grey levels -> 0-255), a seeded stratified 70/15/15 split, PNG."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # N x 8 x 8
    rng = np.random.default_rng(seed)
    for label in range(10):
        mine = rng.permutation(np.flatnonzero(bunch.target == label))
        mine = mine[:_scaled(len(mine), scale, 6)]
        held = max(1, round(len(mine) * 0.15))
        _write_grey(root, "test", str(label), images[mine[:held]])
        _write_grey(root, "val", str(label), images[mine[held:2 * held]], start=held)
        _write_grey(root, "train", str(label), images[mine[2 * held:]], start=2 * held)


def _photos(root: Path, classes: int, train: int, test: int, sides: tuple[int, int], scale: float,
            seed: int) -> None:
    """benchmarks/photos.py's generator: ``train`` + ``test`` images per class made as its train/ split (the last
    ``test`` of each class are moved to test/), a quarter of ``train`` as val/."""
    train, test = _scaled(train, scale, 4), _scaled(test, scale)
    make_photos(root, train + test, classes, seed, sides, val_per_class=max(2, train // 4))
    for folder in sorted((root / "train").iterdir()):
        (root / "test" / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.jpg"))[train:]:
            path.rename(root / "test" / folder.name / path.name)
    (root / ".complete").unlink()  # make_photos' own record no longer describes these folders


def _defect(task: tuple) -> None:
    """One grey image (mode L JPEG): shaded, grainy metal with one mark of class ``kind`` (none for clean).
    ``task`` = (path, kind, seed words, (min side, max side))."""
    path, kind, seed_words, (low, high) = task
    rng = np.random.default_rng(seed_words)
    width, height = (int(v) for v in rng.integers(low, high + 1, 2))
    cells = rng.uniform(-1, 1, (int(rng.integers(2, 7)), int(rng.integers(2, 7)))).astype(np.float32)
    shading = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR))
    streaks = np.repeat(rng.normal(0, 1, (1, width)), height, 0) if rng.random() < 0.5 else 0.0  # brushed metal
    base = rng.uniform(70, 190) + rng.uniform(5, 30) * shading + rng.uniform(0, 6) * streaks
    image = base + rng.normal(0, rng.uniform(2, 10), (height, width))  # grain, grey levels
    short = min(width, height)
    if kind != "clean":
        mask = Image.new("L", (width * 2, height * 2), 0)  # drawn at 2x and reduced: soft edges
        draw = ImageDraw.Draw(mask)
        x, y = rng.uniform(0.1, 0.9) * width * 2, rng.uniform(0.1, 0.9) * height * 2
        line = int(rng.integers(2, 7))  # at 2x: 1-3 px wide in the image
        if kind == "spot":
            rx, ry = rng.uniform(0.02, 0.08, 2) * short * 2
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        elif kind == "scratch":
            length, angle = rng.uniform(0.15, 0.6) * short * 2, rng.uniform(0, math.pi)
            dx, dy = length / 2 * math.cos(angle), length / 2 * math.sin(angle)
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=255, width=line)
        else:  # crack: a zig-zag of 4-10 short segments, turning 20-70 degrees left and right in turn
            points, angle, turn = [(x, y)], rng.uniform(0, 2 * math.pi), rng.choice((-1, 1))
            step = rng.uniform(0.15, 0.5) * short * 2 / 6
            for _ in range(int(rng.integers(4, 11))):
                angle, turn = angle + turn * rng.uniform(0.35, 1.2), -turn
                points.append((points[-1][0] + step * math.cos(angle), points[-1][1] + step * math.sin(angle)))
            draw.line(points, fill=255, width=line, joint="curve")
        mask = mask.resize((width, height), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(0.6))
        depth = rng.uniform(18, 60) * (1 if rng.random() < 0.3 else -1)  # mostly darker than the surface
        image = image + depth * np.asarray(mask, dtype=np.float32) / 255.0
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L").save(path, quality=int(rng.integers(85, 96)))


def _grey_defects(root: Path, scale: float, seed: int) -> None:
    """4 imbalanced classes of 200-400 px grey surfaces: clean, spot, scratch, crack (600/200/80/40 training
    images at scale 1; val and test in the same proportions, a quarter and a half of it)."""
    tasks = []
    for split_id, (split, share) in enumerate((("train", 1.0), ("val", 0.25), ("test", 0.5))):
        for label, (kind, count) in enumerate(zip(DEFECTS, DEFECT_TRAIN)):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            tasks += [(folder / f"{kind}_{i:05d}.jpg", kind, (seed, split_id, label, i), (200, 400))
                      for i in range(_scaled(count * share, scale))]
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        for _ in pool.imap_unordered(_defect, tasks, chunksize=16):
            pass


# name -> (what it is, maker(root, scale, seed)); each maker writes root/{train,val,test}/<class>/
DATASETS: dict[str, tuple[str, Callable[[Path, float, int], None]]] = {
    "fmnist-1k": ("Fashion-MNIST, 28 px grey", lambda r, s, seed: _fmnist(r, 1000, 1000, s, seed)),
    "fmnist-10k": ("Fashion-MNIST, 28 px grey", lambda r, s, seed: _fmnist(r, 10000, 1000, s, seed)),
    "digits": ("scikit-learn digits, 8 px grey", _digits),
    "photos-small": ("photos.py shapes, 5 classes, 120-240 px",
                     lambda r, s, seed: _photos(r, 5, 120, 60, (120, 240), s, seed)),
    "photos-large": ("photos.py shapes, 5 classes, 300-700 px",
                     lambda r, s, seed: _photos(r, 5, 120, 60, (300, 700), s, seed)),
    "grey-imbalanced": ("grey defects, 4 classes 15:5:2:1, 200-400 px", _grey_defects),
    "colour-200-400": ("photos.py shapes, 4 classes, 200-400 px",
                       lambda r, s, seed: _photos(r, 4, 150, 75, (200, 400), s, seed + 7)),
}


def prepare(name: str, work: Path, scale: float, seed: int) -> Path:
    """WORK/data/NAME[-xSCALE][-seedN]: made once, reused while its record (.defaults-data) matches."""
    suffix = ("" if scale == 1 else f"-x{scale:g}") + ("" if seed == 0 else f"-seed{seed}")
    root = work / "data" / f"{name}{suffix}"
    record = {"name": name, "scale": scale, "seed": seed, "version": DATA_VERSION}
    done = root / ".defaults-data"
    if done.is_file() and json.loads(done.read_text()) == record:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    DATASETS[name][1](root, scale, seed)
    done.write_text(json.dumps(record))
    print(f"  made {root} in {time.perf_counter() - started:.1f}s", flush=True)
    return root


def split_counts(root: Path) -> dict[str, int]:
    return {split: sum(1 for p in (root / split).rglob("*") if p.is_file()) for split in ("train", "val", "test")}


def class_ratio(root: Path) -> float:
    """Training images in the largest class / in the smallest (1.0: balanced)."""
    counts = [sum(1 for p in folder.iterdir() if p.is_file()) for folder in (root / "train").iterdir()
              if folder.is_dir()]
    return max(counts) / max(1, min(counts))


def plain_img_size(root: Path, sample: int = 20) -> int:
    """The plain script's --img-size: 160, or the largest side of a few training pictures when under 64 px."""
    paths = sorted(p for p in (root / "train").rglob("*") if p.is_file())
    side = 0
    for path in paths[::max(1, len(paths) // sample)]:  # spread over the class folders
        with Image.open(path) as image:
            side = max(side, *image.size)
    return side if side < PLAIN_NATIVE_BELOW else PLAIN_SIZE


# ---------------------------------------------------------------------- runs
def call(command: list[str], log_path: Path) -> tuple[int, float, list[str]]:
    """Run a resnetlab command, its output into ``log_path``; (exit status, wall seconds, output lines)."""
    lines: list[str] = []
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, \
            open(log_path, "w", encoding="utf-8") as log:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
    return proc.returncode, time.perf_counter() - started, lines


def test_scores(metrics: dict) -> dict:
    """Accuracy, balanced accuracy and macro F1 from an evaluation's metrics.json."""
    balanced = metrics.get("balanced_accuracy")
    if balanced is None:  # the mean recall over the classes present in the split
        recalls = [m["recall"] for m in metrics["per_class"].values() if m["support"]]
        balanced = float(np.mean(recalls))
    return {"accuracy": float(metrics["accuracy"]), "balanced_accuracy": float(balanced),
            "macro_f1": float(metrics["macro_avg"]["f1"]), "test_images": int(metrics["images"])}


def _log_path(run_dir: Path, work: Path) -> Path:
    """WORK/logs/NAME-BUDGET-COLUMN.log: kept when the run folders are not."""
    log = work / "logs" / ("-".join(run_dir.relative_to(work / "runs").parts) + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def _failed(label: str, what: str, status: int, wall: float, log: Path, lines: list[str]) -> None:
    tail = "\n".join(f"    {line}" for line in lines[-8:])
    print(f"  {label}: {what} exited with {status} after {wall:.0f}s (log {log}):\n{tail}", flush=True)


def _report(label: str, result: dict, extra: str = "") -> None:
    print(f"  {label}: {result.get('epochs', '?')} epochs, whole run {result['wall_s']:.0f}s, test accuracy "
          f"{result['accuracy']:.4f}, balanced {result['balanced_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}"
          f"{extra}", flush=True)


def run_one(root: Path, run_dir: Path, recipe: str, budget: str, args, work: Path) -> dict:
    """Train with ``--recipe recipe`` for the budget, then evaluate best.pt on the test split."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "resnetlab"]
    train = [*python, "train", str(root), "--recipe", recipe, "--time-limit", budget, "--out", str(run_dir),
             "--no-progress", "--seed", str(args.seed), "--cache-dir", str(work / "cache")]
    log = _log_path(run_dir, work)
    status, wall, lines = call(train, log)
    result = {"recipe": recipe, "wall_s": wall, "log": str(log),
              "auto_lines": [line.strip() for line in lines if line.strip().startswith("auto:")]}
    if status or not (run_dir / "best.pt").is_file():
        _failed(recipe, "train", status, wall, log, lines)
        return {**result, "failed": f"train exit {status}"}
    if (run_dir / "metrics.csv").is_file():
        result["epochs"] = max(0, len((run_dir / "metrics.csv").read_text().strip().splitlines()) - 1)
    evaluate = [*python, "evaluate", str(run_dir / "best.pt"), str(root), "--split", "test", "--out",
                str(run_dir / "test"), "--no-progress"]
    status, eval_s, lines = call(evaluate, log.with_name(f"{log.stem}-test.log"))
    if status:
        _failed(recipe, "evaluate", status, eval_s, log.with_name(f"{log.stem}-test.log"), lines)
        return {**result, "failed": f"evaluate exit {status}"}
    result.update(test_scores(json.loads((run_dir / "test" / "metrics.json").read_text())), eval_s=eval_s)
    _report(recipe, result, f" (evaluate {eval_s:.0f}s)")
    return result


def run_plain(root: Path, run_dir: Path, budget: str, args, work: Path) -> dict:
    """benchmarks/plain_script.py with the same budget; it trains and scores its last epoch on test/ itself."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    size = plain_img_size(root)
    command = [sys.executable, str(PLAIN_SCRIPT), str(root), "--budget", f"{parse_duration(budget):g}", "--out",
               str(run_dir), "--img-size", str(size), "--seed", str(args.seed)]
    log = _log_path(run_dir, work)
    status, wall, lines = call(command, log)
    result = {"img_size": size, "wall_s": wall, "log": str(log)}
    if status or not (run_dir / "metrics.json").is_file():
        _failed("plain-script", "the script", status, wall, log, lines)
        return {**result, "failed": f"script exit {status}"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result.update({k: float(metrics[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
                  test_images=int(metrics["images"]), epochs=int(metrics["epochs"]))
    _report("plain-script", result, f" ({size} px)")
    return result


# ---------------------------------------------------------------------- the table
SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


def _cells(result: dict) -> list[str]:
    if "failed" in result:
        return [result["failed"], "-", "-", f"{result['wall_s']:.0f}"]
    return [f"{result['accuracy']:.2%}", f"{result['balanced_accuracy']:.2%}", f"{result['macro_f1']:.3f}",
            f"{result['wall_s']:.0f}"]


def header(columns: list[str]) -> list[str]:
    cells = ["data set", "images train/val/test", "train max:min", "budget"]
    for column in columns:
        cells += [f"{column} acc", f"{column} bal. acc", f"{column} F1", f"{column} s"]
    for other in _peers(columns):
        cells += [f"acc auto - {other}", f"bal. acc auto - {other}", f"F1 auto - {other}"]
    return cells


def _peers(columns: list[str]) -> list[str]:
    """The columns auto is compared with (none when auto is not run)."""
    return [c for c in columns if c != "auto"] if "auto" in columns else []


def table(results: dict, columns: list[str], budgets: list[str]) -> list[list[str]]:
    """One row per data set and budget, budget by budget, each budget closed by its average row (over the sets
    where every column produced a score)."""
    rows = []
    for budget in budgets:
        entries = {name: by_budget[budget] for name, by_budget in results.items() if budget in by_budget}
        for name, entry in entries.items():
            counts = entry["images"]
            row = [name, f"{counts['train']}/{counts['val']}/{counts['test']}", f"{entry['class_ratio']:.1f}", budget]
            for column in columns:
                row += _cells(entry[column])
            for other in _peers(columns):
                if "failed" in entry[other] or "failed" in entry["auto"]:
                    row += ["-"] * len(SCORES)
                else:
                    row += [_points(entry[other][k], entry["auto"][k]) for k in SCORES]
            rows.append(row)
        scored = [e for e in entries.values() if not any("failed" in e[c] for c in columns)]
        if not scored:
            continue
        mean = {c: {k: float(np.mean([e[c][k] for e in scored])) for k in (*SCORES, "wall_s")} for c in columns}
        row = [f"**average ({len(scored)})**", "", "", budget]
        for column in columns:
            row += [f"{mean[column]['accuracy']:.2%}", f"{mean[column]['balanced_accuracy']:.2%}",
                    f"{mean[column]['macro_f1']:.3f}", f"{mean[column]['wall_s']:.0f}"]
        for other in _peers(columns):
            row += [f"**{_points(mean[other][k], mean['auto'][k])}**" for k in SCORES]
        rows.append(row)
    return rows


def _points(a: float, b: float) -> str:
    """b - a in percentage points (F1 x 100 alike)."""
    return f"{(b - a) * 100:+.1f}"


def _names(text: str, known, parser: argparse.ArgumentParser, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{flag}: unknown or missing name(s) {', '.join(unknown) or text!r}; choose from "
                     f"{', '.join(known)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="90s", help="each run's --time-limit, e.g. 90s or 3m (default: 90s)")
    parser.add_argument("--budgets", help="comma list of budgets, each data set run at each (e.g. 90s,5m,15m); "
                        "replaces --budget")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    parser.add_argument("--columns", default=",".join(COLUMNS), help=f"comma list of {', '.join(COLUMNS)} "
                        "(default: all; they run in that order)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/resnetlab-defaults"),
                        help="data (made once, reused), decoded cache, runs and logs (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every data set's image counts (0.2: a "
                        "smoke test); each scale is its own folder")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and the decoded cache (the data "
                        "folders are always kept)")
    parser.add_argument("--seed", type=int, default=0, help="data sets' draws and the runs' --seed")
    args = parser.parse_args()
    names = _names(args.datasets, DATASETS, parser, "--datasets")
    chosen = _names(args.columns, COLUMNS, parser, "--columns")
    columns = [c for c in COLUMNS if c in chosen]
    budgets = [b.strip() for b in (args.budgets or args.budget).split(",") if b.strip()]
    for budget in budgets:
        try:
            parse_duration(budget)
        except ValueError as error:  # ConfigError
            parser.error(f"budget {budget!r}: {error}")
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"host: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average before: {load_average()}")
    print(f"budgets {', '.join(budgets)} per run, columns {', '.join(columns)}, seed {args.seed}, scale "
          f"{args.scale:g}; work folder {work}", flush=True)

    results: dict[str, dict[str, dict]] = {}  # name -> budget -> column -> result
    started = time.perf_counter()
    for budget in budgets:
        for name in names:
            print(f"{name} ({DATASETS[name][0]}), budget {budget}:", flush=True)
            root = prepare(name, work, args.scale, args.seed)
            entry = {"data": str(root), "images": split_counts(root), "class_ratio": class_ratio(root)}
            for column in columns:
                run_dir = work / "runs" / name / budget / column
                entry[column] = (run_plain(root, run_dir, budget, args, work) if column == "plain-script"
                                 else run_one(root, run_dir, RECIPES[column], budget, args, work))
            results.setdefault(name, {})[budget] = entry
            # written after every run set: an interrupted benchmark keeps what it measured
            (work / "defaults.json").write_text(json.dumps({"budgets": budgets, "columns": columns, "seed": args.seed,
                                                            "scale": args.scale, "results": results}, indent=1))

    print(f"\ndefaults: {', '.join(columns)}; the same budget each ({', '.join(budgets)}), held-out test split; "
          f"{time.perf_counter() - started:.0f}s in all")
    print_markdown(header(columns), table(results, columns, budgets))
    print("acc, bal. acc (mean recall per class), F1 (macro): on the test split, of best.pt for auto and previous "
          "(--recipe plain), of the last epoch for plain-script; s: the whole process's wall time (start-up, decode, "
          "epochs, end-of-run validation and report; the plain script's includes its test pass); train max:min: "
          "training images in the largest class / the smallest; diff: auto - the other column, in points.")
    if "auto" in columns:
        print("\nauto's choices:")
        for name, by_budget in results.items():
            for budget, entry in by_budget.items():
                lines = entry["auto"]["auto_lines"]
                print(f"  {name}, {budget}:" + ("" if lines else " (no 'auto:' lines logged)"))
                for line in lines:
                    print(f"    {line}")
    print(f"\nload average after: {load_average()}; figures in {work / 'defaults.json'}")
    if not args.keep:
        for folder in ("runs", "cache"):
            shutil.rmtree(work / folder, ignore_errors=True)


if __name__ == "__main__":
    main()
