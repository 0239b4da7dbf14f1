"""Multi-label metrics from probabilities (N x K, sigmoid outputs) and multi-hot targets (N x K of 0/1): average
precision (macro and micro, scikit-learn), precision/recall/F1 at per-label thresholds, exact-match ratio, the
F1-optimal thresholds, and the most confident false positives and false negatives.

    scores = summary(probabilities, targets, thresholds)        # {"map_macro", "map_micro", "f1_macro", ...}
    thresholds = choose_thresholds(probabilities, targets)       # one per label, F1-optimal
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

DEFAULT_THRESHOLD = 0.5  # a label is predicted when its probability is at least its threshold


def to_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def threshold_array(thresholds: list[float] | None, count: int, fixed: float | None = None) -> np.ndarray:
    """The thresholds in use: the stored per-label ones, else ``fixed`` (--threshold), else 0.5 for every label."""
    if thresholds is not None:
        return np.asarray(thresholds, dtype=np.float64)
    return np.full(count, DEFAULT_THRESHOLD if fixed is None else fixed, dtype=np.float64)


def average_precisions(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per label (K); NaN for a label without a positive image (its AP is undefined)."""
    truth = targets > 0.5
    return np.asarray([average_precision_score(truth[:, k], probabilities[:, k]) if truth[:, k].any() else math.nan
                       for k in range(truth.shape[1])])


def mean_average_precision(probabilities: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(macro mAP over the labels with positives, micro AP over every image-label pair); 0 without positives."""
    per_label = average_precisions(probabilities, targets)
    truth = targets.ravel() > 0.5
    macro = float(np.nanmean(per_label)) if not np.isnan(per_label).all() else 0.0
    micro = float(average_precision_score(truth, probabilities.ravel())) if truth.any() else 0.0
    return macro, micro


def counts(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per label (K each)."""
    truth = targets > 0.5
    return ((predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0))


def _ratio(top: np.ndarray | float, bottom: np.ndarray | float) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros_like(np.asarray(top, dtype=np.float64)), where=np.asarray(bottom) > 0)


def summary(probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    """mAP (macro, micro), precision/recall/F1 (macro over labels, micro over pairs) at ``thresholds``, and the
    exact-match ratio (images whose every label is right)."""
    predicted = probabilities >= thresholds[None, :]
    tp, fp, fn = counts(predicted, targets)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    micro_p, micro_r = float(_ratio(tp.sum(), tp.sum() + fp.sum())), float(_ratio(tp.sum(), tp.sum() + fn.sum()))
    macro_ap, micro_ap = mean_average_precision(probabilities, targets)
    exact = float((predicted == (targets > 0.5)).all(axis=1).mean()) if len(targets) else 0.0
    return {"map_macro": macro_ap, "map_micro": micro_ap, "exact_match": exact,
            "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
            "micro_avg": {"precision": micro_p, "recall": micro_r,
                          "f1": float(_ratio(2 * micro_p * micro_r, micro_p + micro_r))}}


def epoch_scores(logits: torch.Tensor, targets: torch.Tensor, *, threshold: float | None = None) -> dict[str, float]:
    """metrics.csv's multi-label validation columns: mAP macro (val_map) and micro, F1 macro (val_f1) and micro at
    the threshold in use during training (--threshold, else 0.5; per-label thresholds are chosen after training)."""
    probabilities, truth = to_numpy(logits.float().sigmoid()), to_numpy(targets)
    scores = summary(probabilities, truth, threshold_array(None, truth.shape[1], threshold))
    return {"val_map": scores["map_macro"], "val_map_micro": scores["map_micro"],
            "val_f1": scores["macro_avg"]["f1"], "val_f1_micro": scores["micro_avg"]["f1"]}


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray, fixed: float | None = None) -> list[float]:
    """One threshold per label: ``fixed`` for all, else one that maximises the label's F1 on these images (the
    lowest such cut on ties), placed halfway between the probability it keeps and the next lower one: the same
    decisions on these images, and no image sits on the threshold, where a 1e-7 runtime difference (ONNX) would
    flip it. 0.5 for a label with no positive image (nothing to fit)."""
    count = targets.shape[1]
    if fixed is not None:
        return [float(fixed)] * count
    chosen = []
    for k in range(count):
        truth = targets[:, k] > 0.5
        if not truth.any():
            chosen.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(truth, probabilities[:, k])
        f1 = _ratio(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1])  # one per cut
        best = int(np.argmax(f1))
        chosen.append(float((cuts[best] + (cuts[best - 1] if best else 0.0)) / 2))
    return chosen


def label_table(probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                classes: list[str]) -> dict[str, dict]:
    """Per label: precision, recall, F1 at its threshold, AP (None when it has no positive image), support."""
    tp, fp, fn = counts(probabilities >= thresholds[None, :], targets)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    ap = average_precisions(probabilities, targets)
    return {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "ap": None if math.isnan(ap[k]) else float(ap[k]), "support": int(tp[k] + fn[k]),
                   "threshold": float(thresholds[k])} for k, name in enumerate(classes)}


def ranked_errors(probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, false negatives) as M x 2 arrays of (image, label): false positives most confident first
    (highest probability), false negatives most confidently missed first (lowest); ties keep the split's order."""
    predicted, truth = probabilities >= thresholds[None, :], targets > 0.5
    found = []
    for wrong, sign in ((predicted & ~truth, -1.0), (~predicted & truth, 1.0)):
        pairs = np.argwhere(wrong)
        order = np.argsort(sign * probabilities[pairs[:, 0], pairs[:, 1]], kind="stable") if len(pairs) else []
        found.append(pairs[order].reshape(-1, 2))
    return found[0], found[1]
