"""What the settings become once the data is seen (the last stage of settings.resolve's pipeline), for
``--recipe auto``: ImageNet weights when they can be had, a validation split large enough to choose by, auto's
rule choices (auto.py), the metric that picks best.pt, and the race between candidate recipes (race.py). Rank 0
decides, every process gets the same settings; afterwards nothing changes them.

    inputs = settle(check_inputs(cfg), info, run_dir, train_candidate)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.images import SMALL_SIZE
from ..data.sources import open_configured
from ..data.splits import DataSource
from ..distributed import DistInfo, from_main
from ..errors import ResnetlabError, one_line
from ..hub import available_weights
from ..log import logger
from ..task import task_of
from .auto import apply_auto, data_stats
from .race import TrainCandidate, race
from .setup import Inputs, read_weights

VAL_PER_CLASS = 20  # validation images of the rarest class that auto's own split aims for
MAX_VAL_SPLIT = 0.2  # ... taking at most this share of the data for it
SMALL_VAL = 500  # below this many validation images (or VAL_PER_CLASS in the rarest class) best.pt is the last epoch


def settle(inputs: Inputs, info: DistInfo, run_dir: Path, train_candidate: TrainCandidate, *,
           clock: Callable[[], float] = time.perf_counter) -> Inputs:
    """``inputs`` with auto's choices made (unchanged for another recipe, or when auto already chose)."""
    cfg = inputs.cfg
    if cfg.recipe != "auto" or cfg.chosen is not None:
        return inputs
    early, weights = _before_rules(cfg, inputs.source) if info.is_main else (None, None)
    early = from_main(early, info)
    cfg = replace(cfg, **{name: value for name, (value, _) in early.items()})
    source = inputs.source
    if "val_split" in early:
        source = open_configured(cfg)
    ruled = apply_auto(cfg, source, info.device) if info.is_main else None
    cfg = TrainConfig.from_dict(from_main(ruled.to_dict() if ruled else None, info))
    chosen = {**{name: {"value": value, "why": why} for name, (value, why) in early.items()}, **cfg.chosen}
    cfg = replace(cfg, chosen=chosen)
    cfg = replace(cfg, **_best_metric(cfg, source))
    if "pretrained" not in early:
        weights = inputs.weights
    elif weights is None:  # the other ranks read what rank 0 read
        weights = read_weights(cfg)
    if cfg.race == "on" and cfg.time_limit is not None:
        if info.enabled:
            logger.info("race: skipped under torchrun (every process would race); the rule choice is kept")
        else:
            cfg = race(cfg, source, run_dir, lambda settings, part: train_candidate(settings, part, weights),
                       clock=clock)
    return Inputs(cfg, source, weights)


def _before_rules(cfg: TrainConfig, source: DataSource) -> tuple[dict[str, tuple], dict | None]:
    """What the rules build on, and the weights read: ImageNet weights for photo-sized images when they can be had
    without asking and fit the network asked for (not given), and a validation split with enough images of the
    rarest class (class folders, not given)."""
    given, early, weights = set(cfg.given or []), {}, None
    fits = not ("width" in given and cfg.width != 1.0) and not ("stem" in given and cfg.stem == "small")
    if "pretrained" not in given and not cfg.pretrained and fits and data_stats(source).side > SMALL_SIZE:
        value, why = available_weights(cfg.model)
        if value:
            try:  # a hub that answered the check but fails the download: from scratch, not a failed run
                weights = read_weights(replace(cfg, pretrained=value))
                early["pretrained"] = (value, f"fine-tuning ImageNet weights beats training from scratch on photos: "
                                              f"{why}")
            except ResnetlabError as err:
                value, why = None, f"{why}, but they could not be read ({one_line(err)}): trained from scratch"
        logger.info(f"auto: pretrained = {value} ({why})")
    if source.kind == "class folders" and "val_split" not in given:
        counts = [sum(n) for n in zip(*(source.class_counts(s).values() for s in ("train", "val")))]
        rarest = max(1, min(counts))
        share = min(MAX_VAL_SPLIT, max(cfg.val_split, VAL_PER_CLASS / rarest))
        if share > cfg.val_split + 1e-9:
            early["val_split"] = (round(share, 3), f"the rarest class has {rarest} images: {share:.0%} of each class "
                                                   f"for validation keeps ~{round(rarest * share)} of it there")
    return early, weights


def _best_metric(cfg: TrainConfig, source: DataSource) -> dict:
    """best.pt by the last epoch of a finished one-cycle or cosine schedule when the validation split is too small
    for its metric to be trusted (one image would move it by more than the differences between epochs)."""
    if ("best_metric" in set(cfg.given or []) or task_of(cfg.task).fixed_best_metric
            or cfg.sched not in ("onecycle", "cosine") or cfg.early_stop):  # --early-stop: "last" would never stop
        return {}
    labels = np.asarray(source.splits[source.val_name].labels)
    rarest = int(np.bincount(labels, minlength=len(source.classes)).min())
    if len(labels) >= SMALL_VAL and rarest >= VAL_PER_CLASS:
        return {}
    why = (f"validation split of {len(labels)} images ({rarest} in its rarest class): one image moves its metric by "
           f"{100 / max(1, min(len(labels), rarest * len(source.classes))):.1f} points; the last epoch of the "
           f"finished {cfg.sched} schedule is kept")
    logger.info(f"auto: best_metric = last ({why})")
    return {"best_metric": "last", "chosen": {**cfg.chosen, "best_metric": {"value": "last", "why": why}}}
