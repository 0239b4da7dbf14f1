"""Fashion-MNIST test accuracy against training time: resnetlab's preset next to the plain recipe.

resnetlab trains with a shipped preset (``--recipe fast`` by default) on the built-in Fashion-MNIST; its
validation split is the official test set, so each epoch's val_acc is the test accuracy. The plain recipe
(ImageFolder on the same images written as PNG + PIL transforms + DataLoader + fp32) then trains the same
model with the same optimizer and schedule for the same wall time, measured the same way. Prints both
curves, the time each needs to reach the accuracy marks, their ratio, and writes a plot and a CSV.

Time is the sum of the epochs' wall time, training and test evaluation included; the one-off set-up
(reading the data, building the model: seconds) is printed apart.

    python benchmarks/time_to_accuracy.py                                  # fast preset, then plain
    python benchmarks/time_to_accuracy.py --recipe accurate --no-plain
    python benchmarks/time_to_accuracy.py --recipe fast --time-limit 10m --marks 0.90,0.92
    python benchmarks/time_to_accuracy.py --from-run runs/bench-tta-fast/run-fast      # plain recipe only
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import resnetlab  # noqa: E402
from common import fashion_mnist_folders, load_average, plain_loader, plain_train_step, print_table  # noqa: E402
from resnetlab.config import TrainConfig  # noqa: E402
from resnetlab.device import resolve_device  # noqa: E402
from resnetlab.models import ModelSpec, build_model  # noqa: E402
from resnetlab.settings import merge  # noqa: E402


def run_resnetlab(args) -> tuple[list[tuple[float, float]], TrainConfig, float]:
    """[(seconds, test accuracy) per epoch], the resolved settings, and the set-up seconds."""
    overrides = {"data": "fashion-mnist", "out": str(args.out / f"run-{args.recipe}"), "exist_ok": True,
                 "progress": False, "device": args.device}
    if args.time_limit:
        overrides["time_limit"] = args.time_limit
    for setting in args.set:
        key, _, value = setting.partition("=")
        overrides[key.replace("-", "_")] = yaml.safe_load(value)  # "0.5" -> 0.5, "true" -> True
    cfg = merge({**overrides, "recipe": args.recipe or "plain"})  # the settings pipeline: the recipe under these
    started = time.perf_counter()
    result = resnetlab.train(cfg)
    total = time.perf_counter() - started
    elapsed, curve = 0.0, []
    for row in result.history:
        elapsed += float(row["epoch_s"])
        curve.append((elapsed, float(row["val_acc"])))
    return curve, cfg, total - elapsed


def read_run(run_dir: Path) -> tuple[list[tuple[float, float]], TrainConfig]:
    """The curve and settings of a finished resnetlab run (its metrics.csv and config.yaml)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    elapsed, curve = 0.0, []
    for row in rows:
        elapsed += float(row["epoch_s"])
        curve.append((elapsed, float(row["val_acc"])))
    values = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return curve, TrainConfig.from_dict(values)


def run_plain(args, cfg: TrainConfig, budget_s: float) -> list[tuple[float, float]]:
    """The same model, optimizer and one-cycle schedule through the notebook recipe, for ``budget_s``."""
    device = resolve_device(args.device)
    root = fashion_mnist_folders(60000, 10000)
    torch.manual_seed(cfg.seed)
    model = build_model(ModelSpec(cfg.model, 10, stem="small" if cfg.stem in ("auto", "small") else "standard",
                                  width=cfg.width)).to(device)
    train = plain_loader(root / "train", img_size=28, batch_size=cfg.batch_size, workers=args.workers)
    test = plain_loader(root / "test", img_size=28, batch_size=512, workers=args.workers, train=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg.lr), momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    epochs = cfg.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(cfg.lr), epochs=epochs,
                                                   steps_per_epoch=len(train))
    elapsed, curve = 0.0, []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in train:
            plain_train_step(model, optimizer, x.to(device), y.to(device))
            schedule.step()
            if elapsed + time.perf_counter() - started > budget_s:
                break
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
                seen += len(y)
        elapsed += time.perf_counter() - started
        curve.append((elapsed, correct / seen))
        print(f"plain recipe: {elapsed:7.1f}s  test accuracy {correct / seen:.4f}", flush=True)
        if elapsed > budget_s:
            break
    return curve


def first_reach(curve: list[tuple[float, float]], mark: float) -> float:
    return next((t for t, acc in curve if acc >= mark), math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast", help="shipped preset or YAML file (default: fast)")
    parser.add_argument("--time-limit", default=None, help="resnetlab's --time-limit, e.g. 10m")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another train setting, e.g. --set width=0.5 (repeatable)")
    parser.add_argument("--marks", default="0.90,0.92,0.93,0.94,0.95", help="accuracies to time")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the plain recipe for the same time (default: yes)")
    parser.add_argument("--from-run", type=Path, default=None,
                        help="take resnetlab's curve from this finished Fashion-MNIST run folder instead of training")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain recipe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-time-to-accuracy"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {load_average()}", flush=True)

    if args.from_run:
        ours, cfg = read_run(args.from_run)
        print(f"resnetlab: curve of {args.from_run}")
    else:
        ours, cfg, setup_s = run_resnetlab(args)
        print(f"resnetlab ({args.recipe}): {len(ours)} epochs in {ours[-1][0]:.0f}s of training (+{setup_s:.0f}s "
              "set-up and end-of-run evaluation)")
    budget = ours[-1][0]
    plain = run_plain(args, cfg, budget) if args.plain else []

    marks = [float(m) for m in args.marks.split(",")]
    rows = []
    for mark in marks:
        a, b = first_reach(plain, mark), first_reach(ours, mark)
        ratio = a / b if math.isfinite(a) and math.isfinite(b) else math.nan
        rows.append([f"{mark:.0%}", "-" if not plain else (f"{a:.0f}" if math.isfinite(a) else f"> {budget:.0f}"),
                     f"{b:.0f}" if math.isfinite(b) else "not reached", "-" if math.isnan(ratio) else f"{ratio:.2f}x"])
    print_table(["test accuracy", "plain recipe s", "resnetlab s", "speed-up"], rows,
                title=f"\ntime to accuracy, Fashion-MNIST test set ({cfg.model} width {cfg.width:g}, "
                      f"{cfg.batch_size}/batch, recipe {args.recipe})")
    print(f"final test accuracy: resnetlab {ours[-1][1]:.4f}" + (f", plain {plain[-1][1]:.4f}" if plain else ""))
    print(f"load average after: {load_average()}")

    with open(args.out / "time_to_accuracy.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tool", "seconds", "test_accuracy"])
        writer.writerows([["resnetlab", f"{t:.1f}", f"{a:.4f}"] for t, a in ours])
        writer.writerows([["plain", f"{t:.1f}", f"{a:.4f}"] for t, a in plain])
    _plot(ours, plain, args.out / "time_to_accuracy.png", args.recipe)
    print(f"wrote {args.out / 'time_to_accuracy.png'} and {args.out / 'time_to_accuracy.csv'}")


def _plot(ours, plain, path: Path, recipe: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t / 60 for t, _ in ours], [a for _, a in ours], "o-", label=f"resnetlab ({recipe})")
    if plain:
        ax.plot([t / 60 for t, _ in plain], [a for _, a in plain], "s-", label="plain recipe")
    ax.set(xlabel="training minutes", ylabel="test accuracy", title="Fashion-MNIST: time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
