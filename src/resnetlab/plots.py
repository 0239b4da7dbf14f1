"""Figures a run writes by itself: training curves, the confusion matrix, image galleries (matplotlib, no display).

    plot_curves(history, "runs/x/curves.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .calibration import ECE_BINS, expected_calibration_error, reliability_bins  # noqa: E402
from .fileio import atomic_path  # noqa: E402


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train vs validation, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], "o-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: str | Path) -> None:
    """Counts and row-normalised (recall) panels; labels shrink and numbers disappear for many classes."""
    n = len(classes)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(40.0, max(5.0, 0.35 * n + 3))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    font = max(3.0, min(9.0, 300.0 / max(n, 1)))
    for ax, values, title, fmt in ((axes[0], matrix, "Counts", "d"), (axes[1], normalised, "Row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
        ax.set_yticks(range(n), classes, fontsize=font)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if n <= 30:
            threshold = values.max() / 2 if values.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=font,
                            color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    save_figure(fig, path)


def plot_reliability(confidence: np.ndarray, correct: np.ndarray, path: str | Path, *,
                     before: tuple[np.ndarray, np.ndarray] | None = None, temperature: float = 1.0) -> None:
    """Reliability diagram: accuracy against mean confidence per equal-width bin (the diagonal is perfect
    calibration) over a histogram of the confidences; ``before``: (confidence, correct) without the temperature."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=(3, 1))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    curves = [("before (T = 1)", before, "s--", "tab:grey")] if before is not None else []
    curves.append((f"T = {temperature:.3g}" if before is not None else "model", (confidence, correct), "o-",
                   "tab:blue"))
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for label, (conf, right), style, colour in curves:
        rows = reliability_bins(conf, right)
        ece = expected_calibration_error(conf, right)
        ax.plot([r[0] for r in rows], [r[1] for r in rows], style, color=colour, label=f"{label}: ECE {ece:.3f}")
        ax_count.hist(conf, bins=edges, histtype="step" if style == "s--" else "stepfilled", color=colour, alpha=0.6)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Reliability ({ECE_BINS} equal-width bins, {len(confidence)} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax_count.set(xlabel="confidence (top probability)", ylabel="images")
    fig.tight_layout()
    save_figure(fig, path)


def image_grid(images: Sequence[np.ndarray | Image.Image], titles: Sequence[str], path: str | Path, *,
               columns: int = 8, suptitle: str | None = None, title_colors: Sequence[str] | None = None) -> None:
    """Images (H x W x 3 uint8 arrays or PIL images) in a grid, one short title each; shared by every gallery
    figure (samples, predictions, misclassified, explain grid) so they look alike."""
    count = len(images)
    if count == 0:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    # 2.4 in per row leaves room for a two-line title above each image
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.4 * rows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        ax.imshow(np.asarray(images[i]))
        color = title_colors[i] if title_colors is not None else "black"
        ax.set_title(_literal(titles[i]), fontsize=7, color=color)
    if suptitle:
        fig.suptitle(_literal(suptitle), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _literal(text: str) -> str:
    """Text shown as written: a '$' in a class name or path would start matplotlib's mathtext (and a stray
    backslash between two of them fails the whole figure)."""
    return text.replace("$", r"\$")


def save_figure(fig, path: str | Path) -> None:  # noqa: ANN001 - a matplotlib Figure
    """PNG written atomically: a full disk leaves the previous figure (or none), never a 0-byte file."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
