"""The epoch loop: train_epoch -> validate -> record -> checkpoint -> stop or re-plan, as plain functions
over one ``Run`` (everything setup built). Nothing is lost: Ctrl-C/SIGTERM or --stop-after-steps saves a
mid-epoch resumable last.pt, a NaN loss stops without overwriting the last good checkpoint.

    stopped = fit(run, history, start_epoch=1, time_plan=None)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.crop import Crop
from ..data.loaders import Batches
from ..distributed import DistInfo, any_rank, from_main, gather_lists, sum_over_ranks, sync_buffers
from ..engine import EpochResult, EpochTotals, Step, evaluate, optimizer_steps, train_one_epoch
from ..errors import NonFiniteLossError
from ..log import logger
from ..metrics import macro_f1, topk_accuracy
from ..models import backbone_frozen, set_backbone_trainable
from ..runfiles import write_history
from ..signals import StopRequests
from ..tracking import Trackers
from .features import FrozenFeatures, HeadOnly, feature_path_reason
from .finish import plot_curves
from .schedule import Schedule, TimePlan
from .setup import Objective, wrap
from .state import TrainState, save


@dataclass
class Run:
    """Everything one training run built before its first step."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    model: nn.Module  # the bare network
    forward: nn.Module  # what the training steps call: DDP and/or torch.compile around ``model``
    state: TrainState
    schedule: Schedule
    objective: Objective
    train_batches: Batches
    val_batches: Batches
    amp_dtype: torch.dtype | None
    meta: dict  # the checkpoint's description of the model (checkpoint.describe_model)
    trackers: Trackers = field(default_factory=Trackers)  # TensorBoard / MLflow, rank 0 only
    steps_run: int = 0  # batches trained in this invocation, for --stop-after-steps
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT 2, SIGTERM 15)
    features: FrozenFeatures | None = None  # the frozen backbone's features, while it is frozen (features.py)
    feature_path: str | None = None  # why the frozen phase runs the plain loop ("" once decided: it does not)
    on_epoch: Callable[[dict], bool | None] | None = None  # after each epoch's checkpoint; True stops ("pruned")
    train_step: Step = field(init=False)  # what every training step uses, built once below
    val_step: Step = field(init=False)  # and every validation step

    def __post_init__(self) -> None:
        cfg, state, objective = self.cfg, self.state, self.objective
        self.train_step = Step(objective.train, self.device, self.amp_dtype, objective.hits,
                               steps=self.steps_per_epoch, progress=cfg.progress, optimizer=state.optimizer,
                               scheduler=state.scheduler, scaler=state.scaler, grad_clip=cfg.grad_clip or None,
                               accum_steps=cfg.accum_steps)
        self.val_step = Step(objective.val, self.device, self.amp_dtype, objective.hits, steps=len(self.val_batches),
                             progress=cfg.progress and self.info.is_main)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (what resume positions count)."""
        return self.train_batches.steps_per_epoch()

    @property
    def optimizer_steps_per_epoch(self) -> int:
        """Optimizer (and schedule) steps per epoch: fewer than batches with --accum-steps."""
        return optimizer_steps(self.steps_per_epoch, self.cfg.accum_steps)


# "last" keeps the last epoch as best.pt; a tuner or a log that needs a number from it reads val_acc
BEST_METRIC_COLUMNS = {"val_acc": "val_acc", "val_loss": "val_loss", "macro_f1": "val_f1", "top5": "val_top5",
                       "map": "val_map", "last": "val_acc"}


class StopRun(Exception):
    """A stop inside an epoch (signal or --stop-after-steps), after last.pt was saved at ``step``."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"stop at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def mixed(batches: Iterator, mixer, seed: int, epoch: int, start_step: int, rank: int) -> Iterator:  # noqa: ANN001
    """Mixup/cutmix on each batch; timm's Mixup draws from numpy's global RNG, so it is seeded per step
    (from seed, epoch, step, rank) to keep resume exact."""
    for step, (x, y, index) in enumerate(batches, start=start_step):
        np.random.seed((seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % 2**32)
        x, soft = mixer(x, y)
        yield x, soft, index


def combine(result: EpochResult, totals: EpochTotals, info: DistInfo) -> EpochResult:
    """Loss and accuracy over all ranks' shards (sums of losses, hits and images, then divided)."""
    if not info.enabled:
        return result
    loss_sum, correct, seen = sum_over_ranks([float(totals.loss_sum), float(totals.correct), totals.seen], info)
    return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), result.seconds, result.steps)


def train_epoch(run: Run, epoch: int, planned: int, stop: StopRequests, *, start_step: int = 0,
                partial: dict | None = None) -> EpochResult:
    """One epoch of optimizer steps (from ``start_step`` when resuming mid-epoch), with the run's EMA, stops and
    mid-epoch saves after each step (engine.train_one_epoch runs the steps); raises StopRun on a stop."""
    cfg, info, state = run.cfg, run.info, run.state
    totals = EpochTotals(run.device, partial)
    steps = run.steps_per_epoch

    def after_step(step: int) -> None:
        stop.raise_if_aborted()
        run.steps_run += 1
        if step % cfg.accum_steps and step < steps:
            return  # inside an accumulation group: no optimizer step yet, nothing to average, save or stop
        if state.ema is not None:
            state.ema.update(run.model, step=state.scheduler.last_epoch)
        stop_now = any_rank(stop.requested, info) or bool(cfg.stop_after_steps
                                                          and run.steps_run >= cfg.stop_after_steps)
        if (stop_now or (cfg.save_every and step % cfg.save_every == 0)) and step < steps:
            save(run.run_dir / "last.pt", {**run.meta, **state.payload(epoch - 1, step, totals),
                                           "readers": getattr(run.train_batches, "readers", None)}, info)
            if not stop_now:
                logger.info(f"saved {run.run_dir / 'last.pt'} at epoch {epoch}, step {step}")
        if stop_now and step < steps:
            raise StopRun(epoch, step)

    batches, forward = run.train_batches.epoch(epoch, start_step), run.forward
    features, built = frozen_features(run)
    if features is not None:
        batches, forward = features.epoch(run.train_batches, epoch, start_step), features.head
    elif run.objective.mixer is not None:
        batches = mixed(batches, run.objective.mixer, cfg.seed, epoch, start_step, info.rank)
    try:
        result = train_one_epoch(forward, batches, run.train_step, desc=f"epoch {epoch}/{planned}", epoch=epoch,
                                 start=start_step, totals=totals, on_step=after_step)
    except NonFiniteLossError as err:
        good = f"{run.run_dir / 'last.pt'} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
        raise NonFiniteLossError(f"{err}. Last good checkpoint kept: {good}") from None
    result = combine(result, totals, info)
    result.seconds += built  # the epoch that computed the features pays for them
    sync_buffers(run.model, info)
    return result


def frozen_features(run: Run) -> tuple[FrozenFeatures | None, float]:
    """The frozen backbone's features (computed on first use; dropped once it trains) and the seconds computing
    them took in this call; (None, 0) when the backbone trains or the plain frozen loop runs."""
    if not backbone_frozen(run.model):
        run.features = None
        return None, 0.0
    if run.features is not None or run.feature_path is not None:
        return run.features, 0.0
    cfg = run.cfg
    run.feature_path = feature_path_reason(cfg, run.info.world_size, run.objective.mixer is not None) or ""
    if run.feature_path:
        if run.feature_path != "off":
            logger.info(f"frozen backbone: the plain loop runs every epoch ({run.feature_path})")
        return None, 0.0
    run.features = FrozenFeatures.build(run.model, run.train_batches, views=cfg.feature_views, preset=cfg.aug,
                                        hflip=cfg.hflip, size=int(run.meta["img_size"]), seed=cfg.seed,
                                        amp_dtype=run.amp_dtype, crop=Crop.from_dict(run.meta))
    return run.features, run.features.seconds


def validate(run: Run, network: nn.Module, epoch: int) -> tuple[EpochResult, dict[str, float]]:
    """Loss and accuracy on the validation split, summed over every rank's shard, and the metrics that need
    every prediction (macro F1; top-5 with >= 5 classes) from all ranks' outputs."""
    totals = EpochTotals(run.device)
    batches = run.val_batches.epoch(0)
    if run.features is not None:  # a frozen backbone: the validation images' features are computed once too
        batches, network = run.features.validation(run.model, run.val_batches, run.amp_dtype), HeadOnly(network)
    # the bare module, not the DDP wrapper: ranks may have different numbers of validation batches
    result = evaluate(network, batches, run.val_step, desc="  validate", epoch=epoch, totals=totals,
                      keep_outputs=True)
    parts = gather_lists([(result.logits, result.targets)] if result.logits is not None else [], run.info)
    logits, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # N x K, N (all ranks)
    if run.objective.epoch_metrics is not None:  # multi-label: mAP and F1 (multilabel.metrics.epoch_scores)
        return combine(result, totals, run.info), run.objective.epoch_metrics(logits, targets)
    extra = {"val_f1": macro_f1(logits, targets, logits.shape[1])}
    if logits.shape[1] >= 5:
        extra["val_top5"] = topk_accuracy(logits, targets, 5)
    return combine(result, totals, run.info), extra


def record(run: Run, history: list[dict], epoch: int, trained: EpochResult) -> dict:
    """Validate (the EMA weights, and the raw ones too when averaging) and append the epoch's row to
    metrics.csv; the validation time counts in the epoch's."""
    scored, extra = validate(run, run.state.validated, epoch)
    row = {"epoch": epoch, "train_loss": trained.loss, "train_acc": trained.accuracy, "val_loss": scored.loss,
           "val_acc": scored.accuracy, "lr": run.state.optimizer.param_groups[0]["lr"],
           "epoch_s": trained.seconds + scored.seconds, "img_per_s": trained.images_per_second, **extra}
    if run.state.ema is not None:
        raw, _ = validate(run, run.model, epoch)
        row["raw_val_acc"], row["epoch_s"] = raw.accuracy, row["epoch_s"] + raw.seconds
    history.append(row)
    if run.info.is_main:
        write_history(run.run_dir, history)
    return row


def score(row: dict, metric: str) -> float:
    """The --best-metric of an epoch's row, as a number where higher is better."""
    if metric == "last":
        return float(row["epoch"])
    return -row["val_loss"] if metric == "val_loss" else float(row[BEST_METRIC_COLUMNS[metric]])


def checkpoint(run: Run, epoch: int, row: dict, planned: int | None = None) -> bool:
    """best.pt when the --best-metric improved (or the finished schedule's last epoch is as good, within noise),
    last.pt always, epoch_NNN.pt with --keep; returns whether best.pt was written."""
    state, cfg = run.state, run.cfg
    improved = score(row, cfg.best_metric) > state.best_score
    kept_last = None if improved else _last_within_noise(run, epoch, row, planned)
    if kept_last:
        logger.info(kept_last)
    if improved or kept_last:
        state.best_score, state.best_epoch = score(row, cfg.best_metric), epoch
        improved = True
    metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "val_top5",
                                   "val_map") if k in row}
    weights = {**run.meta, "model": state.validated.state_dict(), "epoch": epoch, "metrics": metrics}
    if improved:
        save(run.run_dir / "best.pt", weights, run.info)
    save(run.run_dir / "last.pt", {**run.meta, **state.payload(epoch), "metrics": metrics}, run.info)
    if cfg.keep and run.info.is_main:
        save(run.run_dir / f"epoch_{epoch:03d}.pt", weights, run.info)
        kept = sorted(run.run_dir.glob("epoch_[0-9][0-9][0-9]*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for old in kept[:-cfg.keep]:
            old.unlink(missing_ok=True)
    return improved


def _last_within_noise(run: Run, epoch: int, row: dict, planned: int | None) -> str | None:
    """auto's best.pt at the end of a finished one-cycle or cosine schedule: the last epoch, unless an earlier one
    beat it on validation by more than one standard error (an earlier peak within noise is the split's luck: on the
    15-minute Fashion-MNIST run of benchmarks/README.md the peak at epoch 16 scored 88.5 % on test, the last epoch
    89.7 %). The reason when the last epoch is kept, else None."""
    cfg, state = run.cfg, run.state
    if (planned is None or epoch < planned or not cfg.chosen or "best_metric" in set(cfg.given or [])
            or cfg.best_metric not in ("val_acc", "macro_f1") or cfg.sched not in ("onecycle", "cosine")
            or cfg.early_stop or state.best_epoch < 1):
        return None
    best, last, images = state.best_score, score(row, cfg.best_metric), len(run.val_batches.labels)
    margin = (max(best * (1.0 - best), 1e-12) / max(images, 1)) ** 0.5
    if best - last > margin:
        return None
    return (f"best.pt: the last epoch of the finished {cfg.sched} schedule, its {cfg.best_metric} {last:.4f} within "
            f"one standard error ({margin:.4f}, {images} images) of epoch {state.best_epoch}'s peak {best:.4f}")


def _log_epoch(row: dict, planned: int, improved: bool) -> None:
    logger.info(f"epoch {row['epoch']:3d}/{planned}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
                f"| val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
                + (f" mAP {row['val_map']:.4f}" if "val_map" in row else "") + f"{' *' if improved else ''} | "
                f"{row['epoch_s']:.1f}s, {row['img_per_s']:.0f} img/s")


def _stop_reason(run: Run, epoch: int, planned: int, stop: StopRequests) -> str | None:
    """Why the run ends after ``epoch`` before its plan does: "signal", "steps", "early-stop", or None."""
    cfg = run.cfg
    signalled = any_rank(stop.requested, run.info)
    if signalled and epoch >= planned:  # the plan is complete; only the end-of-run evaluation is skipped
        logger.info(f"stopped after the last epoch: training is complete; finish with: resnetlab evaluate "
                    f"{run.run_dir / 'best.pt'} {cfg.data} --out {run.run_dir}")
        return "signal"
    if signalled or (cfg.stop_after_steps and run.steps_run >= cfg.stop_after_steps and epoch < planned):
        logger.info(f"stopped after epoch {epoch}; resume with: resnetlab train --resume {run.run_dir}")
        return "signal" if signalled else "steps"
    if cfg.early_stop and epoch - run.state.best_epoch >= cfg.early_stop:
        logger.info(f"early stop: no {cfg.best_metric} gain for {cfg.early_stop} epochs")
        return "early-stop"
    return None


def fit(run: Run, history: list[dict], *, start_epoch: int = 1, start_step: int = 0, partial: dict | None = None,
        time_plan: TimePlan | None = None) -> str | None:
    """Epochs from ``start_epoch`` to the plan's end; returns why it stopped early (None: the plan finished)."""
    if time_plan is not None:
        time_plan.start_loop()
    with StopRequests() as stop:
        reason = _epochs(run, history, stop, start_epoch, start_step, partial, time_plan)
        run.stop_signal = stop.signal if reason == "signal" else None
        return reason


def _epochs(run: Run, history: list[dict], stop: StopRequests, start_epoch: int, start_step: int,
            partial: dict | None, time_plan: TimePlan | None) -> str | None:
    cfg, info = run.cfg, run.info
    planned = cfg.epochs
    for epoch in itertools.count(start_epoch):  # the plan may change with --time-limit
        if epoch > planned:
            return None
        if cfg.freeze_backbone and cfg.unfreeze_at == epoch and start_step == 0:
            set_backbone_trainable(run.model, True)
            run.forward = wrap(run.model, cfg, info)  # DDP registers trainable parameters when it wraps
            logger.info(f"epoch {epoch}: backbone unfrozen")
        try:
            trained = train_epoch(run, epoch, planned, stop, start_step=start_step, partial=partial)
        except StopRun as halt:
            logger.info(f"stopped at epoch {epoch}, step {halt.step} of {run.steps_per_epoch}; saved "
                        f"{run.run_dir / 'last.pt'}. Resume with: resnetlab train --resume {run.run_dir}")
            return "signal" if any_rank(stop.requested, info) else "steps"
        start_step, partial = 0, None
        row = record(run, history, epoch, trained)
        improved = checkpoint(run, epoch, row, planned)
        _log_epoch(row, planned, improved)
        run.trackers.log_epoch(row)
        if info.is_main:
            plot_curves(run.run_dir, history)
        stop.raise_if_aborted()
        # e.g. a tuner's pruner (no end-of-run evaluation); it also gets the epochs planned now
        # (not after a Ctrl-C: the stop below must see it, whatever the callback would say)
        if run.on_epoch is not None and not stop.requested and run.on_epoch({**row, "planned_epochs": planned}):
            logger.info(f"stopped after epoch {epoch} by the epoch callback (pruned)")
            return "pruned"
        reason = _stop_reason(run, epoch, planned, stop)
        if reason is not None:
            return reason
        if time_plan is not None:
            planned = from_main(time_plan.after_epoch(epoch, planned), info)
            run.schedule.total_steps = planned * run.optimizer_steps_per_epoch
    return None
