"""The one loop over batches, used for training, validation, evaluation and prediction alike.

Given an optimizer it trains; without one it runs under inference_mode. Loss and accuracy are summed
on the device and read back once per ``sync_every`` steps (each ``.item()`` is a CPU-GPU sync point).

    result = run_epoch(model, batches.epoch(0), criterion=loss, optimizer=opt, scheduler=sched)
    result.loss, result.accuracy
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from .errors import ConfigError, NonFiniteLossError
from .log import progress_enabled
from .models import train_mode


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


@dataclass
class EpochResult:
    loss: float  # mean per image
    accuracy: float  # fraction 0-1
    images: int
    seconds: float
    steps: int
    logits: torch.Tensor | None = None  # N x K float32 on CPU, when keep_outputs
    targets: torch.Tensor | None = None  # N int64
    indices: torch.Tensor | None = None  # N positions in the split

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def resolve_device(name: str = "auto") -> torch.device:
    """--device: "auto" is CUDA where there is a GPU, else Apple's MPS where it exists, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available (torch.cuda.is_available() "
                         "is False); use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """bf16 is only a speed-up on CPUs with AVX512-BF16 or AMX; elsewhere it is emulated and slower.

    torch's get_cpu_capability() stops at "AVX512" (it names the vector kernels it built, not bf16 or AMX
    support), so the CPU's own flags decide: on a Sapphire Rapids core AMX makes a ResNet-18 training step
    about 2.4x faster than fp32 (benchmarks/README.md). ``RESNETLAB_CPU_BF16=0`` (or ``1``) overrides the
    detection, e.g. to get the same fp32 numbers on every host.
    """
    forced = os.environ.get("RESNETLAB_CPU_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    return _cpu_flags_have_bf16()


@functools.cache
def _cpu_flags_have_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:  # not Linux: trust torch's capability string alone
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


CPU_BF16_MIN_SIDE = 16  # first-stage feature maps smaller than this run faster in fp32 on CPUs


def amp_dtype_for(amp: str, device: torch.device, first_map_side: int | None = None) -> torch.dtype | None:
    """Resolve --amp to an autocast dtype (None: fp32).

    ``first_map_side``: the side of the first stage's feature maps (models.first_stage_side). On a CPU, bf16
    pays off on large maps (small stem at 28 px: 2.4x fp32) but loses on tiny ones (standard stem at 32 px,
    8 x 8 maps: 0.93x), where the casts cost more than the smaller matrix products save (benchmarks/README.md).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":  # mps and others: fp32 unless asked (autocast support varies by backend and op)
        return None
    if first_map_side is not None and first_map_side < CPU_BF16_MIN_SIDE:
        return None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_epoch(model: nn.Module, batches: Iterable, *, criterion: Callable, device: torch.device,
              optimizer: torch.optim.Optimizer | None = None, scheduler=None,
              scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
              total_steps: int | None = None, start_step: int = 0, desc: str = "", progress: bool = True,
              keep_outputs: bool = False, grad_clip: float | None = None, sync_every: int = 25,
              epoch: int = 0, totals: EpochTotals | None = None,
              on_step: Callable[[int], None] | None = None, accum_steps: int = 1,
              hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> EpochResult:
    """One pass over ``batches``; trains when ``optimizer`` is given.

    ``totals`` carries the running sums (pass saved ones to continue an interrupted epoch);
    ``on_step(step)`` runs after each batch with the number of batches done in this epoch.
    ``accum_steps``: one optimizer (and scheduler) step every that many batches, on the mean of their losses
    (the last group of an epoch may be shorter; its mean is over its own batches).
    ``hits(logits, y)``: how many rows are right (multi-label: every label right, multilabel.training.exact_hits);
    default: argmax == the (hard) target. Kept outputs then hold ``y`` as given (N x K for multi-label).
    """
    training = optimizer is not None
    if training:
        train_mode(model)
    else:
        model.eval()
    totals = totals or EpochTotals(device)
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", disable=not progress_enabled(progress),
               leave=False, dynamic_ncols=True)
    started = time.perf_counter() - totals.seconds
    step = start_step
    grad_context = contextlib.nullcontext() if training else torch.inference_mode()
    with grad_context:
        for step, (x, y, index) in enumerate(batches, start=start_step):
            with autocast(device, amp_dtype):
                logits = model(x)  # N x K
                loss = criterion(logits.float(), y)
            if training:
                _train_step(model, loss, step, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            grad_clip=grad_clip, accum_steps=accum_steps, total_steps=total_steps)
            n = y.shape[0]
            loss = loss.detach()
            # remember the first bad step on the device: exact, without a host sync per step
            bad_now = (~torch.isfinite(loss)) & (totals.first_bad_step < 0)
            totals.first_bad_step = torch.where(bad_now, step + 1, totals.first_bad_step)
            totals.loss_sum += loss.double() * n
            if hits is None:
                hard = y.argmax(dim=1) if y.ndim == 2 else y  # mixup/cutmix give soft N x K targets
                totals.correct += (logits.argmax(dim=1) == hard).sum()
            else:
                hard = y
                totals.correct += hits(logits, y)
            totals.seen += n
            if keep_outputs:
                outputs.append((logits.float().cpu(), hard.cpu(), index.cpu()))
            if (step + 1) % sync_every == 0 or (total_steps and step + 1 == total_steps):
                _check_finite(totals, epoch)  # one host sync per sync_every steps
                bar.set_postfix(loss=f"{totals.loss_sum.item() / max(totals.seen, 1):.4f}",
                                acc=f"{totals.correct.item() / max(totals.seen, 1):.3f}", refresh=False)
            bar.update(1)
            if on_step is not None:
                totals.seconds = time.perf_counter() - started
                on_step(step + 1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _check_finite(totals, epoch)
    seconds = time.perf_counter() - started
    seen = max(totals.seen, 1)
    result = EpochResult(totals.loss_sum.item() / seen, totals.correct.item() / seen, totals.seen, seconds,
                         step + 1 - start_step)
    if keep_outputs and outputs:
        result.logits = torch.cat([o[0] for o in outputs])
        result.targets = torch.cat([o[1] for o in outputs])
        result.indices = torch.cat([o[2] for o in outputs])
    return result


def _train_step(model: nn.Module, loss: torch.Tensor, step: int, *, optimizer: torch.optim.Optimizer, scheduler,
                scaler: torch.amp.GradScaler | None, grad_clip: float | None, accum_steps: int,
                total_steps: int | None) -> None:
    """Backward for batch ``step`` (0-based in the epoch); every ``accum_steps`` batches: clip, step, schedule."""
    first = step - step % accum_steps  # the first batch of this step's group
    group = accum_steps if not total_steps else min(accum_steps, total_steps - first)
    if step == first:
        optimizer.zero_grad(set_to_none=True)
    scaled = loss / group if group > 1 else loss  # the group's mean loss, as one batch of group x B would give
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if step + 1 - first < group:
        return  # gradients keep accumulating
    if grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def optimizer_steps(batches: int, accum_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (a last, shorter group still steps)."""
    return -(-batches // max(1, accum_steps))


def _check_finite(totals: EpochTotals, epoch: int) -> None:
    bad_step = int(totals.first_bad_step.item())
    if bad_step >= 0:
        raise NonFiniteLossError(f"the loss became NaN or infinite at epoch {epoch}, step {bad_step}; "
                                 "try a lower --lr, gradient clipping, or --amp off")
