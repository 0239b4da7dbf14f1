"""Hugging Face ``datasets``: a ``save_to_disk`` folder or Parquet files, read as a ``DataSource``.

The image column is the first ``Image`` feature (else a column named image or img) and the label column the first
``ClassLabel`` (its names kept; else a column named label or labels, of class indices or names). Each split's encoded
images are written once to files in the cache folder, keyed by the data files' paths, sizes and times, so the decode
cache, checks, evaluation and exact resume work as for a folder.

    source = open_hf("beans_saved/")          # DatasetDict.save_to_disk(...): train, validation, test
    source = open_hf("data/train-00000-of-00001.parquet")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import write_json
from .shards import compact_notes
from .splits import DataSource, SplitData, settle_val

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"RIFF", "webp"))
EXPORT_FORMAT = 2  # +1 when the exported rows change (2: float labels read as ints)


def is_hf(spec: str) -> bool:
    """A save_to_disk folder (dataset_dict.json, or state.json), a .parquet file or a folder of them (or of data/)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if not path.is_dir():
        return False
    return ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
            or any(path.glob("*.parquet")) or any(path.glob("data/*.parquet")))


def open_hf(spec: str, *, val_split: float = 0.1, seed: int = 0, cache_dir: str | None = None) -> DataSource:
    """The data set at ``spec`` as a DataSource (image and label columns detected, ClassLabel names kept); its
    images are written once as files under ``cache_dir``/hf (data/cache.cache_folder)."""
    from .cache import cache_folder

    path, root = Path(spec).expanduser(), cache_folder(cache_dir)
    tables, files = _load(path, root)
    image_col, label_col, names = _columns(tables.get("train") or next(iter(tables.values())), path)
    if names is None:
        names = _names_from_values(tables, label_col)
    notes = [f"Hugging Face data set: image column '{image_col}', label column '{label_col}'"]
    key = _key(files, image_col, label_col)
    splits = {name: _export(name, table, (image_col, label_col), names, root / "hf" / f"{key}-{name}", spec, notes)
              for name, table in tables.items()}
    for name in [n for n, split in splits.items() if n != "train" and not len(split)]:
        notes.append(f"split {name} has no labelled rows: left out")  # never an empty validation split
        del splits[name]
    if "train" not in splits:
        raise DataError(f"{spec}: no train split (found {', '.join(tables)})")
    if len(names) < 2:
        raise DataError(f"{spec}: only {len(names)} class(es) in column '{label_col}'; a classifier needs two or more")
    settle_val(splits, notes, val_split, seed, "validation split")
    return DataSource(list(names), splits, "hugging face", spec, compact_notes(notes))


def _datasets():  # noqa: ANN202 - the module
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face data sets need the datasets package: pip install 'resnetlab[shards]'") from None
    datasets.disable_progress_bars()
    return datasets


def _load(path: Path, root: Path) -> tuple[dict, list[Path]]:
    """Split name -> datasets.Dataset, and the files they come from (for the cache key)."""
    datasets = _datasets()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            found = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files = [path] if path.is_file() else sorted([*path.glob("*.parquet"), *path.glob("data/*.parquet")])
            groups: dict[str, list[str]] = {}
            for file in files:
                stem = file.name.split("-")[0].split(".")[0].lower()
                groups.setdefault(SPLIT_NAMES.get(stem, "train"), []).append(str(file))
            found = {name: datasets.Dataset.from_parquet(group, cache_dir=str(root / "hf-arrow"))
                     for name, group in groups.items()}
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not a readable Hugging Face data set ({type(err).__name__}: {err})") from None
    tables = {}
    for name, table in found.items():
        if name.lower() not in SPLIT_NAMES:
            raise DataError(f"{path}: split '{name}' is not one of train, validation (val), test")
        tables[SPLIT_NAMES[name.lower()]] = table
    return tables, files


def _columns(table, path: Path) -> tuple[str, str, list[str] | None]:  # noqa: ANN001 - a datasets.Dataset
    datasets = _datasets()
    features = table.features
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((c for c in ("image", "img") if c in features), None)
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((c for c in ("label", "labels") if c in features), None)
    if image is None or label is None:
        raise DataError(f"{path}: no {'image' if image is None else 'label'} column found among "
                        f"{', '.join(features)} (expected an Image feature or a column 'image'; a ClassLabel or "
                        "a column 'label')")
    names = list(features[label].names) if isinstance(features[label], datasets.ClassLabel) else None
    return image, label, names


def _names_from_values(tables: dict, label_col: str) -> list[str]:
    column = tables["train"][label_col] if "train" in tables else []
    if any(isinstance(v, (list, tuple, dict)) for v in column[:1000]):
        raise DataError(f"label column '{label_col}' holds lists (several labels per image): Hugging Face data sets "
                        "are read as one label per image; write a CSV with a 'labels' column for multi-label data")
    values = {_label_value(v) for v in column}
    values.discard(None)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(i) for i in range(max(values, default=-1) + 1)]
    return sorted(str(v) for v in values)


def _label_value(value):  # noqa: ANN001, ANN202 - a cell of the label column
    """A label cell as a class index or name: integral floats (an int column with gaps, written by pandas) as ints,
    NaN and None as None (unlabelled)."""
    if isinstance(value, float):
        return None if value != value else int(value) if value.is_integer() else value
    return value


def _key(files: list[Path], image_col: str, label_col: str) -> str:
    parts = [f"{os.path.realpath(f)}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("\n".join([*parts, image_col, label_col, str(EXPORT_FORMAT)]).encode()).hexdigest()[:16]


def _export(name: str, table, columns: tuple[str, str], names: list[str], folder: Path, spec: str,  # noqa: ANN001
            notes: list[str]) -> SplitData:
    """The split's images as files in ``folder`` (written once) with their labels; rows without a usable label are
    noted. ``columns``: (image, label)."""
    image_col, label_col = columns
    index_file = folder / "rows.json"
    if not index_file.is_file():
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_json(tmp / "rows.json", _write_images(table, image_col, label_col, names, tmp))
            try:
                os.rename(tmp, folder)
            except OSError:  # another process (a torchrun rank) wrote it first
                if not index_file.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = json.loads(index_file.read_text(encoding="utf-8"))
    paths, labels, origins = [], [], []
    for row, file, label, why in rows:
        if label < 0:
            notes.append(f"warning: skipped {spec} split {name} row {row}: {why}")
            continue
        paths.append(str(folder / file))
        labels.append(label)
        origins.append(f"{Path(spec).name} split {name} row {row}")
    return SplitData(name, np.asarray(labels, dtype=np.int64), paths, origins=origins)


def _write_images(table, image_col: str, label_col: str, names: list[str], folder: Path) -> list:  # noqa: ANN001
    """Each row's encoded image bytes to a file (a local path it names is copied); [[row, file, label, why]]."""
    datasets = _datasets()
    if isinstance(table.features[image_col], datasets.Image):
        table = table.cast_column(image_col, datasets.Image(decode=False))
    index = {n: i for i, n in enumerate(names)}
    rows = []
    pairs = ((image, value) for batch in table.select_columns([image_col, label_col]).iter(batch_size=256)
             for image, value in zip(batch[image_col], batch[label_col]))  # a batch of rows in memory at a time
    for row, (image, value) in enumerate(pairs):
        value = _label_value(value)
        label = value if isinstance(value, int) else index.get(str(value), -1) if value is not None else -1
        why = "" if 0 <= label < len(names) else f"label {value!r} is not a class ({len(names)} classes)"
        data = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
        source = image.get("path") if isinstance(image, dict) else None
        if data is None and source and Path(source).is_file():
            data = Path(source).read_bytes()
        if data is None:
            label, why = -1, "no image bytes or readable path"
        ext = next((e for magic, e in MAGIC if data and data.startswith(magic)), "img")
        file = f"{row:08d}.{ext}"
        if data is not None:
            (folder / file).write_bytes(data)
        rows.append([row, file, label if why == "" else -1, why])
    return rows
