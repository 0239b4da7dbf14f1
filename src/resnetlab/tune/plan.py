"""What a study is asked to do (``TuneOptions``: the command line or the Python call) and what every worker needs
to do it (``Plan``: resolved settings, space, storage; plain values, so spawned processes get a copy).

    plan = Plan(name="photos-1a2b3c", out="runs/tune/photos-1a2b3c", storage="sqlite:///...", base={...}, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .space import Dimension

PRUNERS = ("median", "hyperband", "none")
# settings of a trial that are not how it trains: left out of best.yaml (a new run picks its own)
RUN_ONLY = ("out", "name", "resume", "exist_ok", "mlflow", "recipe", "given", "chosen")


PROGRESS_STEPS = 10  # validation is reported to the pruner at each tenth of a trial's planned run


def progress_step(epoch: int, planned: int) -> int:
    """The pruner's step for ``epoch`` of ``planned``: the share of the run done, in tenths. Trials are compared
    at the same share of their schedules, not the same epoch: under a time limit a trial that plans 12 short
    epochs is at a high learning rate at epoch 3, where one that plans 4 is annealing, and comparing them at
    epoch 3 pruned nearly every trial that planned more epochs (benchmarks/README.md, "Tune")."""
    return max(1, min(PROGRESS_STEPS, round(PROGRESS_STEPS * epoch / max(planned, 1))))



@dataclass
class TuneOptions:
    """A study as asked for. ``settings``: train settings given explicitly (flags or keywords); they are fixed
    (the default space leaves them out); ``config``/``recipe`` set the others' starting values."""

    settings: dict[str, Any] = field(default_factory=dict)
    config: str | None = None  # --config YAML of train settings
    recipe: str | None = None  # --recipe: a preset under the settings (auto: resolved once, before trial 0)
    space: str | None = None  # --space YAML; None: the default space for the data's size
    trials: int | None = None  # the study's total of finished trials (COMPLETE + PRUNED), over every process
    time_limit: str | float | None = None  # this command's budget: no trial starts that would end after it
    trial_time: str | float | None = None  # every trial's --time-limit
    pruner: str = "median"
    prune_after: int = 2  # epochs a trial runs before it can be pruned
    prune_startup: int = 3  # finished trials before the median pruner prunes
    storage: str | None = None  # database URL; None: sqlite:///OUT/study.db
    name: str | None = None  # None: DATA's stem and a hash of what is searched
    out: str | None = None  # None: runs/tune/NAME
    workers: int = 1  # trial processes on this machine
    keep_trials: int = 3  # run folders kept: the best k finished trials'
    heartbeat: int = 30  # seconds between a running trial's heartbeats
    plots: bool = True
    verbosity: int = 0  # -1 quiet, 0 info, 1 debug: passed to the worker processes


@dataclass(frozen=True)
class Plan:
    """A resolved study: every worker process (and machine) gets a copy."""

    name: str
    out: str  # the study folder: trials.csv, best.yaml, report.html, figures, trials/NNN/
    storage: str  # database URL
    base: dict[str, Any]  # each trial's settings before the space's values (TrainConfig.to_dict())
    space: dict[str, Dimension]
    metric: str  # --best-metric: the value optimised (val_loss minimised, the others maximised)
    trials: int | None = None
    deadline: float | None = None  # time.time() after which no trial starts
    trial_seconds: float | None = None
    pruner: str = "median"
    prune_after: int = 2
    prune_startup: int = 3
    keep_trials: int = 3
    heartbeat_s: int = 30
    workers: int = 1
    seed: int = 0
    mlflow: str | None = None  # tracking URI (resolved) with --mlflow
    mlflow_parent: str | None = None  # the study's MLflow run: each trial's run is its child
    verbosity: int = 0

    @property
    def maximize(self) -> bool:
        return self.metric != "val_loss"

    def trial_dir(self, number: int) -> Path:
        return Path(self.out) / "trials" / f"{number:03d}"
