"""The embed verb: pooled backbone features (what the classifier head receives) of image files and folders, with
their paths and labels, as .npz, .csv or .parquet. From a resnetlab checkpoint, or a timm architecture and a local
weights file (never a download).

    embed_files("runs/x/best.pt", ["photos/"], out="embeddings.npz", normalize=True)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from .checkpoint import ModelMeta
from .classifier import Classifier, from_model
from .data.images import expand_inputs
from .data.shards import is_shards, shard_records
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .device import Compute, resolve_device
from .errors import ConfigError, DataError, ImageReadError, ModelError
from .fileio import atomic_open, atomic_path, readable, writable_file
from .log import logger, progress_enabled
from .models import ModelSpec, build_model, default_crop, head_weight_key, load_matching, read_state_dict
from .options import Shared, SharedOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

FORMATS = (".npz", ".csv", ".parquet")
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def pretrained_classifier(arch: str, weights: str | Path, *, img_size: int = 224, device: str = "auto") -> Classifier:
    """A Classifier around a timm ``arch`` with the weights of a local .pth/.safetensors file (ImageNet mean/std,
    standard stem, classes unknown: named by index). A file that does not fit the backbone is refused."""
    state = read_state_dict(weights)
    head = state.get(head_weight_key(arch))  # "fc.weight": the classifier timm's config names
    num_classes = int(head.shape[0]) if head is not None else 1000  # timm's default head when the file has none
    spec = ModelSpec(arch, num_classes)
    model = build_model(spec)
    notes = load_matching(model, state, str(weights))
    if any(note.startswith("first conv") for note in notes):  # a random stem would make every feature noise
        raise ModelError(f"{weights} does not fit {arch}: its first conv differs; is it for another architecture?")
    for note in notes:
        logger.info(f"pretrained: {note}")
    crop, _ = default_crop(arch, img_size, pretrained=True)  # the weights' own evaluation crop
    meta = ModelMeta(spec=spec, classes=[str(i) for i in range(num_classes)], img_size=img_size, crop=crop,
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), source=str(weights))
    return from_model(model.eval(), meta, resolve_device(device))


def labelled_files(inputs: Iterable[str | os.PathLike], classes: Sequence[str] | None) -> list[tuple[str, str]]:
    """(path, label) for every file of ``inputs``. A file in a sub-folder of an input folder is labelled by that
    sub-folder (the first below the input folder, or the nearest one that is one of ``classes``); else ''. Tar
    shards (data/shards.py): each record's image read in place, labelled by its class name."""
    known = set(classes or ())
    labelled: list[tuple[str, str]] = []
    for item in inputs:
        if is_shards(str(item)):  # tar shards: each record's image, labelled by its class
            labelled += shard_records(item)
            continue
        root = Path(item)
        for file in expand_inputs([item]):
            parts = Path(file).parent.relative_to(root).parts if root.is_dir() else ()
            label = next((part for part in reversed(parts) if part in known), parts[0] if parts else "")
            labelled.append((file, label))
    return labelled


def check_output(out: str | Path) -> str:
    """The output format from ``out``'s extension; a parquet file needs pyarrow (or pandas with an engine)."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {out}: the extension chooses the format, one of {', '.join(FORMATS)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401 - an optional package: only .parquet output needs it
        except ImportError:
            try:
                import pandas  # noqa: F401 - writes parquet with pyarrow or fastparquet
            except ImportError:
                raise ConfigError(f"--out {out}: writing .parquet needs pyarrow (pip install pyarrow); or write "
                                  ".npz or .csv") from None
    return suffix


def embed_files(checkpoint: str | Path | Classifier | None, inputs: Iterable[str], *,
                out: str | Path = "embeddings.npz", pretrained: str | Path | None = None, dtype: str = "fp32",
                normalize: bool = False,
                **options: Unpack[SharedOptions]) -> dict:
    """Write paths, labels and pooled features of every readable input image to ``out`` (atomically); unreadable
    files are skipped with a warning. ``arch`` + ``pretrained`` (+ ``img_size``, default 224) instead of
    ``checkpoint``: a timm network with local weights. ``options`` (options.SharedOptions): batch_size (64), device,
    workers, progress, arch, img_size. ``checkpoint`` may be a Classifier from ``resnetlab.load``. (``resnetlab.embed``
    is this function.)

    Example::

        import numpy as np
        import resnetlab
        resnetlab.embed("runs/photos/best.pt", ["photos/"], out="embeddings.npz")
        features = np.load("embeddings.npz")["features"]   # N x D pooled backbone features
    """
    inputs = [str(item) for item in inputs]
    suffix = check_output(out)  # before the model loads: a typo costs nothing
    out = writable_file(out, example="embeddings.npz")  # and a folder that cannot be written, before the work
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    shared = Shared.of("embed_files", options, batch_size=64)
    arch, img_size, device = shared.arch, shared.img_size, shared.compute.device
    if (checkpoint is None) == (arch is None or pretrained is None):
        raise ConfigError("embed needs either a CHECKPOINT or --model NAME with --pretrained FILE (not both)")
    if checkpoint is not None:
        if img_size is not None:
            raise ConfigError("--img-size goes with --model; a checkpoint has its own image size")
        classifier = shared.classifier(checkpoint)
        classes = classifier.classes
    else:
        classifier = pretrained_classifier(arch, pretrained, img_size=img_size or 224, device=device)
        classes = None  # its head's classes are ImageNet's (or unknown), not the folders' names
    classifier.embed([])  # an exported .onnx model is refused here, before any decoding
    labelled = labelled_files(inputs, classes)
    if not labelled:
        raise DataError(f"no input images found in {', '.join(inputs)}")
    rows, features, skipped = _embed_all(classifier, labelled, shared.compute)
    if not rows:
        raise DataError(f"none of the {len(labelled)} input file(s) could be read (first: {skipped[0]})")
    matrix = torch.cat(features)
    matrix = (torch.nn.functional.normalize(matrix, dim=1) if normalize else matrix).numpy().astype(DTYPES[dtype])
    info = {"model": classifier.meta.spec.arch, "source": classifier.meta.source,
            "img_size": str(classifier.meta.img_size)}
    _WRITERS[suffix](out, [path for path, _ in rows], [label for _, label in rows], matrix, info)
    if skipped:
        logger.warning(f"skipped {len(skipped)} unreadable file(s): {'; '.join(skipped[:10])}"
                       + (f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
    logger.info(f"embedded {len(rows)} of {len(labelled)} image(s) as {matrix.shape[1]} {dtype} features; wrote {out}")
    return {"images": len(labelled), "embedded": len(rows), "skipped": skipped, "dim": int(matrix.shape[1]),
            "out": str(out)}


def _embed_all(classifier: Classifier, labelled: list[tuple[str, str]], compute: Compute
               ) -> tuple[list[tuple[str, str]], list[torch.Tensor], list[str]]:
    """Decode (threads: PIL releases the GIL) and embed one batch at a time; the rows kept, their features and
    'path: reason' of each file skipped."""

    def decode(path: str) -> torch.Tensor | str:
        try:
            return classifier.decode(path)
        except ImageReadError as err:
            return err.reason

    rows, features, skipped, batch_size = [], [], [], compute.batch_size
    threads = compute.workers if compute.workers is not None else min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(labelled), desc="embed", unit="img", disable=not progress_enabled(compute.progress),
               leave=False)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(labelled), batch_size):
            batch = labelled[start:start + batch_size]
            decoded = list(pool.map(decode, [path for path, _ in batch]))
            images = []
            for row, image in zip(batch, decoded):
                if isinstance(image, str):
                    logger.warning(f"skipped {row[0]}: {image}")
                    skipped.append(f"{row[0]}: {image}")
                else:
                    rows.append(row)
                    images.append(image)
            if images:
                features.append(classifier.features(torch.stack(images)))  # N x D float32
            bar.update(len(batch))
    bar.close()
    return rows, features, skipped


def _write_npz(out: Path, paths: list[str], labels: list[str], features: np.ndarray, info: dict) -> None:
    # unicode arrays, not objects: np.load reads them without allow_pickle
    arrays = {key: np.array(value, dtype=str) for key, value in info.items()}
    with atomic_open(out, "wb") as handle:
        np.savez(handle, paths=np.array(paths, dtype=str), labels=np.array(labels, dtype=str), features=features,
                 **arrays)


def _write_csv(out: Path, paths: list[str], labels: list[str], features: np.ndarray, info: dict) -> None:
    digits = 5 if features.dtype == np.float16 else 9  # enough to read back the same fp16 / fp32 value
    with atomic_open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"] + [f"f{j}" for j in range(features.shape[1])])
        for path, label, row in zip(paths, labels, features):
            writer.writerow([path, label] + [f"{value:.{digits}g}" for value in row.tolist()])


def _write_parquet(out: Path, paths: list[str], labels: list[str], features: np.ndarray, info: dict) -> None:
    # Parquet strings must be valid UTF-8: a name that is not is shown as \xNN, as in the .csv (fileio.NAME_BYTES)
    columns = {"path": [readable(p) for p in paths], "label": [readable(label) for label in labels],
               **{f"f{j}": features[:, j] for j in range(features.shape[1])}}
    with atomic_path(out) as tmp:
        try:
            import pyarrow
            import pyarrow.parquet

            table = pyarrow.table(columns).replace_schema_metadata({f"resnetlab.{k}": v for k, v in info.items()})
            pyarrow.parquet.write_table(table, str(tmp))
        except ImportError:
            import pandas

            try:
                pandas.DataFrame(columns).to_parquet(tmp, index=False)
            except ImportError as err:
                raise ConfigError(f"--out {out}: writing .parquet needs pyarrow (pip install pyarrow): {err}") from None


_WRITERS = {".npz": _write_npz, ".csv": _write_csv, ".parquet": _write_parquet}
