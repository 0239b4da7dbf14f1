"""The one atomic write: a temp file in the target's folder, flushed and fsynced, then renamed over the target.
A crash, a full disk or Ctrl-C leaves the previous file intact and no temp file behind.

    with atomic_open(run_dir / "metrics.csv", "w", newline="") as handle: ...
    write_json(run_dir / "data_report.json", report)
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError, WriteError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: temp files get the permissions a plain open() would give

# File names that are not valid UTF-8 (latin1_\xe9.png, from older systems or unzip) reach Python as a str with
# surrogate escapes ('\udce9'), which UTF-8 files, terminals and Parquet refuse. One rule for what resnetlab writes:
# text for people (CSV, HTML, Parquet, PNG text, terminal) shows each such byte as \xNN, the way Python shows bytes
# (`errors=NAME_BYTES`, or `readable`); JSON keeps it exactly as a \udcNN escape that json.loads reads back
# (write_json); .npz arrays and checkpoints keep the str itself. os.fsencode(str) gives the name's bytes back.
NAME_BYTES = "resnetlab-name-bytes"


def _show_bytes(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
                    for c in err.object[err.start:err.end])
    return shown, err.end


codecs.register_error(NAME_BYTES, _show_bytes)


def readable(text: str) -> str:
    """``text`` as valid UTF-8: each undecodable byte of a file name shown as \\xNN ('latin1_\\xe9.png')."""
    return text.encode("utf-8", NAME_BYTES).decode("utf-8")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path``; renamed over ``path`` when the block ends without an error, removed if not."""
    path = Path(path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing whose result appears at ``path`` only once it is complete and on disk."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("errors", NAME_BYTES)  # a file name that is not UTF-8 is shown, not a crash
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def writable_file(path: str | Path, flag: str = "--out", example: str = "") -> Path:
    """``path`` checked as a file to write before any work is done: not a folder, and its folder made and writable;
    else a ConfigError naming it (one line, instead of a traceback after the work). ``example``: a file name to
    suggest when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name" + (f", e.g. {path / example}" if example
                                                                           else ""))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write in {path.parent}: {err.strerror or err}") from None
    return path


def write_failure(path: str | Path, err: BaseException, needed: int | None = None) -> WriteError:
    """One clear line for a write that failed: which file, why, how much space it needed and how much is free."""
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    size = f"needs ~{needed / 2**20:.1f} MiB, " if needed else ""
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:200]
    try:
        if needed and shutil.disk_usage(path.parent).free < needed and not getattr(err, "strerror", None):
            reason = "No space left on device"  # torch's writer says only "unexpected pos ..."
    except OSError:
        pass
    return WriteError(f"could not write {path}: {reason} ({size}{free}); the previous {path.name} (if any) is intact")


def write_text(path: str | Path, text: str, errors: str = NAME_BYTES) -> None:
    with atomic_open(path, "w", errors=errors) as handle:
        handle.write(text)


def write_json(path: str | Path, values: Any) -> None:
    # a surrogate escape can only be inside a JSON string: backslashreplace writes it as the valid escape \udcNN
    write_text(path, json.dumps(values, indent=2, ensure_ascii=False) + "\n", errors="backslashreplace")
