"""resnetlab tune with its study on a real PostgreSQL server (Debian's postgresql, started here on a free local port,
as the 'postgres' user when the tests run as root): two tune commands, as on two machines, fill one study."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import Process, run
from resnetlab.cli import main

optuna = pytest.importorskip("optuna", reason="the 'tune' extra is not installed")
pytest.importorskip("psycopg", reason="psycopg is not installed (the 'tune' extra: pip install -e '.[tune]')")

from optuna.trial import TrialState  # noqa: E402

from test_tune import STARTUP_S, TINY  # noqa: E402
from test_tune import toy as toy  # noqa: E402 - the fixture: test_tune's 72 + 24 images

# /usr/lib/postgresql/<major>/bin, the newest major first
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away server (trust authentication, no fsync) and its URL; stopped and deleted afterwards."""
    if not PG_BINS or not (PG_BINS[0] / "initdb").is_file():
        pytest.skip("PostgreSQL is not installed: make postgres (apt-get install postgresql)")
    # not tmp_path: its parent folders are private to the test's user, and as root the server runs as 'postgres'
    folder = Path(tempfile.mkdtemp(prefix="resnetlab-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        made = run([*as_user, str(PG_BINS[0] / "initdb"), "-D", str(folder / "data"), "-U", "resnetlab", "--auth",
                    "trust", "-E", "UTF8", "--no-sync", "--no-instructions"], timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
        port = _free_port()
        with Process([*as_user, str(PG_BINS[0] / "postgres"), "-D", str(folder / "data"), "-k", str(folder),
                      "-p", str(port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c",
                      "synchronous_commit=off", "-c", "full_page_writes=off"]) as server:
            try:
                server.read_until("ready to accept connections", timeout=60)
                yield f"postgresql://resnetlab@127.0.0.1:{port}/postgres"
            finally:  # a fast shutdown (SIGINT to the postmaster); leaving the block kills whatever is left
                postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(postmaster, signal.SIGINT)
                server.communicate(timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_tune_workers_share_one_study_on_a_postgresql_server(toy: Path, tmp_path: Path, postgres: str, capsys):
    """Two `resnetlab tune` commands with the same --storage and --name, each with its own folder (two machines): a
    process started here, held while its first trial runs, and this test's own process, which counts that trial and
    runs the second; then the held process is killed: the next command fails its trial and runs another."""
    command = ["tune", str(toy), *TINY, "--epochs", "1", "--trials", "2", "--storage", postgres, "--name", "toy-pg",
               "--no-plots", "--out", str(tmp_path / "here")]
    with Process([sys.executable, "-m", "resnetlab", *command[:-1], str(tmp_path / "there")]) as other:
        seen = other.read_until("started by worker", timeout=STARTUP_S)
        other.send_signal(signal.SIGSTOP)  # its trial 0 stays RUNNING while this process works
        assert main(command) == 0
        assert "the study has its 2 trials (2 finished or running)" in capsys.readouterr().err  # counted trial 0
        other.send_signal(signal.SIGKILL)
        other.communicate(timeout=60)
    assert f"trial 0 started by worker {other.pid}" in seen, seen
    assert main(command) == 0  # trial 0's process is gone: FAILED at once, and a third trial takes its place
    trials = optuna.load_study(study_name="toy-pg", storage=postgres).get_trials(deepcopy=False)
    assert [(t.number, t.state, t.user_attrs["pid"]) for t in trials] == [
        (0, TrialState.FAIL, other.pid), (1, TrialState.COMPLETE, os.getpid()), (2, TrialState.COMPLETE, os.getpid())]
    assert "its process is gone" in trials[0].user_attrs["note"]
