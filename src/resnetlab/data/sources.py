"""Where the images come from: split folders, class folders, a CSV file, or a built-in data set.

Every layout ends as the same ``DataSource``: sorted class names and, per split, either file paths
or already-decoded arrays, with integer labels.

    source = open_data("photos/", val_split=0.1, seed=0)
    source.splits["train"].paths[:3], source.classes
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..task import task_of
from . import builtin, hf, shards
from .csvrows import check_listed_files, csv_rows, delimiter_of
from .images import image_size, is_image_file, list_images
from .multilabel import check_single_labels, csv_task, read_multilabel_csv
from .splits import ClassNames, DataSource, SplitData, splits_from_column, stratified_split

CSV_SUFFIXES = (".csv", ".tsv")  # a .tsv is read as a tab-separated CSV
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def open_data(spec: str, *, val_split: float = 0.1, seed: int = 0, data_root: str | None = None,
              follow_links: bool = False, task: str = "auto", label_sep: str = "|",
              cache_dir: str | None = None) -> DataSource:
    """Recognise the layout of ``spec`` and list its images; raises DataError with the reason.

    ``follow_links``: also follow folder links that lead outside ``spec`` (never twice into the same folder).
    ``task``: auto, multiclass or multilabel (several labels per image: a CSV only, see data/multilabel.py);
    ``label_sep`` separates the names in a multi-label CSV's ``labels`` cells. ``cache_dir``: where shards' member
    indexes and Hugging Face data sets' image files are kept, once (default: $RESNETLAB_CACHE, else
    ~/.cache/resnetlab).
    """
    if task_of(task).multilabel and not (Path(spec).expanduser().is_file() and spec.lower().endswith(CSV_SUFFIXES)):
        raise DataError(f"--task multilabel needs a CSV with a 'labels' column (names separated by '{label_sep}') "
                        f"or one 0/1 column per label; {spec} is not a CSV file")
    if shards.is_shards(spec):  # a folder of train-*.tar, a .tar file or 'train-{000000..000009}.tar'
        return shards.open_shards(spec, val_split=val_split, seed=seed, cache_dir=cache_dir)
    if hf.is_hf(spec):  # a Hugging Face save_to_disk folder or Parquet files
        return hf.open_hf(spec, val_split=val_split, seed=seed, cache_dir=cache_dir)
    return _open(spec, val_split, seed, data_root, follow_links, task, label_sep)


def open_configured(settings: object) -> DataSource:
    """``open_data`` with a run's settings (a TrainConfig, or anything with its data, val_split, seed, data_root,
    follow_links, task, label_sep and cache_dir): training's one call."""
    return open_data(settings.data, val_split=settings.val_split, seed=settings.seed, data_root=settings.data_root,
                     follow_links=settings.follow_links, task=settings.task, label_sep=settings.label_sep,
                     cache_dir=settings.cache_dir)


def _open(spec: str, val_split: float, seed: int, data_root: str | None, follow_links: bool, asked: str,
          label_sep: str) -> DataSource:
    path = Path(spec).expanduser()
    if not path.exists() and spec.lower() in builtin.BUILTIN_NAMES:
        return builtin.load_builtin(spec.lower(), data_root=data_root)
    if not path.exists():
        names = ", ".join(builtin.BUILTIN_NAMES)
        raise DataError(f"data '{spec}' is neither an existing folder or CSV file nor a built-in name ({names})")
    if path.is_file():
        if path.suffix.lower() not in CSV_SUFFIXES:
            raise DataError(f"data file {path} is not a .csv (or .tsv) file; give a folder, a CSV or a built-in name")
        return _from_csv(path, val_split=val_split, seed=seed, asked=asked, label_sep=label_sep)
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in sorted(path.iterdir())
                  if d.is_dir() and d.name.lower() in SPLIT_ALIASES}
    parents = list(split_dirs.values()) or [path]
    scan = _Scanner(path, follow_links, parents + [d for p in parents for d in p.iterdir() if d.is_dir()])
    if "train" in split_dirs:
        return _from_split_folders(path, split_dirs, scan, val_split=val_split, seed=seed)
    if split_dirs:
        found = ", ".join(d.name for d in split_dirs.values())
        raise DataError(f"{path} has {found} but no train/ folder; add train/ or point at a class-folder tree")
    return _from_class_folders(path, scan, val_split=val_split, seed=seed)


def default_img_size(source: DataSource) -> int:
    """The training size when none is given: a built-in's native side, else the median shorter side of up to
    200 training images (rounded to 8, clamped to 32-224)."""
    if source.native_size:
        return max(16, source.native_size)
    paths = source.splits["train"].paths or []
    sample = paths[:: max(1, len(paths) // 200)][:200]
    sides = [min(s) for s in (image_size(p) for p in sample) if s]
    if not sides:
        return 224
    return int(min(224, max(32, round(float(np.median(sides)) / 8) * 8)))


# ---------------------------------------------------------------------- folder layouts
class _Scanner:
    """Lists class folders under one data root: each real folder read once across all classes and splits (a link
    into another class's folder adds nothing), no link out of the root unless ``follow_links``, and every folder
    or file left out is a note."""

    def __init__(self, root: Path, follow_links: bool, tops: list[Path]):
        self.root, self.follow_links, self.notes = root, follow_links, []
        # the data root, split folders and class folders are read as what they are, never through a link
        self.seen = {os.path.realpath(path) for path in [root, *tops]}

    def class_folders(self, parent: Path) -> dict[str, list[str]]:
        """Class name -> image paths, one class per sub-folder (images found recursively)."""
        found: dict[str, list[str]] = {}
        names = ClassNames()
        hidden = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("."))
        if hidden:
            self.notes.append(f"warning: hidden folders in {parent} are not classes and were left out: "
                              f"{', '.join(hidden)}")
        for folder in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.setdefault(names(folder.name), []).extend(
                str(p) for p in list_images(folder, notes=self.notes, root=self.root,
                                            follow_links_out=self.follow_links, seen=self.seen))
        self.notes += names.merged_note(parent)
        return found


def _labelled(found: dict[str, list[str]], classes: list[str], name: str, where: Path) -> SplitData:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for class_name, files in found.items():
        if class_name not in index:
            raise DataError(f"class folder '{class_name}' in {where} does not exist in the training split "
                            f"(classes: {', '.join(classes)})")
        paths += files
        labels += [index[class_name]] * len(files)
    return SplitData(name, np.asarray(labels, dtype=np.int64), paths)


def _classes_from(found: dict[str, list[str]], where: Path, notes: list[str]) -> list[str]:
    empty = [c for c, files in found.items() if not files]
    if empty:
        notes.append(f"warning: empty class folders ignored in {where}: {', '.join(empty)}")
    classes = sorted(c for c, files in found.items() if files)
    if not classes:
        loose = [p for p in where.iterdir() if p.is_file() and is_image_file(p)]
        hint = " (images lie directly in it: put them in one sub-folder per class)" if loose else ""
        raise DataError(f"no class folders with images found in {where}{hint}")
    if len(classes) < 2:
        raise DataError(f"only one class ('{classes[0]}') found in {where}: a classifier needs at least two")
    return classes


def _from_split_folders(root: Path, split_dirs: dict[str, Path], scan: _Scanner, *, val_split: float,
                        seed: int) -> DataSource:
    notes: list[str] = scan.notes
    train_found = scan.class_folders(split_dirs["train"])
    classes = _classes_from(train_found, split_dirs["train"], notes)
    splits = {"train": _labelled({c: train_found[c] for c in classes}, classes, "train", split_dirs["train"])}
    for name in ("val", "test"):
        if name in split_dirs:
            found = {c: f for c, f in scan.class_folders(split_dirs[name]).items() if f}
            splits[name] = _labelled(found, classes, name, split_dirs[name])
    if "val" not in splits and "test" in splits:
        notes.append(f"no val/ folder: {split_dirs['test'].name}/ serves as the validation split")
    elif "val" not in splits:
        notes.append(f"no val/ or test/ folder: {val_split:.0%} of train/ is held out for validation")
        splits["train"], splits["val"] = stratified_split(splits["train"], val_split, seed)
    return DataSource(classes, splits, "split folders", str(root), notes)


def _from_class_folders(root: Path, scan: _Scanner, *, val_split: float, seed: int) -> DataSource:
    notes: list[str] = scan.notes
    found = scan.class_folders(root)
    classes = _classes_from(found, root, notes)
    everything = _labelled({c: found[c] for c in classes}, classes, "all", root)
    train, val = stratified_split(everything, val_split, seed)
    notes.append(f"class folders only: stratified split, {val_split:.0%} for validation (seed {seed})")
    return DataSource(classes, {"train": train, "val": val}, "class folders", str(root), notes)


# ---------------------------------------------------------------------- CSV
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]  # UTF-32 LE first: it starts like UTF-16 LE


def _read_csv_text(csv_path: Path) -> str:
    """The CSV's text: UTF-8, or UTF-16/32 (and UTF-8) with a byte-order mark, as spreadsheets save them."""
    data = csv_path.read_bytes()
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{csv_path} line {line}: not valid {encoding} (byte {data[err.start]:#04x}); save the CSV "
                        "as UTF-8 (or UTF-16/UTF-32 with a byte-order mark)") from None


# other spellings of the two columns, as Kaggle-style CSVs name them: read as 'path' and 'label' where the CSV has
# no column of that name and exactly one of these
PATH_SPELLINGS = ("filename", "file_name", "filepath", "file_path", "image", "image_path", "image_name", "img",
                  "img_path")
LABEL_SPELLINGS = ("class", "class_name", "category", "target")


def _canonical_header(header: list[str]) -> tuple[list[str], list[str]]:
    """``header`` with one other spelling of 'path' (and of 'label', unless a multi-label 'labels' column is there)
    renamed, and what was renamed, in words."""
    columns = [h.strip().lower() for h in header]
    renamed, said = list(header), []
    for name, spellings in (("path", PATH_SPELLINGS), ("label", LABEL_SPELLINGS)):
        if name in columns or (name == "label" and "labels" in columns):
            continue
        found = [i for i, column in enumerate(columns) if column in spellings]
        if len(found) == 1:
            renamed[found[0]] = name
            said.append(f"'{header[found[0]].strip()}' as {name}")
    return renamed, said


def _from_csv(csv_path: Path, *, val_split: float, seed: int, asked: str = "auto", label_sep: str = "|"
              ) -> DataSource:
    """``asked``: the --task flag (auto, multiclass, multilabel); the CSV's columns decide under auto."""
    base = csv_path.parent
    rows: list[tuple[str, str, str | None, int]] = []
    names = ClassNames()
    text = _read_csv_text(csv_path)
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else delimiter_of(text.split("\n", 1)[0])
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path} is empty; expected a header line 'path,label[,split]'")
        given, (header, renamed) = header, _canonical_header(header)
        read_as = [f"{csv_path.name}: read column {', '.join(renamed)}"] if renamed else []
        if delimiter != ",":
            separator = "tabs" if delimiter == "\t" else f"'{delimiter}'"
            read_as.append(f"{csv_path.name}: fields separated by {separator}")
        columns = [h.strip().lower() for h in header]
        if task_of(csv_task(csv_path, header, columns, asked)).multilabel:
            source = read_multilabel_csv(csv_path, header, reader, label_sep=label_sep, val_split=val_split,
                                         seed=seed, aliases=SPLIT_ALIASES)
            return replace(source, notes=read_as + source.notes)
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DataError(f"{csv_path} line 1: missing column(s) {', '.join(missing)}; found columns "
                            f"{given}; expected 'path,label' (or one of filename, image, ... and one of class, "
                            "category, ...) and optionally 'split'")
        col_label = columns.index("label")
        for line_no, row, path, split in csv_rows(csv_path, reader, columns, SPLIT_ALIASES):
            label = names(row[col_label].strip())
            if not label:
                raise DataError(f"{csv_path} line {line_no}: empty label for {path}")
            rows.append((path, label, split, line_no))
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    if asked == "auto":
        check_single_labels(csv_path, rows, label_sep)
    rows, windows = check_listed_files(csv_path, rows)

    train_labels = {label for _, label, split, _ in rows if split in (None, "train")}
    classes = sorted(train_labels)
    if len(classes) < 2:
        raise DataError(f"{csv_path}: only {len(classes)} class label(s) in the training rows; need two or more")
    index = {c: i for i, c in enumerate(classes)}
    for _, label, split, line in rows:
        if label not in index:
            raise DataError(f"{csv_path} line {line}: label '{label}' in the {split} split does not occur in "
                            f"the training rows")

    def make(name: str, subset: list[tuple[str, str, str | None, int]]) -> SplitData:
        return SplitData(name, np.asarray([index[r[1]] for r in subset], dtype=np.int64),
                         [str(base / r[0]) for r in subset], origins=[f"{csv_path.name} line {r[3]}" for r in subset])

    notes: list[str] = read_as + windows + names.merged_note(csv_path)
    if "split" not in columns:
        train, val = stratified_split(make("all", rows), val_split, seed)
        notes.append(f"CSV without a split column: stratified split, {val_split:.0%} for validation (seed {seed})")
        return DataSource(classes, {"train": train, "val": val}, "csv", str(csv_path), notes)
    return splits_from_column(classes, rows, make, csv_path, notes, val_split, seed)
