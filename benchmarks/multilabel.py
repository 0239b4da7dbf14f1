"""Multi-label Fashion-MNIST mosaics: resnetlab against a plain BCE notebook recipe, same network, same time.

The script makes its own data: 56 x 56 grey mosaics of 2 x 2 cells, each cell a Fashion-MNIST garment (28 px)
or empty; an image's labels are the classes present (0-4 of 10; an all-empty mosaic has none). Training
mosaics come from the official training images (a quarter of them held out as 'val'), test mosaics from the
official test images. Written once as PNG files + labels.csv (path,labels,split) under the benchmark cache.

resnetlab trains on labels.csv with the fast preset's settings (half-width ResNet-18, SGD one-cycle, flips and
padded crops, EMA, label smoothing on multi-hot targets) within --time-limit, picks best.pt by validation mAP
and per-label thresholds on the val split, then evaluates on the test mosaics. The plain recipe is what a
notebook does: a PIL Dataset over the CSV + torchvision transforms + DataLoader workers + fp32 +
BCEWithLogitsLoss on the same network and optimizer, for the same wall time (its learning rate follows a cosine
over that time, so it ends annealed however many epochs it manages), thresholds fixed at 0.5.
Both are scored on the test mosaics: mAP (macro, micro: threshold-free), F1 micro and exact match at each one's
thresholds. Prints one table with the ratios.

    python benchmarks/multilabel.py --train 400 --test 200 --time-limit 20s --stem standard   # ~1 minute (smoke)
    python benchmarks/multilabel.py --train 20000 --test 4000 --time-limit 10m               # ~25 min, 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import resnetlab  # noqa: E402
from common import BENCH_CACHE, load_average, print_table, seed_everything  # noqa: E402
from resnetlab.config import TrainConfig  # noqa: E402
from resnetlab.device import resolve_device  # noqa: E402
from resnetlab.evaluation import evaluate  # noqa: E402
from resnetlab.models import ModelSpec, build_model  # noqa: E402
from resnetlab.multilabel.metrics import summary, threshold_array  # noqa: E402
from resnetlab.settings import merge  # noqa: E402

EMPTY = 0.35  # probability that a mosaic cell holds no garment
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as resnetlab's default --norm


def mosaics(train: int, test: int, seed: int = 0, data_root: str | None = None) -> Path:
    """labels.csv of ``train`` training (3/4 'train', 1/4 'val') and ``test`` test mosaics; written once."""
    from resnetlab.data.builtin import load_builtin

    root = BENCH_CACHE / f"fmnist-mosaics-{train}-{test}-{seed}"
    table = root / "labels.csv"
    if (root / ".complete").is_file():
        return table
    source = load_builtin("fashion-mnist", data_root=data_root)
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in (("train", train), ("test", test)):
        cells = source.splits[split]
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            canvas, present = np.zeros((56, 56), dtype=np.uint8), set()
            for cell in range(4):
                if rng.random() < EMPTY:
                    continue
                j = int(rng.integers(len(cells)))
                row, column = divmod(cell, 2)
                canvas[row * 28:(row + 1) * 28, column * 28:(column + 1) * 28] = cells.images[j][..., 0]
                present.add(source.classes[int(cells.labels[j])])
            name = f"{split}/{i:05d}.png"
            Image.fromarray(canvas, mode="L").save(root / name)
            kind = "test" if split == "test" else ("val" if i % 4 == 0 else "train")
            rows.append([name, "|".join(sorted(present)), kind])
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    (root / ".complete").write_text("ok")
    return table


def run_resnetlab(table: Path, args) -> tuple[dict, TrainConfig, float, int]:
    """Test metrics, the resolved settings, training seconds (the epochs' wall time) and epochs."""
    overrides = {"data": str(table), "out": str(args.out / "resnetlab"), "exist_ok": True, "progress": False,
                 "device": args.device, "time_limit": args.time_limit, "fill_time": True, "img_size": 56,
                 "stem": args.stem,
                 "workers": args.workers}
    cfg = merge({**overrides, "recipe": "fast"})  # the settings pipeline: the preset under these
    result = resnetlab.train(cfg)
    seconds = sum(float(row["epoch_s"]) for row in result.history)
    metrics = evaluate(result.best_checkpoint, str(table), split="test", out=args.out / "resnetlab" / "test",
                       device=args.device, workers=args.workers, progress=False)
    return metrics, cfg, seconds, len(result.history)


class MosaicRows(torch.utils.data.Dataset):
    """The notebook's Dataset: CSV rows of one split, PIL + transforms, a multi-hot float target."""

    def __init__(self, table: Path, split: str, classes: list[str], transform):  # noqa: ANN001
        from torchvision import transforms as T

        with open(table, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == split]
        self.paths = [table.parent / r["path"] for r in rows]
        self.targets = torch.zeros(len(rows), len(classes))
        for i, r in enumerate(rows):
            for name in filter(None, r["labels"].split("|")):
                self.targets[i, classes.index(name)] = 1.0
        self.transform = T.Compose([T.Grayscale(3), *transform, T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.transform(Image.open(self.paths[i])), self.targets[i]


def run_plain(table: Path, args, cfg: TrainConfig, classes: list[str], budget_s: float) -> tuple[dict, float, int]:
    """The same network and SGD through the notebook recipe for ``budget_s`` seconds; test metrics, seconds,
    epochs started."""
    from torchvision import transforms as T

    device = resolve_device(args.device)
    seed_everything(cfg.seed)
    stem = "small" if args.stem in ("auto", "small") else "standard"
    model = build_model(ModelSpec(cfg.model, len(classes), stem=stem, width=cfg.width)).to(device)
    train = torch.utils.data.DataLoader(
        MosaicRows(table, "train", classes, [T.RandomHorizontalFlip(), T.RandomCrop(56, padding=7)]),
        batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=args.workers, persistent_workers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg.lr), momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started, epochs, done = time.perf_counter(), 0, False
    while not done:
        epochs += 1
        model.train()
        for x, y in train:
            elapsed = time.perf_counter() - started
            if elapsed > budget_s:
                done = True
                break
            for group in optimizer.param_groups:  # cosine over the time budget
                group["lr"] = float(cfg.lr) * 0.5 * (1 + math.cos(math.pi * elapsed / budget_s))
            loss = loss_fn(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"plain recipe: epoch {epochs}, {time.perf_counter() - started:.0f}s, loss {float(loss.detach()):.4f}",
              flush=True)
    seconds = time.perf_counter() - started
    test = torch.utils.data.DataLoader(MosaicRows(table, "test", classes, []), batch_size=256,
                                       num_workers=args.workers)
    model.eval()
    with torch.no_grad():
        outputs = [(model(x.to(device)).float().sigmoid().cpu(), y) for x, y in test]
    probabilities, targets = torch.cat([o[0] for o in outputs]).numpy(), torch.cat([o[1] for o in outputs]).numpy()
    return summary(probabilities, targets, threshold_array(None, len(classes))), seconds, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=20000, help="training mosaics (1/4 of them val; default 20000)")
    parser.add_argument("--test", type=int, default=4000, help="test mosaics (default 4000)")
    parser.add_argument("--time-limit", default="10m", help="training time of each recipe (default 10m)")
    parser.add_argument("--stem", default="auto", choices=("auto", "small", "standard"),
                        help="as train's --stem; auto = small at 56 px (default auto)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes / DataLoader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST files (default: Debian's location)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-multilabel"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {load_average()}", flush=True)
    started = time.perf_counter()
    table = mosaics(args.train, args.test, data_root=args.data_root)
    print(f"mosaics: {table} ({time.perf_counter() - started:.0f}s)", flush=True)

    ours, cfg, our_s, our_epochs = run_resnetlab(table, args)
    classes = list(ours["per_class"])
    plain, plain_s, plain_epochs = run_plain(table, args, cfg, classes, our_s)  # the time resnetlab's epochs took

    def row(name: str, epochs: int, seconds: float, m: dict, rule: str) -> list:
        return [name, epochs, f"{seconds:.0f}", f"{m['map_macro']:.4f}", f"{m['map_micro']:.4f}",
                f"{m['micro_avg']['f1']:.4f}", f"{m['exact_match']:.4f}", rule]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a (plain: 0)"

    rows = [row("resnetlab", our_epochs, our_s, ours, "per-label F1-optimal (val)"),
            row("plain BCE", plain_epochs, plain_s, plain, "0.5"),
            ["ratio", "", ratio(our_s, plain_s), ratio(ours["map_macro"], plain["map_macro"]),
             ratio(ours["map_micro"], plain["map_micro"]), ratio(ours["micro_avg"]["f1"], plain["micro_avg"]["f1"]),
             ratio(ours["exact_match"], plain["exact_match"]), ""]]
    print_table(["recipe", "epochs", "train s", "test mAP", "mAP micro", "F1 micro", "exact match", "thresholds"],
                rows, title=f"\nmulti-label Fashion-MNIST mosaics: {args.train} train / {args.test} test, 56 px, "
                            f"{cfg.model} width {cfg.width:g}, {args.time_limit} each (ratio: resnetlab / plain)")
    print(f"load average after: {load_average()}; total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
