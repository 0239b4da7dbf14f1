"""The shapes every data source ends as: a ``DataSource`` of named ``SplitData`` (paths or arrays, int labels),
and the operations on them that every verb shares (stratified hold-out, choosing and relabelling a split).

    train, val = stratified_split(everything, 0.1, seed=0)
    name, notes = select_split(source, "val")
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

SEQUENTIAL_SHARE = 0.5  # a subset of a shard-backed split keeps its shards (streamed in sequence) above this


@dataclass
class SplitData:
    name: str
    labels: np.ndarray  # int64: one class per image (N), or multi-label 0/1 (N x K, DataSource.task "multilabel")
    paths: list[str] | None = None  # file-backed splits
    images: np.ndarray | None = None  # decoded splits (built-ins): uint8, N x H x W x C
    origins: list[str] | None = None  # where each image was declared (CSV line), for messages
    shards: dict[str, list[int]] | None = None  # tar shards: each shard file's positions, in its order (shards.py)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> SplitData:
        """The images at positions ``keep`` (bool mask or indices)."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        shards = None
        # each kept record's new position, in its shard's order; a small share (a race's slice) is read at random by
        # offset instead, as reading its shards in sequence would read mostly records it does not hold
        if self.shards is not None and len(index) >= SEQUENTIAL_SHARE * len(self):
            moved = {int(old): new for new, old in enumerate(index)}
            shards = {url: [moved[p] for p in positions if p in moved] for url, positions in self.shards.items()}
        return SplitData(
            self.name, self.labels[index],
            [self.paths[i] for i in index] if self.paths is not None else None,
            self.images[index] if self.images is not None else None,
            [self.origins[i] for i in index] if self.origins is not None else None,
            shards,
        )

    def describe(self, i: int) -> str:
        """A human name for image ``i``: its path (and CSV line), or 'name[i]' for arrays."""
        if self.paths is None:
            return f"{self.name}[{i}]"
        return self.paths[i] + (f" ({self.origins[i]})" if self.origins else "")


@dataclass
class DataSource:
    classes: list[str]
    splits: dict[str, SplitData]
    kind: str  # "split folders", "class folders", "csv" or "built-in"
    location: str
    notes: list[str] = field(default_factory=list)
    native_size: int | None = None  # built-ins: their image side in pixels
    task: str = "multiclass"  # or "multilabel": each split's labels are N x K multi-hot (data/multilabel.py)

    @property
    def val_name(self) -> str:
        """The split used for validation during training."""
        return "val" if "val" in self.splits else "test"

    def class_counts(self, split: str) -> dict[str, int]:
        labels = self.splits[split].labels
        counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(self.classes))
        return dict(zip(self.classes, (int(c) for c in counts)))


class ClassNames:
    """Class names read from folder names or CSV cells, in Unicode NFC: "café" typed (NFC) and as macOS stores file
    names (NFD) print alike and are one class, not two (issue 27). ``merged_note`` says which names had several
    spellings."""

    def __init__(self) -> None:
        self.spellings: dict[str, set[str]] = {}

    def __call__(self, name: str) -> str:
        normal = unicodedata.normalize("NFC", name)
        self.spellings.setdefault(normal, set()).add(name)
        return normal

    def merged_note(self, where: object) -> list[str]:
        """One note (in a list, or none) naming the class names that were written in more than one form."""
        merged = [name for name, forms in self.spellings.items() if len(forms) > 1]
        if not merged:
            return []
        shown = ", ".join(f"'{name}'" for name in merged[:5]) + (f" and {len(merged) - 5} more" if len(merged) > 5
                                                                   else "")
        return [f"{len(merged)} class name(s) in {where} are written in more than one Unicode form (NFC and NFD, "
                f"which look alike) and were merged into one class each: {shown}"]


def settle_val(splits: dict[str, SplitData], notes: list[str], val_split: float, seed: int, what: str) -> None:
    """Without a val split, the test split validates; without either, ``val_split`` of train is held out (stratified).
    ``what`` names the missing split in the note ("val-*.tar shards", "validation split")."""
    if "val" not in splits and "test" in splits:
        notes.append(f"no {what}: the test split serves as the validation split")
    elif "val" not in splits:
        notes.append(f"no {what} or test split: {val_split:.0%} of train is held out for validation (seed {seed})")
        splits["train"], splits["val"] = stratified_split(splits["train"], val_split, seed)


def stratified_split(split: SplitData, val_fraction: float, seed: int) -> tuple[SplitData, SplitData]:
    """Hold out ``val_fraction`` of every class (at least one image of each class with two or more).

    Written by hand because scikit-learn's train_test_split refuses classes with a single image,
    which small user folders often have. Multi-label images are stratified by their rarest label.
    """
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(split), dtype=bool)
    keys = split.labels if split.labels.ndim == 1 else rarest_label(split.labels)
    for label in np.unique(keys):
        members = np.flatnonzero(keys == label)
        rng.shuffle(members)
        count = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        is_val[members[:count]] = True
    train, val = split.subset(~is_val), split.subset(is_val)
    train.name, val.name = "train", "val"
    return train, val


def rarest_label(labels: np.ndarray) -> np.ndarray:
    """Per image of an N x K multi-hot matrix, its label that is rarest in the matrix (-1: no label): the stratum
    that keeps rare labels in both parts of a split."""
    counts = labels.sum(axis=0)
    ranked = np.where(labels > 0, counts[None, :], np.iinfo(np.int64).max)
    return np.where(labels.any(axis=1), ranked.argmin(axis=1), -1)


def select_split(source: DataSource, split: str) -> tuple[str, list[str]]:
    """The split to use and notes; 'val' falls back to 'test' when that is what validated the run."""
    notes = []
    if split not in source.splits:
        if split == "val" and "test" in source.splits:
            notes.append("no val split in the data: using test, as training did for validation")
            return "test", notes
        hint = ("; a folder without a test/ folder is split into train and val only: --split val scores the "
                "images training held out" if split == "test" and "val" in source.splits else "")
        raise DataError(f"split '{split}' is not in the data (available: {', '.join(source.splits)}){hint}")
    return split, notes


def relabel(split: SplitData, data_classes: list[str], model_classes: list[str], where: str) -> SplitData:
    """Map the data's class indices onto the model's, by name; unknown classes are an error."""
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise DataError(f"{where} has class(es) the model was not trained on: {', '.join(unknown[:10])} "
                        f"(model classes: {', '.join(model_classes[:20])})")
    mapping = np.asarray([index[c] for c in data_classes], dtype=np.int64)
    if split.labels.ndim == 2:  # multi-label: the data's columns moved to the model's
        labels = np.zeros((len(split), len(model_classes)), dtype=np.int64)
        labels[:, mapping] = split.labels
        return SplitData(split.name, labels, split.paths, split.images, split.origins, split.shards)
    return SplitData(split.name, mapping[split.labels], split.paths, split.images, split.origins, split.shards)


def splits_from_column(classes: list[str], rows: list, make, csv_path, notes: list[str], val_split: float,  # noqa: ANN001
                       seed: int, task: str = "multiclass") -> DataSource:
    """A CSV's rows by their split column (``row[2]``): train, val, test; without val rows the test rows validate,
    without either a stratified share of train does. ``make(name, rows)`` builds one SplitData."""
    splits = {name: make(name, [r for r in rows if r[2] == name]) for name in ("train", "val", "test")}
    splits = {name: s for name, s in splits.items() if len(s)}
    if "train" not in splits:
        raise DataError(f"{csv_path}: no rows with split 'train'")
    if "val" not in splits and "test" in splits:
        notes.append("CSV has no 'val' rows: the 'test' rows serve as the validation split")
    elif "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_split, seed)
        notes.append(f"CSV has only 'train' rows: {val_split:.0%} held out for validation (seed {seed})")
    return DataSource(classes, splits, "csv", str(csv_path), notes, task=task)
