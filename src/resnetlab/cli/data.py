"""The verbs that read a data set and train on it: train, lr-find, check."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import TrainConfig
from ..settings import merge
from .flags import decode_flags
from .train_flags import add_train_flags


def train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a classifier on a folder, CSV or built-in data set",
                           description="Train a ResNet. Writes runs/NAME/: config.yaml, metrics.csv, best.pt, "
                                       "last.pt, curves.png, data_report.json (and split.csv when split for you), "
                                       "samples.png (a training batch after augmentation); when the run "
                                       "finishes (last epoch, --time-limit or --early-stop) best.pt is "
                                       "evaluated on the validation split: metrics.json, "
                                       "confusion_matrix.csv/.png, misclassified.csv, predictions.png, "
                                       "misclassified.png (Grad-CAM), and report.html shows it all. A run "
                                       "stopped by Ctrl-C or --stop-after-steps writes these when resumed to "
                                       "its end.")
    add_train_flags(train)


def train_run(args: argparse.Namespace) -> int:
    from ..training import train  # every verb's module is imported when it runs: --help never loads torch

    result = train(args.config, **train_flags(args))
    return 128 + result.stop_signal if result.stopped == "signal" and result.stop_signal else 0


def train_flags(args: argparse.Namespace) -> dict:
    """The settings given on the command line (absent flags are not in ``args``), --recipe included."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet", "verbose")}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Flags over --config over --recipe (auto when none) over the defaults: settings.merge, as for
    ``resnetlab.train``. Auto chooses every setting not given once it has seen the data (training/settle.py)."""
    return merge(train_flags(args), yaml_path=args.config)


def lr_find_parser(sub) -> None:
    finder = sub.add_parser("lr-find", help="learning-rate range test: plot loss against LR, suggest a value",
                            description="Trains a copy of the model for a few hundred steps while the learning "
                                        "rate rises from 1e-6 to 10; writes lr_find.png and lr_find.csv to --out "
                                        "(default runs/lr-find) and prints the suggested --lr. Takes the same "
                                        "options as train.")
    add_train_flags(finder)


def lr_find_run(args: argparse.Namespace) -> int:
    from ..training.lr_find import find_lr

    config = train_config(args)
    find_lr(config, Path(config.out or "runs/lr-find"))
    return 0


def check_parser(sub) -> None:
    check = sub.add_parser("check", help="report problems in a data set before training",
                           description="Decodes every image once (filling the cache training reuses) and lists "
                                       "per-class counts and every problem with its path and reason: unreadable, "
                                       "truncated or non-image files, decompression bombs, EXIF rotation, the same "
                                       "image in train and val/test, empty class folders, class imbalance, and "
                                       "near-duplicates across splits (resized, re-encoded, slightly cropped or "
                                       "grey copies, found by perceptual hash). Exit code 1 when there are "
                                       "unreadable files or the data is unusable, 2 for a usage error.")
    check.add_argument("data", help="image folder, CSV or built-in name")
    check.add_argument("--img-size", type=int, default=None, help="decode size (default: what train would use)")
    check.add_argument("--val-split", type=float, default=0.1, help="as for train (default: 0.1)")
    check.add_argument("--seed", type=int, default=0, help="as for train (default: 0)")
    check.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    check.add_argument("--cache-dir", default=None, help="as for train: folder for decoded-image caches (default: "
                       "$RESNETLAB_CACHE or ~/.cache/resnetlab)")
    check.add_argument("--json", default=None, help="also write the full report to this JSON file")
    check.add_argument("--follow-links", action="store_true", help="as for train: follow folder links out of DATA")
    check.add_argument("--task", default="auto", choices=("auto", "multiclass", "multilabel"),
                       help="as for train: multilabel (a CSV with a 'labels' column or 0/1 columns) adds per-label "
                            "counts, label co-occurrence and labels that never or always occur (default: auto)")
    check.add_argument("--label-sep", default="|", help="as for train: the separator in 'labels' cells (default: |)")
    check.add_argument("--near-dup-distance", type=_hash_bits, default=None, metavar="BITS",
                       help="report two images in different splits (train/val, train/test, val/test) as "
                            "near-duplicates when their 128-bit perceptual hashes (pHash + dHash) differ in at most "
                            "BITS bits (0-128; default: 28, which finds resized, JPEG re-encoded, grey, 5%% centre-"
                            "cropped and a-few-pixels-cut copies while distinct photos measured 34 or more apart; "
                            "less where the training split's distinct pictures come closer: 6 under the distance "
                            "within which 5%% of them have a neighbour, and the report says so)")
    check.add_argument("--no-near-dups", action="store_true",
                       help="skip the near-duplicate search (it reads and hashes every image a second time)")
    decode_flags(check)


def _hash_bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 128:
        raise argparse.ArgumentTypeError(f"expected a whole number of bits from 0 to 128, got '{text}'")
    return value


def check_run(args: argparse.Namespace) -> int:
    from ..data.check import check_data, format_report
    from ..data.sources import default_img_size, open_data
    from ..fileio import write_json
    from ..log import progress_enabled

    source = open_data(args.data, val_split=args.val_split, seed=args.seed, data_root=args.data_root,
                       follow_links=args.follow_links, task=args.task, label_sep=args.label_sep,
                       cache_dir=args.cache_dir)
    size = args.img_size or default_img_size(source)
    distance = "auto" if args.near_dup_distance is None else args.near_dup_distance
    report = check_data(source, size, cache_dir=args.cache_dir, workers=args.workers,
                        progress=progress_enabled(args.progress),
                        near_dup_distance=None if args.no_near_dups else distance)
    print(format_report(report))  # the report is the command's output (stdout), not a log message
    if args.json:
        write_json(Path(args.json), report)
    return 1 if report["skipped"] or report["empty_splits"] else 0  # training would skip files, or stop
