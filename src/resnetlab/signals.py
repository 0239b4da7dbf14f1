"""Stops by signal, handled so that nothing is lost: SIGTERM becomes an exception like Ctrl-C's (every clean-up
runs: decode workers end, temp files go), and during training the first Ctrl-C/SIGTERM asks for a clean stop
after the current step (a resumable last.pt is written) while a second exits at once.

    with sigterm_as_exception():          # the CLI, around every verb
        ...
    with StopRequests() as stop:          # the training loop
        if stop.requested: save_and_stop()
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .log import logger


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so every clean-up (decode workers, temp files) runs."""


_terminated = threading.Event()  # set by SIGTERM inside sigterm_as_exception


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Inside the block SIGTERM raises Terminated (in the main thread; elsewhere handlers cannot be set).

    An exception raised by a signal handler can land where Python swallows it (a ``__del__``, a lock release in
    ``logging``), so the signal is also remembered: long loops call ``raise_if_terminated`` to act on it anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number: int, frame) -> None:  # noqa: ANN001 - signal API
        _terminated.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _terminated.clear()


def raise_if_terminated() -> None:
    """Raise Terminated if a SIGTERM arrived (its own exception may have been swallowed where it landed)."""
    if _terminated.is_set():
        raise Terminated


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back for the block (e.g. while a checkpoint is written) and handled after it, so a
    second Ctrl-C never cuts a file in half or ends in a library's traceback.

    Done with Python handlers, not pthread_sigmask: a signal masked in the main thread is still delivered through
    any other thread (torch's), and CPython then runs the handler in the main thread all the same.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {number: signal.signal(number, lambda n, frame: arrived.append(n))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(arrived):  # each held signal once, to the handler that was in place
            handler = previous[number]
            if callable(handler):
                handler(number, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(number)


class StopRequests:
    """Ctrl-C / SIGTERM during training: the first asks for a clean stop after the current step (the
    caller saves a resumable checkpoint); a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.aborted: int | None = None  # the second signal: exit at once
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers only work in the main thread
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame) -> None:  # noqa: ANN001 - signal API
        if self.signal is not None:
            self.aborted = number  # remembered: the exception below may land where Python swallows it
            self.raise_if_aborted()
        self.signal = number
        name = signal.Signals(number).name
        logger.warning(f"{name}: stopping after this step and saving a resumable checkpoint "
                       "(press Ctrl-C again to exit at once)")

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def raise_if_aborted(self) -> None:
        """The second signal's exception, again: training calls this after every step."""
        if self.aborted is not None:
            raise Terminated if self.aborted == signal.SIGTERM else KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
