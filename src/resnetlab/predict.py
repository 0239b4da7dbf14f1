"""The predict verb: top-k labels for image files and folders as a CSV, with optional Grad-CAM overlays.
Works on any Classifier backend (a checkpoint in torch, an exported .onnx file in onnxruntime).

    predict_files("runs/x/best.pt", ["photos/"], out="predictions.csv", topk=3, cam="heatmaps/")
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from .cam import cams_for_batch, overlay, overlay_name, save_png
from .classifier import Classifier, Prediction
from .data.cache import decode_split
from .data.images import expand_inputs, open_rgb
from .data.shards import shard_inputs
from .data.splits import SplitData
from .errors import ConfigError, DataError, ImageReadError
from .fileio import NAME_BYTES, writable_file
from .log import logger, progress_enabled
from .multilabel.outputs import predict_label_sets
from .options import Shared, SharedOptions
from .task import SingleLabel, task_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

PREDICT_CHUNK = 1024  # files decoded per round: bounds memory on huge folders


def predict_files(checkpoint: str | Path | Classifier, inputs: Iterable[str], *, out: str | Path = "predictions.csv",
                  topk: int = 3, tta: str = "none", cam: str | Path | None = None, min_confidence: float = 0.0,
                  **options: Unpack[SharedOptions]) -> dict:
    """Write one CSV row per input file; unreadable files get an ``error`` and the rest still run. ``options``
    (options.SharedOptions): batch_size (256), device, workers, progress, and arch, classes, img_size for a bare
    weights file. ``checkpoint`` may be a Classifier from ``resnetlab.load`` (loaded once for many calls).

    ``min_confidence``: a row whose top probability is under it gets the label ``unsure`` (the other columns still
    show the best guesses); best on a calibrated checkpoint (resnetlab.calibrate).

    ``cam``: a folder that gets a Grad-CAM overlay PNG of the predicted class per image (explain.py), its path in
    a ``cam`` column before ``error``. Returns counts and the CSV's path. (``resnetlab.predict`` is this function.)

    Example::

        import resnetlab
        summary = resnetlab.predict("runs/photos/best.pt", ["new_photos/"], out="predictions.csv", topk=3)
        print(summary["predicted"], "images predicted")
    """
    shared = Shared.of("predict_files", options)  # before the model is loaded
    batch_size, workers, progress = shared.compute.batch_size, shared.compute.workers, shared.compute.progress
    classifier = shared.classifier(checkpoint, tta=tta)
    _check_min_confidence(min_confidence, task_of(classifier.meta.task))
    files = expand_inputs(shard_inputs(inputs))  # tar shards: their records' images (data/shards.py)
    if not files:
        raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
    k = max(1, min(topk, len(classifier.classes)))
    header = ["path", "label", "confidence"] + [f"top{j}_{w}" for j in range(2, k + 1) for w in ("label", "prob")]
    header += ["cam", "error"] if cam else ["error"]
    cam_dir = _cam_folder(cam, classifier, checkpoint)
    failed = 0
    out = writable_file(out, example="predictions.csv")  # before any image is decoded
    if task_of(classifier.meta.task).multilabel:  # label sets and a probability per label (multilabel/outputs.py)
        return predict_label_sets(classifier, files, out=out, batch_size=batch_size, workers=workers,
                                  progress=progress, cam=cam_dir)
    counts: dict[str, int] = {}
    with open(out, "w", newline="", encoding="utf-8", errors=NAME_BYTES) as handle:  # latin1_\xe9.png shown
        writer = csv.writer(handle)
        writer.writerow(header)
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress_enabled(progress), leave=False)
        for start in range(0, len(files), PREDICT_CHUNK):
            chunk = files[start:start + PREDICT_CHUNK]
            # the same parallel decode as training, without the disk cache
            decoded = decode_split(SplitData("predict", np.zeros(len(chunk), dtype=np.int64), chunk),
                                   classifier.meta.img_size, crop=classifier.meta.crop, workers=workers,
                                   progress=False, use_cache=False)
            predictions: dict[int, Prediction] = {}
            overlays: dict[int, str] = {}
            for b in range(0, len(decoded), batch_size):
                batch = decoded.images[b:b + batch_size]
                logits = classifier.logits(batch)
                batch_predictions = classifier.to_predictions(logits, k, min_confidence=min_confidence)
                for position, prediction in zip(decoded.kept[b:b + batch_size], batch_predictions):
                    predictions[int(position)] = prediction
                if cam_dir:
                    positions = [int(p) for p in decoded.kept[b:b + batch_size]]
                    overlays.update(_write_cams(classifier, batch, logits.argmax(dim=1).tolist(), batch_predictions,
                                                [chunk[p] for p in positions], [start + p for p in positions],
                                                len(files), cam_dir))
            reasons = {s["path"]: s["reason"] for s in decoded.skipped}
            for i, path in enumerate(chunk):
                if i in predictions:
                    p = predictions[i]
                    writer.writerow(_row(path, p, len(header), [overlays.get(start + i, "")] if cam_dir else []))
                    counts[p.label] = counts.get(p.label, 0) + 1
                else:
                    failed += 1
                    writer.writerow([path] + [""] * (len(header) - 2) + [reasons.get(path, "unreadable")])
            bar.update(len(chunk))
        bar.close()
    summary = {"images": len(files), "predicted": len(files) - failed, "failed": failed, "out": str(out),
               "per_label": counts}
    logger.info(f"predicted {summary['predicted']} of {len(files)} image(s), {failed} failed; wrote {out}"
                + (f" and heat maps in {cam_dir}" if cam_dir else ""))
    return summary


def _cam_folder(cam: str | Path | None, classifier: Classifier, checkpoint: object) -> Path | None:
    """--cam's folder, made; refused for an exported model (heat maps need the PyTorch network's gradients)."""
    if not cam:
        return None
    if classifier.model is None:
        where = classifier.meta.source if isinstance(checkpoint, Classifier) else checkpoint
        raise ConfigError(f"--cam needs a PyTorch checkpoint (heat maps need gradients); {where} runs in "
                          f"{classifier.runtime}")
    Path(cam).mkdir(parents=True, exist_ok=True)
    return Path(cam)


def _check_min_confidence(min_confidence: float, task: SingleLabel) -> None:
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence must be a probability between 0 and 1, got {min_confidence}")
    task.check_min_confidence(min_confidence)


def _row(path: str, p: Prediction, width: int, cam: list[str]) -> list[str]:
    """path, label, confidence, the other top-k labels and probabilities, padded to ``width``: [cam,] error ''."""
    row = [path, p.label, f"{p.confidence:.6f}"]
    for label, probability in p.top[1:]:
        row += [label, f"{probability:.6f}"]
    return row + [""] * (width - len(row) - len(cam) - 1) + cam + [""]


def _write_cams(classifier: Classifier, batch: torch.Tensor, targets: list[int], predictions: list[Prediction],
                paths: list[str], numbers: list[int], total: int, cam_dir: Path) -> dict[int, str]:
    """Overlay PNGs of the predicted class for one decoded batch (one batched CAM pass); file number -> path."""
    written: dict[int, str] = {}
    cams = cams_for_batch(classifier, batch, targets)  # forward/backward passes of 32 images
    for cam, prediction, path, number in zip(cams, predictions, paths, numbers):
        try:
            picture = overlay(open_rgb(path), cam, crop=classifier.meta.crop, size=classifier.meta.img_size)
        except ImageReadError:  # changed since it was decoded: the row keeps its prediction, no heat map
            continue
        file = cam_dir / overlay_name(number, path, total)
        save_png(picture, file, {"source": path, "predicted": prediction.label,
                                 "probability": f"{prediction.confidence:.6f}", "target": prediction.label,
                                 "method": "gradcam"})
        written[number] = str(file)
    return written
