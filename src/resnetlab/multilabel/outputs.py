"""predict and explain for a multi-label model: a CSV row per image with every predicted label and one probability
column per label, and Grad-CAM heat maps per (image, label): each predicted label, or the one ``--target`` names.
``predict.py`` and ``explain.py`` dispatch here for a model whose task is "multilabel".

    predict_label_sets(classifier, files, out="predictions.csv")       # path,labels,<label>...,error
    explain_label_sets(classifier, files, cam=CamRequest(target=None), out_dir=Path("explain"), ...)
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from ..cam import CamRequest, caption, compute_cams, overlay, overlay_name, save_png
from ..data.cache import decode_split
from ..data.images import open_rgb
from ..data.splits import SplitData
from ..device import Compute
from ..errors import ImageReadError
from ..fileio import NAME_BYTES
from ..log import logger, progress_enabled
from ..plots import image_grid

CHUNK = 1024  # files decoded per round, as predict and explain do
GRID_MAX = 64  # overlays in explain_grid.png
FIXED = ("path", "labels", "cam", "error")


def label_overlay_name(number: int, source: str, total: int, label: str) -> str:
    """'0003_cat photo__red.png': the image's overlay name with the label it explains."""
    safe = re.sub(r"[^\w\- .()+]+", "_", label).encode("utf-8")[:60].decode("utf-8", errors="ignore").strip(" .")
    return overlay_name(number, source, total).removesuffix(".png") + f"__{safe or 'label'}.png"


def _chunks(classifier, files: list[str], workers: int | None):  # noqa: ANN001, ANN202 - Classifier; generator
    """(first position, chunk of paths, DecodedSplit) per CHUNK files, decoded as predict does (no disk cache)."""
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        yield start, chunk, decode_split(SplitData("predict", np.zeros(len(chunk), dtype=np.int64), chunk),
                                         classifier.meta.img_size, crop=classifier.meta.crop, workers=workers,
                                         progress=False, use_cache=False)


def _label_cams(classifier, images: torch.Tensor, pairs: list[tuple[int, int]], *, method: str = "gradcam",  # noqa: ANN001
                layer: str | None = None, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """One heat map per (image position, label index) pair: the images repeated as the pairs need them."""
    if not pairs:
        return np.zeros((0, classifier.meta.img_size, classifier.meta.img_size), dtype=np.float32)
    x = classifier.preprocess(images[torch.tensor([i for i, _ in pairs])])
    return compute_cams(classifier.model, x, [k for _, k in pairs], method=method, layer=layer, batch_size=batch_size,
                        progress=progress)


def predict_label_sets(classifier, files: list[str], *, out: Path, batch_size: int = 256,  # noqa: ANN001
                       workers: int | None = None, progress: bool = True, cam: Path | None = None) -> dict:
    """predictions.csv: path, labels (the predicted names joined by '|'), one probability column per label (named
    as the label; 'p_' in front of one named like a fixed column), [cam: overlay paths joined by '|'], error."""
    classes = classifier.classes
    header = ["path", "labels", *(f"p_{c}" if c in FIXED else c for c in classes)] + (["cam"] if cam else []) + \
        ["error"]
    counts: dict[str, int] = {}
    failed = 0
    with open(out, "w", newline="", encoding="utf-8", errors=NAME_BYTES) as handle:  # latin1_\xe9.png shown
        writer = csv.writer(handle)
        writer.writerow(header)
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress_enabled(progress), leave=False)
        for start, chunk, decoded in _chunks(classifier, files, workers):
            rows: dict[int, list] = {}
            for b in range(0, len(decoded), batch_size):
                batch, positions = decoded.images[b:b + batch_size], decoded.kept[b:b + batch_size]
                predictions = classifier.to_predictions(classifier.logits(batch), 1)
                written = _write_cams(classifier, batch, predictions, [chunk[p] for p in positions],
                                      [start + int(p) for p in positions], len(files), cam) if cam else {}
                for j, (position, p) in enumerate(zip(positions, predictions)):
                    rows[int(position)] = [chunk[position], p.label, *(f"{q:.6f}" for q in p.probabilities)] + \
                        (["|".join(written.get(j, []))] if cam else []) + [""]
                    for name, _ in p.labels:
                        counts[name] = counts.get(name, 0) + 1
            reasons = {s["path"]: s["reason"] for s in decoded.skipped}
            for i, path in enumerate(chunk):
                if i not in rows:
                    failed += 1
                writer.writerow(rows.get(i) or [path] + [""] * (len(header) - 2) + [reasons.get(path, "unreadable")])
            bar.update(len(chunk))
        bar.close()
    summary = {"images": len(files), "predicted": len(files) - failed, "failed": failed, "out": str(out),
               "per_label": counts}
    logger.info(f"predicted the label sets of {summary['predicted']} of {len(files)} image(s), {failed} failed; wrote "
                f"{out}" + (f" and heat maps in {cam}" if cam else ""))
    return summary


def _write_cams(classifier, batch: torch.Tensor, predictions: list, paths: list[str], numbers: list[int],  # noqa: ANN001
                total: int, cam_dir: Path) -> dict[int, list[str]]:
    """predict --cam: an overlay per predicted label of each image; position in the batch -> overlay paths."""
    index = {c: k for k, c in enumerate(classifier.classes)}
    pairs = [(j, index[name]) for j, p in enumerate(predictions) for name, _ in p.labels]
    written: dict[int, list[str]] = {}
    for (j, k), heat in zip(pairs, _label_cams(classifier, batch, pairs)):
        try:
            picture = overlay(open_rgb(paths[j]), heat, crop=classifier.meta.crop,
                              size=classifier.meta.img_size)
        except ImageReadError:  # changed since it was decoded: the row keeps its prediction
            continue
        file = cam_dir / label_overlay_name(numbers[j], paths[j], total, classifier.classes[k])
        save_png(picture, file, {"source": paths[j], "predicted": predictions[j].label, "target": classifier.classes[k],
                                 "probability": f"{predictions[j].probabilities[k]:.6f}", "method": "gradcam"})
        written.setdefault(j, []).append(str(file))
    return written


def explain_label_sets(classifier, files: list[str], *, cam: CamRequest, out_dir: Path,  # noqa: ANN001
                       compute: Compute, checkpoint: str) -> dict:
    """One overlay per (image, label): the label ``cam.target`` (an index), or else every predicted label (the most
    probable one when none reaches its threshold). Writes NNNN_NAME__LABEL.png, explain_grid.png, explain.csv."""
    rows, grid, titles, skipped = [], [], [], []
    target, method, layer_name, batch_size = cam.target, cam.method, cam.layer_name, compute.batch_size
    for start, chunk, decoded in _chunks(classifier, files, compute.workers):
        skipped += decoded.skipped
        rows += [(start + i, [p, "", "", "", "", "", r["reason"]]) for i, p in enumerate(chunk)
                 for r in decoded.skipped if r["path"] == p]
        for b in range(0, len(decoded), batch_size):
            batch, positions = decoded.images[b:b + batch_size], decoded.kept[b:b + batch_size]
            predictions = classifier.to_predictions(classifier.logits(batch), 1)
            pairs = [(j, k) for j, p in enumerate(predictions) for k in _targets(classifier.classes, p, target)]
            heats = _label_cams(classifier, batch, pairs, method=method, layer=cam.layer, batch_size=batch_size,
                                progress=compute.progress)
            for (j, k), heat in zip(pairs, heats):
                path, number, p = chunk[positions[j]], start + int(positions[j]), predictions[j]
                label, probability = classifier.classes[k], float(p.probabilities[k])
                try:
                    picture = overlay(open_rgb(path), heat, crop=classifier.meta.crop,
                                      size=classifier.meta.img_size)
                except ImageReadError as err:
                    rows.append((number, [path, "", "", p.label, "", label, err.reason]))
                    continue
                name = label_overlay_name(number, path, len(files), label)
                save_png(picture, out_dir / name, {"source": path, "predicted": p.label, "target": label,
                                                   "target_probability": f"{probability:.6f}", "method": method,
                                                   "layer": layer_name, "checkpoint": checkpoint})
                rows.append((number, [path, name, "", p.label, f"{probability:.6f}", label, ""]))
                if len(grid) < GRID_MAX:
                    picture.thumbnail((160, 160))
                    grid.append(picture)
                    titles.append(caption(None, label, probability))
    rows = [row for _, row in sorted(rows, key=lambda pair: pair[0])]
    with open(out_dir / "explain.csv", "w", newline="", encoding="utf-8", errors=NAME_BYTES) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "overlay", "true", "predicted", "probability", "target", "error"])
        writer.writerows(rows)
    if grid:
        image_grid(grid, titles, out_dir / "explain_grid.png", columns=8,
                   suptitle=f"{method} on {layer_name}, one map per " + ("predicted label" if target is None else
                                                                         f"image for '{classifier.classes[target]}'"))
    explained = sum(1 for row in rows if row[1])
    logger.info(f"explained {explained} (image, label) pair(s) with {method} on {layer_name}, {len(skipped)} image(s) "
                f"skipped; wrote {out_dir}/ (explain.csv" + (", explain_grid.png" if grid else "") + ")")
    return {"images": len(files), "explained": explained, "skipped": skipped, "out": str(out_dir), "method": method,
            "layer": layer_name}


def _targets(classes: list[str], prediction, target: int | None) -> list[int]:  # noqa: ANN001 - a Prediction
    if target is not None:
        return [target]
    index = {c: k for k, c in enumerate(classes)}
    return [index[name] for name, _ in prediction.labels] or [index[prediction.top[0][0]]]
