"""Multi-label data: a CSV whose images carry several labels each, read into an N x K multi-hot matrix, and the
label statistics ``resnetlab check`` reports (per-label counts, co-occurrence, labels never or always present).

Two CSV layouts: a ``labels`` column of names separated by ``label_sep`` (an empty cell: none of the labels), or
one 0/1 column per label next to ``path`` (and an optional ``split``). Every mistake names the file and line.

    task = csv_task(csv_path, header, columns, "auto")          # "multilabel" when the CSV has such a column
    source = read_multilabel_csv(csv_path, header, reader, label_sep="|", val_split=0.1, seed=0, aliases=...)
    source.splits["train"].labels.shape                          # (N, K) int64 of 0/1
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..task import MULTICLASS, MULTILABEL
from .csvrows import check_listed_files, csv_rows
from .splits import ClassNames, DataSource, SplitData, splits_from_column, stratified_split

# Characters people separate labels with; a cell using one that is not --label-sep is checked for that mistake.
OTHER_SEPARATORS = (",", ";", "|", "/", "+")
BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
TOP_PAIRS = 10  # co-occurring label pairs listed by check


def csv_task(csv_path: Path, header: list[str], columns: list[str], asked: str) -> str:
    """"multilabel" for a ``labels`` column or 0/1 columns (or ``asked``, the --task flag, multilabel with a ``label``
    column), else "multiclass"; --task multiclass with a multi-label layout is an error naming the column."""
    extra = [h for h, c in zip(header, columns) if c not in ("path", "label", "labels", "split")]
    if "label" in columns and "labels" in columns:
        raise DataError(f"{csv_path} line 1: both a 'label' and a 'labels' column; keep 'label' (one class per image) "
                        "or 'labels' (several, separated by --label-sep)")
    layout = "labels" in columns or ("label" not in columns and "path" in columns and bool(extra))
    if asked == MULTICLASS and layout:
        what = "a 'labels' column" if "labels" in columns else f"0/1 columns ({', '.join(extra[:5])})"
        raise DataError(f"{csv_path} line 1: {what} (several labels per image) but --task multiclass; use --task "
                        "multilabel (or auto), or give one class per image in a 'label' column")
    return MULTILABEL if layout or (asked == MULTILABEL and "label" in columns) else MULTICLASS


def check_single_labels(csv_path: Path, rows: list[tuple[str, str, str | None, int]], label_sep: str) -> None:
    """--task auto with a 'label' column: a cell holding the label separator is most likely several labels."""
    for _, label, _, line in rows:
        if label_sep in label:
            raise DataError(f"{csv_path} line {line}: label '{label}' contains the label separator '{label_sep}': "
                            "for several labels per image name the column 'labels' (or pass --task multilabel); "
                            "for a class name with that character pass --task multiclass")


def read_multilabel_csv(csv_path: Path, header: list[str], reader: Iterator[list[str]], *, label_sep: str,
                        val_split: float, seed: int, aliases: dict[str, str]) -> DataSource:
    """The rows of a multi-label CSV (its header already read) as a DataSource of multi-hot label matrices."""
    columns = [h.strip().lower() for h in header]
    if "path" not in columns:
        raise DataError(f"{csv_path} line 1: missing column 'path'; found columns {header}")
    named = "labels" if "labels" in columns else "label" if "label" in columns else None
    spelling = ClassNames()  # NFC: "café" typed and "café" as macOS writes it are one label
    if named is None:
        label_columns = [i for i, c in enumerate(columns) if c not in ("path", "split")]
        names = [spelling(header[i].strip()) for i in label_columns]
        _check_column_names(csv_path, names)
    rows: list[tuple[str, list[str], str | None, int]] = []
    for line_no, row, path, split in csv_rows(csv_path, reader, columns, aliases):
        if named is not None:
            labels = list(dict.fromkeys(spelling(name) for name in _split_cell(csv_path, line_no,
                                                                               row[columns.index(named)], label_sep)))
        else:
            labels = [name for name, i in zip(names, label_columns) if _binary(csv_path, line_no, name, row[i])]
        rows.append((path, labels, split, line_no))
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    if named is not None:
        _check_separator(csv_path, rows, label_sep)
        names = sorted({label for _, labels, split, _ in rows if split in (None, "train") for label in labels})
        _check_known(csv_path, rows, names)
    if not names:
        raise DataError(f"{csv_path}: no image in the training rows has a label; a multi-label set needs at least one")
    rows, windows = check_listed_files(csv_path, rows)
    source = _source(csv_path, rows, names, "split" in columns, val_split, seed)
    source.notes += windows + spelling.merged_note(csv_path)
    return source


def _check_column_names(csv_path: Path, names: list[str]) -> None:
    if any(not name for name in names):
        raise DataError(f"{csv_path} line 1: a 0/1 label column has no name")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise DataError(f"{csv_path} line 1: label column(s) {', '.join(repeated)} appear more than once (names "
                        "compared in Unicode NFC, where 'café' typed and as macOS writes it are one name)")


def _binary(csv_path: Path, line: int, name: str, cell: str) -> int:
    value = BINARY.get(cell.strip())
    if value is None:
        raise DataError(f"{csv_path} line {line}: column '{name}' holds '{cell}'; a label column takes 0 or 1 (a CSV "
                        "without a 'label' or 'labels' column has one 0/1 column per label; for one class per image "
                        "name its column 'label')")
    return value


def _split_cell(csv_path: Path, line: int, cell: str, label_sep: str) -> list[str]:
    """The label names of one cell ('' -> none); an empty name between separators is a mistake."""
    cell = cell.strip()
    if not cell:
        return []
    parts = [part.strip() for part in cell.split(label_sep)]
    if any(not part for part in parts):
        raise DataError(f"{csv_path} line {line}: empty label in '{cell}' (a separator '{label_sep}' at the start, "
                        "the end or twice in a row)")
    return list(dict.fromkeys(parts))  # a repeated label counts once


def _check_separator(csv_path: Path, rows: list[tuple[str, list[str], str | None, int]], label_sep: str) -> None:
    """Two mistakes a wrong separator leaves: a 'label' whose parts, split at another separator, are all labels of
    other rows ('red,dress' beside 'red' and 'dress'); or, when no cell uses ``label_sep`` at all, cells whose
    parts at another separator recur across different cells ('red,dress' and 'red,shirt' share 'red'). Class names
    that merely contain such a character ('Smith, John') pass: their parts are not labels, nor shared."""
    whole = {label for _, labels, _, _ in rows for label in labels}
    uses_sep = any(len(labels) > 1 for _, labels, _, _ in rows)
    for char in (c for c in OTHER_SEPARATORS if c not in label_sep):
        cells_with_part: dict[str, set[str]] = {}
        for _, labels, _, line in rows:
            for label in labels:
                parts = [p.strip() for p in label.split(char)]
                if len(parts) < 2 or not all(parts):
                    continue
                if all(p in whole for p in parts):
                    raise DataError(f"{csv_path} line {line}: '{label}' looks like labels separated by '{char}' "
                                    f"({', '.join(_quoted(parts))} are labels of other rows) but the separator "
                                    f"is '{label_sep}'; fix the cell or pass --label-sep '{char}'")
                for part in parts:
                    cells_with_part.setdefault(part, set()).add(label)
                    if not uses_sep and len(cells_with_part[part]) > 1:
                        raise DataError(f"{csv_path} line {line}: no cell uses the label separator '{label_sep}', "
                                        f"but '{label}' and '{min(cells_with_part[part] - {label})}' share the part "
                                        f"'{part}' at '{char}': if '{char}' separates labels pass --label-sep "
                                        f"'{char}'")


def _quoted(parts: list[str]) -> list[str]:
    return [f"'{p}'" for p in parts]


def _check_known(csv_path: Path, rows: list[tuple[str, list[str], str | None, int]], names: list[str]) -> None:
    known = set(names)
    for _, labels, split, line in rows:
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise DataError(f"{csv_path} line {line}: label '{unknown[0]}' in the {split} split does not occur in the "
                            "training rows")


def _source(csv_path: Path, rows: list[tuple[str, list[str], str | None, int]], names: list[str], has_split: bool,
            val_split: float, seed: int) -> DataSource:
    index = {name: i for i, name in enumerate(names)}

    def make(name: str, subset: list) -> SplitData:
        labels = np.zeros((len(subset), len(names)), dtype=np.int64)  # N x K multi-hot
        for row, (_, row_labels, _, _) in enumerate(subset):
            labels[row, [index[label] for label in row_labels]] = 1
        return SplitData(name, labels, [str(csv_path.parent / r[0]) for r in subset],
                         origins=[f"{csv_path.name} line {r[3]}" for r in subset])

    notes = [f"multi-label CSV: {len(names)} labels"]
    if not has_split:
        train, val = stratified_split(make("all", rows), val_split, seed)
        notes.append(f"CSV without a split column: split by each image's rarest label, {val_split:.0%} for "
                     f"validation (seed {seed})")
        return DataSource(names, {"train": train, "val": val}, "csv", str(csv_path), notes, task="multilabel")
    return splits_from_column(names, rows, make, csv_path, notes, val_split, seed, task="multilabel")


# ---------------------------------------------------------------------- statistics (check, data_report.json)
def label_statistics(classes: list[str], labels: np.ndarray) -> dict:
    """Per-label counts, images with no label, the most frequent co-occurring pairs, labels never / always present
    (labels: N x K 0/1)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), len(classes))
    counts = labels.sum(axis=0)
    together = labels.T @ labels  # K x K: images holding both labels
    pairs = sorted(((int(together[i, j]), classes[i], classes[j]) for i, j in itertools.combinations(
        range(len(classes)), 2) if together[i, j] > 0), key=lambda t: (-t[0], t[1], t[2]))[:TOP_PAIRS]
    return {"images": int(len(labels)), "no_label": int((labels.sum(axis=1) == 0).sum()),
            "mean_labels": float(labels.sum(axis=1).mean()) if len(labels) else 0.0,
            "counts": {c: int(n) for c, n in zip(classes, counts)},
            "top_pairs": [{"labels": [a, b], "images": n} for n, a, b in pairs],
            "never": [c for c, n in zip(classes, counts) if n == 0],
            "always": [c for c, n in zip(classes, counts) if len(labels) and n == len(labels)]}


def label_problems(split: str, stats: dict) -> list[dict]:
    """A label that never or always occurs in a split teaches nothing there (and has no AP on it)."""
    problems = []
    for kind, text in (("never", "never occurs"), ("always", "is on every image")):
        for name in stats[kind]:
            problems.append({"severity": "warning", "split": split, "path": "",
                             "reason": f"label '{name}' {text} in the {split} split: the model cannot learn (or "
                                       "be scored on) telling it apart there"})
    return problems


def format_statistics(statistics: dict[str, dict]) -> list[str]:
    """Lines of ``resnetlab check``'s output for the multi-label statistics of each split."""
    lines = []
    for name, stats in statistics.items():
        lines.append(f"  {name}: {stats['no_label']} of {stats['images']} images without a label, "
                     f"{stats['mean_labels']:.2f} labels per image on average")
        if stats["top_pairs"]:
            lines.append("    co-occurring most: " + ", ".join(
                f"{p['labels'][0]} + {p['labels'][1]} ({p['images']})" for p in stats["top_pairs"]))
    return lines
