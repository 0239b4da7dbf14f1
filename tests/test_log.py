"""Messages on stderr, shown by default when the caller configured no logging, quieted by set_verbosity, routed to the
caller's handlers when there are some; progress bars on a terminal or in a notebook, never in a file or a pipe."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import types

import pytest

import resnetlab
from resnetlab import log
from resnetlab.errors import ConfigError

# A fresh interpreter: pytest's own log capture gives the root logger handlers, and conftest sets the CLI's mode.
SCRIPT = """
import logging, sys
import resnetlab
from resnetlab.log import logger
logger.info("epoch 1/2: shown by default")
logger.warning("a warning")
resnetlab.set_verbosity("warning")
logger.info("hidden when quiet")
resnetlab.set_verbosity(logging.INFO)
logging.basicConfig(stream=sys.stdout, format="caller's handler: %(message)s", level=logging.INFO)
logger.info("routed once")
"""


def test_messages_show_on_stderr_by_default_and_step_aside_for_the_callers_logging():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["epoch 1/2: shown by default", "warning: a warning"]
    assert done.stdout.splitlines() == ["caller's handler: routed once"]  # once: ours stayed quiet


def test_set_verbosity_takes_levels_and_names(monkeypatch):
    monkeypatch.setattr(log.logger, "level", log.logger.level)  # restored afterwards
    resnetlab.set_verbosity("WARNING")
    assert log.logger.level == logging.WARNING
    resnetlab.set_verbosity(logging.DEBUG)
    assert log.logger.level == logging.DEBUG
    with pytest.raises(ConfigError, match="unknown verbosity 'loud'; expected one of debug, info, warning"):
        resnetlab.set_verbosity("loud")


def test_the_cli_mode_prints_on_stderr_only(capsys):
    log.configure(0)  # what main() does (conftest too)
    log.logger.info("a message")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "a message\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_or_in_a_notebook_never_in_a_file(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert not log.progress_enabled(True) and not log.in_notebook()
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert log.progress_enabled(True) and not log.progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    shell = types.SimpleNamespace(kernel=object())  # what get_ipython() returns inside a Jupyter kernel
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert log.in_notebook() and log.progress_enabled(True) and not log.progress_enabled(False)
    shell.kernel = None  # a terminal IPython that merely imported ipykernel: no kernel, no bars in a pipe
    assert not log.progress_enabled(True)
