"""One settings pipeline for every entry point (``resnetlab train``, ``resnetlab.train()``, ``tune``, ``lr-find``).

Precedence, highest first: a flag or keyword > the ``--config`` YAML file > the recipe (``--recipe``; ``auto``
when none is named) > auto's choices (made once the data is seen: training/settle.py) > the TrainConfig
defaults. ``resolve`` returns a frozen TrainConfig; ``training.settle`` adds what depends on the data (the task,
auto's choices, the race) and returns a new one. Nothing changes a TrainConfig after that.

    cfg, saved = resolve({"data": "photos/", "epochs": 3})          # what resnetlab.train(data=..., epochs=3) runs
    cfg, saved = resolve(flags, yaml_path="settings.yaml")          # what `resnetlab train --config ...` runs
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, check_names, load_yaml, recipe_values
from .errors import ConfigError
from .log import logger

DEFAULT_RECIPE = "auto"  # the CLI's and the API's: settings chosen from the data and the time budget
AUTO = "auto"  # --resume auto: continue from RUN/last.pt when it exists, else start fresh (torchrun's default)

# Settings a resumed run may change; everything else comes from the run's saved config.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "progress", "time_limit", "early_stop", "cache_dir",
                       "save_every", "stop_after_steps", "fill_time", "keep", "tensorboard", "mlflow", "wandb",
                       "wandb_group", "calibrate")

# What a run saved before the photo path (0.3) trained and evaluated with: resumed, it goes on the same way.
# A run saved before --crop-mode resumes with the centre crop it was validated with.
PRE_0_3_SETTINGS = {"cache_layout": "square", "crop_pct": 1.0, "interpolation": "bilinear", "feature_views": 0,
                    "crop_mode": "center"}


def merge(keywords: dict[str, Any] | None = None, *, config: TrainConfig | None = None,
          yaml_path: str | Path | None = None) -> TrainConfig:
    """Flags or keywords over a YAML file over the recipe over the defaults, with ``given`` (the names auto must
    leave alone) recorded. A ``config`` object's non-default values count as given; a config that already names
    its recipe (a tuning trial, a saved config.yaml) keeps it and is not layered again."""
    keywords = _given(keywords)
    yaml_values = load_yaml(yaml_path) if yaml_path else {}
    check_names(yaml_values, str(yaml_path))
    if config is not None and config.recipe is not None:
        values = {**config.to_dict(), **yaml_values, **keywords}
        before = config.given if config.given is not None else _non_defaults(config)
        given = sorted((set(before) | set(yaml_values) | set(keywords)) - {"data", "recipe", "given", "chosen"})
        return TrainConfig.from_dict({**values, "given": given if values.get("recipe") == "auto" else None,
                                      "data": _absolute(values.get("data"))})
    explicit = {**(_non_defaults(config) if config is not None else {}), **yaml_values, **keywords}
    recipe = explicit.pop("recipe", None) or DEFAULT_RECIPE
    values = {**recipe_values(recipe), **explicit, "recipe": recipe}
    given = sorted(set(explicit) - {"data", "given", "chosen"}) if recipe == "auto" else None
    return TrainConfig.from_dict({**values, "given": given, "data": _absolute(values.get("data"))})


def resolve(keywords: dict[str, Any] | None = None, *, config: TrainConfig | None = None,
            yaml_path: str | Path | None = None) -> tuple[TrainConfig, dict | None]:
    """The run's settings and, for a resume, its last.pt (read once): a fresh run needs data; a resumed one takes
    its saved settings and changes only those a resume may change, and only where they were given now."""
    keywords = _given(keywords)
    resume = (keywords.get("resume") or (config.resume if config is not None else None)
              or (load_yaml(yaml_path).get("resume") if yaml_path else None))  # a resumed run's own config.yaml
    auto = (resume or _elastic_default()) == AUTO
    if auto:  # the run folder when it holds a last.pt, else a fresh run
        folder = _auto_folder(merge(keywords, config=config, yaml_path=yaml_path), asked=resume == AUTO)
        resume = str(folder) if folder is not None and (folder / "last.pt").is_file() else None
    if not resume:
        cfg = merge(keywords, config=config, yaml_path=yaml_path)
        if auto:  # nothing to continue: a fresh run, in a folder a start killed before its first checkpoint left
            cfg = replace(cfg, resume=None, exist_ok=cfg.exist_ok or _holds_no_checkpoint(folder))
        if not cfg.data:
            raise ConfigError("no data given: pass a folder, a CSV file or a built-in name")
        return cfg, None
    from .checkpoint import read_checkpoint  # torch: only a resume reads a checkpoint here

    saved_state = read_checkpoint(Path(resume) / "last.pt")
    if auto:
        step = int(saved_state.get("step") or 0)
        logger.info(f"{_restart_text()}continuing {resume} from its last.pt: epoch {int(saved_state['epoch'])} "
                    "finished" + (f", {step} steps into the next" if step else ""))
    given = {**(_non_defaults(config) if config is not None else {}),
             **(load_yaml(yaml_path) if yaml_path else {}), **keywords}
    values = {**PRE_0_3_SETTINGS, **saved_state["config"]}  # a run started before these settings keeps its path
    values.update({k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES})
    ignored = sorted(k for k, v in given.items() if k not in (*RESUMABLE_OVERRIDES, "data", "resume", "out", "name",
                                                               "exist_ok", "recipe") and values.get(k) != v)
    if ignored:  # say so rather than train with other settings than the user believes
        logger.warning(f"resume: {', '.join('--' + k.replace('_', '-') for k in ignored)} ignored; a resumed run "
                       f"keeps its saved settings (it may change {', '.join(RESUMABLE_OVERRIDES)})")
    if given.get("data"):  # where the data is now (a run saved with a relative path, a moved folder)
        values["data"] = _absolute(given["data"])
    values["stop_after_steps"] = given.get("stop_after_steps") or 0  # "in this invocation": never carried over
    values["resume"] = str(resume)
    return TrainConfig.from_dict(values), saved_state


def _elastic_default() -> str | None:
    """``auto`` under torchrun with ``--max-restarts`` N > 0: a restarted worker continues the run from its last.pt
    (on a node whose worker did not fail TORCHELASTIC_RESTART_COUNT stays 0, yet its workers restart too)."""
    restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    return AUTO if "RANK" in os.environ and restarts.isdigit() and int(restarts) > 0 else None


def _auto_folder(cfg: TrainConfig, *, asked: bool) -> Path | None:
    """--resume auto's run folder: --out, or runs/NAME (None without either: the default name holds the time; None
    when torchrun's default meets --exist-ok, which asked to overwrite the folder)."""
    if not asked and cfg.exist_ok:
        logger.warning("--exist-ok: if torchrun restarts this run (--max-restarts > 0) it starts over; give "
                       "--resume auto instead to continue it from its last.pt")
        return None
    folder = Path(cfg.out) if cfg.out else Path("runs") / cfg.name if cfg.name else None
    if folder is None and asked:
        raise ConfigError("--resume auto needs the run folder: give --out or --name (a default name holds the "
                          "start time, so a restart would not find it)")
    if folder is None:
        logger.warning("torchrun may restart this run (--max-restarts > 0) but it has no --out or --name: a restart "
                       "starts a new run folder instead of continuing this one")
    return folder


def _holds_no_checkpoint(folder: Path | None) -> bool:
    """A run folder holding only what a start writes before its first checkpoint (killed in its first epoch):
    nothing in it to keep. A folder of anything else is still refused unless --exist-ok."""
    from .runfiles import only_a_failed_start

    # metrics.csv: killed between an epoch's row and its last.pt
    return folder is not None and folder.is_dir() and only_a_failed_start(folder, also=("metrics.csv",))


def _restart_text() -> str:
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return f"torchrun restart {count}: " if count and count != "0" else ""


def _given(keywords: dict[str, Any] | None) -> dict[str, Any]:
    """Keywords with '-' spelled '_', without those left at None (None is "not given", as an absent flag)."""
    values = {k.replace("-", "_"): v for k, v in (keywords or {}).items() if v is not None}
    check_names(values, "settings")
    return values


def _non_defaults(config: TrainConfig) -> dict[str, Any]:
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != defaults[k]}


def _absolute(data: str | None) -> str | None:
    """A data folder or CSV file as an absolute path, so export, evaluate and --resume find it from any folder;
    a built-in name (digits, fashion-mnist) stays as it is."""
    if data and Path(data).exists():
        return str(Path(data).resolve())
    return data
