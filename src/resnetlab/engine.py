"""The two loops over batches, as in torchvision's references: ``train_one_epoch`` (forward, backward, an
optimizer step every ``accum_steps`` batches) and ``evaluate`` (forward under inference_mode, outputs kept on
request). Both sum loss and hits on the device in one ``EpochTotals`` and read them back once per
``sync_every`` steps (each ``.item()`` is a CPU-GPU sync point). What stays fixed for a run (loss, device,
precision, optimizer...) is one ``Step``, built once.

    step = Step(criterion, device, amp_dtype, steps=len(batches), optimizer=opt, scheduler=sched)
    trained = train_one_epoch(model, batches.epoch(1), step, desc="epoch 1/5", epoch=1)
    scored = evaluate(model, val_batches.epoch(0), Step(criterion, device, steps=len(val_batches)))
    trained.loss, scored.accuracy
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from .device import CPU_BF16_MIN_SIDE, amp_dtype_for, autocast, cpu_has_native_bf16, resolve_device
from .errors import NonFiniteLossError
from .log import progress_enabled
from .models import train_mode

# the device helpers' old home: importing them from here keeps working (their home is device.py)
__all__ = ["CPU_BF16_MIN_SIDE", "EpochResult", "EpochTotals", "Step", "amp_dtype_for", "autocast",
           "cpu_has_native_bf16", "evaluate", "optimizer_steps", "resolve_device", "train_one_epoch"]


@dataclass(frozen=True)
class Step:
    """What every step of a pass uses, fixed for a run: built once (training/loop.Run, lr_find, evaluation).

    ``hits(logits, y)``: how many rows are right (multi-label: every label right, multilabel.training.exact_hits);
    None: argmax == the (hard) target. ``progress`` is the setting as asked; bars show only on a terminal or in
    a notebook (log.progress_enabled, applied here once). The optimizer fields matter to ``train_one_epoch`` only.
    """

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    steps: int | None = None  # batches in one pass: the bar's length and the size of the last accumulation group
    progress: bool = False
    sync_every: int = 25  # batches between host syncs (loss check, bar text)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None  # stepped after each optimizer step
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    grad_clip: float | None = None  # max gradient norm
    accum_steps: int = 1  # one optimizer step every that many batches, on the mean of their losses


class EpochTotals:
    """Running sums of one epoch, kept on the device (no sync per step); saved in mid-epoch checkpoints."""

    def __init__(self, device: torch.device, saved: dict | None = None):
        saved = saved or {}
        self.loss_sum = torch.tensor(float(saved.get("loss_sum", 0.0)), device=device, dtype=torch.float64)
        self.correct = torch.tensor(int(saved.get("correct", 0)), device=device, dtype=torch.int64)
        self.seen = int(saved.get("seen", 0))
        self.seconds = float(saved.get("seconds", 0.0))
        self.first_bad_step = torch.tensor(-1, device=device, dtype=torch.int64)  # first non-finite loss

    def to_dict(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen,
                "seconds": self.seconds}

    def add(self, i: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
            hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """Count batch ``i`` (0-based in the epoch) on the device; returns the hard targets (N, or N x K)."""
        n = y.shape[0]
        loss = loss.detach()
        # remember the first bad step on the device: exact, without a host sync per step
        bad_now = (~torch.isfinite(loss)) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad_now, i + 1, self.first_bad_step)
        self.loss_sum += loss.double() * n
        if hits is None:
            hard = y.argmax(dim=1) if y.ndim == 2 else y  # mixup/cutmix give soft N x K targets
            self.correct += (logits.argmax(dim=1) == hard).sum()
        else:
            hard = y
            self.correct += hits(logits, y)
        self.seen += n
        return hard


@dataclass
class EpochResult:
    loss: float  # mean per image
    accuracy: float  # fraction 0-1
    images: int
    seconds: float
    steps: int
    logits: torch.Tensor | None = None  # N x K float32 on CPU, when keep_outputs
    targets: torch.Tensor | None = None  # N int64 (N x K multi-hot with hits)
    indices: torch.Tensor | None = None  # N positions in the split

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(model: nn.Module, batches: Iterable, step: Step, *, desc: str = "", epoch: int = 0,
                    start: int = 0, totals: EpochTotals | None = None,
                    on_step: Callable[[int], None] | None = None) -> EpochResult:
    """Train on ``batches`` of (x, y, index), the epoch's batches from ``start`` on (a resumed epoch).

    ``totals`` carries the running sums (pass saved ones to continue an interrupted epoch); ``on_step(done)``
    runs after each batch with the number of batches done in this epoch. The last accumulation group of an
    epoch may be shorter; its mean is over its own batches.
    """
    if step.optimizer is None:
        raise ValueError("train_one_epoch needs a Step with an optimizer")
    train_mode(model)
    totals = totals or EpochTotals(step.device)
    bar = _bar(step, desc, start)
    started = time.perf_counter() - totals.seconds
    i = start
    for i, (x, y, _) in enumerate(batches, start=start):
        with autocast(step.device, step.amp_dtype):
            logits = model(x)  # N x K
            loss = step.criterion(logits.float(), y)
        _backward(model, loss, i, step)
        totals.add(i, loss, logits, y, step.hits)
        _show(bar, totals, i, step, epoch)
        if on_step is not None:
            totals.seconds = time.perf_counter() - started
            on_step(i + 1)
    return _close(bar, totals, step, epoch, started, i + 1 - start)


def evaluate(model: nn.Module, batches: Iterable, step: Step, *, desc: str = "", epoch: int = 0,
             totals: EpochTotals | None = None, keep_outputs: bool = False) -> EpochResult:
    """Loss and hits of ``model`` on ``batches`` of (x, y, index) under inference_mode; with ``keep_outputs`` the
    result holds every batch's logits, (hard) targets and indices, in order."""
    model.eval()
    totals = totals or EpochTotals(step.device)
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    bar = _bar(step, desc, 0)
    started = time.perf_counter() - totals.seconds
    i = 0
    with torch.inference_mode():
        for i, (x, y, index) in enumerate(batches):
            with autocast(step.device, step.amp_dtype):
                logits = model(x)  # N x K
                loss = step.criterion(logits.float(), y)
            hard = totals.add(i, loss, logits, y, step.hits)
            if keep_outputs:
                outputs.append((logits.float().cpu(), hard.cpu(), index.cpu()))
            _show(bar, totals, i, step, epoch)
    result = _close(bar, totals, step, epoch, started, i + 1)
    if keep_outputs and outputs:
        result.logits = torch.cat([o[0] for o in outputs])
        result.targets = torch.cat([o[1] for o in outputs])
        result.indices = torch.cat([o[2] for o in outputs])
    return result


def _backward(model: nn.Module, loss: torch.Tensor, i: int, step: Step) -> None:
    """Backward for batch ``i`` (0-based in the epoch); every ``accum_steps`` batches: clip, step, schedule."""
    optimizer, scaler, accum = step.optimizer, step.scaler, step.accum_steps
    first = i - i % accum  # the first batch of this batch's group
    group = accum if not step.steps else min(accum, step.steps - first)
    if i == first:
        optimizer.zero_grad(set_to_none=True)
    scaled = loss / group if group > 1 else loss  # the group's mean loss, as one batch of group x B would give
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if i + 1 - first < group:
        return  # gradients keep accumulating
    if step.grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if step.scheduler is not None:
        step.scheduler.step()


def optimizer_steps(batches: int, accum_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (a last, shorter group still steps)."""
    return -(-batches // max(1, accum_steps))


def _bar(step: Step, desc: str, start: int) -> tqdm:
    return tqdm(total=step.steps, initial=start, desc=desc, unit="step", disable=not progress_enabled(step.progress),
                leave=False, dynamic_ncols=True)


def _show(bar: tqdm, totals: EpochTotals, i: int, step: Step, epoch: int) -> None:
    """Advance the bar; every ``sync_every`` batches (and at the last): check the loss and show the means."""
    if (i + 1) % step.sync_every == 0 or (step.steps and i + 1 == step.steps):
        _check_finite(totals, epoch)  # one host sync per sync_every steps
        bar.set_postfix(loss=f"{totals.loss_sum.item() / max(totals.seen, 1):.4f}",
                        acc=f"{totals.correct.item() / max(totals.seen, 1):.3f}", refresh=False)
    bar.update(1)


def _close(bar: tqdm, totals: EpochTotals, step: Step, epoch: int, started: float, batches: int) -> EpochResult:
    """The pass's means (one host sync); ``started``: its start, less the seconds of a resumed epoch's first part;
    ``batches``: how many ran in this call."""
    bar.close()
    if step.device.type == "cuda":
        torch.cuda.synchronize(step.device)
    _check_finite(totals, epoch)
    seconds = time.perf_counter() - started
    seen = max(totals.seen, 1)
    return EpochResult(totals.loss_sum.item() / seen, totals.correct.item() / seen, totals.seen, seconds, batches)


def _check_finite(totals: EpochTotals, epoch: int) -> None:
    bad_step = int(totals.first_bad_step.item())
    if bad_step >= 0:
        raise NonFiniteLossError(f"the loss became NaN or infinite at epoch {epoch}, step {bad_step}; "
                                 "try a lower --lr, gradient clipping, or --amp off")
