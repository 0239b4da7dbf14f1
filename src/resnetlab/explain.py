"""The explain verb: Grad-CAM family heat maps (resnetlab.cam) over images, folders or a split's mistakes.

Writes one overlay PNG per image at its original size, explain_grid.png and explain.csv.

    explain("runs/x/best.pt", ["photos/"], method="gradcam++")
    explain("runs/x/best.pt", misclassified="photos/", split="val", limit=16)
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .cam import CamRequest, cam_class, cams_for_batch, caption, overlay, overlay_name, resolve_layer, save_png
from .checkpoint import read_checkpoint
from .classifier import load
from .data.cache import decode_split
from .data.images import expand_inputs, open_rgb
from .data.shards import shard_inputs
from .data.sources import open_data
from .data.splits import SplitData, relabel, select_split
from .data.transforms import to_rgb_array
from .device import Compute
from .errors import DataError, ExplainError, ImageReadError
from .fileio import NAME_BYTES
from .log import logger
from .metrics import rank_mistakes
from .multilabel.outputs import explain_label_sets
from .options import Shared, SharedOptions
from .plots import image_grid
from .runtimes import runtime_of
from .task import task_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

TARGET_CHOICES = "pred, true or a class name"
GRID_MAX = 64  # images in explain_grid.png; every image still gets its own overlay file
FILE_CHUNK = 1024  # input files decoded per round (as predict): bounds memory on huge folders


@dataclass
class _Item:
    """One image to explain: where it came from, how to get it at full size, its decoded view, its label."""

    source: str
    original: object  # a path for open_rgb, or an H x W x C uint8 array (built-in data sets)
    image: torch.Tensor  # uint8 C x S x S, the model's view
    number: int  # position among the inputs (or rank among the mistakes): the overlay file's prefix
    true: int | None = None


def _parse_target(target: str, classes: list[str], labelled: bool) -> str | int:
    """'pred', 'true' or the index of a class name."""
    if target in ("pred", "true"):
        if target == "true" and not labelled:
            raise ExplainError("--target true needs known labels: use --misclassified DATA (plain image files and "
                               "folders have no true class); use --target pred or a class name here")
        return target
    if target in classes:
        return classes.index(target)
    raise ExplainError(f"--target '{target}' is not pred, true or one of the model's classes: "
                       f"{', '.join(classes[:30])}{' ...' if len(classes) > 30 else ''}")


def _original(item: _Item) -> Image.Image:
    if isinstance(item.original, np.ndarray):  # a built-in data set's H x W (x C) uint8 image
        array = torch.from_numpy(item.original.reshape(*item.original.shape[:2], -1)).permute(2, 0, 1)
        return Image.fromarray(to_rgb_array(array[None])[0])
    return open_rgb(item.original)


def explain(checkpoint: str | Path, inputs: Sequence[str] = (), *, misclassified: str | None = None,
            split: str = "val", limit: int = 16, method: str = "gradcam", layer: str | None = None,
            target: str = "pred", out: str | Path | None = None, **options: Unpack[SharedOptions]) -> dict:
    """Heat maps for image files/folders, or for the ``limit`` most confident mistakes of ``split`` of
    ``misclassified`` (a data set). Writes one overlay PNG per image, explain_grid.png and explain.csv to ``out``
    (default: CHECKPOINT_DIR/explain, or CHECKPOINT_DIR/explain-misclassified-SPLIT). ``options``
    (options.SharedOptions): batch_size (32), device, workers, progress, data_root, and arch, classes, img_size
    for a bare weights file. Example::

        import resnetlab
        resnetlab.explain("runs/photos/best.pt", misclassified="photos/", limit=8)  # the most confident mistakes
    """
    cam_class(method)
    if bool(inputs) == bool(misclassified):
        raise ExplainError("give image files/folders or --misclassified DATA (one of the two)")
    if limit < 1:
        raise ExplainError(f"--limit must be at least 1, got {limit}")
    shared = Shared.of("explain", options, batch_size=32)
    compute = shared.compute
    if runtime_of(checkpoint):  # as predict --cam says it
        raise ExplainError(f"explain needs a PyTorch checkpoint (heat maps need gradients); {checkpoint} is an "
                           f"exported model that runs in {runtime_of(checkpoint)}: use the .pt file it was exported "
                           "from (its sidecar names it under 'source_checkpoint')")
    payload = read_checkpoint(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
    classifier = load(checkpoint, device=compute.device, **shared.bare, checkpoint=payload)
    chosen_target = _parse_target(target, classifier.classes, labelled=bool(misclassified))
    layer_module = resolve_layer(classifier.model, layer)  # a wrong --layer fails before any decoding
    layer_name = layer or next(n for n, m in classifier.model.named_modules() if m is layer_module)
    cam = CamRequest(method, layer, layer_name, chosen_target)
    if task_of(classifier.meta.task).multilabel:  # a map per predicted label, or per image for --target LABEL
        return _explain_label_sets(classifier, checkpoint, inputs, misclassified, out, cam=cam, compute=compute)
    if misclassified:
        saved = (payload or {}).get("config") or {}  # the run's settings: its split fraction, seed, data root
        items, skipped, split_name = _misclassified_items(classifier, misclassified, split, limit, compute,
                                                          shared.data_root or saved.get("data_root"), saved)
        default_out = Path(checkpoint).parent / f"explain-misclassified-{split_name}"
        total = len(items) + len(skipped)
        chunks: Iterator[tuple[list[_Item], list[dict]]] = iter([(items, skipped)])
    else:
        files = expand_inputs(shard_inputs(inputs))  # tar shards: their records' images (data/shards.py)
        if not files:
            raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
        default_out = Path(checkpoint).parent / "explain"
        total = len(files)
        chunks = _file_chunks(classifier, files, compute.workers)  # decoded lazily, FILE_CHUNK files at a time
    out_dir = Path(out) if out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_explained(classifier, chunks, total, out_dir, cam=cam, compute=compute, checkpoint=str(checkpoint))


def _write_explained(classifier, chunks: Iterator[tuple[list[_Item], list[dict]]], total: int,  # noqa: ANN001
                     out_dir: Path, *, cam: CamRequest, compute: Compute, checkpoint: str) -> dict:
    """The overlays of every chunk, explain.csv in input order and explain_grid.png; returns the summary."""
    method, layer_name = cam.method, cam.layer_name
    target = cam.target if isinstance(cam.target, str) else classifier.classes[cam.target]  # as --target named it
    rows, grid, grid_titles, grid_colours, all_skipped = [], [], [], [], []
    for items, skipped in chunks:
        for entry in skipped:
            logger.warning(f"skipped {entry['path']}: {entry['reason']}")
        all_skipped += skipped
        _explain_chunk(classifier, items, total, out_dir, rows, (grid, grid_titles, grid_colours), cam=cam,
                       compute=compute, checkpoint=checkpoint)
    skipped = all_skipped
    # input order, as predict's CSV; a data set's unreadable files (no input position) come last
    rows += [(entry.get("number", total), [entry["path"], "", "", "", "", "", entry["reason"]]) for entry in skipped]
    rows = [row for _, row in sorted(rows, key=lambda pair: pair[0])]

    with open(out_dir / "explain.csv", "w", newline="", encoding="utf-8", errors=NAME_BYTES) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "overlay", "true", "predicted", "probability", "target", "error"])
        writer.writerows(rows)
    explained = sum(1 for row in rows if row[1])
    if grid:
        image_grid(grid, grid_titles, out_dir / "explain_grid.png", columns=8, title_colors=grid_colours,
                   suptitle=f"{method} on {layer_name}, target: {target}"
                            + (f" (first {GRID_MAX} of {explained})" if explained > GRID_MAX else ""))
    summary = {"images": total, "explained": explained, "skipped": skipped,
               "out": str(out_dir), "method": method, "layer": layer_name}
    written = "explain_grid.png, explain.csv" if grid else "explain.csv"
    logger.info(f"explained {explained} image(s) with {method} on {layer_name}, {len(skipped)} skipped; "
                f"wrote {out_dir}/ ({written} and {explained} overlay PNG(s))")
    return summary


def _explain_label_sets(classifier, checkpoint: str | Path, inputs: Sequence[str], misclassified: str | None,  # noqa: ANN001
                        out: str | Path | None, *, cam: CamRequest, compute: Compute) -> dict:
    if misclassified or cam.target == "true":
        raise ExplainError("--misclassified and --target true are for one class per image; for a multi-label model "
                           "`resnetlab evaluate` draws the most confident false positives and false negatives with "
                           "their heat maps (false_positives.png, false_negatives.png)")
    files = expand_inputs(shard_inputs(inputs))
    if not files:
        raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
    out_dir = Path(out) if out else Path(checkpoint).parent / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    cam = replace(cam, target=None if cam.target == "pred" else int(cam.target))
    return explain_label_sets(classifier, files, cam=cam, out_dir=out_dir, compute=compute, checkpoint=str(checkpoint))


def _explain_chunk(classifier, items: list[_Item], total: int, out_dir: Path, rows: list, grid: tuple[list, list, list],
                   *, cam: CamRequest, compute: Compute, checkpoint: str) -> None:
    """Overlays of ``items`` (batched CAM passes) written to ``out_dir``; their CSV rows (keyed by input
    position) go to ``rows`` and the first GRID_MAX thumbnails, titles and colours to ``grid``."""
    meta, batch_size, chosen_target = classifier.meta, compute.batch_size, cam.target
    grid_images, grid_titles, grid_colours = grid
    for start in range(0, len(items), batch_size):
        batch_items = items[start:start + batch_size]
        batch = torch.stack([item.image for item in batch_items])
        probabilities = classifier.logits(batch).softmax(dim=1)  # N x K
        confidence, predicted = probabilities.max(dim=1)
        if chosen_target == "pred":
            targets = predicted.tolist()
        elif chosen_target == "true":
            targets = [int(item.true) for item in batch_items]
        else:
            targets = [int(chosen_target)] * len(batch_items)
        cams = cams_for_batch(classifier, batch, targets, method=cam.method, layer=cam.layer, batch_size=batch_size,
                              progress=compute.progress)
        for j, (item, heat) in enumerate(zip(batch_items, cams)):
            true = meta.classes[item.true] if item.true is not None else None
            label = meta.classes[int(predicted[j])]
            try:
                picture = overlay(_original(item), heat, crop=meta.crop, size=meta.img_size)
            except ImageReadError as err:  # changed or removed since it was decoded
                logger.warning(f"skipped {item.source}: {err.reason}")
                rows.append((item.number, [item.source, "", true or "", "", "", "", err.reason]))
                continue
            name = overlay_name(item.number, item.source, total)
            save_png(picture, out_dir / name, {
                "source": item.source, "true": true or "", "predicted": label,
                "probability": f"{float(confidence[j]):.6f}", "target": meta.classes[targets[j]],
                "target_probability": f"{float(probabilities[j, targets[j]]):.6f}", "method": cam.method,
                "layer": cam.layer_name, "checkpoint": checkpoint})
            rows.append((item.number, [item.source, name, true or "", label, f"{float(confidence[j]):.6f}",
                                       meta.classes[targets[j]], ""]))
            if len(grid_images) < GRID_MAX:
                picture.thumbnail((160, 160))
                grid_images.append(picture)
                grid_titles.append(caption(true, label, float(confidence[j])))
                grid_colours.append("black" if true is None else ("green" if true == label else "red"))


def _file_chunks(classifier, files: list[str], workers: int | None) -> Iterator[tuple[list[_Item], list[dict]]]:
    """(items, unreadable) per FILE_CHUNK files, decoded as predict does (same parallel decode, no disk cache);
    numbers are positions among all the inputs, so names and CSV order do not depend on the chunking."""
    for start in range(0, len(files), FILE_CHUNK):
        chunk = files[start:start + FILE_CHUNK]
        decoded = decode_split(SplitData("explain", np.zeros(len(chunk), dtype=np.int64), chunk),
                               classifier.meta.img_size, crop=classifier.meta.crop, workers=workers, progress=False,
                               use_cache=False)
        items = [_Item(chunk[int(p)], chunk[int(p)], image, start + int(p))
                 for p, image in zip(decoded.kept, decoded.images)]
        position = {path: start + i for i, path in enumerate(chunk)}
        yield items, [{**entry, "number": position.get(entry["path"], len(files))} for entry in decoded.skipped]


def _misclassified_items(classifier, data: str, split: str, limit: int, compute: Compute,  # noqa: ANN001
                         data_root: str | None, saved: dict) -> tuple[list[_Item], list[dict], str]:
    """The ``limit`` most confident mistakes of the split, in that order (as evaluate's misclassified.csv)."""
    # the same split as training saw: its val fraction and seed come from the checkpoint
    source = open_data(data, val_split=saved.get("val_split", 0.1), seed=saved.get("seed", 0), data_root=data_root,
                       follow_links=bool(saved.get("follow_links", False)))
    split_name, notes = select_split(source, split)
    for note in notes:
        logger.info(note)
    chosen = relabel(source.splits[split_name], source.classes, classifier.classes, f"{data} ({split_name})")
    decoded = decode_split(chosen, classifier.meta.img_size, crop=classifier.meta.crop, workers=compute.workers,
                           progress=compute.progress)
    batch_size = compute.batch_size
    logits = torch.cat([classifier.logits(decoded.images[b:b + batch_size])
                        for b in range(0, len(decoded), batch_size)]) if len(decoded) else torch.zeros(0, 1)
    mistakes = rank_mistakes(logits, decoded.labels) if len(decoded) else torch.zeros(0, dtype=torch.int64)
    wrong = mistakes[:limit]
    logger.info(f"{split_name}: {len(decoded)} images, {len(mistakes)} misclassified; "
                f"explaining the {len(wrong)} most confident mistake(s)")
    items = []
    for rank, i in enumerate(wrong.tolist()):
        position = int(decoded.kept[i])
        original = chosen.paths[position] if chosen.paths is not None else chosen.images[position]
        name = chosen.paths[position] if chosen.paths is not None else f"{split_name}_{position}"
        items.append(_Item(name, original, decoded.images[i], rank, int(decoded.labels[i])))
    return items, decoded.skipped, split_name
