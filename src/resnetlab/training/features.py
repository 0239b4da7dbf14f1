"""Frozen features, computed once: while the backbone is frozen (--freeze-backbone, until --unfreeze-at) its
pooled features do not change, so each image's are computed once (per view) and the head trains on them.

A frozen backbone runs with its BatchNorm statistics fixed (models.train_mode), so a batch's features do not depend
on the batch they are in: the head gets the same inputs, in the same order and batches, as in the plain frozen
loop, and the dropout before it (timm's drop_rate, the mlp head's own) still runs per step. With --aug none the
head weights equal the plain loop's (tests/test_features.py). One view (--feature-views 1, the default) is the
unaugmented image, as a linear probe sees it; K views are K augmented copies, epoch e training on view e mod K.
Runs that mix images (mixup, cutmix) or span several processes keep the plain loop.

    features = FrozenFeatures.build(run, views=1)
    train_one_epoch(features.head, features.epoch(run.train_batches, epoch), run.train_step)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.crop import Crop
from ..data.loaders import Batches
from ..data.transforms import BatchAugment
from ..device import autocast
from ..log import logger
from ..models import head_module, unwrap

FEATURE_BATCH = 256  # images per forward pass while computing features (no gradients kept)


class HeadOnly(nn.Module):
    """The network's classifier (timm's get_classifier) as it runs on pooled features: timm's dropout before the
    head, then the head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.classifier = head_module(model)
        self.drop_rate = float(getattr(model, "drop_rate", 0.0) or 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.drop_rate:
            features = F.dropout(features, p=self.drop_rate, training=self.training)
        return self.classifier(features)


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the head of a timm ResNet receives: globally pooled features (--pool), N x D (no dropout: eval mode)."""
    network = unwrap(model)
    return network.forward_head(network.forward_features(x), pre_logits=True)


def feature_path_reason(cfg, world_size: int, has_mixer: bool) -> str | None:  # noqa: ANN001 - TrainConfig
    """Why a frozen phase runs the plain loop instead (None: features are computed once)."""
    if not cfg.freeze_backbone or cfg.feature_views == 0:
        return "off"
    if has_mixer:
        return "mixup/cutmix mix images, not features"
    if world_size > 1:
        return "several processes"
    return None


@dataclass
class FrozenFeatures:
    head: HeadOnly
    views: list[torch.Tensor]  # per view: N x D float32 on the training device (rows of unreadable files: 0)
    readable: torch.Tensor  # N bool: False for files a streamed split could not read
    seconds: float  # the time computing them took
    val: list | None = None  # the validation split's (features, labels, positions) batches, once computed

    @classmethod
    def build(cls, model: nn.Module, batches: Batches, *, views: int, preset: str, hflip: bool, size: int,
              seed: int, amp_dtype: torch.dtype | None, crop: Crop = Crop()) -> FrozenFeatures:
        """Features of every training image: one unaugmented view, or ``views`` augmented ones."""
        started = time.perf_counter()
        device = batches.device
        count = len(batches.labels)
        augments = [BatchAugment("none", size, crop=crop)] if views == 1 else [
            BatchAugment(preset, size, hflip=hflip, crop=crop) for _ in range(views)]
        was_training = model.training
        model.eval()
        computed, readable = [], torch.zeros(count, dtype=torch.bool, device=device)
        try:
            for view, augment in enumerate(augments):
                ordered = batches.in_order(augment, FEATURE_BATCH, seed=seed)
                table = None
                with torch.inference_mode(), autocast(device, amp_dtype):
                    for x, _, index in ordered.epoch(-1 - view):
                        features = pooled_features(model, x).float()
                        if table is None:
                            table = torch.zeros(count, features.shape[1], device=device)
                        index = index.to(device)
                        table[index] = features
                        readable[index] = True
                computed.append(table if table is not None else torch.zeros(count, 0, device=device))
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - started
        logger.info(f"frozen backbone: pooled features of {int(readable.sum())} training images computed once "
                    f"({views} {'unaugmented view' if views == 1 else 'augmented views'}, {seconds:.1f}s); the head "
                    "trains on them until the backbone is unfrozen")
        return cls(HeadOnly(unwrap(model)), computed, readable, seconds)

    def validation(self, model: nn.Module, batches: Batches, amp_dtype: torch.dtype | None) -> list:
        """The validation split's batches as (pooled features, labels, positions), computed on first use: any
        head (the trained one, its EMA average) is then validated on them without running the backbone."""
        if self.val is None:
            was_training, self.val = model.training, []
            model.eval()
            try:
                with torch.inference_mode(), autocast(batches.device, amp_dtype):
                    self.val = [(pooled_features(model, x).float(), y, index) for x, y, index in batches.epoch(0)]
            finally:
                model.train(was_training)
        return self.val

    def epoch(self, batches: Batches, epoch: int, start_step: int = 0) -> Iterator:
        """(features, labels, positions) in the batches and order the plain loop would use in ``epoch``."""
        table = self.views[(epoch - 1) % len(self.views)] if len(self.views) > 1 else self.views[0]
        labels = batches.labels.to(table.device)
        for index in batches.step_indices(epoch, start_step):
            index = index.to(table.device)
            index = index[self.readable[index]]
            yield table[index], labels[index], index.cpu()
