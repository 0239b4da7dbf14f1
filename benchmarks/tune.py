"""Tune: does a search find settings that beat the default recipe in the same training time?

Fashion-MNIST, a seeded stratified subset of the official training set (10,000 images: 9,000 in train/, 1,000 in
val/, which picks best.pt and scores the trials) and of the official test set (test/: only scored at the end),
written once as PNG class folders. Then, each command in its own process as a user would run it:

1. default: ``resnetlab train DATA --time-limit BUDGET`` (the CLI's default recipe), then its best.pt on test/;
2. search: ``resnetlab tune DATA --recipe auto --trial-time TRIAL --time-limit SEARCH`` (trial 0 is the default
   recipe's own choices for a TRIAL budget, then the default space for 9,000 images);
3. tuned: ``resnetlab train --config best.yaml --time-limit BUDGET --fill-time`` (the best trial's settings, the
   same BUDGET as the default), then its best.pt on test/;
4. with ``--long-default``: the default recipe given the whole time the tuned row used (SEARCH + BUDGET).

Prints one table: test accuracy of each row, its validation accuracy, epochs and wall time, and the difference to
the default in points and McNemar's exact test against the default on the same test images (how many images each
run gets right that the other gets wrong, and the chance of a difference that large by luck); writes every figure
to WORKDIR/tune.json.

    python benchmarks/tune.py                                   # ~65 min on 2 CPU cores: 10m + 40m + 10m + evals
    python benchmarks/tune.py --train-images 600 --test-images 300 --trial-time 10s --search-time 60s \\
        --budget 15s                                             # a smoke test: ~2-3 minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_CACHE, load_average, print_table  # noqa: E402


def make_subset(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    """ROOT/{train,val,test}/<class>/NNNNN.png: a tenth of the training draw goes to val/; made once."""
    from resnetlab.data.builtin import load_builtin

    record = {"train": train_images, "test": test_images, "seed": seed}
    done = root / ".subset.json"
    if done.is_file() and json.loads(done.read_text()) == record:
        return root
    shutil.rmtree(root, ignore_errors=True)
    source = load_builtin("fashion-mnist")
    rng = np.random.default_rng(seed)
    for label, name in enumerate(source.classes):
        folder = name.replace("/", "-")  # "T-shirt/top" is not a folder name
        for official, count in (("train", train_images), ("test", test_images)):
            data = source.splits[official]
            picked = np.sort(rng.choice(np.flatnonzero(data.labels == label), count // len(source.classes),
                                        replace=False))
            for i, index in enumerate(picked):
                split = official if official == "test" or i % 10 else "val"
                target = root / split / folder
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(data.images[index][..., 0]).save(target / f"{index:05d}.png")
    done.write_text(json.dumps(record))
    return root


def call(command: list[str], log: Path) -> tuple[int, float]:
    """Run a resnetlab command with its output in ``log``; (exit status, wall seconds)."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        status = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if status:
        tail = log.read_text(encoding="utf-8").splitlines()[-10:]
        print(f"  {' '.join(command[3:5])} exited with {status} (log {log}):\n    " + "\n    ".join(tail))
    return status, time.perf_counter() - started


def train_and_test(name: str, data: Path, extra: list[str], args) -> dict:  # noqa: ANN001
    """Train (``extra``: the recipe or config and the budget), then score best.pt on test/."""
    python = [sys.executable, "-m", "resnetlab"]
    run_dir = args.work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    status, wall = call([*python, "train", str(data), *extra, "--out", str(run_dir), "--no-progress", "--seed",
                         str(args.seed), "--cache-dir", str(args.work / "cache")], args.work / f"{name}.log")
    if status:
        return {"name": name, "failed": f"train exit {status}"}
    history = (run_dir / "metrics.csv").read_text().strip().splitlines()
    columns = history[0].split(",")
    val = max(float(line.split(",")[columns.index("val_acc")]) for line in history[1:])
    status, _ = call([*python, "evaluate", str(run_dir / "best.pt"), str(data), "--split", "test", "--out",
                      str(run_dir / "test"), "--no-progress"], args.work / f"{name}-test.log")
    if status:
        return {"name": name, "failed": f"evaluate exit {status}"}
    test = json.loads((run_dir / "test" / "metrics.json").read_text())["accuracy"]
    row = {"name": name, "test_acc": float(test), "val_acc": val, "epochs": len(history) - 1, "wall_s": wall}
    print(f"  {name}: test accuracy {row['test_acc']:.4f}, val {val:.4f}, {row['epochs']} epochs, {wall:.0f}s",
          flush=True)
    return row


def paired_test(reference: Path, other: Path) -> tuple[int, int, float]:
    """McNemar's exact test of two runs on the same test images, from their test/misclassified.csv: (images only
    the reference got wrong, images only the other got wrong, two-sided p of the difference being chance)."""
    from scipy.stats import binomtest

    def wrong(run: Path) -> set[str]:
        with open(run / "test" / "misclassified.csv", encoding="utf-8", newline="") as handle:
            return {row["path"] for row in csv.DictReader(handle)}

    first, second = wrong(reference), wrong(other)
    only_first, only_second = len(first - second), len(second - first)
    p = binomtest(only_second, only_first + only_second, 0.5).pvalue if only_first + only_second else 1.0
    return only_first, only_second, float(p)


def search(data: Path, args) -> tuple[dict, Path]:  # noqa: ANN001
    out = args.work / "study"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "resnetlab", "tune", str(data), "--recipe", "auto", "--trial-time",
               args.trial_time, "--time-limit", args.search_time, "--out", str(out), "--workers", str(args.workers),
               "--no-progress", "--seed", str(args.seed), "--cache-dir", str(args.work / "cache")]
    status, wall = call(command, args.work / "search.log")
    best = out / "best.yaml"
    if status or not best.is_file():
        raise SystemExit(f"the search failed (exit {status}); log {args.work / 'search.log'}")
    states = [line.split(",")[1] for line in (out / "trials.csv").read_text().strip().splitlines()[1:]]
    row = {"name": "search", "wall_s": wall, "trials": len(states),
           **{state.lower(): states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")}}
    print(f"  search: {row['trials']} trials ({row['complete']} complete, {row['pruned']} pruned, {row['fail']} "
          f"failed) in {wall:.0f}s; {best.read_text().splitlines()[1]}", flush=True)
    return row, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=10_000, help="official training images drawn (a tenth "
                        "in val/)")
    parser.add_argument("--test-images", type=int, default=10_000, help="official test images drawn")
    parser.add_argument("--budget", default="10m", help="training time of the default and the tuned run")
    parser.add_argument("--trial-time", default="2m", help="each trial's time limit")
    parser.add_argument("--search-time", default="40m", help="the search's time limit")
    parser.add_argument("--workers", type=int, default=1, help="tune's worker processes")
    parser.add_argument("--long-default", action="store_true", help="also the default recipe given the search's "
                        "time plus the budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=BENCH_CACHE / "tune",
                        help="data, runs, logs (default: %(default)s)")
    args = parser.parse_args()
    from resnetlab.config import parse_duration

    args.work.mkdir(parents=True, exist_ok=True)
    data = make_subset(args.work / f"fmnist-{args.train_images}-{args.test_images}-seed{args.seed}",
                       args.train_images, args.test_images, args.seed)
    print(f"data {data}; budget {args.budget}, trials of {args.trial_time} for {args.search_time}; load average "
          f"{load_average()}", flush=True)
    rows = [train_and_test("default", data, ["--time-limit", args.budget], args)]
    searched, best = search(data, args)
    rows.append(train_and_test("tuned", data, ["--config", str(best), "--time-limit", args.budget, "--fill-time"],
                               args))
    if args.long_default:
        total = f"{parse_duration(args.search_time) + parse_duration(args.budget):.0f}s"
        rows.append(train_and_test("default-long", data, ["--time-limit", total], args))
    reference = rows[0].get("test_acc")
    for row in rows[1:]:
        if reference is not None and "failed" not in row:
            row["fixed"], row["broken"], row["p"] = paired_test(args.work / "runs" / "default",
                                                                args.work / "runs" / row["name"])
    table = [[r["name"], f"{r['test_acc']:.4f}", f"{r['val_acc']:.4f}", r["epochs"], f"{r['wall_s']:.0f}",
              f"{100 * (r['test_acc'] - reference):+.2f}" if reference is not None else "n/a",
              f"+{r['fixed']} / -{r['broken']}, p {r['p']:.3f}" if "p" in r else ""]
             if "failed" not in r else [r["name"], r["failed"], "", "", "", "", ""] for r in rows]
    print()
    print_table(["run", "test acc", "val acc", "epochs", "wall s", "vs default (points)",
                 "vs default: images fixed / broken, McNemar p"], table,
                title=f"Fashion-MNIST {args.train_images} images; search: {searched['trials']} trials in "
                      f"{searched['wall_s']:.0f}s")
    (args.work / "tune.json").write_text(json.dumps({"rows": rows, "search": searched, "args": {
        k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
