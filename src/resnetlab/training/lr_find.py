"""Learning-rate range test (as fastai's lr_find): raise the LR exponentially over a few hundred steps,
record the loss, and suggest the LR where the smoothed loss falls fastest.

    result = lr_range_test(model, batches, criterion=loss, device=device, cfg=cfg)
    result.suggestion, result.plot("lr_find.png")
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.loaders import Batches
from ..device import resolve_device
from ..engine import EpochTotals, Step, train_one_epoch
from ..errors import NonFiniteLossError
from ..log import logger
from ..task import task_of
from .auto import apply_auto
from .data import prepare_data, training_batches
from .setup import build_network, build_optimizer, check_inputs


@dataclass
class LrFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # exponentially smoothed, per step
    suggestion: float = 1e-3

    def write(self, folder: Path) -> tuple[Path, Path]:
        """lr_find.csv and lr_find.png (loss against LR, log scale, the suggestion marked)."""
        from ..plots import plt, save_figure  # matplotlib (Agg) only when a figure is drawn

        folder.mkdir(parents=True, exist_ok=True)
        table, figure = folder / "lr_find.csv", folder / "lr_find.png"
        with open(table, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["lr", "smoothed_loss"])
            writer.writerows(zip(self.lrs, self.losses))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color="red", linestyle="--", label=f"suggested {self.suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="LR range test")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, figure)
        return table, figure


class _Diverged(Exception):
    pass


def lr_range_test(model: nn.Module, batches: Batches, *, criterion: nn.Module, device: torch.device,
                  cfg: TrainConfig, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 200,
                  progress: bool = True) -> LrFindResult:
    """Train a copy of ``model`` with an exponentially rising LR; the original is not changed (the optimizer and
    parameter groups are the real run's)."""
    probe = copy.deepcopy(model)
    optimizer = build_optimizer(probe, cfg)
    for group in optimizer.param_groups:
        group["lr"] = start_lr
    growth = (end_lr / start_lr) ** (1.0 / max(1, steps - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=growth)
    stream = itertools.chain.from_iterable(batches.epoch(epoch) for epoch in itertools.count())
    totals = EpochTotals(device)
    result, previous_sum, smoothed, best = LrFindResult(), 0.0, None, math.inf

    def record(step: int) -> None:
        nonlocal previous_sum, smoothed, best
        current = float(totals.loss_sum)  # one host sync per step: fine for a short test
        loss = (current - previous_sum) / batches.batch_size
        previous_sum = current
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
        debiased = smoothed / (1 - 0.9 ** step)
        result.lrs.append(start_lr * growth ** (step - 1))
        result.losses.append(debiased)
        best = min(best, debiased)
        if not math.isfinite(debiased) or (step > 10 and debiased > 4 * best):
            raise _Diverged

    try:
        step = Step(criterion, device, steps=steps, progress=progress, sync_every=10**9, optimizer=optimizer,
                    scheduler=scheduler)
        train_one_epoch(probe, itertools.islice(stream, steps), step, desc="lr-find", totals=totals, on_step=record)
    except (_Diverged, NonFiniteLossError):
        pass
    result.suggestion = _steepest_descent(result.lrs, result.losses)
    return result


def find_lr(cfg: TrainConfig, out: Path) -> LrFindResult:
    """The lr-find verb: the data, model and optimizer ``train`` would use, swept; writes lr_find.png/.csv."""
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    source = None
    if cfg.recipe == "auto" and cfg.chosen is None:  # sweep the optimizer, network and size train would use
        inputs = check_inputs(cfg)
        source, cfg = inputs.source, apply_auto(inputs.cfg, inputs.source, device, timed=False)
    data = prepare_data(cfg, out, source=source)
    model, _ = build_network(cfg, len(data.source.classes), data.img_size)
    model = model.to(device, memory_format=torch.channels_last)
    batches = training_batches(data, cfg, device, drop_last=True)
    criterion = task_of(data.source.task).criterion(cfg.label_smoothing)
    result = lr_range_test(model, batches, criterion=criterion, device=device, cfg=cfg, progress=cfg.progress)
    table, figure = result.write(out)
    logger.info(f"suggested learning rate for {cfg.opt}: {result.suggestion:.3g} (steepest fall of the smoothed loss); "
                f"wrote {figure} and {table}")
    return result


def _steepest_descent(lrs: list[float], losses: list[float]) -> float:
    """The LR where the smoothed loss drops fastest against log(LR), before its minimum."""
    if len(lrs) < 5:
        return 1e-3
    cut = int(np.argmin(losses)) + 1
    log_lrs, values = np.log10(np.asarray(lrs[:cut])), np.asarray(losses[:cut])
    if len(values) < 3:
        return float(lrs[max(0, cut - 1)] / 10)
    slopes = np.gradient(values, log_lrs)
    return float(lrs[int(np.argmin(slopes))])
