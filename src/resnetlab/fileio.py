"""The one atomic write: a temp file in the target's folder, flushed and fsynced, then renamed over the target.
A crash, a full disk or Ctrl-C leaves the previous file intact and no temp file behind.

    with atomic_open(run_dir / "metrics.csv", "w", newline="") as handle: ...
    write_json(run_dir / "data_report.json", report)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import WriteError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: temp files get the permissions a plain open() would give

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
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


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


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, values: Any) -> None:
    write_text(path, json.dumps(values, indent=2, ensure_ascii=False) + "\n")
