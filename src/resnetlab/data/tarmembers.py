"""Images inside tar shards, named ``SHARD.tar#MEMBER`` and read in place: no unpacked copy.

A shard's record is a path like any other file's (``/data/shards/train-000003.tar#00000042.jpg``): every reader
of single records (the decode cache, the random-order streamed loader, ``check``, ``predict``, ``explain``) gets its
bytes through ``images.read_regular``, which seeks to the member's data; the sequential shard stream
(shardstream.py) reads whole shards at the same offsets. Where each member's data starts comes from the standard
library's ``tarfile`` headers (the data set's index, shards.py, or read once per shard and process; the images
themselves are skipped over), so one record costs one seek and one read, as a file does.

    read_member("/data/train-000000.tar", "00000042.jpg")  # the JPEG's bytes
"""

from __future__ import annotations

import os
import re
import tarfile
from functools import lru_cache

from ..errors import ImageReadError

MEMBER = re.compile(r"(.*?\.tar)#(.+)", re.IGNORECASE | re.DOTALL)  # the shard's path, then the member's name


def member_path(shard: str, member: str) -> str:
    """The path by which ``member`` of the tar file ``shard`` is read."""
    return f"{shard}#{member}"


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """(shard file, member name) when ``path`` names a member of an existing tar file, else None."""
    text = os.fspath(path)
    found = MEMBER.fullmatch(text) if isinstance(text, str) and "#" in text else None
    if found is None:
        return None
    shard, member = found.groups()
    return (shard, member) if os.path.isfile(shard) and not os.path.exists(text) else None


_KNOWN: dict[tuple[str, int, int], dict[str, tuple[int, int]]] = {}  # given by remember(); forked workers inherit it


def remember(shard: str, offsets: dict[str, tuple[int, int]]) -> None:
    """Where the members of ``shard`` start (from an index already read), so that no process forked from this one
    reads the shard's headers again."""
    stat = os.stat(shard)
    _KNOWN[(shard, stat.st_size, stat.st_mtime_ns)] = offsets


def _offsets(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    known = _KNOWN.get((shard, size, mtime_ns))
    return known if known is not None else _scan(shard, size, mtime_ns)


@lru_cache(maxsize=256)
def _scan(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, bytes) for the regular members of a tar file whose headers can be read."""
    found: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if info.isfile() and info.offset_data + info.size <= size:
                    found[info.name] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError):
        pass  # a truncated or damaged shard: its readable members are kept, the rest are 'not in the shard'
    return found


def member_offsets(shard: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, bytes) for the readable members of the tar file ``shard``."""
    stat = os.stat(shard)
    return _offsets(shard, stat.st_size, stat.st_mtime_ns)


def read_member(shard: str, member: str) -> bytes:
    """The bytes of ``member`` in the tar file ``shard``; ImageReadError naming the member when they cannot be read."""
    label = member_path(shard, member)
    try:
        stat = os.stat(shard)
        where = _offsets(shard, stat.st_size, stat.st_mtime_ns).get(member)
        if where is None:
            raise ImageReadError(label, "no such member in the shard (or the shard is cut off before it)")
        with open(shard, "rb") as handle:
            handle.seek(where[0])
            data = handle.read(where[1])
    except OSError as err:
        raise ImageReadError(label, f"cannot read the shard: {err.strerror or err}") from None
    if len(data) != where[1]:
        raise ImageReadError(label, f"the shard ends inside this member ({len(data)} of {where[1]} bytes)")
    return data


def stat_of(path: str | os.PathLike) -> os.stat_result:
    """os.stat of a file, or of the shard holding a member (what a cache keys on)."""
    inside = split_member(path)
    return os.stat(inside[0] if inside else path)
