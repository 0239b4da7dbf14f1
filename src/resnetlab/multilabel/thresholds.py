"""Scoring a multi-label model on a decoded split, and the per-label thresholds chosen after training: the
validation split's F1-optimal probability per label (or ``--threshold`` for all), written into ``best.pt``.

    result = score_split(model, meta, decoded, Compute.of("cpu"))   # logits N x K, targets N x K
    thresholds = store_thresholds(run_dir / "best.pt", data, device, cfg)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import ModelMeta, load_model, read_checkpoint, save_checkpoint
from ..data.cache import DecodedSplit
from ..data.loaders import Batches
from ..device import Compute, amp_dtype_for
from ..engine import EpochResult, Step, evaluate
from ..log import logger
from ..models import first_stage_side
from .metrics import choose_thresholds, to_numpy
from .training import MultiHotLoss, exact_hits


def score_split(model: nn.Module, meta: ModelMeta, decoded: DecodedSplit, compute: Compute, *,
                desc: str = "score") -> EpochResult:
    """The model on every image of ``decoded``, in order: logits and multi-hot targets (N x K each), BCE loss and
    the exact-match ratio at 0.5 as ``accuracy``."""
    device = compute.device
    batches = Batches(decoded.images, decoded.labels, batch_size=compute.batch_size, device=device, mean=meta.mean,
                      std=meta.std, channels_last=True)
    amp_dtype = amp_dtype_for(compute.amp, device, first_stage_side(meta.spec, meta.img_size))  # as training did
    step = Step(MultiHotLoss(), device, amp_dtype, exact_hits, steps=len(batches), progress=compute.progress)
    return evaluate(model.to(memory_format=torch.channels_last), batches.epoch(0), step, desc=desc, keep_outputs=True)


def store_thresholds(best: Path, data, device: torch.device, cfg) -> list[float]:  # noqa: ANN001
    """Choose the thresholds on the run's validation split (``data``: training's PreparedData) and save them in
    ``best``; returns them."""
    payload = read_checkpoint(best)
    model, meta = load_model(best, device=device, checkpoint=payload)
    result = score_split(model, meta, data.val, Compute(device, max(256, cfg.batch_size * 2), cfg.amp, progress=False))
    thresholds = choose_thresholds(to_numpy(result.logits.sigmoid()), to_numpy(result.targets), cfg.threshold)
    payload["thresholds"] = thresholds
    save_checkpoint(best, payload)
    rule = f"--threshold {cfg.threshold:g}" if cfg.threshold is not None else \
        f"F1-optimal on the {len(result.targets)} {data.val_name} images"
    shown = ", ".join(f"{name}={t:.2f}" for name, t in list(zip(meta.classes, thresholds))[:12])
    logger.info(f"thresholds ({rule}) stored in {best}: {shown}{' ...' if len(thresholds) > 12 else ''}")
    return thresholds
