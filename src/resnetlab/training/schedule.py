"""The learning-rate schedule and the time plan that may stretch or shorten it.

Every ``--time-limit`` run ends with its schedule completed: the plan is re-made after each epoch from the last
epochs' wall times, but only for epochs not yet started, and never ends before the epoch the schedule was
planned to end in. The clock is injected, so the re-planning is tested with scripted epoch durations.

    schedule = make_schedule(cfg, steps_per_epoch)          # LR multiplier per step, for LambdaLR
    plan = TimePlan(budget_s=900, clock=time.perf_counter)
    planned = plan.after_epoch(epoch, planned, schedule)     # after each epoch, saving included
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..config import TrainConfig
from ..log import logger


class Schedule:
    """LR multiplier per step: warm-up, then one-cycle / cosine / step / constant.

    Written here instead of using torch's OneCycleLR because --time-limit may change the run's length after an
    epoch, and the schedule must then stretch to the new total (``total_steps`` is mutable; the warm-up never
    takes more than half of it). A plain object, so LambdaLR saves its state as numbers.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, steps_per_epoch: int, step_size: int):
        self.kind, self.total_steps, self.warmup_steps = kind, total_steps, warmup_steps
        self.steps_per_epoch, self.step_size = steps_per_epoch, step_size

    def __call__(self, step: int) -> float:
        warmup = min(self.warmup_steps, self.total_steps // 2)
        if self.kind == "onecycle":  # linear rise from 1/25 of the peak, cosine fall to 0 at total_steps
            if step < warmup:
                return 0.04 + 0.96 * step / max(1, warmup)
            return _cosine_fall(step, warmup, self.total_steps)
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if self.kind == "cosine":
            return warm * _cosine_fall(step, warmup, self.total_steps)
        if self.kind == "step":
            return warm * 0.1 ** (step // (self.steps_per_epoch * self.step_size))
        return warm


def _cosine_fall(step: int, start: int, end: int) -> float:
    """1 at ``start``, 0 at ``end`` (and after), half a cosine in between."""
    progress = (step - start) / max(1, end - start)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The run's schedule: ``--warmup-epochs`` of warm-up (one-cycle: a quarter of the run unless given)."""
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.sched == "onecycle":
        warmup_steps = max(1, min(warmup_steps or int(0.25 * cfg.epochs * steps_per_epoch),
                                  int(0.5 * cfg.epochs * steps_per_epoch)))
    return Schedule(cfg.sched, cfg.epochs * steps_per_epoch, warmup_steps, steps_per_epoch, cfg.step_size)


def plan_epochs(budget_s: float, elapsed_s: float, recent_walls: list[float], epoch: int, planned: int, *,
                lengthen: bool = False) -> int:
    """The run's last epoch, re-planned after ``epoch`` finished.

    ``recent_walls``: wall seconds of the last epochs (checkpoints and figures included). As many epochs follow
    as fit in the time left, but at least one when the plan has not reached its end (its schedule is still
    above its final LR: stopping now would leave it unfinished), and never more than ``planned`` unless
    ``lengthen``. Once the planned last epoch has run, the plan is final.
    """
    if epoch >= planned:
        return planned
    per_epoch = max(sum(recent_walls) / max(len(recent_walls), 1), 1e-3)
    fits = epoch + int(max(0.0, budget_s - elapsed_s) // per_epoch)
    fits = max(fits, epoch + 1)
    return fits if lengthen else min(fits, planned)


class TimePlan:
    """``--time-limit``: measures each epoch with ``clock`` and re-plans the run (and its schedule) to fit."""

    def __init__(self, budget_s: float, clock: Callable[[], float], *, lengthen: bool = False, window: int = 3):
        self.budget_s, self.clock, self.lengthen, self.window = budget_s, clock, lengthen, window
        self.started = clock()
        self.epoch_ends: list[float] = []

    def start_loop(self) -> None:
        self.epoch_ends = [self.clock()]

    def after_epoch(self, epoch: int, planned: int) -> int:
        """The new last epoch; logs when it changed."""
        self.epoch_ends.append(self.clock())
        walls = [b - a for a, b in zip(self.epoch_ends, self.epoch_ends[1:])][-self.window:]
        new = plan_epochs(self.budget_s, self.epoch_ends[-1] - self.started, walls, epoch, planned,
                          lengthen=self.lengthen)
        if new != planned:
            logger.info(f"time limit: the run is {'shortened' if new < planned else 'lengthened'} to {new} epochs")
        return new
