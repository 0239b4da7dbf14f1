"""The study's files in its folder: trials.csv, best.yaml (a train config as it is), the best k trials' run
folders (the others deleted once finished) and the figures, drawn by Optuna's matplotlib module.

    refresh(plan, study)                 # after every trial: trials.csv, best.yaml, kept folders
    figures = write_figures(out, study)  # at the end of a command: [(file name, caption), ...]
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from ..fileio import atomic_path, write_text
from ..log import logger
from .plan import PROGRESS_STEPS, RUN_ONLY, Plan

FIGURES = {
    "optimization_history.png": "Optimisation history: each finished trial's value and the best so far",
    "intermediate_values.png": "Every trial's validation metric per epoch (pruned trials stop early)",
    "param_importances.png": "Parameter importances (fANOVA over the finished trials)",
    "parallel_coordinate.png": "Parallel coordinates: each finished trial's settings and value",
}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def trial_rows(plan: Plan, study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per trial: number, state, value, the searched settings, epochs, time, worker, run folder, note."""
    trials = study.get_trials(deepcopy=False)
    params = list(plan.space) + sorted({k for t in trials for k in t.params} - set(plan.space))
    columns = ["number", "state", plan.metric, *params, "epochs", "duration_s", "started", "worker", "run_dir",
               "note"]
    rows = []
    for trial in trials:
        attrs, steps = trial.user_attrs, trial.intermediate_values
        run_dir = attrs.get("run_dir", "")
        note = attrs.get("note", "")
        if trial.state == TrialState.PRUNED and not note and steps:
            done = 100 * max(steps) // PROGRESS_STEPS
            note = (f"pruned after epoch {attrs.get('epochs', '?')} ({done} % of its planned run): "
                    f"{plan.metric} {steps[max(steps)]:.4f}")
        elif trial.state == TrialState.FAIL and not note:
            note = "its process stopped (killed, or lost its heartbeat)"
        rows.append({"number": trial.number, "state": trial.state.name,
                     plan.metric: trial.value if trial.state == TrialState.COMPLETE else "",
                     **{name: trial.params.get(name, "") for name in params},
                     "epochs": attrs.get("epochs", len(steps) or ""),
                     "duration_s": f"{trial.duration.total_seconds():.1f}" if trial.duration else "",
                     "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else "",
                     "worker": f"{attrs['host']}:{attrs['pid']}" if "pid" in attrs else "",
                     "run_dir": run_dir if run_dir and Path(run_dir).is_dir() else "", "note": note})
    return columns, rows


def write_trials_csv(plan: Plan, study: optuna.Study) -> Path:
    columns, rows = trial_rows(plan, study)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(plan.out) / "trials.csv"
    write_text(path, text.getvalue())
    return path


def best_settings(trial: FrozenTrial) -> dict[str, Any]:
    """The best trial's full train settings, less what names a run (its folder, name, resume, tracker URI)."""
    settings = json.loads(trial.user_attrs["settings"])
    return {k: v for k, v in settings.items() if k not in RUN_ONLY}


def write_best_yaml(plan: Plan, study: optuna.Study) -> Path | None:
    """best.yaml: ``resnetlab train --config best.yaml`` trains the best trial again (same seed: same metric)."""
    best = best_trial(study)
    if best is None or "settings" not in best.user_attrs:
        return None
    steps = best.intermediate_values
    at = max(steps, key=lambda s: steps[s] if plan.maximize else -steps[s]) if steps else None
    threads = best.user_attrs.get("threads")
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    header = [f"# best trial {best.number} of study {plan.name} ({plan.out}): {plan.metric} {best.value:.6g}"
              + (f" at epoch {at}" if at else ""),
              f"# searched: {shown}" if shown else "# searched: nothing (the fixed settings)",
              "# train it again: resnetlab train --config best.yaml (the same seed gives the same metric on a CPU"
              + (f" with the same thread count: OMP_NUM_THREADS={threads}" if threads else "") + ")"]
    text = "\n".join(header) + "\n" + yaml.safe_dump(best_settings(best), sort_keys=False, allow_unicode=True)
    path = Path(plan.out) / "best.yaml"
    write_text(path, text)
    return path


def keep_best(plan: Plan, study: optuna.Study) -> list[Path]:
    """Delete the run folders of finished trials outside the best --keep-trials (on this machine, under the
    study's trials/ folder only); returns the folders deleted."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "repeat_of" not in t.user_attrs]
    complete.sort(key=lambda t: (-t.value if plan.maximize else t.value, t.number))
    keep = {t.user_attrs.get("run_dir") for t in complete[:plan.keep_trials]}
    root, host, deleted = (Path(plan.out) / "trials").resolve(), socket.gethostname(), []
    for trial in trials:
        folder = trial.user_attrs.get("run_dir")
        if not trial.state.is_finished() or not folder or folder in keep or trial.user_attrs.get("host") != host:
            continue
        path = Path(folder)
        if path.is_dir() and path.resolve().parent == root:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def refresh(plan: Plan, study: optuna.Study) -> None:
    keep_best(plan, study)
    write_trials_csv(plan, study)
    write_best_yaml(plan, study)


def write_figures(plan: Plan, study: optuna.Study) -> list[tuple[str, str]]:
    """The study's figures as PNG; one that Optuna cannot draw yet (too few trials) is skipped with a note."""
    import matplotlib

    matplotlib.use("Agg")  # files only: servers and CI have no display
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as figures

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = {k for t in complete for k in t.params}
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    plots = {
        "optimization_history.png": (lambda: figures.plot_optimization_history(study), len(complete) >= 1,
                                     "no finished trial yet"),
        "intermediate_values.png": (lambda: figures.plot_intermediate_values(study), reported, "no epoch reported"),
        "param_importances.png": (lambda: figures.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)), len(complete) >= 2 and len(searched) >= 2,
            "needs 2 finished trials and 2 searched settings"),
        "parallel_coordinate.png": (lambda: figures.plot_parallel_coordinate(study), len(complete) >= 2,
                                    "needs 2 finished trials"),
    }
    written = []
    for name, (draw, possible, why) in plots.items():
        path = Path(plan.out) / name
        if not possible:
            logger.info(f"{name}: not drawn ({why})")
            path.unlink(missing_ok=True)  # an older one would describe fewer trials
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notes on its matplotlib module
                axes = draw()
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            if name in ("optimization_history.png", "intermediate_values.png"):
                first.set_ylabel(plan.metric)
                first.set_xlabel("trial" if name.startswith("optimization") else "epoch")
            figure = first.figure
            figure.set_size_inches(9, 5)
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append((name, FIGURES[name]))
        except Exception as err:  # noqa: BLE001 - a figure never ends a study
            logger.info(f"{name}: not drawn ({type(err).__name__}: {str(err)[:200]})")
    return written
