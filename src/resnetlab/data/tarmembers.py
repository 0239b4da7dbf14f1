"""Images inside tar shards, named ``SHARD.tar#MEMBER`` and read in place: no unpacked copy.

A shard's record is a path like any other file's (``/data/shards/train-000003.tar#00000042.jpg``): every reader
(the decode cache, the streamed loader, ``check``, ``predict``, ``explain``) gets its bytes through
``images.read_regular``, which seeks to the member's data. Where each member's data starts comes from the standard
library's ``tarfile`` headers (read once per shard and process; the images themselves are skipped over), so one
record costs one seek and one read, as a file does.

    read_member("/data/train-000000.tar", "00000042.jpg")  # the JPEG's bytes
"""

from __future__ import annotations

import os
import tarfile
from functools import lru_cache

from ..errors import ImageReadError

SEPARATOR = ".tar#"  # between a shard's path (without its .tar) and a member's name


def member_path(shard: str, member: str) -> str:
    """The path by which ``member`` of the tar file ``shard`` is read."""
    return f"{shard}#{member}"


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """(shard file, member name) when ``path`` names a member of an existing tar file, else None."""
    text = os.fspath(path)
    if not isinstance(text, str) or SEPARATOR not in text:
        return None
    head, member = text.split(SEPARATOR, 1)
    shard = head + ".tar"
    return (shard, member) if os.path.isfile(shard) and not os.path.exists(text) else None


@lru_cache(maxsize=256)
def _offsets(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
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
