"""The calibrate verb: fit a temperature on a checkpoint's validation split (the T that minimises the NLL of
softmax(logits / T)) and write a calibrated copy. Every verb that loads the copy gives calibrated probabilities:
predict, evaluate, explain and serve divide the logits by T, and an export holds the division in its graph.
Single-label models only: a multi-label model's probabilities are not calibrated (its per-label thresholds are).

    calibrate("runs/x/best.pt", "photos/", out="runs/x/calibrated.pt")
    store_temperatures(run_dir, data, device, cfg)      # train --calibrate: best.pt and last.pt, at the end of a run
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .calibration import TEMPERATURE_BOUNDS, calibration_scores, describe_scores, fit_temperature
from .checkpoint import FORMAT, ModelMeta, load_model, read_checkpoint, save_checkpoint
from .data.cache import DecodedSplit
from .device import Compute
from .errors import CheckpointError, ConfigError
from .evaluation import open_split, score_model
from .fileio import writable_file
from .log import logger
from .options import Shared, SharedOptions
from .runtimes import runtime_of
from .task import task_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .config import TrainConfig
    from .training.data import PreparedData

MULTILABEL_NOTE = ("temperature scaling is for single-label models; a multi-label model's sigmoid probabilities are "
                   "not calibrated (per-label temperatures are not implemented; its per-label thresholds are chosen on "
                   "the validation split instead)")


def calibrate(checkpoint: str | Path, data: str, *, out: str | Path | None = None, split: str = "val",
              **options: Unpack[SharedOptions]) -> dict:
    """Fit the temperature of ``checkpoint`` on ``split`` of ``data`` (split as in training) and write the
    checkpoint with it to ``out`` (default: CHECKPOINT_DIR/STEM-calibrated.pt; ``out`` may be ``checkpoint``
    itself). Returns the temperature, the scores before and after, and the path. An already calibrated
    checkpoint is fitted afresh from its raw logits. ``options`` (options.SharedOptions): batch_size (256), device,
    workers, amp, progress, data_root, cache_dir.

    Example::

        import resnetlab
        result = resnetlab.calibrate("runs/photos/best.pt", "photos/", out="runs/photos/calibrated.pt")
        print(result["temperature"], result["before"]["ece"], "->", result["after"]["ece"])
    """
    shared = Shared.of("calibrate", options)
    compute = shared.compute
    checkpoint = Path(checkpoint)
    if runtime_of(checkpoint) or checkpoint.suffix == ".safetensors":
        raise ConfigError(f"calibrate needs a resnetlab checkpoint (best.pt, last.pt); {checkpoint.name} is not one: "
                          "calibrate the checkpoint, then export the calibrated copy")
    out = writable_file(out or checkpoint.with_name(f"{checkpoint.stem}-calibrated.pt"), example="calibrated.pt")
    payload = read_checkpoint(checkpoint)
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{checkpoint} is a bare state_dict: calibrate needs a resnetlab checkpoint, which "
                              "records its classes and preprocessing (train with resnetlab, or evaluate it first)")
    model, meta = load_model(checkpoint, device=compute.device, checkpoint=payload)
    if not task_of(meta.task).calibratable:
        raise ConfigError(f"{checkpoint} is a multi-label model: {MULTILABEL_NOTE}")
    split_name, _, decoded = open_split(data, split, meta, payload.get("config") or {}, data_root=shared.data_root,
                                        cache_dir=shared.cache_dir, workers=compute.workers, progress=compute.progress)
    summary = _fit_into(payload, model, meta, decoded, compute, f"{data} ({split_name})")
    save_checkpoint(out, payload)
    logger.info(f"wrote {out}: predict, evaluate, serve and export of it give softmax(logits / "
                f"{summary['temperature']:.4g})")
    return {**summary, "path": str(out)}


def store_temperatures(run_dir: Path, data: PreparedData, device: torch.device, cfg: TrainConfig) -> None:
    """train --calibrate: fit a temperature on the run's validation split for best.pt and for last.pt (each its own:
    their weights differ when the best epoch is not the last, or under EMA) and store it in each file."""
    if not task_of(data.source.task).calibratable:
        logger.info(f"--calibrate: {MULTILABEL_NOTE}")
        return
    previous = None  # (weights, payload) of the file fitted before: last.pt often holds best.pt's weights
    for path in (run_dir / "best.pt", run_dir / "last.pt"):
        if not path.is_file():
            continue
        payload = read_checkpoint(path)
        if previous is not None and _same_weights(previous[0], payload["model"]):
            payload["temperature"], payload["calibration"] = previous[1]["temperature"], previous[1]["calibration"]
        else:
            model, meta = load_model(path, device=device, checkpoint=payload)
            _fit_into(payload, model, meta, data.val, Compute(device, max(256, cfg.batch_size * 2), cfg.amp,
                                                              progress=False), f"{cfg.data} ({data.val_name})",
                      label=path.name)
            previous = (payload["model"], payload)
        save_checkpoint(path, payload)


def _fit_into(payload: dict, model: torch.nn.Module, meta: ModelMeta, decoded: DecodedSplit, compute: Compute,
              fitted_on: str, *, label: str = "") -> dict:
    """Score the raw network on ``decoded``, fit T, put it (and the scores before and after) into ``payload``."""
    result = score_model(model, meta, decoded, compute, desc="calibrate")
    logits, targets = result.logits, result.targets
    temperature = fit_temperature(logits, targets)
    at_bound = any(math.isclose(temperature, bound, rel_tol=1e-3) for bound in TEMPERATURE_BOUNDS)
    if at_bound:  # a split the model gets all right pushes T to 0.05: every probability ~1.0 from then on
        logger.warning(f"the temperature reached its bound {temperature:g}: the {len(targets)} images say little "
                       "about calibration (all right, or too few); T = 1 is kept (fit it on a larger or harder "
                       "split)")
        temperature = 1.0
    before, after = calibration_scores(logits, targets), calibration_scores(logits / temperature, targets)
    summary = {"temperature": temperature, "fitted_on": fitted_on, "images": len(targets),
               "accuracy": float((logits.argmax(dim=1) == targets).float().mean()), "before": before, "after": after}
    payload["temperature"], payload["calibration"] = temperature, summary
    where = f"{label}: " if label else ""
    logger.info(f"{where}temperature {temperature:.4g} fitted on {len(targets)} images of {fitted_on} (minimum NLL); "
                f"before: {describe_scores(before)}; after: {describe_scores(after)}; accuracy "
                f"{summary['accuracy']:.4f} either way")
    return summary


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
