"""The train verb: set up (data, network, optimizer, schedule, state) -> fit (the epoch loop) -> finish
(end-of-run evaluation and report). Started by torchrun, every process runs this and DDP keeps them in step.

    result = train(TrainConfig(data="photos/", epochs=5))
    result.run_dir, result.best_val_acc
"""

from __future__ import annotations

import functools
import gc
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..checkpoint import ModelMeta, describe_model
from ..config import TrainConfig, parse_duration
from ..data.splits import DataSource
from ..device import amp_dtype_for
from ..distributed import DistInfo, agree_on_start, from_main, gather_lists, init_distributed, shutdown
from ..engine import optimizer_steps
from ..fileio import write_text
from ..log import logger
from ..models import count_parameters, first_stage_side, set_backbone_trainable
from ..runfiles import prepare_run_dir, read_history
from ..settings import resolve
from ..signals import Terminated
from ..tracking import open_trackers
from .data import PreparedData, prepare_data, report_streamed_skips, training_batches, validation_batches
from .finish import check_replicas, finish_run, plot_samples, release_training_memory
from .loop import BEST_METRIC_COLUMNS, Run, fit
from .lr_find import lr_range_test
from .schedule import TimePlan, make_schedule
from .settle import settle
from .setup import Inputs, build_ema, build_network, build_objective, build_optimizer, check_inputs, class_balance, wrap
from .state import TrainState


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_done: int
    history: list[dict] = field(default_factory=list, repr=False)  # a notebook cell shows the summary, not these
    model: nn.Module | None = field(default=None, repr=False)  # the network as it was at the end, in eval mode
    classes: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped before its last epoch: "signal", "steps", "early-stop"...
    stop_signal: int | None = None  # with stopped == "signal": its number (2 SIGINT, 15 SIGTERM)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def train(config: TrainConfig | str | Path | None = None, *, clock: Callable[[], float] = time.perf_counter,
          on_epoch: Callable[[dict], bool | None] | None = None, **settings: Any) -> RunResult:
    """Train a classifier: ``resnetlab.train(data="photos/")`` runs what ``resnetlab train photos/`` runs.

    ``settings`` are TrainConfig fields (``help(resnetlab.TrainConfig)``; ``epochs=3``, ``recipe="fast"``...);
    ``config`` is a TrainConfig or a YAML file of settings (``--config``); keywords win over it, it wins over the
    recipe (``auto`` when none is named: settings chosen from the data and the time budget, raced on your data).

    ``clock`` (seconds) times the epochs for ``--time-limit``; tests pass a scripted one. ``on_epoch(row)`` is
    called after each epoch's checkpoint with its metrics.csv row; a true result stops the run (stopped "pruned").

    Example::

        import resnetlab
        result = resnetlab.train(data="photos/", time_limit="5m")   # auto: chosen, raced, trained in 5 minutes
        print(result.run_dir, result.best_val_acc)
    """
    yaml_path = None if config is None or isinstance(config, TrainConfig) else config
    cfg, saved = resolve(settings, config=config if isinstance(config, TrainConfig) else None, yaml_path=yaml_path)
    info = init_distributed(cfg.device)
    try:
        start = None if saved is None else (cfg.resume, int(saved.get("epoch") or 0), int(saved.get("step") or 0))
        agree_on_start(start, cfg.resume or cfg.out or cfg.name or "", info)  # --resume auto: decided per rank
        return _train(cfg, saved, info, clock, on_epoch)
    finally:
        shutdown(info)


def _train(cfg: TrainConfig, saved: dict | None, info: DistInfo, clock: Callable[[], float],
           on_epoch: Callable[[dict], bool | None] | None = None, inputs: Inputs | None = None) -> RunResult:
    if inputs is None and saved is None:
        inputs = check_inputs(cfg)  # before the run folder exists
    run_dir = Path(from_main(str(prepare_run_dir(cfg)) if info.is_main else None, info))
    if inputs is not None:
        inputs = settle(inputs, info, run_dir, functools.partial(_race_candidate, info=info, clock=clock),
                        clock=clock)
        cfg = inputs.cfg
    started = time.perf_counter()
    time_plan = TimePlan(parse_duration(cfg.time_limit), clock, lengthen=cfg.fill_time) if cfg.time_limit else None
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, run_dir, info, inputs.source if inputs else None)
    run = _set_up(cfg, saved, info, run_dir, data, inputs.weights if inputs else None)
    run.on_epoch = on_epoch
    history: list[dict] = []
    start_epoch, start_step, partial = 1, 0, None
    if saved is not None:
        start_epoch, start_step, partial = _resume(run, saved)
        history = read_history(run_dir, start_epoch - 1)
    if info.is_main:
        write_text(run_dir / "config.yaml", yaml.safe_dump(run.cfg.to_dict(), sort_keys=False, allow_unicode=True))
        run.trackers = open_trackers(run.cfg, run_dir, resumed=saved is not None)
    try:
        stopped = fit(run, history, start_epoch=start_epoch, start_step=start_step, partial=partial,
                      time_plan=time_plan)
    except KeyboardInterrupt:  # a second Ctrl-C: last.pt holds the last finished epoch (or saved step)
        logger.warning(f"interrupted; {run_dir / 'last.pt'} holds the last saved state. Resume with: resnetlab "
                       f"train --resume {run_dir}")
        run.trackers.finish(run_dir, stopped="signal")
        raise
    except Exception:  # a full disk, a NaN loss...: the tracker's run is marked failed, the error goes on
        run.trackers.finish(run_dir, stopped="failed")
        raise
    check_replicas(run.model, info)
    _collect_streamed_skips(run)
    best = next((row for row in history if row["epoch"] == run.state.best_epoch), {})
    if info.is_main and stopped in (None, "early-stop"):
        # the evaluation decodes nothing new but needs room for its own batches and Grad-CAM's activations:
        # drop the training batches (on the GPU when they fit there) and the optimizer's moments first
        run.train_batches = run.val_batches = None
        release_training_memory(run.state.optimizer, info.device)
        try:
            finish_run(run_dir, data, info.device, run.cfg)
        except KeyboardInterrupt:
            logger.warning(f"interrupted during the end-of-run evaluation; training is complete ({run_dir / 'best.pt'}"
                           f"). Finish with: resnetlab evaluate {run_dir / 'best.pt'} {run.cfg.data} --out {run_dir}")
            raise
    run.trackers.finish(run_dir, {f"best_{k}": v for k, v in best.items() if k.startswith("val_")} | (
        {"best_epoch": run.state.best_epoch} if best else {}), stopped=stopped)
    if stopped is None:
        logger.info(f"done in {time.perf_counter() - started:.0f}s: best {run.cfg.best_metric} "
                    f"{_best_text(best, run.cfg.best_metric)} at epoch {run.state.best_epoch}; run folder {run_dir} "
                    "(best.pt, last.pt, metrics.csv, curves.png, config.yaml, report.html)")
    final = run.state.validated
    return RunResult(run_dir, float(best.get("val_acc", -1.0)), run.state.best_epoch, len(history), history,
                     final.eval(), data.source.classes, stopped, run.stop_signal)


def _race_candidate(cfg: TrainConfig, source: DataSource, weights: dict | None, *, info: DistInfo,
                    clock: Callable[[], float]) -> list[dict]:
    """One candidate of the race (race.py): trained to the end of its plan (no end-of-run evaluation); its rows."""
    try:
        result = _train(cfg, None, info, clock, lambda row: row["epoch"] >= row["planned_epochs"],
                        Inputs(cfg, source, weights))
    finally:  # its batches and moments go before the next candidate or the run measures free memory
        gc.collect()
        if info.device.type == "cuda":
            torch.cuda.empty_cache()
    if result.stopped == "signal":  # Ctrl-C during the race: no run to resume yet (the candidate's is no user's)
        shutil.rmtree(Path(cfg.out), ignore_errors=True)
        logger.warning("interrupted during the race of --recipe auto: nothing was trained yet; start the same "
                       "command again (or add --race off)")
        raise Terminated if result.stop_signal == signal.SIGTERM else KeyboardInterrupt
    return result.history


def _best_text(best: dict, metric: str) -> str:
    column = BEST_METRIC_COLUMNS[metric]
    return f"{best[column]:.4f}" if column in best else "n/a"


def _set_up(cfg: TrainConfig, saved: dict | None, info: DistInfo, run_dir: Path, data: PreparedData,
            weights: dict | None) -> Run:
    """Network, batches, losses, optimizer, schedule, AMP, EMA and the resumable state, logged as built."""
    device, classes = info.device, data.source.classes
    model, spec = build_network(cfg, len(classes), data.img_size, pretrained=saved is None, weights=weights)
    model = model.to(device, memory_format=torch.channels_last)
    if cfg.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    total, trainable = count_parameters(model)
    logger.info(f"model: {spec.arch}, {spec.stem} stem, {spec.head} head, width {spec.width:g}; {total / 1e6:.2f} M "
                f"parameters ({trainable / 1e6:.2f} M trainable)")
    class_weights, sample_weights = class_balance(cfg, data.train.labels, len(classes), device)
    train_batches = training_batches(data, cfg, device, drop_last=len(data.train) > cfg.batch_size * info.world_size,
                                     sample_weights=sample_weights, rank=info.rank, world_size=info.world_size)
    if info.is_main and saved is None:  # a fresh run (or --exist-ok) redraws it; a resume keeps the first one
        plot_samples(run_dir / "samples.png", train_batches, classes, data.mean, data.std)
    objective = build_objective(cfg, len(classes), class_weights)
    if cfg.lr == "auto" and saved is None:
        cfg = _auto_lr(cfg, model, train_batches, objective.probe, run_dir, info)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = train_batches.steps_per_epoch()
    schedule = make_schedule(cfg, optimizer_steps(steps_per_epoch, cfg.accum_steps))
    amp_dtype = amp_dtype_for(cfg.amp, device, first_stage_side(spec, data.img_size))
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                       torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None)
    logger.info(f"training on {device} ({'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}), "
                f"{cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size}"
                + (f" (an optimizer step every {cfg.accum_steps})" if cfg.accum_steps > 1 else "")
                + f"; {cfg.opt} lr {cfg.peak_lr:g}, "
                f"{cfg.sched} schedule; run folder {run_dir}")
    if info.enabled:
        logger.info(f"distributed: {info.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}); "
                    f"--batch-size {cfg.batch_size} per process = global batch {cfg.batch_size * info.world_size}; "
                    "the learning rate is used as given (no automatic scaling with the process count)")
    forward = wrap(model, cfg, info)
    state.ema = build_ema(cfg, model)
    meta = describe_model(ModelMeta(spec, classes, data.img_size, data.mean, data.std, crop=data.crop,
                                    task=data.source.task), cfg.to_dict())
    return Run(cfg, info, run_dir, model, forward, state, schedule, objective, train_batches,
               validation_batches(data, cfg, device, info), amp_dtype, meta)


def _resume(run: Run, saved: dict) -> tuple[int, int, dict | None]:
    """Put the saved state back; returns (first epoch to run, steps already done in it, their running sums)."""
    run.state.restore(saved)
    run.schedule.total_steps = run.cfg.epochs * run.optimizer_steps_per_epoch  # --epochs may change on resume
    start_epoch, start_step = int(saved["epoch"]) + 1, int(saved.get("step") or 0)
    cfg = run.cfg
    if cfg.freeze_backbone and cfg.unfreeze_at and start_epoch > cfg.unfreeze_at:
        set_backbone_trainable(run.model, True)
    logger.info(f"resuming {run.run_dir} at epoch {start_epoch}" + (f", step {start_step}" if start_step else "")
                + f" (best {cfg.best_metric} so far at epoch {run.state.best_epoch})")
    readers = getattr(run.train_batches, "readers", None)  # a shard stream (data/shardstream.py)
    if start_step and readers is not None and saved.get("readers") == readers:
        logger.info(f"resume: the shard stream reads past the records of the {start_step} steps done without decoding "
                    f"them; the epoch goes on exactly as it would have ({readers})")
    elif start_step and (readers is not None or saved.get("readers")):
        before, now = saved.get("readers") or "another data path", readers or "another data path"
        logger.warning(f"resume: the shard stream was read by {before} and is now read by {now}: epoch {start_epoch} "
                       "goes on in another order of its records, so some may be seen twice or not at all this epoch "
                       "(exact only with the same processes, --workers and batch size)")
    return start_epoch, start_step, saved.get("partial")


def _auto_lr(cfg: TrainConfig, model: nn.Module, batches, criterion: nn.Module, run_dir: Path,  # noqa: ANN001
             info: DistInfo) -> TrainConfig:
    """--lr auto: a learning-rate range test on a copy of the model picks the peak LR (rank 0 decides)."""
    suggestion = None
    if info.is_main:
        result = lr_range_test(model, batches, criterion=criterion, device=info.device, cfg=cfg, progress=cfg.progress)
        result.write(run_dir)
        suggestion = result.suggestion
        logger.info(f"--lr auto: the range test suggests {suggestion:.3g} (plot: {run_dir / 'lr_find.png'})")
    return replace(cfg, lr=float(from_main(suggestion, info)))


def _collect_streamed_skips(run: Run) -> None:
    """Every rank streamed its own shard: collect what each skipped (a file met by 2 ranks in 2 epochs: once)."""
    skipped_files = getattr(run.train_batches, "skipped_files", None)
    if skipped_files is None:
        return
    gathered = gather_lists(skipped_files(), run.info)
    streamed_skips = list({entry["path"]: entry for entry in gathered}.values())
    if streamed_skips and run.info.is_main:
        report_streamed_skips(run.run_dir, streamed_skips)
