"""The figures a run draws and the end of a run: samples.png before the first step, curves.png after each
epoch, and when the run finishes, best.pt evaluated on the validation split and report.html. Rank 0 only;
any failure here is a warning: the checkpoints are already safe.

    finish_run(run_dir, data, device, cfg)
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import TrainConfig
from ..data.loaders import Batches
from ..data.transforms import denormalize, to_rgb_array
from ..device import Compute
from ..distributed import DistInfo, sum_over_ranks, sync_buffers, weights_checksum
from ..log import logger
from ..multilabel.training import sample_titles
from ..task import task_of

if TYPE_CHECKING:
    from .data import PreparedData

SAMPLE_GALLERY = 32  # images of the first training batch in samples.png


def plot_samples(path: Path, batches: Batches, classes: list[str], mean: list[float], std: list[float]) -> None:
    """samples.png: the first training batch after augmentation, de-normalised, as the model sees it."""
    try:
        from ..plots import image_grid  # matplotlib: a broken install must not end the run either

        # Batches draws from its own (seed, epoch, step) generators; fork_rng makes sure that drawing this
        # batch leaves the global RNG (dropout, mixup seeding) exactly as an unobserved run would have it.
        with torch.random.fork_rng(devices=[] if batches.device.type == "cpu" else [batches.device]):
            x, y, _ = next(iter(batches.epoch(1)))
        shown = min(SAMPLE_GALLERY, len(y))
        images = to_rgb_array(denormalize(x[:shown], mean, std))
        titles = sample_titles(classes, y[:shown]) if y.ndim == 2 else [classes[i] for i in y[:shown].tolist()]
        image_grid(list(images), titles, path, columns=8,
                   suptitle="training batch after augmentation (de-normalised)")
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        logger.warning(f"could not draw samples.png: {err}")


def plot_curves(run_dir: Path, history: list[dict]) -> None:
    try:
        from ..plots import plot_curves as draw  # matplotlib: a broken install must not end the run either

        draw(history, run_dir / "curves.png")
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        logger.warning(f"could not draw curves.png: {err}")


def check_replicas(model: nn.Module, info: DistInfo) -> None:
    """Under torchrun: say whether every rank ended with the same weights (DDP keeps them in step)."""
    if not info.enabled:
        return
    sync_buffers(model, info)  # after a mid-epoch stop each rank's BatchNorm statistics are its own last batch's
    sums = sum_over_ranks([weights_checksum(model), weights_checksum(model) ** 2], info)
    spread = sums[1] / info.world_size - (sums[0] / info.world_size) ** 2
    logger.info(f"distributed: weights {'identical' if spread <= 1e-9 * max(1.0, sums[1]) else 'DIFFERENT'} across "
                f"{info.world_size} ranks (checksum {sums[0] / info.world_size:.6f})")


def release_training_memory(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Free what only training needed (optimizer moments, cached GPU blocks); never fails a finished run."""
    try:
        optimizer.state.clear()  # last.pt already holds it; momentum/Adam moments are 1-2x the weights
        gc.collect()  # the batches' tensors may sit in reference cycles (generators, closures)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as err:  # noqa: BLE001 - the checkpoints are safe; the evaluation can still try
        logger.warning(f"could not release training memory before the end-of-run evaluation: {err}")


def finish_run(run_dir: Path, data: PreparedData, device: torch.device, cfg: TrainConfig) -> None:
    """best.pt on the validation split -> metrics.json, confusion matrix, galleries; then report.html. With
    ``cfg.calibrate``, best.pt and last.pt get their temperature first (the evaluation shows ECE before and after)."""
    best = run_dir / "best.pt"
    try:
        # imported here, not at the top: a broken optional dependency (grad-cam, matplotlib, OpenCV) must
        # not stop training from starting, and must not fail the finished run either
        from ..checkpoint import load_model
        from ..evaluation import write_evaluation
        from ..report import write_report

        if best.is_file():
            task_of(data.source.task).store_thresholds(best, data, device, cfg)  # multi-label: per label, into best.pt
            if cfg.calibrate:  # a temperature fitted on the validation split, into best.pt and last.pt
                from ..calibrate import store_temperatures

                store_temperatures(run_dir, data, device, cfg)
            model, meta = load_model(best, device=device)
            metrics = write_evaluation(model, meta, data.val, data.source.splits[data.val_name], run_dir,
                                       Compute(device, max(256, cfg.batch_size * 2), cfg.amp, progress=False),
                                       extra={"checkpoint": str(best), "data": str(cfg.data), "split": data.val_name})
            files = "per_label.csv, pr_curves.png" if "map_macro" in metrics else "confusion_matrix.png"
            logger.info(f"best.pt on {data.val_name}: accuracy {metrics['accuracy']:.4f}, macro F1 "
                        f"{metrics['macro_avg']['f1']:.4f}"
                        + (f", mAP {metrics['map_macro']:.4f}" if "map_macro" in metrics else "")
                        + f" (metrics.json, {files}, predictions.png)")
        logger.info(f"report: {write_report(run_dir)}")
    except Exception as err:  # noqa: BLE001 - figures must never end (or fail) a finished run
        logger.warning(f"could not write the end-of-run evaluation/report: {type(err).__name__}: {err}")
