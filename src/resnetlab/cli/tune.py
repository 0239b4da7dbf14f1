"""The tune verb: a hyper-parameter search over train settings (Optuna), resumable and shared across processes and
machines through its database. Every train flag works and is fixed for all trials; a few names mean the study's:
--time-limit (the study's budget; each trial's is --trial-time), --workers (trial processes; decoding processes
are --decode-workers), --name and --out (the study's).

    resnetlab tune photos/ --trials 30 --trial-time 3m --workers 2
"""

from __future__ import annotations

import argparse

from ..config import TrainConfig
from ..errors import ConfigError
from .train_flags import add_train_flags


def tune_parser(sub) -> None:
    tune = sub.add_parser(
        "tune", conflict_handler="resolve",  # --time-limit, --workers, --name, --out: the study's meaning wins
        help="hyper-parameter search (Optuna): resumable, shared by processes and machines",
        description="Search train settings with Optuna's TPE sampler, pruning trials whose per-epoch validation "
                    "falls behind (median or Hyperband). The study lives in a database (--storage; default "
                    "sqlite:///runs/tune/NAME/study.db): the same command again resumes it, --workers K runs K "
                    "processes here, and the same command on other machines with a shared database URL fills the "
                    "same study. Writes runs/tune/NAME/: trials.csv, best.yaml (resnetlab train --config best.yaml "
                    "trains the best trial again), the best trials' run folders (trials/NNN), figures and "
                    "report.html. Every train flag is fixed for all trials (the default space leaves it out).")
    add_train_flags(tune)
    tune.add_argument("--recipe", help="a preset under every trial's settings: fast, accurate, photos, plain, a YAML "
                      "file, or auto (resolved once, before the first trial, so every trial shares its choices); "
                      "default: none, the train defaults listed here")
    study = tune.add_argument_group("study (--time-limit, --workers, --name and --out mean the study's here)")
    study.add_argument("--trials", type=int, default=None,
                       help="the study's total of finished trials (complete or pruned), over every process and "
                            "machine; a resumed study runs the rest; raise it to search on")
    study.add_argument("--time-limit", dest="study_time", default=None, metavar="DURATION",
                       help="this command's budget (e.g. 90m, 2h): no trial starts that would end after it")
    study.add_argument("--trial-time", default=None, metavar="DURATION",
                       help="every trial's --time-limit (e.g. 3m): same budget for every setting, the schedule "
                            "re-planned to fit (add --fill-time to use all of it)")
    study.add_argument("--space", default=None, metavar="FILE.yaml",
                       help="search space: per setting {low, high[, log: true, step]} or {choices: [...]}; default: "
                            "lr, weight_decay, label_smoothing, aug, erase, width, batch_size by data size (see "
                            "README), less the settings given as flags")
    study.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                       help="stop trials whose validation metric falls behind: median (of the finished trials at "
                            "the same tenth of their planned run), hyperband, or none (default: median)")
    study.add_argument("--prune-after", type=int, default=2, metavar="EPOCHS",
                       help="no trial is pruned before it has run this many epochs (default: 2)")
    study.add_argument("--prune-startup", type=int, default=3, metavar="TRIALS",
                       help="median pruner: finished trials before it prunes any (default: 3)")
    study.add_argument("--storage", default=None, metavar="URL",
                       help="the study's database: any URL Optuna takes (postgresql://USER:PASS@HOST/DB, "
                            "mysql+pymysql://...; default: sqlite:///runs/tune/NAME/study.db)")
    study.add_argument("--name", dest="study_name", default=None,
                       help="study name (default: DATA's stem and a hash of the searched settings, so the same "
                            "command names the same study)")
    study.add_argument("--out", "--output", dest="study_out", default=None, metavar="DIR",  # train's alias too
                       help="the study's folder (default: runs/tune/NAME)")
    study.add_argument("--workers", dest="study_workers", type=int, default=1, metavar="K",
                       help="trial processes on this machine, each with cores/K threads (default: 1)")
    study.add_argument("--decode-workers", type=int, default=None, metavar="N",
                       help="train's --workers for every trial: processes that decode images")
    study.add_argument("--keep-trials", type=int, default=3, metavar="K",
                       help="keep the run folders of the best K finished trials; the others are deleted once "
                            "finished (default: 3)")
    study.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                       help="a running trial records a heartbeat this often; after two missed beats (a killed "
                            "process on another machine, a lost machine) the next worker to start a trial marks it "
                            "FAILED; on this machine a dead process's trial is failed at once (default: 30)")
    study.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                       help="draw the study's figures at the end (default: on)")


def tune_run(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401 - the optional extra
    except ImportError:
        raise ConfigError("tune needs the 'tune' extra (Optuna): pip install 'resnetlab[tune]'") from None
    from ..tune import TuneOptions
    from ..tune.search import run_study  # torch and optuna load here: --help stays light

    known = set(TrainConfig.field_names())
    settings = {k: v for k, v in vars(args).items() if k in known}
    if args.decode_workers is not None:
        settings["workers"] = args.decode_workers
    options = TuneOptions(settings=settings, config=args.config, recipe=args.recipe, space=args.space,
                          trials=args.trials, time_limit=args.study_time, trial_time=args.trial_time,
                          pruner=args.pruner, prune_after=args.prune_after, prune_startup=args.prune_startup,
                          storage=args.storage, name=args.study_name, out=args.study_out, workers=args.study_workers,
                          keep_trials=args.keep_trials, heartbeat=args.heartbeat, plots=args.plots,
                          verbosity=-1 if args.quiet else 1 if args.verbose else 0)
    run_study(options)
    return 0
