"""What training changes for multi-label data: one sigmoid per label with binary cross-entropy (``--balance
weights``: a per-label ``pos_weight``), label smoothing and mixup/cutmix on soft multi-hot targets, the exact-match
counter behind train_acc/val_acc, and metrics.csv's per-epoch mAP and F1.

    loss, val, probe, mixer, hits, scores = objective_parts(cfg, num_classes=5, pos_weight=None)
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn

from .metrics import DEFAULT_THRESHOLD, epoch_scores


class MultiHotLoss(nn.Module):
    """Binary cross-entropy with logits on N x K targets (0/1 or soft); ``smoothing`` eps moves every target
    towards 1/2: y * (1 - eps) + eps / 2, the two-outcome form of label smoothing."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        soft = targets.float()
        if self.smoothing:
            soft = soft * (1.0 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), soft, pos_weight=self.pos_weight)


class MultiHotMixup(Mixup):
    """timm's mixup/cutmix on the images (the same lambda draws, from numpy's RNG, which the loop seeds per step);
    the targets are the smoothed multi-hot rows mixed with the same lambda: lam * y + (1 - lam) * y.flip(0)."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:
            raise ValueError("mixup/cutmix need an even batch size")
        if self.mode == "elem":
            lam = self._mix_elem(x)
        elif self.mode == "pair":
            lam = self._mix_pair(x)
        else:
            lam = self._mix_batch(x)
        soft = target.float() * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        lam = torch.as_tensor(lam, dtype=soft.dtype, device=soft.device).reshape(-1, 1) if not isinstance(
            lam, float) else lam
        return x, soft * lam + soft.flip(0) * (1.0 - lam)


def exact_hits(logits: torch.Tensor, targets: torch.Tensor, *, cut: float = 0.0) -> torch.Tensor:
    """Images whose every label is right (logit >= ``cut``, the threshold as a logit, vs target > 1/2): what
    train_acc and val_acc count for multi-label data (the exact-match ratio)."""
    return ((logits.float() >= cut) == (targets > 0.5)).all(dim=1).sum()


def objective_parts(cfg, num_classes: int, pos_weight: torch.Tensor | None) -> tuple:  # noqa: ANN001 - TrainConfig
    """(train loss, validation loss, LR-probe loss, mixer or None, hit counter, per-epoch scores) for a
    ``training.setup.Objective``; the validation loss is plain BCE, as the multiclass one is plain cross-entropy."""
    threshold = DEFAULT_THRESHOLD if cfg.threshold is None else cfg.threshold
    hits = functools.partial(exact_hits, cut=math.log(threshold / (1.0 - threshold)))
    scores = functools.partial(epoch_scores, threshold=threshold)
    smoothed = MultiHotLoss(cfg.label_smoothing, pos_weight)
    if not (cfg.mixup or cfg.cutmix):
        return smoothed, MultiHotLoss(), smoothed, None, hits, scores
    # label smoothing moves into the mixer, as for timm's one-hot targets
    mixer = MultiHotMixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                          label_smoothing=cfg.label_smoothing, num_classes=num_classes)
    return MultiHotLoss(0.0, pos_weight), MultiHotLoss(), MultiHotLoss(), mixer, hits, scores


def label_balance(cfg, labels: torch.Tensor, device: torch.device  # noqa: ANN001 - TrainConfig
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """--balance for N x K labels: ``weights`` -> per-label pos_weight = negatives / positives (a label on 1 image
    in 10 weighs its positives 9x); ``sampler`` -> each image drawn in proportion to 1 / count of its rarest label
    (images without a label: 1 / their count)."""
    labels = labels.to(torch.float64)
    positives = labels.sum(dim=0)
    if cfg.balance in ("weights", "sqrt"):
        ratio = (len(labels) - positives) / positives.clamp_min(1)
        return (ratio.sqrt() if cfg.balance == "sqrt" else ratio).float().to(device), None
    if cfg.balance == "sampler":
        empty = labels.sum(dim=1) == 0
        rarest = torch.where(labels > 0, 1.0 / positives.clamp_min(1), torch.zeros_like(labels)).amax(dim=1)
        return None, torch.where(empty, 1.0 / max(1, int(empty.sum())), rarest)
    return None, None


def sample_titles(classes: list[str], targets: torch.Tensor) -> list[str]:
    """Gallery titles of multi-hot rows: the label names joined by '|' ('(none)' for an image without one)."""
    rows = np.asarray(targets.detach().cpu() > 0.5)
    return ["|".join(c for c, on in zip(classes, row) if on) or "(none)" for row in rows]
