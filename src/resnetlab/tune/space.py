"""The search space of a study: which train settings vary and over what, from a YAML file (``--space``) or the
default for the data's size, checked against TrainConfig before any trial runs.

    lr: {low: 0.01, high: 0.4, log: true}      # a float setting: uniform, or log-uniform with log: true
    epochs: {low: 4, high: 12}                 # an int setting: whole numbers (step: 2 for every other one)
    aug: {choices: [crop, light, standard]}    # any setting: one of a list (a bare list means the same)

    space = load_space("space.yaml", base)     # {"lr": Dimension(...), ...}
    params = {name: dimension.suggest(trial) for name, dimension in space.items()}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import SGD_LIKE, TrainConfig, check_names, default_lr, load_yaml
from ..errors import ConfigError

SPEC_KEYS = ("low", "high", "log", "step", "choices")
# what a trial's run is, not how it trains: fixed by the study (--trial-time is the per-trial time limit)
NOT_SEARCHABLE = ("data", "out", "name", "resume", "exist_ok", "time_limit", "progress", "mlflow", "tensorboard",
                  "wandb", "wandb_group")
SMALL, LARGE = 2_000, 50_000  # training images: the default space's size classes


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range (``log``: log-uniform; ``step``: a grid), or choices."""

    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: Any, name: str) -> Any:  # noqa: ANN401 - a setting's value, of its own type
        """The value Optuna's sampler picks for this trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:  # noqa: ANN401
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        scale = "log-uniform" if self.log else "uniform"
        kind = "whole numbers" if self.kind == "int" else scale
        return f"{kind} {self.low:g} - {self.high:g}" + (f", step {self.step:g}" if self.step else "")

    def to_spec(self) -> dict[str, Any]:
        """The YAML form (what --space takes)."""
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step:
            spec["step"] = self.step
        return spec


Space = dict[str, Dimension]


def load_space(path: str | Path, base: dict[str, Any]) -> Space:
    """A --space YAML file: ``setting: {low, high[, log, step]}`` or ``setting: {choices: [...]}`` per line; every
    name, bound and choice is checked against TrainConfig (with the study's other settings) naming the file."""
    origin = str(path)
    values = load_yaml(path)
    check_names(values, origin)
    space = {key.replace("-", "_"): _dimension(key.replace("-", "_"), spec, origin) for key, spec in values.items()}
    if not space:
        raise ConfigError(f"search space {origin} is empty: give at least one setting, e.g. lr: {{low: 0.01, "
                          "high: 0.4, log: true}")
    check_space(space, base, origin)
    return space


def _dimension(name: str, spec: Any, origin: str) -> Dimension:  # noqa: ANN401 - whatever the YAML holds
    where = f"{origin}: {name}"
    if name in NOT_SEARCHABLE:
        hint = " (each trial's time limit is --trial-time)" if name == "time_limit" else ""
        raise ConfigError(f"{where}: '{name}' cannot be searched: it is fixed for the whole study{hint}")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {{low: ..., high: ...[, log: true]}} or {{choices: [...]}}, got "
                          f"{spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; a dimension takes {', '.join(SPEC_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, alone (no low/high), got {spec!r}")
        if any(not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: each choice must be a number, a word or true/false, got {choices!r}")
        return Dimension("choice", choices=tuple(choices))
    return _range(name, spec, where)


def _range(name: str, spec: dict, where: str) -> Dimension:
    annotation = str(next(f.type for f in fields(TrainConfig) if f.name == name))
    kind = "float" if annotation.startswith("float") else "int" if annotation.startswith("int") else None
    if kind is None:
        raise ConfigError(f"{where}: '{name}' is not a number ({annotation}): give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high, got {spec!r}")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {label} must be a number, got {value!r}")
        if kind == "int" and value is not None and value != int(value):
            raise ConfigError(f"{where}: '{name}' takes whole numbers; {label} = {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got low {low}, high {high}")
    if log and (low <= 0 or step):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step, got {spec!r}")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    if kind == "int":
        return Dimension("int", int(low), int(high), log, int(step) if step else None)
    return Dimension("float", float(low), float(high), log, float(step) if step else None)


def check_space(space: Space, base: dict[str, Any], origin: str) -> None:
    """Every choice and both ends of every range make a valid TrainConfig with the study's other settings."""
    for name, dimension in space.items():
        values = dimension.choices if dimension.kind == "choice" else (dimension.low, dimension.high)
        for value in values:
            try:
                TrainConfig.from_dict({**base, name: value}, origin=origin)
            except ConfigError as err:
                raise ConfigError(f"{origin}: {name} = {value!r} is not a valid setting: {err}") from None


def default_space(images: int, base: dict[str, Any], fixed: set[str]) -> Space:
    """The space searched without --space, by the number of training images (the README's table); settings given
    as flags (``fixed``) are left out: they stay as given."""
    small, large = images < SMALL, images >= LARGE
    sgd = base.get("opt", "sgd") in SGD_LIKE
    space: Space = {
        # peak learning rate of the one-cycle schedule; SGD with momentum and Adam live two decades apart
        "lr": Dimension("float", 0.01, 0.4, log=True) if sgd else Dimension("float", 1e-4, 3e-3, log=True),
        "weight_decay": Dimension("float", 1e-5, 2e-3, log=True),
        "label_smoothing": Dimension("float", 0.0, 0.2),
        "aug": Dimension("choice", choices=("crop", "light") if small else
                         ("crop", "light", "standard", "strong") if large else ("crop", "light", "standard")),
        "erase": Dimension("choice", choices=(0.0, 0.25)) if small else Dimension("float", 0.0, 0.5),
        # channel width: the biggest lever on cost; small sets overfit wide nets and gain nothing from them
        "width": Dimension("choice", choices=(0.25, 0.5) if small else (0.5, 1.0)),
        "batch_size": Dimension("choice", choices=(16, 32, 64) if small else (128, 256) if large else
                                (64, 128, 256)),
    }
    if base.get("pretrained"):  # ImageNet weights fit the full width only
        space.pop("width")
    return {name: dimension for name, dimension in space.items() if name not in fixed}


def base_params(space: Space, base: dict[str, Any]) -> dict[str, Any]:
    """The study's starting settings (recipe, --config, flags, defaults) that lie inside the space: the first
    trial runs them, so the search always measures where it started."""
    values = dict(base)
    if values.get("lr") in (None, "auto"):  # the default peak LR of the optimizer
        values["lr"] = default_lr(values.get("opt", "sgd"))
    return {name: values[name] for name, dimension in space.items()
            if name in values and dimension.contains(values[name]) and not _off_grid(dimension, values[name])}


def _off_grid(dimension: Dimension, value: Any) -> bool:  # noqa: ANN401
    if dimension.kind == "choice" or not dimension.step:
        return False
    steps = (value - dimension.low) / dimension.step
    return not math.isclose(steps, round(steps), abs_tol=1e-9)


def describe_space(space: Space) -> list[str]:
    width = max(len(name) for name in space)
    return [f"  {name:<{width}}  {dimension.describe()}" for name, dimension in space.items()]


def space_specs(space: Space) -> dict[str, dict]:
    return {name: dimension.to_spec() for name, dimension in space.items()}
