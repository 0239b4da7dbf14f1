"""The evaluate verb: a checkpoint on a split -> metrics.json, confusion matrix (CSV + PNG), misclassified.csv,
predictions.png, misclassified.png (Grad-CAM) and report.html. ``write_evaluation`` is the part after
decoding, shared with training (which scores best.pt on the validation split at the end of a run).

    metrics = evaluate("runs/x/best.pt", "photos/", split="test", out="runs/x/test")
"""

from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from .calibration import calibration_scores, confidence_and_correct, tempered
from .cam import cam_class, caption, compute_cams, overlay
from .checkpoint import ModelMeta, load_model, read_checkpoint
from .classifier import Classifier, load
from .data.cache import DecodedSplit, decode_split
from .data.loaders import Batches
from .data.sources import open_data
from .data.splits import SplitData, relabel, select_split
from .data.transforms import preprocess_batch, stats_tensor, to_rgb_array
from .device import Compute, amp_dtype_for
from .engine import EpochResult, Step
from .engine import evaluate as evaluate_batches
from .errors import DataError
from .fileio import atomic_open, write_json
from .log import logger
from .metrics import classification_metrics, rank_mistakes
from .models import TTAModel, first_stage_side
from .multilabel.evaluation import print_summary as print_multilabel_summary
from .multilabel.evaluation import write_multilabel_evaluation
from .options import Shared, SharedOptions
from .plots import image_grid, plot_confusion_matrix, plot_reliability
from .report import write_report
from .runfiles import log_written
from .runtimes import runtime_of
from .task import check_task, task_of
from .tracking import attach_evaluation

if TYPE_CHECKING:
    from typing_extensions import Unpack

PREDICTION_GALLERY = 24  # validation images in predictions.png
MISCLASSIFIED_GALLERY = 16  # mistakes in misclassified.png
GALLERIES = ("predictions.png", "misclassified.png")
EVALUATION_FILES = ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "reliability.png",
                    "misclassified.csv", "predictions.csv", *GALLERIES)


def evaluate(checkpoint: str | Path, data: str, *, split: str = "val", out: str | Path | None = None,
             tta: str = "none", mlflow: str | None = None, **options: Unpack[SharedOptions]) -> dict:
    """Metrics of ``checkpoint`` on ``split`` of ``data``; files are written to ``out``. ``mlflow`` ("auto" or a
    URI): the metrics are also logged, as SPLIT_NAME, to the MLflow run that trained the checkpoint. ``options``
    (options.SharedOptions): batch_size (256), device, workers, amp, progress, data_root, cache_dir, and arch,
    classes, img_size for a bare weights file.

    Example::

        import resnetlab
        metrics = resnetlab.evaluate("runs/photos/best.pt", "photos/", split="val")  # files in runs/photos/eval-val
        print(metrics["accuracy"], metrics["macro_avg"]["f1"])
    """
    shared = Shared.of("evaluate", options)
    compute = shared.compute
    exported = runtime_of(checkpoint) is not None
    if exported:  # an exported file: the split settings travel in the sidecar
        scorer = load(checkpoint, tta=tta)
        model, meta, saved = None, scorer.meta, scorer.backend.info.get("training") or {}
    else:
        payload = read_checkpoint(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
        model, meta = load_model(checkpoint, device=compute.device, **shared.bare, checkpoint=payload)
        scorer, saved = None, (payload or {}).get("config") or {}
    split_name, chosen, decoded = open_split(data, split, meta, saved, data_root=shared.data_root,
                                             cache_dir=shared.cache_dir, workers=compute.workers,
                                             progress=compute.progress)
    out_dir = Path(out) if out else Path(checkpoint).parent / f"eval-{split_name}"
    metrics = write_evaluation(model, meta, decoded, chosen, out_dir, compute, tta=tta, scorer=scorer,
                               extra={"checkpoint": str(checkpoint), "data": str(data), "split": split_name})
    (print_multilabel_summary if task_of(meta.task).multilabel else _print_summary)(metrics, meta.classes, out_dir)
    if mlflow is not None:
        attach_evaluation(Path(checkpoint), mlflow, metrics, split_name)
    report = _write_eval_report(Path(checkpoint), out_dir)
    if report is not None:
        logger.info(f"report: {report}")
    return metrics


def open_split(data: str, split: str, meta: ModelMeta, saved: dict, *, data_root: str | None = None,
               cache_dir: str | None = None, workers: int | None = None,
               progress: bool = True) -> tuple[str, SplitData, DecodedSplit]:
    """(split name, the split in the model's class order, its decoded images) of ``data``, split as in training:
    the val fraction and seed come from ``saved``, the run's settings (the checkpoint's config or the sidecar)."""
    source = open_data(data, val_split=saved.get("val_split", 0.1), seed=saved.get("seed", 0),
                       data_root=data_root or saved.get("data_root"), follow_links=bool(saved.get("follow_links")),
                       label_sep=saved.get("label_sep", "|"), cache_dir=cache_dir)
    check_task(source.task, meta.task, str(data))
    split_name, notes = select_split(source, split)
    for note in notes:
        logger.info(note)
    chosen = relabel(source.splits[split_name], source.classes, meta.classes, f"{data} ({split_name})")
    decoded = decode_split(chosen, meta.img_size, crop=meta.crop, cache_dir=cache_dir, workers=workers,
                           progress=progress)
    if len(decoded) == 0:
        raise DataError(f"no readable images in the {split_name} split of {data}")
    return split_name, chosen, decoded


def score_model(model: nn.Module, meta: ModelMeta, decoded: DecodedSplit, compute: Compute, *, tta: str = "none",
                desc: str = "evaluate") -> EpochResult:
    """The network's raw logits (no temperature) on every image of ``decoded``, in order, with loss and accuracy."""
    device = compute.device
    batches = Batches(decoded.images, decoded.labels, batch_size=compute.batch_size, device=device,
                      mean=meta.mean, std=meta.std, channels_last=True)
    network = TTAModel(model.to(memory_format=torch.channels_last), tta)
    amp_dtype = amp_dtype_for(compute.amp, device, first_stage_side(meta.spec, meta.img_size))  # as training did
    step = Step(nn.CrossEntropyLoss(), device, amp_dtype, steps=len(batches), progress=compute.progress)
    return evaluate_batches(network, batches.epoch(0), step, desc=desc, keep_outputs=True)


def write_evaluation(model: nn.Module | None, meta: ModelMeta, decoded: DecodedSplit, split: SplitData,
                     out_dir: Path, compute: Compute, *, tta: str = "none", extra: dict | None = None,
                     figures: bool = True, scorer: Classifier | None = None) -> dict:
    """Score an already-built model (or, without one, ``scorer``: an exported model's Classifier) on a decoded
    split and write the evaluation files into ``out_dir``.

    metrics.json, confusion_matrix.csv/.png, misclassified.csv, and with ``figures`` predictions.png and
    misclassified.png (Grad-CAM: PyTorch models only). Used by ``evaluate`` and by training at the end of a run.
    """
    if task_of(meta.task).multilabel:  # sigmoid outputs: mAP, per-label table, PR curves (multilabel/evaluation.py)
        return write_multilabel_evaluation(model, meta, decoded, split, out_dir, compute, tta=tta, extra=extra,
                                           figures=figures, scorer=scorer)
    split_name = (extra or {}).get("split", split.name)
    if model is None:  # an exported graph already divides by the temperature
        result = _score_exported(scorer, decoded, compute.batch_size)
    else:
        views = tempered(model, meta.temperature) if tta != "none" else model  # T inside each view, as predict
        result = score_model(views, meta, decoded, compute, tta=tta, desc=f"evaluate {split_name}")
        if tta == "none":
            result = replace(result, logits=result.logits / meta.temperature)
    # batches are in order, so outputs line up with decoded.kept
    metrics = classification_metrics(result.logits, result.targets, meta.classes)
    metrics.update({**(extra or {}), "split": split_name, "tta": tta, "skipped": decoded.skipped,
                    "images_per_s": result.images_per_second})
    metrics.update(_calibration_metrics(result.logits, result.targets, meta.temperature, tta == "none"))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in GALLERIES:  # an earlier run's gallery must never sit beside these metrics
        (out_dir / name).unlink(missing_ok=True)
    matrix = np.asarray(metrics.pop("confusion_matrix"))
    write_json(out_dir / "metrics.json", metrics)
    with atomic_open(out_dir / "confusion_matrix.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *meta.classes])
        for name, row in zip(meta.classes, matrix):
            writer.writerow([name, *row.tolist()])
    plot_confusion_matrix(matrix, meta.classes, out_dir / "confusion_matrix.png")
    _plot_reliability(out_dir / "reliability.png", result.logits, result.targets,
                      meta.temperature if tta == "none" else 1.0)
    _write_misclassified(out_dir / "misclassified.csv", result.logits, result.targets, split, decoded.kept,
                         meta.classes)
    _write_misclassified(out_dir / "predictions.csv", result.logits, result.targets, split, decoded.kept,
                         meta.classes, every=True)  # every image in split order: what `resnetlab compare` pairs
    if figures:
        # one try per gallery: a figure that cannot be drawn loses neither the metrics above nor the other one
        galleries = [("predictions.png", lambda path: _plot_predictions(path, decoded.images, result.logits,
                                                                        result.targets, meta.classes))]
        if model is not None:  # Grad-CAM needs the PyTorch network's gradients
            galleries.append(("misclassified.png", lambda path: _plot_misclassified(
                model, decoded.images, result.logits, result.targets, meta, path)))
        for name, draw in galleries:
            try:
                draw(out_dir / name)
            except Exception as err:  # noqa: BLE001
                (out_dir / name).unlink(missing_ok=True)  # never half a figure
                logger.warning(f"could not draw {out_dir / name}: {type(err).__name__}: {err}")
    return metrics


def _calibration_metrics(logits: torch.Tensor, targets: torch.Tensor, temperature: float, before: bool = True
                         ) -> dict:
    """ECE, adaptive ECE, Brier and NLL of the probabilities every verb gives (``logits``: already divided by the
    checkpoint's temperature); a calibrated checkpoint's scores before scaling beside them (not under --tta, whose
    averaged views cannot be un-scaled)."""
    scores: dict = {**calibration_scores(logits, targets), "temperature": temperature}
    if temperature != 1.0 and before:
        scores["before_calibration"] = calibration_scores(logits * temperature, targets)
    return scores


def _plot_reliability(path: Path, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    """reliability.png; a figure that cannot be drawn costs a warning, never the metrics."""
    try:
        before = confidence_and_correct(logits * temperature, targets) if temperature != 1.0 else None
        plot_reliability(*confidence_and_correct(logits, targets), path, before=before, temperature=temperature)
    except Exception as err:  # noqa: BLE001
        path.unlink(missing_ok=True)
        logger.warning(f"could not draw {path}: {type(err).__name__}: {err}")


def _score_exported(scorer: Classifier, decoded: DecodedSplit, batch_size: int) -> EpochResult:
    """Logits of an exported model (onnxruntime, OpenVINO, torch.jit) on the decoded split, in order, as engine.evaluate
    reports them."""
    started = time.perf_counter()
    logits = torch.cat([scorer.logits(decoded.images[i:i + batch_size]) for i in range(0, len(decoded), batch_size)])
    seconds = time.perf_counter() - started
    loss = float(nn.functional.cross_entropy(logits, decoded.labels))
    accuracy = float((logits.argmax(1) == decoded.labels).float().mean())
    return EpochResult(loss, accuracy, len(decoded), seconds, -(-len(decoded) // batch_size), logits,
                       decoded.labels, torch.arange(len(decoded)))


def _plot_predictions(path: Path, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                      classes: list[str], count: int = PREDICTION_GALLERY) -> None:
    """Validation images spread over the split, titled 'predicted (probability) / true'; mistakes in red."""
    if len(targets) == 0:
        return
    chosen = np.unique(np.linspace(0, len(targets) - 1, min(count, len(targets))).round().astype(int))
    confidence, predicted = logits[chosen].softmax(dim=1).max(dim=1)
    truth = targets[chosen]
    titles = [f"{classes[p]} ({c:.2f})\n/ {classes[t]}" for p, c, t in zip(predicted, confidence, truth)]
    colors = ["black" if p == t else "red" for p, t in zip(predicted.tolist(), truth.tolist())]
    image_grid(list(to_rgb_array(images[torch.from_numpy(chosen)])), titles, path, columns=8,
               suptitle="predicted (probability) / true; mistakes in red", title_colors=colors)


def _plot_misclassified(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                        meta: ModelMeta, path: Path, limit: int = MISCLASSIFIED_GALLERY) -> None:
    """The whole split goes in (uint8, already in memory): only the ``limit`` shown get a Grad-CAM pass, and the
    title can state the split's total number of mistakes."""
    plot_misclassified(model, images, targets, logits, meta.classes, meta.mean, meta.std, path, limit=limit)


def plot_misclassified(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                       classes: list[str], mean: list[float], std: list[float], path: str | Path, *,
                       limit: int = 16, method: str = "gradcam") -> int:
    """misclassified.png: the most confident mistakes (highest predicted probability, the order of
    misclassified.csv), each as image + heat map of the predicted class, titled 'true / predicted (p)'.

    images: uint8 N x C x S x S (the decoded split), targets N, logits N x K on CPU; the title states how many
    of the split's mistakes are shown. Returns how many are shown (0 -> no file written).
    """
    cam_class(method)
    targets = targets.cpu()
    confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
    wrong = rank_mistakes(logits, targets)
    chosen = wrong[:max(0, limit)]
    if len(chosen) == 0:
        return 0
    device = next(model.parameters()).device
    x = preprocess_batch(images[chosen].to(device), stats_tensor(mean, device), stats_tensor(std, device))
    cams = compute_cams(model, x, predicted[chosen].tolist(), method=method)
    panels, titles, colours = [], [], []
    for cam, i in zip(cams, chosen.tolist()):
        picture = to_rgb_array(images[i:i + 1])[0]  # S x S x 3, grey built-ins repeated to RGB
        panels += [picture, overlay(Image.fromarray(picture), cam)]
        titles += [caption(classes[int(targets[i])], classes[int(predicted[i])], float(confidence[i])), method]
        colours += ["red", "black"]
    image_grid(panels, titles, path, columns=8, title_colors=colours,
               suptitle=f"Most confident mistakes: {len(chosen)} of {len(wrong)} in the split "
                        "(heat map: predicted class)")
    return len(chosen)


def _write_eval_report(checkpoint: Path, out_dir: Path) -> Path | None:
    """After evaluate: refresh the run's report when the checkpoint lives in a run folder (config.yaml) and
    the evaluation was written inside it (it then appears there as a section); otherwise a report of the
    evaluation folder alone. A report failure never fails the evaluation."""
    run_dir = checkpoint.parent
    try:
        inside = (run_dir / "config.yaml").is_file() and out_dir.resolve().is_relative_to(run_dir.resolve())
        return write_report(run_dir if inside else out_dir)
    except Exception as err:  # noqa: BLE001 - metrics are already written; the report is a bonus
        logger.warning(f"could not write report.html: {err}")
        return None


def _write_misclassified(path: Path, logits: torch.Tensor, targets: torch.Tensor, split: SplitData,
                         kept: np.ndarray, classes: list[str], every: bool = False) -> None:
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    wrong = torch.arange(len(targets)) if every else rank_mistakes(logits, targets)  # most confident mistakes first
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for i in wrong.tolist():
            writer.writerow([split.describe(int(kept[i])), classes[targets[i]], classes[predicted[i]],
                             f"{confidence[i]:.4f}"])


def _print_summary(metrics: dict, classes: list[str], out_dir: Path) -> None:
    line = f"{metrics['split']}: {metrics['images']} images, accuracy {metrics['accuracy']:.4f}"
    if "balanced_accuracy" in metrics:
        line += f", balanced accuracy {metrics['balanced_accuracy']:.4f}"
    if "top5_accuracy" in metrics:
        line += f", top-5 {metrics['top5_accuracy']:.4f}"
    logger.info(line + f", loss {metrics['loss']:.4f}, macro F1 {metrics['macro_avg']['f1']:.4f}")
    width = max(len(c) for c in classes)
    table = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name in classes:
        m = metrics["per_class"][name]
        table.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    logger.info("\n".join(table))
    log_written(out_dir, EVALUATION_FILES, metrics["skipped"])
