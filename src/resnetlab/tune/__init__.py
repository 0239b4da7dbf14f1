"""Hyper-parameter search over train settings with Optuna: a TPE sampler, a pruner fed every epoch's validation
metric, and a study kept in a database (SQLite in the study folder by default, or any URL Optuna takes), so the
same command resumes it, and several processes or machines fill it together.

    result = tune("photos/", trials=30, trial_time="3m", workers=2)     # runs/tune/photos-1a2b3c/
    result.best_value, result.best_yaml                                 # resnetlab train --config best.yaml

Modules, in the order a study runs: ``plan`` (what is asked, what workers get), ``space`` (the search space),
``study`` (name, storage, sampler, pruner, dead trials), ``search`` (one command: settings, workers, files),
``worker`` (the trial loop), ``outputs`` (trials.csv, best.yaml, kept folders, figures), ``report``, ``tracking``
(MLflow).
"""

from __future__ import annotations

from typing import Any

from .plan import TuneOptions


def tune(data: str | None = None, *, trials: int | None = None, time_limit: str | float | None = None,
         options: dict[str, Any] | None = None, **settings: Any) -> Any:  # noqa: ANN401 - a StudyResult
    """Run or resume a study. ``settings``: train settings, fixed for every trial (``width=0.5``);
    ``options``: the other TuneOptions fields (``{"space": "space.yaml", "workers": 2, "trial_time": "3m"}``).
    Returns a ``search.StudyResult`` (name, folder, trial counts, best trial).

    Example::

        import resnetlab
        study = resnetlab.tune("photos/", trials=20, options={"trial_time": "3m"}, epochs=10)
        print(study.best_value, study.best_yaml)   # then: resnetlab train --config <best_yaml>
    """
    from .search import run_study  # torch and optuna load here, not on `import resnetlab.tune`

    if data is not None:
        settings["data"] = data
    return run_study(TuneOptions(settings=settings, trials=trials, time_limit=time_limit, **(options or {})))


__all__ = ["TuneOptions", "tune"]
