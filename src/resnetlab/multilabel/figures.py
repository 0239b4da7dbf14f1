"""Multi-label figures: precision-recall curves, the label co-occurrence view (true vs predicted), and galleries
of the most confident false positives and false negatives with the Grad-CAM map of the label in question.

    plot_pr_curves(probabilities, targets, classes, "pr_curves.png")
    plot_cooccurrence(targets, predicted, classes, "cooccurrence.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve
from torch import nn

from ..cam import compute_cams, overlay
from ..checkpoint import ModelMeta
from ..data.transforms import preprocess_batch, stats_tensor, to_rgb_array
from ..plots import image_grid, plt, save_figure

MAX_CURVES = 20  # labels drawn in pr_curves.png (the most frequent); the micro-average curve is always there


def titles(classes: list[str], rows: np.ndarray) -> list[str]:
    """'a|b' per 0/1 row ('(none)' without a label)."""
    return ["|".join(c for c, on in zip(classes, row) if on) or "(none)" for row in rows]


def plot_pr_curves(probabilities: np.ndarray, targets: np.ndarray, classes: list[str], path: str | Path) -> None:
    """One precision-recall curve per label (AP in the legend) and the micro average over every image-label pair."""
    truth = targets > 0.5
    fig, ax = plt.subplots(figsize=(7.5, 6))
    shown = [k for k in np.argsort(-truth.sum(axis=0), kind="stable") if truth[:, k].any()][:MAX_CURVES]
    for k in shown:
        precision, recall, _ = precision_recall_curve(truth[:, k], probabilities[:, k])
        ap = average_precision_score(truth[:, k], probabilities[:, k])
        ax.step(recall, precision, where="post", linewidth=1.2, label=f"{classes[k]} (AP {ap:.3f})".replace("$", r"\$"))
    if truth.any():
        precision, recall, _ = precision_recall_curve(truth.ravel(), probabilities.ravel())
        ap = average_precision_score(truth.ravel(), probabilities.ravel())
        ax.step(recall, precision, where="post", color="black", linewidth=2.2, label=f"micro average (AP {ap:.3f})")
    hidden = int((truth.any(axis=0)).sum()) - len(shown)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
           title="Precision-recall per label" + (f" ({len(shown)} most frequent; {hidden} more)" if hidden > 0 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_cooccurrence(targets: np.ndarray, predicted: np.ndarray, classes: list[str], path: str | Path) -> None:
    """Two K x K panels: true co-occurrence (images holding both labels; the diagonal counts each label) and true vs
    predicted (row: a true label, column: a predicted label; the diagonal is each label's true positives, the rest
    shows which labels are predicted beside, or instead of, a present one)."""
    truth, guess = (targets > 0.5).astype(np.int64), predicted.astype(np.int64)
    n = len(classes)
    side = min(30.0, max(4.5, 0.35 * n + 3))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    font = max(3.0, min(9.0, 300.0 / max(n, 1)))
    panels = ((axes[0], truth.T @ truth, "True co-occurrence", "true label"),
              (axes[1], truth.T @ guess, "True (row) vs predicted (column)", "predicted label"))
    names = [c.replace("$", r"\$") for c in classes]
    for ax, values, title, xlabel in panels:
        image = ax.imshow(values, cmap="Blues", interpolation="nearest")
        ax.set(title=title, xlabel=xlabel, ylabel="true label")
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if values[i, j] > values.max() / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path)


def plot_predictions(path: Path, images: torch.Tensor, probabilities: np.ndarray, targets: np.ndarray,
                     thresholds: np.ndarray, classes: list[str], count: int = 24) -> None:
    """Images spread over the split, titled 'predicted labels / true labels'; a wrong set in red."""
    chosen = np.unique(np.linspace(0, len(targets) - 1, min(count, len(targets))).round().astype(int))
    predicted = probabilities[chosen] >= thresholds[None, :]
    truth = targets[chosen] > 0.5
    names = [f"{p}\n/ {t}" for p, t in zip(titles(classes, predicted), titles(classes, truth))]
    colours = ["black" if (p == t).all() else "red" for p, t in zip(predicted, truth)]
    image_grid(list(to_rgb_array(images[torch.from_numpy(chosen)])), names, path, columns=8, title_colors=colours,
               suptitle="predicted labels / true labels; a wrong set in red")


def plot_errors(model: nn.Module, meta: ModelMeta, images: torch.Tensor, pairs: np.ndarray,
                scores: tuple[np.ndarray, np.ndarray], path: Path, *, kind: str, limit: int = 16) -> int:
    """The first ``limit`` (image, label) ``pairs`` (ranked_errors' order), each as image + the Grad-CAM map of that
    label, titled 'kind: label (p)' and the true labels; ``scores``: (probabilities, 0/1 targets), N x K each.
    Returns how many are shown (0: no file written)."""
    chosen = pairs[:limit]
    if len(chosen) == 0:
        return 0
    (probabilities, targets), classes = scores, meta.classes
    device = next(model.parameters()).device
    x = preprocess_batch(images[torch.from_numpy(chosen[:, 0])].to(device), stats_tensor(meta.mean, device),
                         stats_tensor(meta.std, device))
    cams = compute_cams(model, x, chosen[:, 1].tolist(), method="gradcam", progress=False)
    panels, names, colours = [], [], []
    truth = titles(classes, targets[chosen[:, 0]] > 0.5)
    for cam, (i, k), true in zip(cams, chosen.tolist(), truth):
        picture = to_rgb_array(images[i:i + 1])[0]
        panels += [picture, overlay(Image.fromarray(picture), cam)]
        names += [f"{classes[k]} ({probabilities[i, k]:.2f})\ntrue: {true}", f"gradcam: {classes[k]}"]
        colours += ["red", "black"]
    what = "labels predicted but absent" if kind == "false positive" else "labels present but missed"
    image_grid(panels, names, path, columns=8, title_colors=colours,
               suptitle=f"Most confident {kind}s ({what}): {len(chosen)} of {len(pairs)}; heat map: that label")
    return len(chosen)
