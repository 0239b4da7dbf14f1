"""The process pool that decodes and hashes images: one owner for starting it and, on any stop, ending it.

    with worker_map(_decode_one, jobs, workers=4) as results:
        for result in results: ...

A stop (Ctrl-C, SIGTERM) ends the workers at once, not after the queued work, and no stop of the parent, not even
SIGKILL, leaves a worker behind (Linux: each worker dies with its parent).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from ..signals import signals_deferred


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@contextmanager
def worker_map(fn: Callable, items: list, workers: int) -> Iterator[Iterator]:
    """Yields ``fn(item)`` for each item, in order, computed in ``workers`` processes."""
    pool = None
    try:
        # Held back while the pool forks its workers: a signal that lands between a fork and the pool's record of
        # it leaves a worker nobody ends (seen in CI). map() submits every chunk, so all workers exist after it.
        with signals_deferred():
            pool = ProcessPoolExecutor(workers, initializer=_worker_start)
            results = pool.map(fn, items, chunksize=max(1, min(256, len(items) // (workers * 8))))
        yield results
    except BaseException:
        if pool is not None:
            _end_pool(pool)
        raise
    pool.shutdown()


def _worker_start() -> None:
    """In each worker: Ctrl-C is the parent's to handle, and the worker dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the parent's own clean-up still ends the workers
        pass


def _end_pool(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
