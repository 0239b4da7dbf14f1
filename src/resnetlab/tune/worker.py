"""A worker: starts trials until the study has its --trials or the time is up. Each trial trains one run with the
settings the sampler picked, reports every epoch's validation metric to the pruner and returns the best epoch's.

Several workers (processes here, commands on other machines) share one study through its database: a lock held
from "how many trials are there?" to "this trial is registered" keeps the processes of one machine from starting
more than --trials; Optuna numbers the trials in the database, so no number is used twice.

    Worker(plan, index=0).run(lock)
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import TrainConfig
from ..errors import ConfigError, ResnetlabError
from ..log import configure, logger
from ..signals import Terminated, sigterm_as_exception
from . import tracking
from .outputs import refresh
from .plan import Plan, progress_step
from .space import Dimension, base_params
from .study import fail_orphans, load_study, open_storage, this_worker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LOCK_WAIT_S = 120  # a process killed while holding the start lock leaves it held: then go on without it
# an earlier trial draws its settings right after it is registered; one that has not within this (its process died
# in between) is left to fail_orphans or the heartbeat, and the twin check goes on without its settings
SETTLE_S = 30
RESUME_HINT = "resume with: resnetlab train --resume "  # as training/loop.py says it


def _caught() -> tuple[type[BaseException], ...]:
    """Errors that fail one trial and let the study go on: resnetlab's (bad settings, a NaN loss, a full disk) and
    running out of memory (a batch size or width too big for the device)."""
    import torch

    return (ResnetlabError, MemoryError) + ((torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else ())


class _TrialPrefix(logging.Filter):
    """'trial 7: ' before every message while a trial runs: several workers print to one terminal."""

    prefix = ""
    resume = ""  # the folder a stopped trial's "resume with" named: said only if tune keeps it (resume_hint)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.prefix and not getattr(record, "tune_prefixed", False):
            text, hint, folder = str(record.msg).partition(RESUME_HINT)
            if hint:  # tune may delete the trial's folder afterwards (--keep-trials): said later if it is kept
                record.msg, self.resume = text.rstrip("; "), folder.strip()
            record.msg, record.tune_prefixed = f"{self.prefix}{record.msg}", True
        return True

    def resume_hint(self) -> None:
        """After an interruption and the study's refresh: the stopped trial's hint, if its folder is still there."""
        if self.resume and Path(self.resume).is_dir():
            logger.info(f"the interrupted trial's run: resume with: resnetlab train --resume {self.resume}")


class Worker:
    def __init__(self, plan: Plan, index: int, study: optuna.Study | None = None):
        self.plan, self.index = plan, index
        self.study = study or load_study(plan, open_storage(plan.storage, plan.heartbeat_s), index)
        self.caught = _caught()
        self.prefix = _TrialPrefix()
        self._release = lambda: None
        self.on_idle = lambda: None  # the parent checks its worker processes between trials

    # ------------------------------------------------------------------ the loop
    def run(self, lock: Any) -> int:  # noqa: ANN401 - a multiprocessing or threading lock
        """Trials until the budget is spent; returns how many this worker ran."""
        logger.addFilter(self.prefix)
        ran = 0
        try:
            while self._start_one(lock):
                ran += 1
        finally:
            logger.removeFilter(self.prefix)
        return ran

    def _start_one(self, lock: Any) -> bool:  # noqa: ANN401
        self.on_idle()
        reason = self._time_up()
        if reason:
            logger.info(f"worker {os.getpid()}: {reason}")
            return False
        held = lock.acquire(timeout=LOCK_WAIT_S)
        released = threading.Event()

        def release() -> None:
            if held and not released.is_set():
                released.set()
                lock.release()

        self._release = release
        try:
            fail_orphans(self.study, reason="its process is gone (killed or crashed)")  # this machine: at once
            optuna.storages.fail_stale_trials(self.study)  # other machines: after two missed heartbeats
            reason = self._enough()
            if reason:
                logger.info(f"worker {os.getpid()}: {reason}")
                return False
            self.study.optimize(self._objective, n_trials=1, catch=self.caught, callbacks=[self._after])
        finally:
            release()
        return True

    def _time_up(self) -> str | None:
        plan = self.plan
        if plan.deadline is None:
            return None
        left = plan.deadline - time.time()
        # what a trial that is not pruned takes: its --trial-time plus setting up and the end-of-run evaluation
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        durations = [t.duration.total_seconds() for t in complete
                     if t.duration is not None and "repeat_of" not in t.user_attrs]
        expected = statistics.median(durations) if durations else plan.trial_seconds or 0.0
        if left <= 0 or expected > left:
            return f"time is up: {max(left, 0):.0f}s left of the study's --time-limit, a trial takes ~{expected:.0f}s"
        return None

    def _enough(self) -> str | None:
        trials = self.study.get_trials(deepcopy=False)
        counted = [t for t in trials if t.state in FINISHED or t.state == TrialState.RUNNING]
        if self.plan.trials is not None and len(counted) >= self.plan.trials:
            return f"the study has its {self.plan.trials} trials ({len(counted)} finished or running)"
        size = _space_size(self.plan.space)
        tried = {json.dumps(t.params, sort_keys=True) for t in trials if t.state in FINISHED}
        if size is not None and len(tried) >= size:
            return f"every one of the space's {size} combinations has been tried"
        # running ones too: a new trial could only draw one of them again (_not_twice), over and over
        pending = tried | {json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.RUNNING}
        if size is not None and len(pending) >= size:
            return f"every one of the space's {size} combinations has been tried or is being tried"
        return None

    # ------------------------------------------------------------------ one trial
    def _objective(self, trial: optuna.Trial) -> float:
        self._release()  # the trial is registered (RUNNING): the next process may count it and start its own
        plan = self.plan
        params = {name: dimension.suggest(trial, name) for name, dimension in plan.space.items()}
        settings = {**plan.base, **params}
        run_dir = plan.trial_dir(trial.number)
        attrs = {**this_worker(), "threads": _threads(), "run_dir": str(run_dir),
                 "settings": json.dumps(settings, default=str)}
        attrs["pid"] = attrs.pop("pid")  # last: another command's fail_orphans judges a trial once it has a pid
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        twin = self._twin(params, trial.number)
        if twin is not None and twin.state == TrialState.RUNNING:
            return self._not_twice(trial, twin)
        if twin is not None:
            return self._repeat(trial, twin)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        logger.info(f"trial {trial.number} started by worker {os.getpid()}: {shown or 'the fixed settings'}")
        self.prefix.prefix = f"trial {trial.number}: "
        try:
            return self._train(trial, settings, run_dir)
        except self.caught as err:
            trial.set_user_attr("note", f"{type(err).__name__}: {err}"[:1000])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("note", "interrupted (Ctrl-C or SIGTERM)")
            raise
        finally:
            self.prefix.prefix = ""

    def _train(self, trial: optuna.Trial, settings: dict, run_dir: Any) -> float:  # noqa: ANN401
        from ..training import train
        from ..training.loop import BEST_METRIC_COLUMNS

        plan = self.plan
        column = BEST_METRIC_COLUMNS[plan.metric]
        # a study stored before recipes were always named ran the plain defaults: it still does (not auto)
        cfg = TrainConfig.from_dict({**settings, "recipe": settings.get("recipe") or "plain", "out": str(run_dir),
                                     "exist_ok": True, "mlflow": plan.mlflow,
                                     # W&B shows a study's trials as one group (a given --wandb-group wins)
                                     "wandb_group": settings.get("wandb_group") or plan.name,
                                     "progress": bool(settings.get("progress")) and plan.workers == 1})
        linked: list[bool] = []
        reported: set[int] = set()

        def on_epoch(row: dict) -> bool:
            if plan.mlflow_parent and not linked:
                linked.append(tracking.link_trial(plan, run_dir, trial.number))
            if row.get(column) is None:
                raise ConfigError(f"--best-metric {plan.metric}: the run's metrics have no {column} column")
            step = progress_step(int(row["epoch"]), int(row.get("planned_epochs") or row["epoch"]))
            if step not in reported:
                trial.report(float(row[column]), step)
                reported.add(step)
            # the last planned epoch is never pruned: the run is done, its result is the trial's (issue 27)
            planned = int(row.get("planned_epochs") or 0)
            last = planned > 0 and int(row["epoch"]) >= planned
            return int(row["epoch"]) >= plan.prune_after and not last and trial.should_prune()

        result = train(cfg, on_epoch=on_epoch)
        trial.set_user_attr("epochs", len(result.history))
        if result.stopped == "signal":  # 143 after SIGTERM, 130 after Ctrl-C (the CLI's exit codes)
            raise Terminated if result.stop_signal == signal.SIGTERM else KeyboardInterrupt
        scores = [float(row[column]) for row in result.history if row.get(column) is not None]
        if result.stopped == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {len(result.history)}: {plan.metric} {scores[-1]:.4f}")
        if not scores:
            raise ConfigError(f"trial {trial.number} trained no epoch: nothing to score")
        return min(scores) if plan.metric == "val_loss" else max(scores)

    def _twin(self, params: dict, number: int) -> FrozenTrial | None:
        """A finished trial with the very same settings (same seed, same result: not trained again), else one that
        started before this one and is still running (another worker or command trains it: not twice at once)."""
        running = None
        for other in self._settled_trials(number):
            if other.number == number or other.params != params or "repeat_of" in other.user_attrs:
                continue
            if other.state in FINISHED:
                return other
            if other.number < number and running is None:  # the lower number trains: two twins never both yield
                running = other
        return running

    def _settled_trials(self, number: int) -> list[FrozenTrial]:
        """The finished and running trials, once every running trial numbered below ``number`` has stored all its
        settings. A trial is registered first and draws after: a check made in between missed its twin, and as only
        the higher number gives way, both trained (two commands on one study, issue 27)."""
        names, deadline = set(self.plan.space), time.monotonic() + SETTLE_S
        while True:
            trials = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
            drawing = [t for t in trials if t.state == TrialState.RUNNING and t.number < number
                       and not names <= set(t.params)]
            if not drawing or time.monotonic() > deadline:
                return trials
            time.sleep(0.05)

    def _not_twice(self, trial: optuna.Trial, twin: FrozenTrial) -> float:
        note = f"same settings as trial {twin.number}, which is running: not trained twice; drawing again"
        trial.set_user_attr("note", note)
        logger.info(f"trial {trial.number}: {note}")
        return math.nan  # Optuna records it FAILED: it does not count toward --trials, and the sampler skips it

    def _repeat(self, trial: optuna.Trial, twin: FrozenTrial) -> float:
        trial.set_user_attr("repeat_of", twin.number)
        trial.set_user_attr("run_dir", twin.user_attrs.get("run_dir", ""))
        trial.set_user_attr("note", f"same settings as trial {twin.number}: its result (not trained again)")
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"same settings as trial {twin.number}, which was pruned")
        return float(twin.value)

    def _after(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log the outcome, then refresh trials.csv, best.yaml and the kept run folders."""
        metric, note = self.plan.metric, trial.user_attrs.get("note", "")
        took = f" in {trial.duration.total_seconds():.0f}s" if trial.duration else ""
        if trial.state == TrialState.COMPLETE:
            best = _best(study)
            logger.info(f"trial {trial.number} finished{took}: {metric} {trial.value:.4f}"
                        + (f" (best: trial {best.number}, {best.value:.4f})" if best else ""))
        elif trial.state == TrialState.PRUNED:
            values = trial.intermediate_values
            last = f": {metric} {values[max(values)]:.4f} fell behind" if values else ""
            logger.info(f"trial {trial.number} pruned{took} after epoch {max(values, default=0)}{last}")
        else:
            logger.warning(f"trial {trial.number} failed{took}: {note or 'see the messages above'}")
        if self.plan.mlflow_parent:
            tracking.tag_trial(self.plan, trial)
        try:
            refresh(self.plan, study)
        except ResnetlabError as err:  # a full disk: the study's database still has everything
            logger.warning(f"could not refresh the study's files: {err}")


def queue_the_start(study: optuna.Study, plan: Plan) -> None:
    """The study's starting settings go first: queued once per command, before its workers start, unless a trial
    with them is waiting, running or finished (a FAILED one does not count, so an interrupted or failed start is
    queued again; Optuna's own skip_if_exists counts FAILED trials too, and the start was never measured then)."""
    first = base_params(plan.space, plan.base)
    if not first:
        return
    live = (TrialState.WAITING, TrialState.RUNNING, *FINISHED)
    if not any(t.system_attrs.get("fixed_params", t.params) == first
               for t in study.get_trials(deepcopy=False, states=live)):
        study.enqueue_trial(first)


def unqueue_unstarted(study: optuna.Study) -> None:
    """After a command's workers stop: a queued trial that none of them started (its time was up first) is marked
    FAILED with a note, not left WAITING; the next command queues it again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "note", "not started: the command's budget ended first")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def _space_size(space: dict[str, Dimension]) -> int | None:
    """The number of combinations of a space of choices and whole-number ranges; None when it has a float range."""
    sizes = []
    for dimension in space.values():
        if dimension.kind == "choice":
            sizes.append(len(dimension.choices))
        elif dimension.kind == "int" and not dimension.log:
            sizes.append((int(dimension.high) - int(dimension.low)) // int(dimension.step or 1) + 1)
        else:
            return None
    return math.prod(sizes)


def _short(value: Any) -> str:  # noqa: ANN401
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads(workers: int) -> None:
    """Each of K workers on a machine computes with cores / K threads (unless OMP_NUM_THREADS says otherwise)."""
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def worker_process(plan: Plan, index: int, lock: Any, ready: Any) -> None:  # noqa: ANN401 - multiprocessing
    """The body of a spawned worker process: its own database connection, the same loop."""
    configure(plan.verbosity)
    set_threads(plan.workers)
    code = 0
    with sigterm_as_exception():
        try:
            worker = Worker(plan, index)
            with ready.get_lock():
                ready.value += 1
            worker.run(lock)
        except KeyboardInterrupt as stop:
            code = 143 if isinstance(stop, Terminated) else 130
        except ResnetlabError as err:
            logger.error(f"worker {os.getpid()}: {err}")
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
