"""--mlflow for a study: one parent run for the study (kept in the study's database, so a resumed study or another
machine continues it) and each trial's own MLflow run (made by the trainer: params, per-epoch metrics, files)
linked to it as a child. Failing soft, as the trainer's tracking: a tracker that fails costs one warning.

    parent = start_study_run(plan, study)          # the parent run's id, or None
    link_trial(plan, run_dir, number)              # from the trial's first epoch on: a child of the study's run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .._version import __version__
from ..log import logger
from .plan import Plan
from .space import space_specs

EXPERIMENT = "resnetlab"  # the trainer's experiment: studies and their trials sit beside plain runs


def _client(uri: str) -> Any:  # noqa: ANN401 - mlflow's client, imported only with --mlflow
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _soft(action: str, function: Any, *args: Any) -> Any:  # noqa: ANN401
    try:
        return function(*args)
    except Exception as err:  # noqa: BLE001 - tracking never ends a study
        logger.warning(f"mlflow: could not {action} ({type(err).__name__}: {str(err)[:300]}); the study goes on")
        return None


def start_study_run(plan: Plan, study: optuna.Study) -> str | None:
    """The study's parent run: the one its database names (set RUNNING again), or a new one."""
    return _soft(f"start the study's run at {plan.mlflow}", _start, plan, study)


def _start(plan: Plan, study: optuna.Study) -> str:
    client = _client(plan.mlflow)
    saved = study.user_attrs.get("mlflow", {})
    if saved.get("uri") == plan.mlflow and saved.get("run_id"):
        client.update_run(saved["run_id"], status="RUNNING")
        logger.info(f"mlflow: continuing the study's run {saved['run_id']} at {plan.mlflow}")
        return saved["run_id"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    local = Path(plan.out, "mlruns")  # the default store in the study folder keeps its artifacts beside it
    location = (local / "artifacts").resolve().as_uri() if plan.mlflow.endswith(f"{local.resolve()}/mlflow.db") \
        else None
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT, location)
    tags = {"resnetlab.version": __version__, "mlflow.runName": f"tune {plan.name}", "tune.study": plan.name,
            "tune.storage": plan.storage, "data": str(plan.base.get("data"))}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_param(run_id, "space", json.dumps(space_specs(plan.space))[:500])
    for key in ("metric", "pruner", "prune_after", "trials", "seed"):
        client.log_param(run_id, key, str(getattr(plan, key)))
    study.set_user_attr("mlflow", {"uri": plan.mlflow, "run_id": run_id})
    logger.info(f"mlflow: study run {run_id} in experiment '{EXPERIMENT}' at {plan.mlflow}; each trial is a child")
    return run_id


def link_trial(plan: Plan, run_dir: Path, number: int) -> bool:
    """Make the trial's MLflow run (named in its tracking.json) a child of the study's run."""
    def link() -> bool:
        run_id = json.loads((Path(run_dir) / "tracking.json").read_text(encoding="utf-8"))["mlflow_run_id"]
        client = _client(plan.mlflow)
        for key, value in {"mlflow.parentRunId": plan.mlflow_parent, "mlflow.runName": f"trial {number:03d}",
                           "tune.study": plan.name, "tune.trial": str(number)}.items():
            client.set_tag(run_id, key, value)
        return True

    return bool(_soft(f"link trial {number} to the study's run", link))


def tag_trial(plan: Plan, trial: FrozenTrial) -> None:
    """The trial's state (COMPLETE, PRUNED, FAIL) on its MLflow run."""
    folder = trial.user_attrs.get("run_dir")
    if not folder or "repeat_of" in trial.user_attrs or not (Path(folder) / "tracking.json").is_file():
        return

    def tag() -> None:
        run_id = json.loads((Path(folder) / "tracking.json").read_text(encoding="utf-8"))["mlflow_run_id"]
        _client(plan.mlflow).set_tag(run_id, "tune.state", trial.state.name)

    _soft(f"tag trial {trial.number}", tag)


def finish_study_run(plan: Plan, study: optuna.Study, files: list[Path]) -> None:
    """The best value and the trial counts as metrics, the study's files as artifacts; the run ends FINISHED."""
    def finish() -> None:
        client = _client(plan.mlflow)
        trials = study.get_trials(deepcopy=False)
        for state in ("COMPLETE", "PRUNED", "FAIL"):
            client.log_metric(plan.mlflow_parent, f"trials_{state.lower()}",
                              sum(t.state.name == state for t in trials))
        try:
            client.log_metric(plan.mlflow_parent, f"best_{plan.metric}", study.best_value)
            client.set_tag(plan.mlflow_parent, "tune.best_trial", str(study.best_trial.number))
        except ValueError:
            pass  # no finished trial
        for path in files:
            if path.is_file():
                client.log_artifact(plan.mlflow_parent, str(path))
        client.set_terminated(plan.mlflow_parent, status="FINISHED")

    _soft("finish the study's run", finish)
