"""One tune command from start to end: resolve the settings and the space, open (or resume) the study, run the
workers (this process and --workers - 1 spawned ones), then write trials.csv, best.yaml, the figures and
report.html.

    result = run_study(TuneOptions(settings={"data": "photos/"}, trials=20, trial_time="3m"))
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config import TrainConfig, check_names, load_yaml, parse_duration, require_at_least
from ..errors import ConfigError
from ..log import logger
from ..settings import merge
from ..tracking import mlflow_uri
from . import tracking
from .outputs import best_trial, refresh, write_figures
from .plan import PRUNERS, Plan, TuneOptions
from .report import write_study_report
from .space import Dimension, default_space, describe_space, load_space, space_specs
from .study import NOT_NAMED, default_storage, fail_orphans, load_study, open_storage, study_name
from .worker import Worker, queue_the_start, set_threads, unqueue_unstarted, worker_process

LOCAL = ("progress", "workers", "device", "cache_dir", "data_root", "tensorboard")  # this machine's, not the study's
READY_WAIT_S = 600  # spawned workers import torch before their first trial; the slowest machines take minutes


@dataclass
class StudyResult:
    name: str
    out: Path
    storage: str
    counts: dict[str, int]  # trials per state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None

    @property
    def best_yaml(self) -> Path:
        return self.out / "best.yaml"


def run_study(options: TuneOptions) -> StudyResult:
    """Run (or resume) one study; returns its state when this command's share is done."""
    _check_options(options)
    base, fixed = resolve_base(options)
    space = load_space(options.space, base) if options.space else None
    clash = sorted(set(space or {}) & set(options.settings))
    if clash:
        raise ConfigError(f"{', '.join(clash)}: both searched in {options.space} and fixed by a flag; drop one")
    fingerprint = {k: v for k, v in base.items() if k not in NOT_NAMED} | {
        "space": space_specs(space) if space else "default"}
    name = options.name or study_name(base["data"], fingerprint)
    out = Path(options.out or Path("runs") / "tune" / name)
    out.mkdir(parents=True, exist_ok=True)
    url = options.storage or default_storage(out)
    seconds = parse_duration(options.time_limit) if options.time_limit is not None else None
    plan = Plan(name=name, out=str(out), storage=url, base=base, space={}, metric=base["best_metric"],
                trials=options.trials, deadline=time.time() + seconds if seconds else None,
                trial_seconds=parse_duration(options.trial_time) if options.trial_time is not None else None,
                pruner=options.pruner, prune_after=options.prune_after, prune_startup=options.prune_startup,
                keep_trials=options.keep_trials, heartbeat_s=options.heartbeat, workers=options.workers,
                seed=base["seed"], verbosity=options.verbosity,
                mlflow=mlflow_uri(base["mlflow"], out) if base.get("mlflow") else None)
    study = load_study(plan, open_storage(url, options.heartbeat), worker=0)
    base, space = _study_settings(study, base, space, fixed, options)
    plan = replace(plan, base=base, space=space, metric=base["best_metric"])  # --recipe auto may pick macro_f1
    if plan.maximize != (study.direction == optuna.study.StudyDirection.MAXIMIZE):
        raise ConfigError(f"study '{name}' optimises in the other direction than --best-metric {plan.metric}")
    fail_orphans(study, reason="its process is gone (killed or crashed)")
    _log_start(plan, study, seconds)
    if plan.mlflow:
        plan = replace(plan, mlflow_parent=tracking.start_study_run(plan, study))
    worker = Worker(plan, 0, study)
    queue_the_start(study, plan)
    try:
        _run_workers(plan, worker)
    except BaseException:
        refresh(plan, study)  # trials.csv and best.yaml as far as the study got; the database has it all
        worker.prefix.resume_hint()  # only for a trial folder the refresh kept
        raise
    unqueue_unstarted(study)
    return _finish(plan, study, options.plots)


def _check_options(options: TuneOptions) -> None:
    if options.trials is None and options.time_limit is None:
        raise ConfigError("tune needs a budget: --trials N (the study's total), --time-limit 2h, or both")
    if options.trials is not None:
        require_at_least("--trials", options.trials)
    require_at_least("--workers", options.workers)
    require_at_least("--keep-trials", options.keep_trials, 0)
    require_at_least("--prune-after", options.prune_after, 0)
    require_at_least("--prune-startup", options.prune_startup, 0)
    require_at_least("--heartbeat", options.heartbeat)
    if options.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {options.pruner!r} is not one of: {', '.join(PRUNERS)}")
    for key, why in (("resume", "a study resumes when the same command runs again"),
                     ("out", "--out is the study's folder; each trial trains in OUT/trials/NNN"),
                     ("name", "--name is the study's name"), ("time_limit", "each trial's limit is --trial-time")):
        if options.settings.get(key) is not None:
            raise ConfigError(f"tune takes no train setting '{key}': {why}")


def resolve_base(options: TuneOptions) -> tuple[dict[str, Any], set[str]]:
    """Each trial's settings before the space's: defaults < --recipe < --config < flags, --trial-time as the
    time limit; and the names given explicitly (flags and --config), which the default space leaves alone."""
    flags = {k.replace("-", "_"): v for k, v in options.settings.items() if v is not None}
    check_names(flags, "settings")
    if options.trial_time is not None:
        parse_duration(options.trial_time)
        flags["time_limit"] = options.trial_time
    fixed = (set(flags) | set(load_yaml(options.config) if options.config else {})) - {"data"}
    # as train's pipeline (auto leaves `fixed` alone), but a study without --recipe searches around the plain defaults
    cfg = merge({**flags, "recipe": options.recipe or "plain"}, yaml_path=options.config)
    if not cfg.data:
        raise ConfigError("no data given: pass a folder, a CSV file or a built-in name")
    return cfg.to_dict(), fixed


def _study_settings(study: optuna.Study, base: dict, space: dict | None, fixed: set[str],
                    options: TuneOptions) -> tuple[dict, dict[str, Dimension]]:
    """The study's trial settings and space: those its first command stored (a resumed study, another machine:
    with this machine's paths and devices), or, for a new study, resolved now and stored."""
    stored = study.user_attrs.get("settings")
    if stored:
        kept = {name: Dimension(**{**values, "choices": tuple(values["choices"])})
                for name, values in stored["space"].items()}
        if space is not None and space_specs(space) != space_specs(kept):
            logger.warning(f"study '{study.study_name}' searches the space it was created with, not {options.space}; "
                           "give another --name to search a new space")
        return {**stored["base"], **{k: base[k] for k in LOCAL if k in base}}, kept
    from ..training.setup import check_inputs

    checked = check_inputs(TrainConfig.from_dict(base))  # a bad folder or model fails here, once
    source, auto = checked.source, base.get("recipe") == "auto" and base.get("chosen") is None
    # the data's task, and the metric its runs pick best.pt by (multi-label: mAP, not val_acc's exact match): the
    # trials are ranked by that same metric, and best.yaml says it
    base = {**base, "task": checked.cfg.task, "best_metric": checked.cfg.best_metric}
    if auto:
        base = _resolve_auto(base, source, options)
    if space is None:
        images = len(source.splits["train"])
        space = default_space(images, base, fixed)
        logger.info(f"default search space for {images} training images"
                    + (f" (fixed by flags: {', '.join(sorted(fixed & set(default_space(images, base, set()))))})"
                       if fixed & set(default_space(images, base, set())) else ""))
    study.set_user_attr("settings", {"base": base, "space": {k: asdict(d) for k, d in space.items()}})
    return base, space  # the starting settings are queued by the first worker to start a trial (worker.py)


def _resolve_auto(base: dict, source: Any, options: TuneOptions) -> dict:  # noqa: ANN401 - a DataSource
    """--recipe auto, once for the whole study: every trial shares its choices (a trial does not re-measure)."""
    from ..device import resolve_device
    from ..training.auto import apply_auto

    values = apply_auto(TrainConfig.from_dict(base), source, resolve_device(base["device"])).to_dict()
    if options.trial_time is not None:
        values["time_limit"] = options.trial_time  # each trial's budget, not less the seconds measured here
    return values


def _log_start(plan: Plan, study: optuna.Study, seconds: float | None) -> None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in
                       (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) if any(t.state == s for t in trials))
    logger.info(f"study {plan.name}: {len(trials)} trials so far" + (f" ({counts})" if counts else "")
                + f"; storage {plan.storage}; folder {plan.out}")
    logger.info("search space:\n" + "\n".join(describe_space(plan.space)))
    budget = [f"until the study has {plan.trials} finished trials" if plan.trials else "",
              f"for at most {seconds:.0f}s (no trial starts that would end later)" if seconds else ""]
    logger.info("budget: " + " and ".join(b for b in budget if b) + f"; {plan.workers} worker process(es) here; "
                f"each trial: seed {plan.seed}, time limit {plan.base.get('time_limit') or 'none'}; pruner "
                f"{plan.pruner}" + (f" from epoch {plan.prune_after}" if plan.pruner != "none" else "")
                + f"; {plan.metric} {'maximised' if plan.maximize else 'minimised'}")


# ---------------------------------------------------------------------- worker processes
class _Watch:
    """The spawned workers: one that dies (SIGKILL, a crash) has its running trial marked FAILED at once."""

    def __init__(self, study: optuna.Study, children: list):
        self.study, self.children, self.seen = study, children, set()

    def check(self) -> None:
        for child in self.children:
            if child.exitcode is None or child.pid in self.seen:
                continue
            self.seen.add(child.pid)
            if child.exitcode in (130, 143):  # stopped by Ctrl-C or SIGTERM: its trial is already FAILED
                logger.info(f"worker process {child.pid} stopped (interrupted)")
            elif child.exitcode != 0:
                how = (f"killed by {signal.Signals(-child.exitcode).name}" if child.exitcode < 0
                       else f"exit code {child.exitcode}")
                logger.warning(f"worker process {child.pid} ended ({how}); the study goes on")
                fail_orphans(self.study, pids={child.pid}, reason=f"its worker process {child.pid} died ({how})")

    def alive(self) -> list:
        return [child for child in self.children if child.is_alive()]


def _run_workers(plan: Plan, worker: Worker) -> None:
    if plan.workers == 1:
        worker.run(threading.Lock())
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or DB connection
    lock, ready = context.Lock(), context.Value("i", 0)
    children = [context.Process(target=worker_process, args=(plan, index, lock, ready), name=f"tune-worker-{index}")
                for index in range(1, plan.workers)]
    for child in children:
        child.start()
    watch = _Watch(worker.study, children)
    worker.on_idle = watch.check
    set_threads(plan.workers)
    try:
        started = time.monotonic()  # let the others import torch first: then every worker starts a trial at once
        while ready.value < len(watch.alive()) and time.monotonic() - started < READY_WAIT_S:
            time.sleep(0.1)
        worker.run(lock)
        while watch.alive():
            for child in children:
                child.join(timeout=0.5)
            watch.check()
        watch.check()
    except BaseException:
        _stop(children)
        watch.check()
        raise


def _stop(children: list) -> None:
    """After Ctrl-C (a terminal sends it to the workers too) or a signal to this process only: a moment for each
    to stop by itself, then SIGTERM (its trial stops at the next step), then SIGKILL for any that does not."""
    for grace, action in ((2, None), (30, "terminate"), (10, "kill")):
        alive = [child for child in children if child.is_alive()]
        for child in alive:
            if action:
                getattr(child, action)()
        deadline = time.monotonic() + grace
        for child in alive:
            child.join(timeout=max(0.0, deadline - time.monotonic()))


def _finish(plan: Plan, study: optuna.Study, plots: bool) -> StudyResult:
    refresh(plan, study)
    figures = write_figures(plan, study) if plots else []
    report = write_study_report(plan, study, figures)
    out = Path(plan.out)
    if plan.mlflow_parent:
        files = [out / "trials.csv", out / "best.yaml", report] + [out / name for name, _ in figures]
        tracking.finish_study_run(plan, study, files)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    counts = {k: v for k, v in counts.items() if v}
    best = best_trial(study)
    summary = ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
    logger.info(f"study {plan.name}: {len(trials)} trials ({summary})")
    if best is not None:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        logger.info(f"best: trial {best.number}, {plan.metric} {best.value:.4f} ({shown}); train it: resnetlab train "
                    f"--config {out / 'best.yaml'}")
    logger.info(f"files: {out}/ (trials.csv, best.yaml, report.html, figures, trials/NNN: the best "
                f"{plan.keep_trials}); run the same command again to resume, or raise --trials to search on")
    return StudyResult(plan.name, out, plan.storage, counts, best.number if best else None,
                       best.value if best else None, dict(best.params) if best else None)
