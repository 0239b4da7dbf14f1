"""What a run must keep to continue bit-exactly: model, optimizer, schedule, scaler, RNG, EMA, best so far
(how a resumed run's settings are merged: settings.resolve).

    state = TrainState(model, optimizer, scheduler, scaler)
    save(run_dir / "last.pt", {**meta, **state.payload(epoch)}, info)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..distributed import DistInfo
from ..engine import EpochTotals
from ..fileio import write_failure
from ..models import unwrap
from ..signals import signals_deferred


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict, info: DistInfo) -> None:
    """Rank 0 writes (atomically); a failure names the file and keeps the previous one."""
    if not info.is_main:
        return
    try:
        with signals_deferred():  # a second Ctrl-C lands after the file is whole
            save_checkpoint(path, payload)
    except (OSError, RuntimeError) as err:  # full disk, vanished folder (torch's writer raises RuntimeError)
        raise write_failure(path, err, _tensor_bytes(payload)) from None


def _tensor_bytes(value: Any) -> int:
    """Roughly what a payload takes on disk: the bytes of its tensors."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


@dataclass
class TrainState:
    """What a resumable checkpoint holds besides the model's description."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    ema: nn.Module | None = None  # timm's ModelEmaV3
    best_score: float = -math.inf  # the --best-metric of the best epoch, higher is better (val_loss negated)
    best_epoch: int = 0

    def payload(self, epoch: int, step: int = 0, totals: EpochTotals | None = None) -> dict:
        """``epoch`` = last finished epoch; ``step`` > 0 marks steps already done in the next one."""
        payload = {"model": unwrap(self.model).state_dict(), "epoch": epoch, "step": step,
                   "partial": totals.to_dict() if totals is not None and step else None,
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": rng_state(),
                   "best_score": self.best_score, "best_epoch": self.best_epoch}
        if self.ema is not None:
            payload["ema"] = self.ema.module.state_dict()
        return payload

    def restore(self, saved: dict) -> None:
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema"):
            self.ema.module.load_state_dict(saved["ema"])
        restore_rng(saved["rng"])
        self.best_score = float(saved.get("best_score", saved.get("best_val_acc", -math.inf)))
        self.best_epoch = int(saved["best_epoch"])

    @property
    def validated(self) -> nn.Module:
        """The weights validation scores and best.pt holds: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.model)
