"""The evaluate verb: a checkpoint on a split -> metrics.json, confusion matrix (CSV + PNG), misclassified.csv.

    metrics = evaluate("runs/x/best.pt", "photos/", split="test", out="runs/x/test")
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model, read_checkpoint
from .data.cache import decode_split
from .data.loaders import Batches
from .data.sources import DataError, DataSource, SplitData, open_data
from .engine import amp_dtype_for, resolve_device, run_epoch
from .metrics import classification_metrics
from .models import TTAModel
from .plots import plot_confusion_matrix


def select_split(source: DataSource, split: str) -> tuple[str, list[str]]:
    """The split to use and notes; 'val' falls back to 'test' when that is what validated the run."""
    notes = []
    if split not in source.splits:
        if split == "val" and "test" in source.splits:
            notes.append("no val split in the data: using test, as training did for validation")
            return "test", notes
        raise DataError(f"split '{split}' is not in the data (available: {', '.join(source.splits)})")
    return split, notes


def relabel(split: SplitData, data_classes: list[str], model_classes: list[str], where: str) -> SplitData:
    """Map the data's class indices onto the model's, by name; unknown classes are an error."""
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise DataError(f"{where} has class(es) the model was not trained on: {', '.join(unknown[:10])} "
                        f"(model classes: {', '.join(model_classes[:20])})")
    mapping = np.asarray([index[c] for c in data_classes], dtype=np.int64)
    return SplitData(split.name, mapping[split.labels], split.paths, split.images, split.origins)


def evaluate(checkpoint: str | Path, data: str, *, split: str = "val", out: str | Path | None = None,
             batch_size: int = 256, device: str = "auto", workers: int | None = None, data_root: str | None = None,
             arch: str | None = None, classes: list[str] | None = None, img_size: int | None = None,
             cache_dir: str | None = None, amp: str = "auto", tta: str = "none", progress: bool = True) -> dict:
    """Metrics of ``checkpoint`` on ``split`` of ``data``; files are written to ``out``."""
    torch_device = resolve_device(device)
    payload = read_checkpoint(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
    model, meta = load_model(checkpoint, device=torch_device, arch=arch, classes=classes, img_size=img_size,
                             checkpoint=payload)
    saved = (payload or {}).get("config") or {}
    # the same split as training saw: its val fraction and seed come from the checkpoint
    source = open_data(data, val_split=saved.get("val_split", 0.1), seed=saved.get("seed", 0),
                       data_root=data_root or saved.get("data_root"))
    split_name, notes = select_split(source, split)
    for note in notes:
        print(note, flush=True)
    chosen = relabel(source.splits[split_name], source.classes, meta.classes, f"{data} ({split_name})")
    decoded = decode_split(chosen, meta.img_size, cache_dir=cache_dir, workers=workers, progress=progress)
    if len(decoded) == 0:
        raise DataError(f"no readable images in the {split_name} split of {data}")
    batches = Batches(decoded.images, decoded.labels, batch_size=batch_size, device=torch_device,
                      mean=meta.mean, std=meta.std, channels_last=True)
    network = TTAModel(model.to(memory_format=torch.channels_last), tta)
    result = run_epoch(network, batches.epoch(0), criterion=nn.CrossEntropyLoss(),
                       device=torch_device, amp_dtype=amp_dtype_for(amp, torch_device), total_steps=len(batches),
                       desc=f"evaluate {split_name}", progress=progress, keep_outputs=True)
    # batches are in order, so outputs line up with decoded.kept
    metrics = classification_metrics(result.logits, result.targets, meta.classes)
    metrics.update({"checkpoint": str(checkpoint), "data": str(data), "split": split_name, "tta": tta,
                    "skipped": decoded.skipped, "images_per_s": result.images_per_second})

    out_dir = Path(out) if out else Path(checkpoint).parent / f"eval-{split_name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(metrics.pop("confusion_matrix"))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    with open(out_dir / "confusion_matrix.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *meta.classes])
        for name, row in zip(meta.classes, matrix):
            writer.writerow([name, *row.tolist()])
    plot_confusion_matrix(matrix, meta.classes, out_dir / "confusion_matrix.png")
    _write_misclassified(out_dir / "misclassified.csv", result.logits, result.targets, chosen, decoded.kept,
                         meta.classes)
    _print_summary(metrics, meta.classes, out_dir)
    return metrics


def _write_misclassified(path: Path, logits: torch.Tensor, targets: torch.Tensor, split: SplitData,
                         kept: np.ndarray, classes: list[str]) -> None:
    probabilities = logits.softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != targets).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)]  # most confident mistakes first
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for i in wrong.tolist():
            writer.writerow([split.describe(int(kept[i])), classes[targets[i]], classes[predicted[i]],
                             f"{confidence[i]:.4f}"])


def _print_summary(metrics: dict, classes: list[str], out_dir: Path) -> None:
    line = f"{metrics['split']}: {metrics['images']} images, accuracy {metrics['accuracy']:.4f}"
    if "top5_accuracy" in metrics:
        line += f", top-5 {metrics['top5_accuracy']:.4f}"
    print(line + f", loss {metrics['loss']:.4f}, macro F1 {metrics['macro_avg']['f1']:.4f}", flush=True)
    width = max(len(c) for c in classes)
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for name in classes:
        m = metrics["per_class"][name]
        print(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    if metrics["skipped"]:
        print(f"skipped {len(metrics['skipped'])} unreadable image(s) (listed in metrics.json)")
    print(f"wrote {out_dir}/metrics.json, confusion_matrix.csv, confusion_matrix.png, misclassified.csv", flush=True)
