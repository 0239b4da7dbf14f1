"""What is wrong with a data set: unreadable files, leakage between splits, imbalance, empty classes.

Training runs the same inspection on the images it decodes (so it costs nothing extra) and writes it to
``data_report.json``; ``resnetlab check DATA`` prints it.

    report = inspect_data(source, {"train": decoded_train, "val": decoded_val})
    report["problems"][0]   # {"severity": "error", "split": "train", "path": ..., "reason": ...}
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..task import task_of
from .cache import DecodedSplit, decode_split
from .images import MAX_IMAGE_PIXELS, Crop, default_layout_and_crop
from .multilabel import format_statistics, label_problems, label_statistics
from .splits import DataSource

IMBALANCE_WARNING_RATIO = 3.0  # largest / smallest class count above which we warn


def empty_split_reason(source: DataSource, name: str) -> str:
    """Why the ``name`` split of ``source`` has no image and what to do (not "none of the 0 images could be read",
    issue 27): training stops with it, check lists it as an error."""
    held_out = name == "val" and any("held out" in n or "stratified split" in n for n in source.notes)
    if held_out:
        return (f"the val split of {source.location} is empty: every class has a single image, so none can be held "
                "out for validation; add images (with 2 or more per class --val-split holds some out) or give a val/ "
                "folder of class folders (a CSV: rows with split 'val')")
    return (f"the {name} split of {source.location} is empty (no images in its class folders or rows); add images to "
            "it, or leave it out and --val-split holds out a share of train")


def empty_splits(source: DataSource) -> list[str]:
    """The splits training needs (train and the validation split) that hold no image."""
    return [name for name in dict.fromkeys(("train", source.val_name))
            if name in source.splits and not len(source.splits[name])]


def inspect_data(source: DataSource, decoded: dict[str, DecodedSplit], img_size: int) -> dict:
    """A JSON-ready report: counts per split and class, and every problem with its path and reason."""
    problems: list[dict] = [{"severity": "error", "split": name, "path": "", "reason": empty_split_reason(source, name)}
                            for name in empty_splits(source)]
    for note in source.notes:
        if note.startswith("warning: "):
            problems.append({"severity": "warning", "split": "", "path": source.location,
                             "reason": note.removeprefix("warning: ")})
    for name, split in decoded.items():
        for item in split.skipped:
            problems.append({"severity": "error", "split": name, "path": item["path"],
                             "reason": f"unreadable, skipped: {item['reason']}"})
        for position in split.rotated:
            problems.append({"severity": "info", "split": name, "path": source.splits[name].describe(position),
                             "reason": "EXIF orientation tag: the rotation is applied"})
        for position, pixels in split.huge:
            problems.append({"severity": "warning", "split": name, "path": source.splits[name].describe(position),
                             "reason": f"very large image ({pixels / 1e6:.0f} MP, over PIL's "
                                       f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP warning limit): decoded, but slow and "
                                       "memory-hungry; downscale it"})
    problems += _leakage(source, decoded)
    counts = {name: _counts(source.classes, split) for name, split in decoded.items()}
    if "train" in counts:
        problems += _imbalance(counts["train"])
    extra = {}
    if task_of(source.task).multilabel:  # several labels per image: co-occurrence, labels never or always present
        extra["multilabel"] = {name: label_statistics(source.classes, split.labels.numpy())
                               for name, split in decoded.items()}
        problems += [p for name, stats in extra["multilabel"].items() for p in label_problems(name, stats)]
    return {**extra, "task": source.task, "kind": source.kind, "location": source.location, "classes": source.classes,
            "image_size": img_size,
            "counts": counts, "images": {name: len(split) for name, split in decoded.items()},
            "notes": source.notes, "problems": problems, "empty_splits": empty_splits(source),
            "skipped": [dict(item, split=name) for name, split in decoded.items() for item in split.skipped]}


def _counts(classes: list[str], split: DecodedSplit) -> dict[str, int]:
    labels = split.labels.numpy()
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def _leakage(source: DataSource, decoded: dict[str, DecodedSplit]) -> list[dict]:
    """The same file content in train and in val/test inflates the validation score."""
    train = decoded.get("train")
    if train is None or not train.digests:
        return []
    where: dict[str, int] = {}
    for digest, position in zip(train.digests, train.kept):
        where.setdefault(digest, int(position))
    problems = []
    for name, split in decoded.items():
        if name == "train":
            continue
        for digest, position in zip(split.digests, split.kept):
            if digest in where:
                problems.append({"severity": "warning", "split": name, "path": source.splits[name].describe(position),
                                 "reason": "leakage: the same image is in train as "
                                           f"{source.splits['train'].describe(where[digest])}"})
    return problems


def _imbalance(counts: dict[str, int]) -> list[dict]:
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) < 2:
        return []
    largest, smallest = max(present.values()), min(present.values())
    if largest / smallest <= IMBALANCE_WARNING_RATIO:
        return []
    ratios = ", ".join(f"{c}={n / smallest:.1f}x" for c, n in sorted(present.items(), key=lambda kv: -kv[1])[:8])
    return [{"severity": "warning", "split": "train", "path": "",
             "reason": f"class imbalance: largest/smallest = {largest / smallest:.1f} (relative to the smallest "
                       f"class: {ratios}); consider --balance weights or --balance sampler"}]


def check_data(source: DataSource, img_size: int, *, cache_dir: str | None = None, workers: int | None = None,
               progress: bool = True, near_dup_distance: int | str | None = None) -> dict:
    """Decode every split as training will without pretrained weights (filling the cache it reuses) and inspect
    it; with ``near_dup_distance`` (bits of 128, or "auto": measured on the training split) also search for
    near-duplicates across splits."""
    layout, crop = default_layout_and_crop(img_size)
    decoded = {name: decode_split(split, img_size, layout=layout if name == "train" else "square",
                                  crop=crop if name != "train" else Crop(), cache_dir=cache_dir, workers=workers,
                                  progress=progress)
               for name, split in source.splits.items()}
    report = inspect_data(source, decoded, img_size)
    if near_dup_distance is not None:
        from .duplicates import DEFAULT_DISTANCE, HASH_BITS, near_duplicates  # imagehash: only when searching

        digests = {name: dict(zip(split.kept.tolist(), split.digests)) for name, split in decoded.items()}
        found = near_duplicates(source, near_dup_distance, digests=digests, workers=workers, progress=progress)
        report["problems"] += found
        chosen = next((p["max_distance"] for p in found if "max_distance" in p),
                      DEFAULT_DISTANCE if near_dup_distance == "auto" else near_dup_distance)
        report["near_duplicates"] = {"max_distance": chosen, "hash_bits": HASH_BITS}
    return report


def format_report(report: dict, limit: int = 50) -> str:
    """Human-readable lines: counts per split and class, then problems grouped by severity."""
    kind = "labels (several per image)" if report.get("task") == "multilabel" else "classes"
    lines = [f"{report['kind']} at {report['location']}: {len(report['classes'])} {kind}, "
             f"image size {report['image_size']}px"]
    for name, counts in report["counts"].items():
        total = report["images"][name] if "multilabel" in report else sum(counts.values())
        lines.append(f"  {name}: {total} images; " + ", ".join(f"{c}={n}" for c, n in counts.items()))
    lines += format_statistics(report.get("multilabel", {}))
    grouped: dict[str, list[dict]] = defaultdict(list)
    for problem in report["problems"]:
        grouped[problem["severity"]].append(problem)
    for severity in ("error", "warning", "info"):
        items = grouped.get(severity, [])
        if not items:
            continue
        lines.append(f"{len(items)} {severity}(s):")
        for problem in items[:limit]:
            where = f"{problem['path']}: " if problem["path"] else ""
            lines.append(f"  [{problem['split'] or '-'}] {where}{problem['reason']}")
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more (see the JSON report)")
    if not report["problems"]:
        lines.append("no problems found")
    return "\n".join(lines)
