"""Where a study lives and how it samples: its name, its storage (SQLite in the study folder by default, or any
database URL Optuna takes), the TPE sampler, the pruner, and the trials a dead process left RUNNING.

    storage = open_storage("sqlite:///runs/tune/photos-1a2b3c/study.db", heartbeat_s=15)
    study = load_study(plan, storage, worker=0)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, WriteError
from ..log import logger
from .plan import PROGRESS_STEPS, Plan

# settings that say where or how a study runs, not what it searches: the same command on another machine (other
# paths, devices, decode processes) names the same study
NOT_NAMED = ("out", "name", "resume", "exist_ok", "progress", "workers", "device", "cache_dir", "data_root",
             "mlflow", "tensorboard", "wandb_group", "given", "chosen")


def quiet_optuna() -> None:
    """Optuna's own lines (a failed trial's traceback too) and experimental-feature warnings off: the study logs
    its trials itself, one line each."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_name(data: str, fingerprint: dict[str, Any]) -> str:
    """DATA's stem and a short hash of what the study searches: running the same command again (here or on another
    machine) names the same study, so it resumes; another space, metric or fixed setting starts a new one."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(data).rstrip("/\\")).stem or "data").strip("_") or "data"
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return f"{stem}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'study.db'}"


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a trial whose process dies (SIGKILL, power loss) stops beating and the next
    worker to start a trial, here or on another machine, marks it FAILED after two missed beats."""
    quiet_optuna()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # several processes write one file: wait for the lock instead of failing ("database is locked")
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}  # a server that closed an idle connection: reconnect
    # optuna >= 4.9 renamed the callback (the old name warns); 3.6-4.8 know only failed_trial_callback
    takes_new = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
    callback = {"heartbeat_stale_trial_callback" if takes_new else "failed_trial_callback": _log_stale}
    try:
        return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs,
                                          heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s, **callback)
    except (ImportError, ModuleNotFoundError) as err:
        raise ConfigError(f"storage {url}: its database driver is not installed ({err}); e.g. pip install "
                          "'psycopg[binary]' for postgresql://, PyMySQL for mysql+pymysql://") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy's errors: a bad URL, a server that is not there
        raise ConfigError(f"cannot open the study storage {url}: {type(err).__name__}: {str(err)[:300]}") from None


def _with_driver(url: str) -> str:
    """postgresql:// through psycopg 3 (the 'tune' extra's driver), as SQLAlchemy >= 2.1 reads it; 2.0 would look
    for psycopg2. A URL naming its driver (postgresql+psycopg2://...) is kept."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def _log_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    logger.warning(f"trial {trial.number}: its process stopped beating (killed or lost): marked FAILED")


def make_pruner(plan: Plan) -> optuna.pruners.BasePruner:
    # steps are tenths of each trial's planned run (worker.progress_step); --prune-after is checked in epochs there
    if plan.pruner == "median":  # a trial whose best so far is below the median of finished trials at that share
        return optuna.pruners.MedianPruner(n_startup_trials=plan.prune_startup, n_warmup_steps=0)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=PROGRESS_STEPS)
    return optuna.pruners.NopPruner()


def make_sampler(plan: Plan, worker: int, trials_before: int) -> optuna.samplers.TPESampler:
    """TPE, seeded from --seed, this machine, the process, the worker and the trials already there: one worker on a
    fresh study is reproducible, and workers (or a resumed study) do not all draw the same random start. The process
    id: two commands on one machine number their workers alike and drew the same settings in lockstep."""
    key = f"{plan.seed}:{socket.gethostname()}:{os.getpid()}:{worker}:{trials_before}" if (worker or trials_before) \
        else str(plan.seed)
    seed = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    startup = min(10, max(3, plan.trials // 3)) if plan.trials else 10  # random trials before TPE models the space
    # constant liar: trials running elsewhere count as bad, so parallel workers spread out instead of piling up
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def load_study(plan: Plan, storage: optuna.storages.RDBStorage, worker: int) -> optuna.Study:
    """The study named ``plan.name`` in ``storage``, created on first use (load_if_exists: a re-run resumes it)."""
    direction = "minimize" if plan.metric == "val_loss" else "maximize"
    try:  # its first write: a read-only study.db (or folder) fails here, even for a finished study
        probe = optuna.create_study(storage=storage, study_name=plan.name, direction=direction, load_if_exists=True)
    except optuna.exceptions.StorageInternalError as err:
        cause = getattr(err.__cause__, "orig", None) or err.__cause__ or err  # sqlite's own words, not the SQL
        raise WriteError(f"the study storage {plan.storage} cannot be written ({cause}): tune records every trial "
                         "there; make it writable, or copy it and pass --storage (a finished study's trials.csv, "
                         "best.yaml and report.html are in its folder)") from None
    if probe.direction.name.lower() != direction:
        raise ConfigError(f"study '{plan.name}' in {plan.storage} was created to {probe.direction.name.lower()} "
                          f"its metric; --best-metric {plan.metric} needs {direction}: give another --name")
    trials_before = len(probe.get_trials(deepcopy=False))
    return optuna.load_study(study_name=plan.name, storage=storage, pruner=make_pruner(plan),
                             sampler=make_sampler(plan, worker, trials_before))


def this_worker() -> dict[str, Any]:
    """Who runs a trial, saved with it: a later command on the same machine fails it when that process is gone."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) answers kill(0) too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_orphans(study: optuna.Study, *, pids: set[int] | None = None, reason: str) -> list[int]:
    """Mark FAILED the RUNNING trials of this machine whose process is gone (or, with ``pids``, of those
    processes); returns their numbers. Other machines' trials are left to the heartbeat."""
    me, failed = this_worker(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != me["host"] or "pid" not in attrs:
            continue
        gone = attrs["pid"] in pids if pids is not None else (attrs.get("boot") != me["boot"]
                                                              or not _alive(attrs["pid"]))
        if not gone:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "note", reason)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, ValueError):  # finished meanwhile (the heartbeat, another command)
            continue
        failed.append(trial.number)
        logger.warning(f"trial {trial.number}: {reason}: marked FAILED")
    return failed
