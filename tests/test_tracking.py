"""Experiment tracking against the real programs: TensorBoard events read back with tensorboard's own reader,
MLflow through a real `mlflow server` (SQLite backend) started on 127.0.0.1 and read back with MLflow's client."""

from __future__ import annotations

import csv
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import resnetlab
from processes import Process
from resnetlab.cli import main

pytest.importorskip("mlflow", reason="the 'track' extra is not installed")
pytest.importorskip("tensorboard", reason="the 'track' extra is not installed")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "device": "cpu"}
CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]
SERVER_START_S = 180  # the server's first start creates its database; a loaded 2-core CI machine is slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 with a SQLite backend, on a port the OS picks (--port 0; read
    back from the address it prints: a port probed free and reused later could be taken by then); its process
    tree is killed afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", "0",
               "--workers", "1"]
    with Process(command) as server:
        started = server.read_until("http://127.0.0.1:", timeout=SERVER_START_S)  # "Uvicorn running on http://..."
        uri = re.search(r"http://127\.0\.0\.1:[1-9][0-9]*", started)[0]
        deadline = time.monotonic() + SERVER_START_S
        while True:  # listening; the app answers once its startup is complete
            try:
                MlflowClient(uri).search_experiments()
                break
            except Exception:  # noqa: BLE001 - not answering yet
                assert time.monotonic() < deadline, f"mlflow server at {uri} did not answer:\n{started}"
                time.sleep(0.25)
        yield uri


@pytest.fixture
def refusing_uri() -> Iterator[str]:
    """An address where nothing listens: a port bound (so nothing else can take it) but never listening, so every
    connection is refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{holder.getsockname()[1]}"


def test_tensorboard_events_hold_metrics_hparams_and_figures(split_folders: Path, tmp_path: Path):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "tb"), epochs=2, tensorboard=True, **TINY)
    events = EventMultiplexer().AddRunsFromDirectory(str(result.run_dir / "tensorboard"))
    events.Reload()
    run = next(iter(events.Runs()))
    scalars = events.Runs()[run]["scalars"]
    for tag in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "img_per_s"):
        assert tag in scalars, tag
    values = [(e.step, e.value) for e in events.Scalars(run, "val_acc")]
    assert [step for step, _ in values] == [1, 2]
    assert [round(v, 5) for _, v in values] == [round(row["val_acc"], 5) for row in result.history]
    assert {"samples", "curves", "confusion_matrix"} <= set(events.Runs()[run]["images"])
    content = events.PluginRunToTagToContent("hparams")[run]["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model"].string_value == "resnet18" and hparams["epochs"].number_value == 2


@pytest.mark.slow
def test_mlflow_server_gets_params_metrics_tags_artifacts_and_a_resume_continues_the_run(
        split_folders: Path, tmp_path: Path, mlflow_server: str):
    out = tmp_path / "run"
    assert main(["train", str(split_folders), "--out", str(out), "--epochs", "3", "--stop-after-steps", "4",
                 "--mlflow", mlflow_server, *CLI_TINY]) == 0  # stopped, resumably, after epoch 1 (4 steps)
    client = MlflowClient(mlflow_server)
    run_id = yaml.safe_load((out / "tracking.json").read_text())["mlflow_run_id"]
    first = client.get_run(run_id)
    assert first.data.params["model"] == "resnet18" and first.data.params["epochs"] == "3"
    assert first.data.tags["model"] == "resnet18" and first.data.tags["resnetlab.version"] == resnetlab.__version__
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1]
    assert main(["train", "--resume", str(out), "--stop-after-steps", "0", "--mlflow", mlflow_server]) == 0
    assert yaml.safe_load((out / "tracking.json").read_text())["mlflow_run_id"] == run_id  # the same run
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best.pt", "config.yaml", "metrics.csv", "report.html", "curves.png"} <= artifacts
    assert main(["evaluate", str(out / "best.pt"), str(split_folders), "--out", str(out / "eval"), "--no-progress",
                 "--mlflow"]) == 0  # the URI saved with the run
    assert "val_accuracy" in client.get_run(run_id).data.metrics


def test_a_tracker_that_is_down_costs_one_warning_and_nothing_else(split_folders: Path, tmp_path: Path, capsys,
                                                                   refusing_uri: str):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "down"), epochs=1, mlflow=refusing_uri,
                             **TINY)
    out = capsys.readouterr().err
    assert out.count("warning: mlflow: could not") == 1 and "the run and its files go on" in out
    assert result.stopped is None and result.best_checkpoint.is_file() and (result.run_dir / "report.html").is_file()


def test_mlflow_without_a_uri_writes_a_local_store_in_the_run_folder(split_folders: Path, tmp_path: Path,
                                                                     monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's own default would put artifacts in ./mlruns: it must not
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "local"), epochs=1, mlflow="auto", **TINY)
    store = result.run_dir / "mlruns" / "mlflow.db"
    assert store.is_file() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{store}")
    run = client.search_runs([client.get_experiment_by_name("resnetlab").experiment_id])[0]
    assert "best.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of
    chunks, each checksum (4) + length (2) + type (1: whole, 2/3/4: first/middle/last) + data), decoded with W&B's
    own protobuf Record."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_settings_metrics_figures_and_the_checkpoint(split_folders: Path, tmp_path: Path,
                                                                             monkeypatch):
    pytest.importorskip("wandb", reason="the 'track' extra is not installed")
    for name in ("DIR", "CACHE_DIR", "DATA_DIR", "CONFIG_DIR"):  # nothing outside tmp_path, no network
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / name))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    assert main(["train", str(split_folders), "--out", str(out), "--epochs", "1", "--wandb", "toys",
                 "--wandb-group", "sizes", *CLI_TINY]) == 0
    import wandb

    wandb.teardown()  # waits for W&B's service to write its log: run.finish() may return before (seen in CI)
    run_folder, = (tmp_path / "DIR" / "wandb").glob("offline-run-*")
    records = _wandb_records(next(run_folder.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds, kinds
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: yaml.safe_load(item.value_json) for item in run.config.update}
    assert (run.project, run.display_name, run.run_group) == ("toys", "wb", "sizes") and config["epochs"] == 1
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    with open(out / "metrics.csv", encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["epoch"] != "0"]
    assert [int(h["epoch"]) for h in history] == [1]
    assert [round(float(h["val_acc"]), 5) for h in history] == [round(float(row["val_acc"]), 5) for row in rows]
    assert {"curves/path", "confusion_matrix/path"} <= set(history[-1])
    assert list((run_folder / "files" / "media" / "images").glob("curves_*.png"))
    summary = {i.key: i.value_json for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert any(key.startswith("final_") for key in summary)
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.type == "model" and {"best.pt", "config.yaml", "metrics.csv"} <= {
        entry.path for entry in artifact.manifest.contents}
    assert next(r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit") == 0
    assert yaml.safe_load((out / "tracking.json").read_text())["wandb_project"] == "toys"


def test_wandb_missing_costs_one_warning(tmp_path: Path, monkeypatch, capsys):
    from resnetlab.config import TrainConfig
    from resnetlab.tracking import open_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    trackers = open_trackers(TrainConfig(wandb="auto"), tmp_path, resumed=False)
    assert trackers.trackers == []
    err = capsys.readouterr().err
    assert err.count("warning: wandb: could not start a run in project resnetlab") == 1


def test_wandb_without_a_key_is_one_warning_not_a_login_prompt(tmp_path: Path, monkeypatch, capsys):
    from resnetlab.config import TrainConfig
    from resnetlab.tracking import open_trackers

    pytest.importorskip("wandb", reason="the 'track' extra is not installed")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    trackers = open_trackers(TrainConfig(wandb="auto"), tmp_path, resumed=False)
    assert trackers.trackers == []
    err = capsys.readouterr().err
    assert err.count("warning: wandb: could not start a run") == 1 and "no W&B API key" in err
    assert "WANDB_MODE=offline" in err


def test_tensorboard_in_a_folder_it_cannot_write_is_one_warning(tmp_path: Path, monkeypatch, caplog):
    """Once the warning was followed by the event writer thread's 30-line traceback."""
    import threading

    from resnetlab.config import TrainConfig
    from resnetlab.tracking import TensorBoardTracker

    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc: a folder nobody (root included) can create files in")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tensorboard").symlink_to("/proc/self")  # read-only even for root, unlike chmod
    crashed: list = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    with caplog.at_level("WARNING", logger="resnetlab"):
        tracker = TensorBoardTracker(run_dir, TrainConfig(data="x"))
        for thread in threading.enumerate():  # the writer's thread, if one was started
            if type(thread).__name__ == "_AsyncWriterThread":
                thread.join(timeout=5)
        tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
        tracker.finish(run_dir, {})
    assert crashed == [] and tracker.writer is None  # no thread traceback after the warning
    assert [r.getMessage() for r in caplog.records] == [
        f"tensorboard: could not start (OSError: cannot write in {run_dir / 'tensorboard'}: No such file or "
        "directory); tensorboard logging is off for the rest of this run; the run and its files go on"]
