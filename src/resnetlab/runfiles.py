"""The run folder's files: refusing a folder we must not overwrite, metrics.csv, split.csv, data_report.json.

    run_dir = prepare_run_dir(cfg)          # raises before any training if the folder is not usable
    write_history(run_dir, history)
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

from .config import TrainConfig
from .data.splits import DataSource
from .errors import ConfigError
from .fileio import atomic_open, write_failure
from .log import logger
from .task import task_of

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "img_per_s"]


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """Refuse an existing run folder (unless --exist-ok / --resume) and an unwritable one, before any work."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"cannot resume: {run_dir / 'last.pt'} does not exist")
        return run_dir
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        data_name = Path(str(cfg.data)).stem or "data"
        name = cfg.name or f"{cfg.model}-{data_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path("runs") / name
    if run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.exist_ok:
        if not only_a_failed_start(run_dir):
            raise ConfigError(f"run folder {run_dir} already exists and is not empty; use --resume {run_dir} (or "
                              "--resume auto) to continue it, --exist-ok to overwrite it, or another --name/--out")
        logger.info(f"reusing {run_dir}: an earlier start wrote no checkpoint there")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to run folder {run_dir}: {err.strerror or err}") from None
    return run_dir


# what a run writes before its first checkpoint: a folder holding only these is a start that failed
_FIRST_FILES = {"data_report.json", "split.csv", "samples.png", "config.yaml", "lr_find.png", "lr_find.csv",
                "tracking.json", "mlruns", "tensorboard", "race", "wandb"}


def only_a_failed_start(run_dir: Path, also: tuple[str, ...] = ()) -> bool:
    """Whether ``run_dir`` holds only what a start writes before its first checkpoint (and ``also``)."""
    return all(entry.name in _FIRST_FILES or entry.name in also for entry in run_dir.iterdir())


def read_history(run_dir: Path, up_to_epoch: int) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def write_history(run_dir: Path, history: list[dict]) -> None:
    """Rewritten whole each epoch (temp file + rename), so it is never half-written; a failure is a WriteError."""
    text = io.StringIO(newline="")
    extra = [k for k in (history[0] if history else {}) if k not in METRIC_COLUMNS]  # e.g. raw_val_acc, val_f1
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS + extra)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    try:
        with atomic_open(run_dir / "metrics.csv", "w", newline="") as handle:
            handle.write(text.getvalue())
    except OSError as err:
        raise write_failure(run_dir / "metrics.csv", err, len(text.getvalue().encode())) from None


def write_split_csv(run_dir: Path, source: DataSource) -> None:
    """Which file went to which split, so a split made for the user can be reproduced or audited."""
    if any(s.paths is None for s in source.splits.values()):
        return
    with atomic_open(run_dir / "split.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        task = task_of(source.task)  # multi-label: a 'labels' column, names joined by '|' as the CSV reads them
        writer.writerow(["path", task.label_column, "split"])
        for name, split in source.splits.items():
            for path, label in zip(split.paths, split.labels):
                text = task.label_text(label, source.classes)
                writer.writerow([path, text, name])


def log_written(out_dir: Path, names: tuple[str, ...], skipped: list) -> None:
    """The end of an evaluation's summary: unreadable images counted, then the files of ``names`` that ``out_dir``
    holds (an earlier run's figures were removed before drawing, so what exists was written now)."""
    if skipped:
        logger.warning(f"skipped {len(skipped)} unreadable image(s) (listed in metrics.json)")
    written = [name for name in names if (out_dir / name).is_file()]
    logger.info(f"wrote {out_dir}/{', '.join(written)}")
