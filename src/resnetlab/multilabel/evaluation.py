"""Evaluating a multi-label model on a decoded split: metrics.json (mAP macro and micro, F1 and exact match at the
model's thresholds, the per-label table), per_label.csv, label_errors.csv, pr_curves.png, cooccurrence.png,
predictions.png and the Grad-CAM galleries false_positives.png and false_negatives.png. ``evaluation.py``
dispatches here for a model whose task is "multilabel".

    metrics = write_multilabel_evaluation(model, meta, decoded, split, out_dir, Compute.of("cpu"))
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelMeta
from ..data.cache import DecodedSplit
from ..data.splits import SplitData
from ..device import Compute
from ..fileio import atomic_open, write_json
from ..log import logger
from ..models import TTAModel
from ..runfiles import log_written
from .figures import plot_cooccurrence, plot_errors, plot_pr_curves, plot_predictions
from .metrics import label_table, ranked_errors, summary, threshold_array, to_numpy
from .thresholds import score_split

FIGURES = ("pr_curves.png", "cooccurrence.png", "predictions.png", "false_positives.png", "false_negatives.png")
FILES = ("metrics.json", "per_label.csv", "label_errors.csv", *FIGURES)
TABLE_SHOWN = 40  # labels in the printed per-label table (all of them in per_label.csv and metrics.json)
ERROR_GALLERY = 16  # (image, label) pairs per false-positive / false-negative gallery


def write_multilabel_evaluation(model: nn.Module | None, meta: ModelMeta, decoded: DecodedSplit, split: SplitData,
                                out_dir: Path, compute: Compute, *, tta: str = "none", extra: dict | None = None,
                                figures: bool = True, scorer=None) -> dict:  # noqa: ANN001 - a Classifier
    """Score ``model`` (or, without one, ``scorer``: an exported model's Classifier) and write the files."""
    split_name = (extra or {}).get("split", split.name)
    started = time.perf_counter()
    if model is None:
        size = compute.batch_size
        logits = torch.cat([scorer.logits(decoded.images[i:i + size]) for i in range(0, len(decoded), size)])
        targets = decoded.labels
    else:
        result = score_split(TTAModel(model, tta), meta, decoded, compute, desc=f"evaluate {split_name}")
        logits, targets = result.logits, result.targets
    seconds = time.perf_counter() - started
    probabilities, truth = to_numpy(logits.float().sigmoid()), to_numpy(targets).astype(np.int64)
    thresholds = threshold_array(meta.thresholds, len(meta.classes))
    table = label_table(probabilities, truth, thresholds, meta.classes)
    scores = summary(probabilities, truth, thresholds)
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())) if len(truth) else 0.0
    metrics = {"task": "multilabel", "images": int(len(truth)), "accuracy": scores["exact_match"], "loss": loss,
               **scores, "per_class": table, "thresholds": thresholds.tolist(),
               "threshold_rule": "stored in the checkpoint" if meta.thresholds is not None else "0.5 for every label",
               **(extra or {}), "split": split_name, "tta": tta, "skipped": decoded.skipped,
               "images_per_s": len(truth) / seconds if seconds > 0 else 0.0}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # an earlier run's figure must never sit beside these metrics
        (out_dir / name).unlink(missing_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    _write_table(out_dir / "per_label.csv", table)
    positives, negatives = ranked_errors(probabilities, truth, thresholds)
    _write_errors(out_dir / "label_errors.csv", positives, negatives, probabilities, truth, thresholds, split,
                  decoded.kept, meta.classes)
    if figures:
        _draw(model, meta, decoded, probabilities, truth, thresholds, (positives, negatives), out_dir)
    return metrics


def _draw(model: nn.Module | None, meta: ModelMeta, decoded: DecodedSplit, probabilities: np.ndarray,
          truth: np.ndarray, thresholds: np.ndarray, errors: tuple[np.ndarray, np.ndarray], out_dir: Path) -> None:
    """One try per figure: a figure that cannot be drawn loses neither the metrics nor the other figures."""
    classes = meta.classes
    drawings = [("pr_curves.png", lambda p: plot_pr_curves(probabilities, truth, classes, p)),
                ("cooccurrence.png", lambda p: plot_cooccurrence(truth, probabilities >= thresholds[None, :],
                                                                 classes, p)),
                ("predictions.png", lambda p: plot_predictions(p, decoded.images, probabilities, truth, thresholds,
                                                               classes))]
    if model is not None:  # Grad-CAM needs the PyTorch network's gradients
        for name, pairs, kind in (("false_positives.png", errors[0], "false positive"),
                                  ("false_negatives.png", errors[1], "false negative")):
            drawings.append((name, lambda p, pairs=pairs, kind=kind: plot_errors(
                model, meta, decoded.images, pairs, (probabilities, truth), p, kind=kind, limit=ERROR_GALLERY)))
    for name, draw in drawings:
        if len(truth) == 0:
            break
        try:
            draw(out_dir / name)
        except Exception as err:  # noqa: BLE001
            (out_dir / name).unlink(missing_ok=True)  # never half a figure
            logger.warning(f"could not draw {out_dir / name}: {type(err).__name__}: {err}")


def _write_table(path: Path, table: dict[str, dict]) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "precision", "recall", "f1", "ap", "support", "threshold"])
        for name, m in table.items():
            writer.writerow([name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                             "" if m["ap"] is None else f"{m['ap']:.4f}", m["support"], f"{m['threshold']:.4f}"])


def _write_errors(path: Path, positives: np.ndarray, negatives: np.ndarray, probabilities: np.ndarray,
                  truth: np.ndarray, thresholds: np.ndarray, split: SplitData, kept: np.ndarray,
                  classes: list[str]) -> None:
    """Every wrong (image, label) decision: false positives most confident first, then false negatives; with each
    image's true and predicted sets (at most SET_SHOWN labels each, the most probable: see _label_set)."""
    predicted = probabilities >= thresholds[None, :]
    sets: dict[int, tuple[str, str]] = {}  # per image, made once: an image has as many rows as wrong labels
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "error", "probability", "threshold", "true", "predicted"])
        for pairs, kind in ((positives, "false positive"), (negatives, "false negative")):
            for i, k in pairs.tolist():
                if i not in sets:
                    sets[i] = (_label_set(classes, truth[i] > 0, probabilities[i]),
                               _label_set(classes, predicted[i], probabilities[i]))
                writer.writerow([split.describe(int(kept[i])), classes[k], kind, f"{probabilities[i, k]:.4f}",
                                 f"{thresholds[k]:.4f}", *sets[i]])


# labels of a set written in full: each image's sets are repeated on each of its error rows, and with 1,837 labels
# and 6 images, full sets made a 31.8 MB label_errors.csv (now ~2 MB, ~200 bytes an error)
SET_SHOWN = 5


def _label_set(classes: list[str], members: np.ndarray, probabilities: np.ndarray) -> str:
    """'a|b|c' in class order; a set of more than SET_SHOWN labels as its SET_SHOWN most probable and a count,
    'a|b|...|(+1817 more)', so the file grows with the errors, not with errors x labels."""
    chosen = np.flatnonzero(members)
    if len(chosen) <= SET_SHOWN:
        return "|".join(classes[k] for k in chosen)
    top = chosen[np.argsort(-probabilities[chosen], kind="stable")[:SET_SHOWN]]
    return "|".join([classes[k] for k in top] + [f"(+{len(chosen) - SET_SHOWN} more)"])


def print_summary(metrics: dict, classes: list[str], out_dir: Path) -> None:
    """The console version of metrics.json: the scores, then the per-label table."""
    logger.info(f"{metrics['split']}: {metrics['images']} images, mAP {metrics['map_macro']:.4f} (micro "
                f"{metrics['map_micro']:.4f}), F1 macro {metrics['macro_avg']['f1']:.4f} micro "
                f"{metrics['micro_avg']['f1']:.4f}, exact match {metrics['exact_match']:.4f}, loss "
                f"{metrics['loss']:.4f} (thresholds: {metrics['threshold_rule']})")
    listed = classes[:TABLE_SHOWN]  # thousands of labels: the first rows, the rest in per_label.csv
    width = max(len(c) for c in listed + ["label"])
    rows = [f"{'label':<{width}}  precision  recall     f1     AP  support  threshold"]
    for name in listed:
        m = metrics["per_class"][name]
        ap = "   n/a" if m["ap"] is None else f"{m['ap']:6.3f}"
        rows.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f} {ap}  "
                    f"{m['support']:7d}  {m['threshold']:9.3f}")
    if len(classes) > TABLE_SHOWN:
        rows.append(f"... (+{len(classes) - TABLE_SHOWN} more labels in {out_dir / 'per_label.csv'})")
    logger.info("\n".join(rows))
    log_written(out_dir, FILES, metrics["skipped"])
