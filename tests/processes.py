"""Subprocesses that tests start: each in a session of its own, and on every way out of the test (passed,
failed assert, timeout, Ctrl-C) its whole process tree is killed and the process reaped. Every wait has a
timeout.

    with Process([sys.executable, "-m", "resnetlab", "train", ...]) as process:
        process.read_until("epoch   1/30", timeout=180)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)
    assert process.returncode == 130, output
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

REAP_S = 30  # after SIGKILL a process is gone at once; this only bounds the wait


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc; [] where there is none)."""
    return [child for child, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` (from /proc; [] where there is none)."""
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier and child not in found]
        found += below
        frontier = below
    return found


def _parents() -> dict[int, int]:
    table = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
                table[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return table


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` (started with start_new_session=True) and the groups of all its
    descendants (torchrun starts each worker in a session of its own), then reap it."""
    groups = {process.pid}
    if process.poll() is None:  # once it has exited, its children belong to init: nothing to find by pid
        for pid in descendants(process.pid):
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                continue
    groups.discard(os.getpgrp())  # never the test runner's own group
    for group in sorted(groups):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    try:
        process.wait(timeout=REAP_S)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state): nothing more a test can do; the group was signalled


def run(command: list[str], *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, but in a session of its own
    whose whole tree is killed however the call ends."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_tree(process)
        for stream in (process.stdout, process.stderr):
            stream.close()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


class Process:
    """A command in a session of its own, stdout and stderr merged (or stderr alone) and read line by line by a
    thread, so that reading (``read_until``) and waiting (``communicate``) both take a timeout. Use it as a context
    manager: leaving the block kills the whole process tree."""

    def __init__(self, command: list[str], *, env: dict | None = None, stderr_only: bool = False):
        """``stderr_only``: read stderr alone (stdout goes to /dev/null), to check that a message is on stderr."""
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL if stderr_only else subprocess.PIPE,
                                      stderr=subprocess.PIPE if stderr_only else subprocess.STDOUT, text=True,
                                      errors="replace", env=env, start_new_session=True)
        self._stream = self.popen.stderr if stderr_only else self.popen.stdout
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"output of {self.popen.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output: every writer has exited

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def read_until(self, marker: str, *, timeout: float) -> str:
        """The output up to and including the first line holding ``marker``; AssertionError (with the output
        seen) when the output ends or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"'{marker}' not printed within {timeout} s:\n{seen}") from None
            if line is None:
                self._lines.put(None)  # communicate() still sees the end
                raise AssertionError(f"'{marker}' never printed:\n{seen}")
            seen += line
            if marker in line:
                return seen

    def communicate(self, *, timeout: float) -> str:
        """Wait for the process to exit and its output to end; the output not read yet. TimeoutExpired after
        ``timeout`` seconds (leaving the ``with`` block then kills the tree)."""
        deadline = time.monotonic() + timeout
        self.popen.wait(timeout=timeout)
        self._reader.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._reader.is_alive():  # a descendant still holds the pipe open
            raise subprocess.TimeoutExpired(self.popen.args, timeout)
        rest = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                rest.append(line)
        return "".join(rest)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info) -> None:
        kill_tree(self.popen)
        self._reader.join(timeout=REAP_S)  # every writer is dead: the pipe ends
        if not self._reader.is_alive():
            self._stream.close()
