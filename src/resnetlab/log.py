"""Messages through the standard ``logging`` module: one ``resnetlab`` logger, silent on every torchrun rank
but rank 0. A library caller routes or silences it like any logger; the CLI calls ``configure`` to print it.

    from .log import logger
    logger.info("epoch 3/10: ...")
    configure(verbosity=0)          # the CLI: INFO to stdout, warnings prefixed "warning: "
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("resnetlab")
logger.setLevel(logging.INFO)  # INFO reaches the caller's handlers; with none, Python shows warnings only


def is_rank_zero() -> bool:
    """Under torchrun every rank runs the same code; only rank 0 speaks."""
    return os.environ.get("RANK", "0") == "0"


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_rank_zero()


logger.addFilter(_RankZero())


class _StdoutHandler(logging.StreamHandler):
    """Writes to the *current* sys.stdout (pytest's capsys and redirect_stdout swap it after setup)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure(verbosity: int = 0) -> None:
    """Print resnetlab's messages on stdout: -1 warnings only (--quiet), 0 info, 1 debug (--verbose)."""
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_Format("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False  # the CLI owns the output: no second copy through a root handler


def progress_enabled(requested: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal: log files and CI stay one line per step."""
    return bool(requested) and sys.stderr.isatty()
