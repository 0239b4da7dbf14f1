"""Experiment tracking: TensorBoard event files, MLflow and Weights & Biases runs, each optional (``pip install
resnetlab[track]``) and failing soft: a tracker that cannot be reached or fails costs one warning and is switched
off; the run and its own files go on. Rank 0 only (the trainer creates trackers on rank 0 alone).

    trackers = open_trackers(cfg, run_dir, resumed=False)     # --tensorboard, --mlflow [URI], --wandb [PROJECT]
    trackers.log_epoch(row)                                    # every epoch's metrics, step = epoch
    trackers.finish(run_dir)                                    # figures and files, then close
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from ._version import __version__
from .config import TrainConfig
from .fileio import write_json
from .log import logger

TRACKING_FILE = "tracking.json"  # in the run folder: the MLflow run to continue on --resume
FIGURES = ("samples.png", "curves.png", "confusion_matrix.png", "predictions.png", "misclassified.png")
ARTIFACTS = ("best.pt", "config.yaml", "metrics.csv", "report.html", "metrics.json", "data_report.json")
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "val_top5", "raw_val_acc", "lr",
                 "img_per_s", "epoch_s")


class _Soft:
    """Every call guarded: the first failure is one warning, then the tracker is off."""

    name = "tracker"

    def __init__(self) -> None:
        self.active = True

    def _guard(self, action: str, function, *args: Any) -> Any:  # noqa: ANN001
        if not self.active:
            return None
        try:
            return function(*args)
        except Exception as err:  # noqa: BLE001 - a tracker must never end a run
            self.active = False
            logger.warning(f"{self.name}: could not {action} ({type(err).__name__}: {str(err)[:300]}); "
                           f"{self.name} logging is off for the rest of this run; the run and its files go on")
            return None


class TensorBoardTracker(_Soft):
    """Event files under RUN_DIR/tensorboard/ (torch's SummaryWriter; needs the tensorboard package)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, cfg: TrainConfig):
        super().__init__()
        self.writer, self.settings = None, _flat_settings(cfg)
        self._guard("start", self._start, run_dir)

    def _start(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the optional extra: imported where it is needed

        folder = run_dir / "tensorboard"
        folder.mkdir(parents=True, exist_ok=True)
        # the writer opens its file in a thread, which would print a traceback after the warning: try here first
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise OSError(f"cannot write in {folder}: {err.strerror or err}") from None
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in self.settings.items()))

    def log_epoch(self, row: dict) -> None:
        self._guard("log epoch metrics", self._log_epoch, row)

    def _log_epoch(self, row: dict) -> None:
        for key in EPOCH_METRICS:
            if key in row and row[key] is not None:
                self.writer.add_scalar(key, float(row[key]), global_step=int(row["epoch"]))
        self.writer.flush()

    def finish(self, run_dir: Path, final: dict | None) -> None:
        self._guard("write figures and hparams", self._finish, run_dir, final or {})

    def _finish(self, run_dir: Path, final: dict) -> None:
        for name in FIGURES:
            if (run_dir / name).is_file():
                with Image.open(run_dir / name) as image:
                    array = np.asarray(image.convert("RGB"))  # H x W x 3 uint8
                self.writer.add_image(name.removesuffix(".png"), array, dataformats="HWC")
        metrics = {f"hparam/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))}
        self.writer.add_hparams(self.settings, metrics or {"hparam/best_val_acc": 0.0}, run_name=".")
        self.writer.close()


class MlflowTracker(_Soft):
    """One MLflow run per resnetlab run (continued on --resume): parameters, per-epoch metrics, tags, artifacts."""

    name = "mlflow"

    def __init__(self, uri: str, run_id: str | None = None):
        super().__init__()
        self.uri, self.run_id, self.client = uri, run_id, None

    @classmethod
    def for_run(cls, run_dir: Path, cfg: TrainConfig, uri: str, resumed: bool) -> MlflowTracker:
        """The MLflow run of a training run: a new one, or on --resume the one it started."""
        tracker = cls(uri)
        where = "reach the tracking server" if urlparse(uri).scheme in ("http", "https") else "open the tracking store"
        tracker._guard(f"{where} at {uri}", tracker._start, run_dir, cfg, resumed)
        return tracker

    def _connect(self) -> None:
        _check_reachable(self.uri)
        _check_writable(self.uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone mid-run: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.tracking import MlflowClient  # the optional extra: imported where it is needed

        self.client = MlflowClient(tracking_uri=self.uri)

    def _start(self, run_dir: Path, cfg: TrainConfig, resumed: bool) -> None:
        self._connect()
        saved = _read_tracking(run_dir)
        if resumed and saved.get("mlflow_run_id") and saved.get("mlflow_uri") == self.uri:
            self.run_id = saved["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            logger.info(f"mlflow: continuing run {self.run_id} at {self.uri}")
            return
        experiment = self.client.get_experiment_by_name("resnetlab")
        # the default local store keeps its artifacts beside it (MLflow's own default is ./mlruns in the cwd)
        local = (run_dir / "mlruns" / "artifacts").resolve().as_uri() if self.uri == _local_uri(run_dir) else None
        experiment_id = (experiment.experiment_id if experiment else
                         self.client.create_experiment("resnetlab", artifact_location=local))
        tags = {"resnetlab.version": __version__, "model": cfg.model, "data": str(cfg.data),
                "mlflow.runName": run_dir.name, "run_dir": str(run_dir.resolve())}
        self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        from mlflow.entities import Param

        settings = list(_flat_settings(cfg).items())
        for start in range(0, len(settings), 100):  # MLflow takes at most 100 params per batch
            chunk = settings[start:start + 100]
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in chunk])
        write_json(run_dir / TRACKING_FILE, {**saved, "mlflow_run_id": self.run_id, "mlflow_uri": self.uri})
        logger.info(f"mlflow: run {self.run_id} in experiment 'resnetlab' at {self.uri}")

    def log_epoch(self, row: dict) -> None:
        self._guard("log epoch metrics", self._log_epoch, row)

    def _log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        step, stamp = int(row["epoch"]), _now_ms()
        metrics = [Metric(k, float(row[k]), stamp, step) for k in EPOCH_METRICS if row.get(k) is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def finish(self, run_dir: Path, final: dict | None, status: str = "FINISHED") -> None:
        self._guard("upload the run's files", self._finish, run_dir, final or {}, status)

    def _finish(self, run_dir: Path, final: dict, status: str) -> None:
        if final:
            self._log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))}, 0)
        for name in ARTIFACTS + FIGURES:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, status=status)


def _wandb_can_log() -> bool:
    """An offline/disabled mode, or an API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(_Soft):
    """One Weights & Biases run per resnetlab run (continued on --resume): the settings as config, per-epoch metrics,
    figures, the final metrics as summary and the run's files (best.pt included) as a model artifact. Its files go
    to RUN_DIR/wandb/ unless $WANDB_DIR says otherwise; WANDB_MODE=offline logs there for a later `wandb sync`."""

    name = "wandb"

    def __init__(self) -> None:
        super().__init__()
        self.run = None

    @classmethod
    def for_run(cls, run_dir: Path, cfg: TrainConfig, project: str, resumed: bool) -> WandbTracker:
        tracker = cls()
        tracker._guard(f"start a run in project {project}", tracker._start, run_dir, cfg, project, resumed)
        return tracker

    def _start(self, run_dir: Path, cfg: TrainConfig, project: str, resumed: bool) -> None:
        import wandb  # the optional extra: imported where it is needed

        if not _wandb_can_log():  # wandb.init would stop a terminal run at its login prompt
            raise RuntimeError("no W&B API key (WANDB_API_KEY, or `wandb login`); WANDB_MODE=offline logs to "
                               "RUN_DIR/wandb for a later `wandb sync`")
        saved = _read_tracking(run_dir)
        run_id = saved.get("wandb_run_id") if resumed and saved.get("wandb_project") == project else None
        self.run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow" if run_id else None,
                              dir=os.environ.get("WANDB_DIR") or str(run_dir), config=_flat_settings(cfg),
                              group=cfg.wandb_group, tags=[cfg.model],
                              settings=wandb.Settings(init_timeout=30, console="off", quiet=True))
        write_json(run_dir / TRACKING_FILE, {**saved, "wandb_run_id": self.run.id, "wandb_project": project})
        logger.info(f"wandb: {'continuing ' if run_id else ''}run {self.run.id} in project '{project}'"
                    + (f", group '{cfg.wandb_group}'" if cfg.wandb_group else ""))

    def log_epoch(self, row: dict) -> None:
        self._guard("log epoch metrics", self._log_epoch, row)

    def _log_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        self.run.log({"epoch": step, **{k: float(row[k]) for k in EPOCH_METRICS if row.get(k) is not None}},
                     step=step)

    def finish(self, run_dir: Path, final: dict | None, status: str = "FINISHED") -> None:
        self._guard("upload the run's files", self._finish, run_dir, final or {}, status)

    def _finish(self, run_dir: Path, final: dict, status: str) -> None:
        import wandb

        self.run.summary.update({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})
        figures = {name.removesuffix(".png"): wandb.Image(str(run_dir / name)) for name in FIGURES
                   if (run_dir / name).is_file()}
        if figures:
            self.run.log(figures)
        files = [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]
        if files:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", run_dir.name), type="model")
            for file in files:
                artifact.add_file(str(file))
            self.run.log_artifact(artifact)
        if status == "KILLED":  # stopped to be resumed
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Trackers:
    """The trackers a run asked for, called together; an empty list when none (or not rank 0)."""

    def __init__(self, trackers: list | None = None):
        self.trackers = trackers or []

    def log_epoch(self, row: dict) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(row)

    def finish(self, run_dir: Path, final: dict | None = None, *, stopped: str | None = None) -> None:
        for tracker in self.trackers:
            if isinstance(tracker, (MlflowTracker, WandbTracker)):
                # KILLED: stopped to be resumed (the resume sets it RUNNING again); FAILED: ended by an error
                status = {None: "FINISHED", "early-stop": "FINISHED", "failed": "FAILED"}.get(stopped, "KILLED")
                tracker.finish(run_dir, final, status=status)
            else:
                tracker.finish(run_dir, final)


def open_trackers(cfg: TrainConfig, run_dir: Path, *, resumed: bool) -> Trackers:
    trackers: list = []
    if cfg.tensorboard:
        trackers.append(TensorBoardTracker(run_dir, cfg))
    if cfg.mlflow is not None:
        trackers.append(MlflowTracker.for_run(run_dir, cfg, mlflow_uri(cfg.mlflow, run_dir), resumed))
    if cfg.wandb is not None:
        trackers.append(WandbTracker.for_run(run_dir, cfg, "resnetlab" if cfg.wandb == "auto" else cfg.wandb, resumed))
    return Trackers([t for t in trackers if t.active])


def mlflow_uri(value: str, run_dir: Path) -> str:
    """--mlflow with no URI ("auto"): $MLFLOW_TRACKING_URI, else a SQLite store in RUN_DIR/mlruns."""
    if value and value != "auto":
        return value
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    (run_dir / "mlruns").mkdir(parents=True, exist_ok=True)
    return _local_uri(run_dir)


def _local_uri(run_dir: Path) -> str:
    """A SQLite store in RUN_DIR/mlruns (MLflow 3 deprecates the plain-folder store)."""
    return f"sqlite:///{(run_dir / 'mlruns').resolve() / 'mlflow.db'}"


def attach_evaluation(checkpoint: Path, uri: str | None, metrics: dict, split: str) -> None:
    """evaluate --mlflow: the metrics of a split logged to the MLflow run that trained the checkpoint."""
    run_dir = Path(checkpoint).parent
    saved = _read_tracking(run_dir)
    if not saved.get("mlflow_run_id"):
        asked = _asked_for_mlflow(run_dir)
        why = (f"was trained with --mlflow but its MLflow run never started (the store at {asked} could not be "
               "reached or opened then)" if asked else f"has no {TRACKING_FILE} (trained without --mlflow)")
        logger.warning(f"mlflow: {run_dir} {why}: nothing to attach to")
        return
    tracker = MlflowTracker(uri if uri and uri != "auto" else saved.get("mlflow_uri"), saved["mlflow_run_id"])
    values = {f"{split}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "images"}

    def attach() -> None:
        tracker._connect()
        tracker._log_metrics(values, 0)
        logger.info(f"mlflow: {split} metrics attached to run {tracker.run_id}")

    tracker._guard(f"attach the evaluation to run {tracker.run_id}", attach)


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after the client's retries, when an http(s) tracking server is not there."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=3):
        pass


def _check_writable(uri: str) -> None:
    """Fail at once when a SQLite or file:// store cannot be written (a read-only file or folder): MLflow logs each
    refused write as an error with a traceback, and may retry it for minutes, before the run hears of it."""
    if uri.startswith("file:"):
        from urllib.request import url2pathname

        folder = Path(url2pathname(urlparse(uri).path)).expanduser()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK):
            raise PermissionError(f"cannot write in {existing}: the store's folder is read-only")
        return
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///")).expanduser()
    if not path.exists():
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"cannot create {path}: its folder is not writable")
        return
    # a table made and rolled back: the only probe that a read-only mount refuses too (locks are not writes)
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TABLE resnetlab_write_probe (x)")
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def _asked_for_mlflow(run_dir: Path) -> str | None:
    """The --mlflow value the run's config.yaml records ("auto" or a URI), or None."""
    import yaml

    try:
        settings = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = settings.get("mlflow") if isinstance(settings, dict) else None
    return None if value is None else str(value)


def _read_tracking(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _flat_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The run's settings as scalars (hparams and params take no lists or None)."""
    flat = {}
    for key, value in cfg.to_dict().items():
        if value is None:
            value = ""
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)
