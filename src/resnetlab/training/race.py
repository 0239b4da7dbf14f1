"""The race (``--recipe auto``, ``--race on``): auto's rules propose a few candidate recipes, each trains on the
user's own training split (a stratified share of it, sized so each candidate runs ~4 epochs) for an equal slice
of a quarter of the budget, and the one that scores best on the validation split trains for the rest.

Why: rules measured on synthetic sets missed a real one (issue 25: a plain 50-line script beat auto by 10
points on grey surface images); a short run on the user's data checks the choice where it matters. The
candidates: ``rules`` (auto's choice), ``plain`` (the plain script's recipe: full width, with the ImageNet stem
where the rules narrowed a small-stem net, horizontal and vertical flips, unweighted loss, average pooling, AdamW
2e-3 one-cycle; dropped where it equals the rules) and variants along the axes the rules are least sure of (class
weights on or off; shifts + max pooling for the whole-picture view, else augmentation strength), three at most.
Each slice runs without the regularisers that pay off only over a long run (``short_run``), so the race compares
networks, optimizers and views, not how fast a regularised recipe starts; a candidate whose slice would then differ
from the rules' only in flips is not raced (``measurable``), and with none left the rules get the whole budget.
A candidate must beat the rule choice by more than the validation split's standard error to replace it;
otherwise the race says it cannot separate them and keeps the rules. After two slices that learnt nothing (at
chance) the race stops and gives its remaining time to the winner's run.

    cfg = race(cfg, inputs, run_dir, train_candidate, clock=time.perf_counter)
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, parse_duration
from ..data.splits import DataSource, SplitData, stratified_split
from ..errors import ResnetlabError, one_line
from ..log import logger
from ..task import task_of
from .auto import IMBALANCE  # the class ratio above which the score weighs macro F1 too

RACE_SHARE = 0.25  # of the run's budget, for the whole race
RACE_EPOCHS = 4  # epochs a candidate should get over its share of the training split
MAX_CANDIDATES = 3  # the rules and two others: each gets a third of the race's time
MIN_PER_CLASS = 8  # a share with fewer images of a class than this is no test of the recipe
MIN_SLICE_S = 2.0  # seconds a candidate needs at the least (a start-up, one epoch, one validation)
RACE_HOLD_OUT = 0.15  # of the training split, the race's validation where the test split is the validation
# settings a slice of a few epochs cannot measure: a candidate whose slice differs from the rules' only in these is
# not raced (fmnist-1k and digits, session 20: rules and plain differed only in vertical flips, and the race spent a
# quarter of the budget on a difference within its noise)
SLICE_BLIND = frozenset({"vflip", "hflip"})
# after two slices that learnt nothing (or failed) the race stops: some photo-sized sets from scratch learn nothing in
# a slice of a few epochs (session 21: photos-small, photos-large and colour-200-400 ended every slice at chance and
# kept the rules), and the rest of the race's time goes to the winner's run instead of a third slice that would
# most likely say the same
NOTHING_LEARNT = "not run: the slices before it learnt nothing (at chance), so the race stopped and its time went to " \
                 "the winner"


@dataclass(frozen=True)
class Candidate:
    name: str
    settings: dict  # changes to the rule choice
    why: str


def candidates(cfg: TrainConfig) -> list[Candidate]:
    """The rule choice, the plain script's recipe and variants along the axes the rules are least sure of (class
    weighting; the whole-picture view or augmentation strength), less the settings the user gave; a candidate that
    would then equal another is dropped, and at most MAX_CANDIDATES race."""
    chosen, given = cfg.chosen or {}, set(cfg.given or [])
    plain = {"width": 1.0, "aug": "flip", "vflip": True, "balance": "none", "pool": "avg", "erase": 0.0, "ema": 0.0,
             "opt": "adamw", "lr": 2e-3, "weight_decay": 0.05, "mixup": 0.0, "cutmix": 0.0}
    if cfg.pretrained:  # ImageNet weights: the fine-tuning rate the rules use
        plain.update(lr=cfg.lr, norm="imagenet")
    if cfg.stem == "small" and cfg.width < 1 and "stem" in chosen:  # the rules found the full small-stem net too
        plain["stem"] = "standard"  # slow: full width runs with the script's ImageNet stem (torchvision resnet18)
    if given & {"opt", "lr", "weight_decay"}:  # one group (auto._optimisation): a given part keeps the rules' three
        plain = {k: v for k, v in plain.items() if k not in ("opt", "lr", "weight_decay")}
    proposed = [Candidate("rules", {}, "auto's rule choice"),
                Candidate("plain", plain, "the plain script: full width, horizontal and vertical flips only, "
                                          "unweighted loss, avg pooling, AdamW 2e-3")]
    if cfg.balance != "none":
        proposed.append(Candidate("unweighted", {"balance": "none"}, "the rules without class weights"))
    elif "balance" in chosen and "imbalanced" in chosen["balance"]["why"]:
        proposed.append(Candidate("weighted", {"balance": "sqrt"}, "the rules with 1/sqrt(frequency) class weights"))
    if cfg.crop_mode == "squash" and "crop_mode" in chosen:  # the whole-picture view of photos from scratch
        proposed.append(Candidate("marks", {"aug": "light", "pool": "avgmax"}, "shifts, small rotations and average "
                                                                               "+ max pooling for small marks"))
    elif cfg.aug == "light" and "aug" in chosen:  # not after padded crops: it came last on all three small sets
        proposed.append(Candidate("stronger-aug", {"aug": "standard"}, "random-resized crops and colour jitter"))
    elif cfg.aug == "standard":
        proposed.append(Candidate("lighter-aug", {"aug": "light"}, "shifts and small rotations"))
    out: list[Candidate] = []
    seen: list[dict] = []
    for candidate in proposed:
        settings = {k: v for k, v in candidate.settings.items() if k not in given and getattr(cfg, k) != v}
        effective = {**{k: getattr(cfg, k) for k in settings}, **settings}
        if candidate.name != "rules" and (not settings or effective in seen):
            continue
        seen.append(effective)
        out.append(replace(candidate, settings=settings))
    return out[:MAX_CANDIDATES]


def short_run(cfg: TrainConfig, candidate: Candidate) -> dict:
    """What a slice runs without: the regularisers that pay off only over a long run (random erasing, EMA, and the
    padded crops of small pictures; flips stay), less those the user gave. A slice is a short run; with them on,
    the regularised rule choice lost every small-picture race that it won at full length (fmnist-10k, session 20:
    erasing cost 5 points and padded crops 6 after 75 s; the same rules trained 15 minutes without a race scored
    90.9 % on the test split where the race's winner, the plain recipe, scored 89.4 %). The winner's full run
    gets the rules' choice of them back (the plain recipe keeps its own: none)."""
    given = set(cfg.given or [])
    off = {"erase": 0.0, "ema": 0.0}
    if candidate.settings.get("aug", cfg.aug) == "crop":
        off["aug"] = "flip"
    return {k: v for k, v in off.items() if k not in given and candidate.settings.get(k, getattr(cfg, k)) != v}


def measurable(cfg: TrainConfig, entries: list[Candidate]) -> tuple[list[Candidate], list[str]]:
    """The candidates whose slices differ from the rules' (the first entry's) in more than SLICE_BLIND, and the
    names of those dropped for it."""
    def sliced(candidate: Candidate) -> dict:
        return {**candidate.settings, **short_run(cfg, candidate)}

    rules = sliced(entries[0]) if entries else {}
    kept, dropped = entries[:1], []
    for candidate in entries[1:]:
        mine = sliced(candidate)
        differs = {k for k in {*mine, *rules} if mine.get(k, getattr(cfg, k)) != rules.get(k, getattr(cfg, k))}
        if differs - SLICE_BLIND:
            kept.append(candidate)
        else:
            dropped.append(candidate.name)
    return kept, dropped


def _named(off: dict) -> str:
    names = {"erase": "random erasing", "ema": "EMA", "aug": "padded crops"}
    return ", ".join(names[k] for k in off)


def standard_error(score: float, images: int) -> float:
    """The standard error of a proportion measured on ``images`` validation images."""
    p = min(max(score, 0.0), 1.0)
    return math.sqrt(max(p * (1 - p), 0.25 / max(images, 1)) / max(images, 1))


def share_of(source: DataSource, images: int, seed: int) -> DataSource:
    """The source with a stratified share of ``images`` training images (all of them when fewer)."""
    train = source.splits["train"]
    if images >= len(train):
        return source
    _, part = stratified_split(train, images / len(train), seed)
    return replace(source, splits={**source.splits, "train": part})


TrainCandidate = Callable[[TrainConfig, DataSource], list[dict]]  # (settings, source) -> metrics rows


def race(cfg: TrainConfig, source: DataSource, run_dir: Path, train_candidate: TrainCandidate, *,
         clock: Callable[[], float] = time.perf_counter, proposed: list[Candidate] | None = None) -> TrainConfig:
    """``cfg`` (auto's rule choice, with its budget as ``time_limit``) or the race's winner, with the race's table
    in ``chosen["race"]`` and the time it took out of the budget."""
    started = clock()
    budget = parse_duration(cfg.time_limit)
    entries, blind = measurable(cfg, proposed if proposed is not None else candidates(cfg))
    if blind:
        logger.info(f"race: {', '.join(blind)} not raced: its slice would differ from the rules' only in flips, which "
                    "a few epochs cannot measure")
    slice_s = RACE_SHARE * budget / max(1, len(entries))
    train_images = len(source.splits["train"])
    # the rule choice planned cfg.epochs over the training split in 80 % of the budget: its speed, in images/s
    speed = cfg.epochs * train_images / (0.8 * budget)
    wanted = int(speed * 0.7 * slice_s / RACE_EPOCHS)
    counts = _class_counts(source)
    rarest, imbalanced = max(1, min(counts)), max(counts) > IMBALANCE * max(1, min(counts))
    why = ("the other candidates differ from the rules only in flips" if len(entries) < 2 and blind else
           "one candidate left after the given settings" if len(entries) < 2 else
           "--epochs was given: the race plans by time" if "epochs" in set(cfg.given or []) else
           f"{slice_s:.1f}s per candidate" if slice_s < MIN_SLICE_S else
           f"{slice_s:.0f}s per candidate trains ~{max(wanted, 0)} images {RACE_EPOCHS} times: too few to compare"
           if wanted * rarest / max(train_images, 1) < MIN_PER_CLASS else None)
    if why:
        logger.info(f"race: skipped ({why}); the rule choice is kept")
        return _with_race(cfg, {"value": "rules", "why": f"no race: {why}", "table": []})
    part = _race_source(source, wanted, cfg.seed)
    logger.info(f"race: {len(entries)} candidates, {slice_s:.0f}s each on {len(part.splits['train'])} of "
                f"{train_images} training images ({', '.join(c.name for c in entries)}); then the winner trains for "
                "the rest of the budget")
    off = short_run(cfg, entries[0])
    if off:
        logger.info(f"race: the slices run without {_named(off)} (they pay off only over a long run); the winner's "
                    "full run gets the rules' choice of them back")
    table: list[dict] = []
    _, floor = _chance(cfg, part.splits["val"], imbalanced)
    for candidate in entries:
        if clock() - started > 1.5 * RACE_SHARE * budget:  # a slow start must not eat the winner's time
            table.append(_entry(candidate, [], imbalanced, cfg.task, note="not run: the race's time was spent"))
            continue
        if len(table) >= 2 and all(e["score"] <= floor for e in table):
            logger.info(f"race: {candidate.name} {NOTHING_LEARNT}")
            table.append(_entry(candidate, [], imbalanced, cfg.task, note=NOTHING_LEARNT))
            continue
        settings = {**candidate.settings, **short_run(cfg, candidate), "time_limit": f"{slice_s:.1f}s",
                    "fill_time": True, "race": "off",
                    "epochs": RACE_EPOCHS, "warmup_epochs": 0.3 * RACE_EPOCHS,
                    "out": str(run_dir / "race" / candidate.name),
                    "exist_ok": True, "tensorboard": False, "mlflow": None, "keep": 0, "save_every": 0,
                    "early_stop": 0, "best_metric": "last", "stop_after_steps": 0}
        rows, note = _run_candidate(train_candidate, replace(cfg, **settings), part)
        _drop_weights(run_dir / "race" / candidate.name)
        table.append(_entry(candidate, rows, imbalanced, cfg.task, note))
    won = _decide(cfg, entries, table, part.splits["val"], imbalanced, budget - (clock() - started))
    won = _with_race(won, {**won.chosen["race"], "slices_without": sorted(off)})
    return _replanned(won, table, train_images, parse_duration(won.time_limit))


def _chance(cfg: TrainConfig, val: SplitData, imbalanced: bool) -> tuple[float, float]:
    """What always answering the most common validation class scores, and the score at or below which a slice
    learnt nothing (that plus one standard error)."""
    chance = task_of(cfg.task).chance_score(val.labels, imbalanced)
    return chance, chance + standard_error(chance, len(val))


def _race_source(source: DataSource, images: int, seed: int) -> DataSource:
    """The candidates' data: a stratified share of the training split, validated on the validation split; where
    the test split stands in for it (no val split), on a hold-out of the training split instead, so the recipe is
    never chosen on test images."""
    if source.val_name == "test":
        train, held_out = stratified_split(source.splits["train"], RACE_HOLD_OUT, seed)
        source = replace(source, splits={"train": train, "val": held_out})
    part = share_of(source, images, seed)
    return replace(part, splits={"train": part.splits["train"], "val": part.splits["val"]})


def _run_candidate(train_candidate: TrainCandidate, cfg: TrainConfig, part: DataSource) -> tuple[list[dict], str]:
    """A candidate's metrics rows; one that fails (a diverging loss, out of memory) scores nothing and says why."""
    try:
        return train_candidate(cfg, part), ""
    except (ResnetlabError, torch.OutOfMemoryError) as err:
        logger.warning(f"race: candidate {Path(cfg.out).name} failed: {one_line(err)}")
        return [], f"failed: {one_line(err)}"


def _class_counts(source: DataSource) -> list[int]:
    labels = np.asarray(source.splits["train"].labels)
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(source.classes))
    return [int(c) for c in counts]


def _entry(candidate: Candidate, rows: list[dict], imbalanced: bool, task: str, note: str = "") -> dict:
    last = rows[-1] if rows else None
    return {"candidate": candidate.name, "settings": candidate.settings, "epochs": len(rows), "note": note,
            "val_acc": round(float(last["val_acc"]), 4) if last else None,
            "val_f1": round(float(last.get("val_f1", math.nan)), 4) if last and "val_f1" in last else None,
            "score": round(task_of(task).race_score(last, imbalanced), 4) if last else -math.inf,
            "img_per_s": round(float(np.median([r["img_per_s"] for r in rows])), 1) if rows else 0.0}


def _decide(cfg: TrainConfig, entries: list[Candidate], table: list[dict], val: SplitData, imbalanced: bool,
            left_s: float) -> TrainConfig:
    """The winner (beating the rules by more than one standard error, and the most common class's score by as
    much: a pick among candidates that learnt nothing is noise), its settings applied, the rest logged."""
    for entry in table:
        logger.info(f"race: {entry['candidate']:<13} {entry['epochs']} epochs  val acc {entry['val_acc']}  "
                    f"macro F1 {entry['val_f1']}  score {entry['score']}  {entry['settings'] or ''}")
    rules = next(e for e in table if e["candidate"] == "rules")
    best = max(table, key=lambda e: e["score"])
    margin = standard_error(rules["score"], len(val))
    chance, floor = _chance(cfg, val, imbalanced)
    if best is rules or not math.isfinite(best["score"]) or best["score"] - rules["score"] <= margin or \
            best["score"] <= floor:
        winner = "rules"
        why = ("the rule choice scored best" if best is rules else
               f"cannot separate: the best, {best['candidate']} {best['score']:.4f}, is within one standard error of "
               f"always answering the most common class ({chance:.4f}); the rule choice is kept"
               if math.isfinite(best["score"]) and best["score"] <= floor else
               f"cannot separate: {best['candidate']} {best['score']:.4f} vs rules {rules['score']:.4f} is within one "
               f"standard error ({margin:.4f}); the rule choice is kept")
    else:
        winner = best["candidate"]
        why = f"{winner} scored {best['score']:.4f} against the rules' {rules['score']:.4f} (margin {margin:.4f})"
    logger.info(f"race: {why}")
    settings = next(c.settings for c in entries if c.name == winner)
    chosen = dict(cfg.chosen or {})
    for name, value in settings.items():
        chosen[name] = {"value": value, "why": f"race: {winner}"}
    cfg = replace(cfg, **settings, time_limit=f"{max(1.0, left_s):.0f}s", chosen=chosen)
    return _with_race(cfg, {"value": winner, "why": why, "table": table})


def _replanned(cfg: TrainConfig, table: list[dict], train_images: int, left_s: float) -> TrainConfig:
    """The winner's first plan from its own measured speed in the race (the rules planned for the whole budget and
    their own network): the epochs that fit in 80 % of what is left, at most 3x the rules' (fill_time re-plans
    after each epoch in any case)."""
    if "epochs" in set(cfg.given or []):
        return cfg
    speed = next(e["img_per_s"] for e in table if e["candidate"] == cfg.chosen["race"]["value"])
    if not speed:
        return cfg
    epochs = int(max(1, min(3 * cfg.epochs, 0.8 * left_s * speed / max(1, train_images))))
    why = f"race: {speed:.0f} img/s measured, {epochs} epochs of {train_images} images fit in {left_s:.0f}s"
    logger.info(f"auto: epochs = {epochs} ({why})")
    return replace(cfg, epochs=epochs, chosen={**cfg.chosen, "epochs": {"value": epochs, "why": why}})


def _with_race(cfg: TrainConfig, result: dict) -> TrainConfig:
    return replace(cfg, chosen={**(cfg.chosen or {}), "race": result})


def _drop_weights(folder: Path) -> None:
    """A candidate's checkpoints (tens of MB each) go; its metrics.csv and config.yaml stay for the report."""
    for path in folder.glob("*.pt"):
        path.unlink(missing_ok=True)
    shutil.rmtree(folder / "tensorboard", ignore_errors=True)
