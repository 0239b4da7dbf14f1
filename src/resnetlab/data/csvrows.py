"""What the two CSV readers share (one class per image: data/sources.py; several: data/multilabel.py): each row's
field count, path and split checked, and the listed files found, every mistake named by its line.

    for line_no, row, path, split in csv_rows(csv_path, reader, columns, SPLIT_ALIASES): ...
    check_listed_files(csv_path, rows)        # rows: (path, labels, split, line)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import DataError
from .tarmembers import split_member


def csv_rows(csv_path: object, reader: Iterable[list[str]], columns: list[str], aliases: dict[str, str]
             ) -> Iterator[tuple[int, list[str], str, str | None]]:
    """(line number, cells, path, split or None) of each non-empty row of a CSV whose header gave ``columns``
    (lower-cased): the field count, a non-empty 'path' and a 'split' among ``aliases`` checked, naming the line."""
    col_path, col_split = columns.index("path"), columns.index("split") if "split" in columns else None
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(columns):
            raise DataError(f"{csv_path} line {line_no}: {len(row)} fields, expected {len(columns)}")
        path = row[col_path].strip()
        if not path:
            raise DataError(f"{csv_path} line {line_no}: empty path")
        split = None
        if col_split is not None:
            raw = row[col_split].strip().lower()
            if raw not in aliases:
                raise DataError(f"{csv_path} line {line_no}: split '{row[col_split]}' is not one of train, val, test")
            split = aliases[raw]
        yield line_no, row, path, split


def check_listed_files(csv_path: Path, rows: Iterable[tuple]) -> None:
    """Every (path, labels, split, line) row's file exists beside ``csv_path``; else one error naming the first five
    by line."""
    base = csv_path.parent
    missing = [(line, path) for path, _, _, line in rows
               if not (base / path).is_file() and split_member(base / path) is None]  # a file or a shard's member
    if missing:
        listed = "; ".join(f"line {line}: {path}" for line, path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{csv_path}: {len(missing)} listed file(s) do not exist (paths are relative to {base}): "
                        f"{listed}{more}")
