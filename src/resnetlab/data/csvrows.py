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


def check_listed_files(csv_path: Path, rows: list[tuple]) -> tuple[list[tuple], list[str]]:
    """Every (path, labels, split, line) row's file exists beside ``csv_path``; else one error naming the first five
    by line. A path written with backslashes (a CSV made on Windows) whose file exists with slashes is read so.
    Returns the rows (paths so read) and a note saying how many were."""
    base = csv_path.parent

    def found(path: str) -> bool:
        return (base / path).is_file() or split_member(base / path) is not None  # a file or a shard's member

    fixed, missing, windows = [], [], 0
    for path, labels, split, line in rows:
        if not found(path):
            if "\\" in path and found(path.replace("\\", "/")):
                path, windows = path.replace("\\", "/"), windows + 1
            else:
                missing.append((line, path))
        fixed.append((path, labels, split, line))
    if missing:
        listed = "; ".join(f"line {line}: {path}" for line, path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{csv_path}: {len(missing)} listed file(s) do not exist (paths are relative to {base}): "
                        f"{listed}{more}")
    note = [f"{csv_path.name}: read '\\' in {windows} path(s) as a folder separator (a CSV written on Windows)"]
    return fixed, note if windows else []


DELIMITERS = (",", ";", "\t")  # spreadsheets in many locales save ';'-separated "CSV" files; .tsv is tab-separated


def delimiter_of(header_line: str) -> str:
    """The CSV's field separator, from its header line: ',' when the line has one, else ';' or a tab, whichever it
    has more of (a header of one column: ',')."""
    if "," in header_line:
        return ","
    counts = {d: header_line.count(d) for d in DELIMITERS[1:]}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","
