"""Messages through the standard ``logging`` module: one ``resnetlab`` logger, on stderr (data such as predictions
and JSON goes to stdout), silent on every torchrun rank but rank 0. A caller who configured no logging sees INFO
messages by default, as with transformers and Ultralytics; one who did routes or silences it like any logger.

    from .log import logger
    logger.info("epoch 3/10: ...")
    resnetlab.set_verbosity("warning")   # a notebook or script: warnings and errors only
    configure(verbosity=0)               # the CLI: INFO to stderr, warnings prefixed "warning: "
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("resnetlab")
logger.setLevel(logging.INFO)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def is_rank_zero() -> bool:
    """Under torchrun every rank runs the same code; only rank 0 speaks."""
    return os.environ.get("RANK", "0") == "0"


class _RankZero(logging.Filter):
    """Rank 0 only; and a message naming a file whose name is not UTF-8 made printable first (each such byte shown
    as backslash-x-NN, fileio.readable), for every handler (a caller's, pytest's, a tracker's), not only ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_rank_zero():
            return False
        message = record.getMessage()
        if any("\udc80" <= ch <= "\udcff" for ch in message):
            from .fileio import readable

            record.msg, record.args = readable(message), None
        return True


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr: pytest's capsys, redirect_stderr and a Jupyter kernel swap it after setup.

    Until ``configure`` makes it ``always`` print (the CLI), it prints only while the caller has configured no
    logging: Python's own fallback (``logging.lastResort``) shows warnings only, so a notebook cell that trains for
    minutes would show nothing. It steps aside once the root logger or the 'resnetlab' logger has another handler.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.always = False
        self.setFormatter(_Format("%(message)s"))

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.always or not _caller_configured(self):
            super().emit(record)


def _caller_configured(ours: logging.Handler) -> bool:
    return bool(logging.getLogger().handlers) or any(handler is not ours for handler in logger.handlers)


_handler = _StderrHandler()
logger.addHandler(_handler)
logger.addFilter(_RankZero())


def set_verbosity(level: int | str) -> None:
    """How much resnetlab says: a ``logging`` level or its name ("debug", "info", "warning", "error").

    Example::

        import resnetlab
        resnetlab.set_verbosity("warning")   # quiet: warnings and errors only (progress bars: progress=False)
        resnetlab.set_verbosity("info")      # the default: one line per epoch, what was written where
    """
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            from .errors import ConfigError

            raise ConfigError(f"unknown verbosity {level!r}; expected one of {', '.join(_LEVELS)} or a logging level")
        level = _LEVELS[level.lower()]
    logger.setLevel(level)


def configure(verbosity: int = 0) -> None:
    """Print resnetlab's messages on stderr: -1 warnings only (--quiet), 0 info, 1 debug (--verbose)."""
    set_verbosity({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    _handler.always = True
    logger.propagate = False  # the CLI owns the output: no second copy through a root handler


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where stderr is no terminal but progress bars still help."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return getattr(shell, "kernel", None) is not None


def progress_enabled(requested: bool) -> bool:
    """Progress bars when asked for and stderr is a terminal or a notebook: log files and CI stay one line per step."""
    return bool(requested) and (sys.stderr.isatty() or in_notebook())
