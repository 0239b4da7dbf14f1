"""Data-parallel training: torchrun with 2 CPU processes on the gloo backend, on one "node" (--standalone) or on two
(two torchrun launches meeting at a c10d rendezvous on 127.0.0.1), and a restarted node continuing its run."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from processes import Process, children
from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.settings import resolve

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]
pytestmark = [pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun is not installed beside python"),
              pytest.mark.slow]


def _torchrun(args: list[str]) -> Process:
    """torchrun in a session of its own; use it in a ``with`` block, which kills torchrun and both ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "resnetlab", "train", *args]
    return Process(command, env=env)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(stack: ExitStack, args: list[str], *, max_restarts: int = 0) -> list[Process]:
    """Two torchrun launches, one CPU worker each, meeting at a c10d rendezvous on a free local port: the first
    hosts the rendezvous store. The stack kills both trees when the test leaves its block. Restarted workers must
    not read their predecessors' addresses from a store torchrun shares with them (pytorch#135712)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    port = _free_port()
    nodes = []
    for is_host in (1, 0):
        command = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}", "--rdzv-conf",
                   f"is_host={is_host}", "--max-restarts", str(max_restarts), "-m", "resnetlab", "train", *args]
        nodes.append(stack.enter_context(Process(command, env=env)))
    return nodes


def _wait_for(path: Path, nodes: list[Process], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(node.popen.poll() is None for node in nodes), f"a node exited before {path} was written"
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.05)


def test_two_processes_train_one_model_and_resume_it(split_folders: Path, tmp_path: Path):
    """A run on two "nodes" (two torchrun launches), stopped after its first epoch, resumed by a one-node torchrun:
    one model, written by rank 0 alone, whose sharded validation equals a single-process evaluation of the saved
    checkpoint."""
    run = tmp_path / "run"
    with ExitStack() as stack:
        nodes = _two_nodes(stack, [str(split_folders), "--out", str(run), "--epochs", "3", "--stop-after-steps", "3",
                                   *TINY])
        output = "".join(node.communicate(timeout=300) for node in nodes)
    assert [node.returncode for node in nodes] == [0, 0], output
    assert "global batch 32" in output and "weights identical across 2 ranks" in output  # stopped mid-epoch
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    with _torchrun(["--resume", str(run), "--no-progress"]) as second:
        output = second.communicate(timeout=300)
    assert second.returncode == 0 and "resuming" in output, output
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    assert "weights identical across 2 ranks" in output
    assert output.count("epoch   3/3") == 1  # only rank 0 prints
    # one run folder, written by rank 0 alone: the run's files once each, nothing per rank, no temp files left
    names = {p.name for p in run.iterdir()} - {"misclassified.png"}  # drawn only when the model made mistakes
    assert names == {"best.pt", "config.yaml", "confusion_matrix.csv", "confusion_matrix.png", "curves.png",
                     "data_report.json", "last.pt", "metrics.csv", "metrics.json", "misclassified.csv",
                     "predictions.csv", "predictions.png", "reliability.png", "report.html", "samples.png", "split.csv"}
    # the sharded, all-reduced validation equals a single-process evaluation of the saved checkpoint
    last_row = (run / "metrics.csv").read_text().strip().splitlines()[-1].split(",")
    assert main(["evaluate", str(run / "last.pt"), str(split_folders), "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(last_row[4]), abs=1e-6)
    assert metrics["loss"] == pytest.approx(float(last_row[3]), rel=1e-4)
    saved = torch.load(run / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in saved["model"])  # loads in a single process


def test_two_processes_stream_their_shards_and_report_every_skipped_file(split_folders: Path, tmp_path: Path):
    broken = sorted(str(path) for path in (split_folders / "Train").rglob("img 00[0-1].png"))  # 6 files
    for path in broken:
        Path(path).write_bytes(b"not an image")
    run = tmp_path / "run"
    with _torchrun([str(split_folders), "--out", str(run), "--epochs", "2", "--loader", "stream", *TINY]) as process:
        output = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "data path: streamed" in output and "weights identical across 2 ranks" in output
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    # each rank met some of them in its shard, some in both epochs' shards: listed once each, by rank 0
    assert sorted(entry["path"] for entry in report["skipped"]) == broken
    assert {entry["split"] for entry in report["skipped"]} == {"train"}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_a_dead_rank_ends_the_job(split_folders: Path, tmp_path: Path):
    with _torchrun([str(split_folders), "--out", str(tmp_path / "run"), "--epochs", "500", *TINY]) as process:
        process.read_until("epoch   1/500", timeout=240)
        workers = children(process.pid)
        assert len(workers) == 2
        killed = max(workers)
        os.kill(killed, signal.SIGKILL)
        output = process.communicate(timeout=180)
    assert process.returncode == 1, output  # torchrun's ChildFailedError, whatever the other rank did then
    # torchrun's report names the killed worker as the first failure, not the surviving rank that lost its peer
    root_cause = output.split("Root Cause (first observed failure):", 1)[-1]
    assert f"exitcode  : -9 (pid: {killed})  (SIGKILL)" in root_cause, output
    assert f"traceback : Signal 9 (SIGKILL) received by PID {killed}" in root_cause, output


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_a_restarted_node_continues_the_run_from_its_last_checkpoint(split_folders: Path, tmp_path: Path):
    """Two nodes with --max-restarts 1; one node's worker SIGKILLed once last.pt exists: torchrun restarts the
    workers, which continue from last.pt (--resume auto, the default here) instead of refusing the run folder."""
    run = tmp_path / "run"
    with ExitStack() as stack:
        nodes = _two_nodes(stack, [str(split_folders), "--out", str(run), "--epochs", "3", *TINY], max_restarts=1)
        _wait_for(run / "last.pt", nodes, timeout=240)
        workers = children(nodes[1].pid)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        output = "".join(node.communicate(timeout=300) for node in nodes)
    assert [node.returncode for node in nodes] == [0, 0], output
    assert f"continuing {run} from its last.pt: epoch " in output, output
    assert "weights identical across 2 ranks" in output and output.count("global batch 32") == 2  # both starts
    with open(run / "metrics.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]  # each epoch once
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_resume_auto_starts_fresh_without_last_checkpoint(split_folders: Path, tmp_path: Path, monkeypatch):
    cfg, saved = resolve({"data": str(split_folders), "out": str(tmp_path / "run"), "resume": "auto"})
    assert saved is None and cfg.resume is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch\n1\n")  # killed between metrics.csv and last.pt
    cfg, saved = resolve({"data": str(split_folders), "out": str(tmp_path / "run"), "resume": "auto"})
    assert saved is None and cfg.exist_ok  # nothing to keep there: the fresh run may reuse the folder
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")  # a folder of someone's files is never taken over
    cfg, _ = resolve({"data": str(split_folders), "out": str(tmp_path / "other"), "resume": "auto"})
    assert not cfg.exist_ok
    with pytest.raises(ConfigError, match="--resume auto needs the run folder"):
        resolve({"data": str(split_folders), "resume": "auto"})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")  # torchrun --max-restarts 1: auto by default
    cfg, saved = resolve({"data": str(split_folders), "out": str(tmp_path / "run")})
    assert saved is None and cfg.exist_ok and cfg.resume is None
    cfg, saved = resolve({"data": str(split_folders), "out": str(tmp_path / "run"), "exist_ok": True})
    assert saved is None and cfg.resume is None  # --exist-ok asked to overwrite: torchrun's default leaves it so


def test_ranks_that_see_different_run_folders_fail_together_with_one_message(monkeypatch):
    """--resume auto is decided by each rank from the run folder it sees: a node without the shared folder would
    start fresh while the others continue. Every rank's decision is compared; a mismatch names the ranks."""
    from resnetlab import distributed
    from resnetlab.distributed import DistInfo, agree_on_start

    info = DistInfo(rank=0, world_size=2)
    same = [(0, "node-a", ("runs/x", 3, 0)), (1, "node-b", ("runs/x", 3, 0))]
    monkeypatch.setattr(distributed, "gather_lists", lambda items, info: same)
    agree_on_start(("runs/x", 3, 0), "runs/x", info)  # agreed: nothing said
    monkeypatch.setattr(distributed, "gather_lists", lambda items, info: [same[0], (1, "node-b", None)])
    with pytest.raises(ConfigError, match=r"rank 0 on node-a: \('runs/x', 3, 0\); rank 1 on node-b: a fresh run\): "
                                          r"every node must see the same run folder runs/x"):
        agree_on_start(("runs/x", 3, 0), "runs/x", info)
    agree_on_start(None, "runs/x", DistInfo())  # one process: nothing to compare
