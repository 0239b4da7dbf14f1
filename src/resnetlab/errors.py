"""Every error resnetlab raises on purpose, under one base, with no heavy imports (the CLI catches them
before torch is loaded). Each message names the file, line or value at fault and what was expected.

    try: resnetlab.train(data="photos/")
    except ResnetlabError as err: print(err)
"""

from __future__ import annotations

import os


class ResnetlabError(Exception):
    """Base of every error resnetlab raises for bad input; the CLI prints it as one line and exits 2."""


class ConfigError(ResnetlabError, ValueError):
    """A setting has a wrong name, type or value; the message says which and what is allowed."""


class DataError(ResnetlabError, ValueError):
    """The data cannot be used as given; the message names the file, line or folder at fault."""


class ImageReadError(ResnetlabError):
    """An image could not be read; ``str()`` says which file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(ResnetlabError, ValueError):
    """A model or weights file does not fit; the message says what differs."""


class CheckpointError(ResnetlabError, ValueError):
    """A checkpoint cannot be used; the message says why and which file."""


class NonFiniteLossError(ResnetlabError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class WriteError(ResnetlabError, OSError):
    """A run file could not be written (a full disk, a vanished folder); the message names the file and the space
    it needed, and the previous version of the file is intact (every write is atomic)."""


class ExplainError(ConfigError):
    """A --method, --layer or --target value that does not fit the model; the message names it (serve: 422)."""


class ExportError(ResnetlabError, ValueError):
    """An export or an exported model cannot be used; the message says which file and why."""


class ServeError(ResnetlabError, ValueError):
    """The service cannot start; the message says which setting or file is wrong."""


class ReportError(ResnetlabError, ValueError):
    """The report cannot be built (no such folder); the message names it."""


def one_line(err: BaseException) -> str:
    """``TypeName: first line of its message`` (at most 400 characters): a library's exception inside our one-line
    error message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]
