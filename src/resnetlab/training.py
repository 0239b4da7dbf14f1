"""The train verb: build (data, model, optimizer, schedule) -> loop {train, validate, log, checkpoint}.

Nothing is lost: checkpoints are atomic, Ctrl-C/SIGTERM saves a mid-epoch resumable state, a NaN loss
stops the run without overwriting the last good checkpoint, and ``--resume`` continues bit-exactly.

    result = train(TrainConfig(data="photos/", epochs=5))
    result.run_dir, result.best_val_acc
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint, unwrap
from .config import ConfigError, TrainConfig, parse_duration
from .data.cache import DecodedSplit, channel_stats, decode_split, default_workers
from .data.check import inspect_data
from .data.images import image_size
from .data.loaders import Batches
from .data.sources import DataError, DataSource, SplitData, open_data
from .data.stream import StreamBatches, choose_loader, decoded_bytes, streamed_split
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from .distributed import (
    DistInfo,
    any_rank,
    barrier,
    from_main,
    gather_lists,
    init_distributed,
    shutdown,
    sum_over_ranks,
    sync_buffers,
    weights_checksum,
)
from .engine import EpochResult, EpochTotals, NonFiniteLossError, StopRequests, amp_dtype_for, run_epoch
from .models import (
    ModelSpec,
    build_model,
    count_parameters,
    first_stage_side,
    load_pretrained,
    resolve_stem,
    set_backbone_trainable,
)
from .runfiles import prepare_run_dir, read_history, write_history, write_json, write_split_csv

SAMPLE_GALLERY = 32  # images of the first training batch in samples.png

# Settings a resumed run may change; everything else comes from the run's saved config.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "progress", "time_limit", "early_stop", "cache_dir",
                       "save_every", "stop_after_steps", "fill_time")


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = None  # the network as it was at the end, in eval mode
    classes: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped before its last epoch: "signal", "steps", "early-stop"...

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def log(message: str) -> None:
    """Print from one process only: under torchrun every rank runs this code, rank 0 speaks."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


# ---------------------------------------------------------------------- schedule and optimizer
class Schedule:
    """LR multiplier per step: warm-up, then one-cycle / cosine / step / constant.

    Written here instead of using torch's OneCycleLR because --time-limit may shorten the run after
    the first epoch, and the schedule must then stretch to the new total (``total_steps`` is mutable).
    A plain object, so LambdaLR saves its state as numbers.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, steps_per_epoch: int, step_size: int):
        self.kind, self.total_steps, self.warmup_steps = kind, total_steps, warmup_steps
        self.steps_per_epoch, self.step_size = steps_per_epoch, step_size

    def __call__(self, step: int) -> float:
        if self.kind == "onecycle":  # linear rise from 1/25 of the peak, cosine fall to ~0
            if step < self.warmup_steps:
                return 0.04 + 0.96 * step / max(1, self.warmup_steps)
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
        if self.kind == "step":
            return warm * 0.1 ** (step // (self.steps_per_epoch * self.step_size))
        return warm


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only: decaying BatchNorm scales and biases only hurts."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    optimizer_class = torch.optim.AdamW if cfg.opt == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=cfg.peak_lr, betas=(cfg.momentum, 0.999))


# ---------------------------------------------------------------------- data
@dataclass
class PreparedData:
    source: DataSource
    img_size: int
    val_name: str
    train: DecodedSplit
    val: DecodedSplit
    mean: list[float]
    std: list[float]


def resolve_img_size(cfg: TrainConfig, source: DataSource) -> int:
    if cfg.img_size:
        return cfg.img_size
    if source.native_size:
        return max(16, source.native_size)
    paths = source.splits["train"].paths or []
    sample = paths[:: max(1, len(paths) // 200)][:200]
    sides = [min(s) for s in (image_size(p) for p in sample) if s]
    if not sides:
        return 224
    return int(min(224, max(32, round(float(np.median(sides)) / 8) * 8)))


NORM_SAMPLE = 5000  # images that estimate a streamed split's mean/std (a decoded split uses all of them)


def resolve_norm(cfg: TrainConfig, train: DecodedSplit, split: SplitData | None = None, img_size: int = 0
                 ) -> tuple[list[float], list[float]]:
    if cfg.mean is not None or cfg.std is not None:
        return list(cfg.mean or IMAGENET_MEAN), list(cfg.std or IMAGENET_STD)
    if cfg.norm == "dataset" and train.images is None:  # streamed: estimate from an evenly spread sample
        sample = split.subset(np.arange(0, len(split), max(1, len(split) // NORM_SAMPLE)))
        return channel_stats(decode_split(sample, img_size, workers=cfg.workers, progress=False,
                                          use_cache=False).images)
    if cfg.norm == "dataset":
        return channel_stats(train.images)
    if cfg.norm == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def prepare_data(cfg: TrainConfig, run_dir: Path, info: DistInfo | None = None) -> PreparedData:
    """Open, decode (once, cached), inspect and report the training and validation splits.

    Under torchrun rank 0 decodes and writes the cache first; the other ranks then read it.
    """
    info = info or DistInfo()
    if not info.is_main:
        barrier(info)
    source = open_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed, data_root=cfg.data_root)
    for note in source.notes:
        log(note)
    img_size = resolve_img_size(cfg, source)
    val_name = source.val_name
    log(f"data: {source.kind} at {source.location}; {len(source.classes)} classes; image size {img_size}px")
    loader = choose_loader(cfg.loader, source.splits["train"], img_size)
    decoded = {name: streamed_split(source.splits[name]) if name == "train" and loader == "stream" else
               decode_split(source.splits[name], img_size, cache_dir=cfg.cache_dir, workers=cfg.workers,
                            progress=cfg.progress) for name in ("train", val_name)}
    if info.is_main:
        barrier(info)
    report = inspect_data(source, decoded, img_size)
    if info.is_main:
        write_json(run_dir / "data_report.json", report)
    for name, split in decoded.items():
        log(f"  {name}: {len(split)} images; per class: "
            + ", ".join(f"{c}={n}" for c, n in report["counts"][name].items()))
        if len(split) == 0:
            first = split.skipped[0] if split.skipped else None
            raise DataError(f"none of the {len(source.splits[name])} images of the {name} split could be read"
                            + (f" (first: {first['path']}: {first['reason']})" if first else ""))
    skipped = report["skipped"]
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s), listed in {run_dir / 'data_report.json'} "
            f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
        if cfg.strict:
            raise DataError(f"--strict: {len(skipped)} unreadable image(s), first {skipped[0]['path']}: "
                            f"{skipped[0]['reason']} (all listed in {run_dir / 'data_report.json'})")
    for problem in report["problems"]:
        if problem["severity"] == "warning":
            log(f"warning: {problem['path'] + ': ' if problem['path'] else ''}{problem['reason']}")
    train = decoded["train"]
    if train.images is None:
        size, workers = decoded_bytes(len(train), img_size), cfg.workers or default_workers()
        size_text = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        log(f"data path: streamed: the training split ({size_text} decoded; --loader {cfg.loader}) is decoded per "
            f"batch from its files by {workers} DataLoader worker{'s' if workers > 1 else ''} (torchvision.io or "
            "PIL, whichever is faster for the file); validation decoded once; batches augmented on the device")
    else:
        log(f"data path: decoded once into memory ({train.images.numel() / 2**20:.0f} MiB uint8"
            + (f", cache {train.cache_file}" if train.cache_file else "") + "); batches augmented on the device")
    if info.is_main:
        write_split_csv(run_dir, source)
    mean, std = resolve_norm(cfg, train, source.splits["train"], img_size)
    return PreparedData(source, img_size, val_name, train, decoded[val_name], mean, std)


def training_batches(data: PreparedData, cfg: TrainConfig, device: torch.device, *, drop_last: bool,
                     sample_weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1) -> Batches:
    """The training split's shuffled, augmented batches: slices of the decoded array, or streamed from files."""
    augment = (BatchAugment(cfg.aug, data.img_size, hflip=cfg.hflip, erase=cfg.erase)
               if cfg.aug != "none" or cfg.erase else None)
    options = {"batch_size": cfg.batch_size, "device": device, "mean": data.mean, "std": data.std, "shuffle": True,
               "augment": augment, "seed": cfg.seed, "drop_last": drop_last, "sample_weights": sample_weights,
               "channels_last": True, "rank": rank, "world_size": world_size}
    if data.train.images is None:
        return StreamBatches(data.source.splits["train"], data.img_size, workers=cfg.workers or default_workers(),
                             strict=cfg.strict, **options)
    return Batches(data.train.images, data.train.labels, **options)


def build_network(cfg: TrainConfig, num_classes: int, img_size: int, *, pretrained: bool = True
                  ) -> tuple[nn.Module, ModelSpec]:
    """The model a run trains: architecture, stem, head, width, pretrained weights, frozen backbone."""
    spec = ModelSpec(cfg.model, num_classes, cfg.head, cfg.hidden, cfg.dropout, resolve_stem(cfg.stem, img_size),
                     cfg.width)
    model = build_model(spec)
    if cfg.pretrained and pretrained:
        for note in load_pretrained(model, cfg.pretrained, spec):
            log(f"pretrained: {note}")
    if cfg.freeze_backbone:
        set_backbone_trainable(model, False)
    return model, spec


# ---------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(path: Path, payload: dict, info: DistInfo) -> None:
    if not info.is_main:
        return
    try:
        save_checkpoint(path, payload)
    except OSError as err:  # full disk, vanished folder: the previous file is untouched (atomic rename)
        raise CheckpointError(f"could not write {path}: {err.strerror or err}; the previous {path.name} (if any) "
                              "is intact") from None


@dataclass
class TrainState:
    """What a resumable checkpoint holds besides the model's description."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    best_acc: float = -1.0
    best_epoch: int = 0

    def payload(self, epoch: int, step: int = 0, totals: EpochTotals | None = None) -> dict:
        """``epoch`` = last finished epoch; ``step`` > 0 marks steps already done in the next one."""
        return {"model": unwrap(self.model).state_dict(), "epoch": epoch, "step": step,
                "partial": totals.to_dict() if totals is not None and step else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": _rng_state(),
                "best_val_acc": self.best_acc, "best_epoch": self.best_epoch}

    def restore(self, saved: dict) -> None:
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        _restore_rng(saved["rng"])
        self.best_acc, self.best_epoch = float(saved["best_val_acc"]), int(saved["best_epoch"])


# ---------------------------------------------------------------------- the run
def _resolve_config(config: TrainConfig | None, settings: dict) -> tuple[TrainConfig, dict | None]:
    cfg = config or TrainConfig.from_dict(settings)
    if config is not None and settings:
        cfg = TrainConfig.from_dict({**config.to_dict(), **settings})
    if not cfg.resume:
        if not cfg.data:
            raise ConfigError("no data given: pass a folder, a CSV file or a built-in name")
        return cfg, None
    saved_state = read_checkpoint(Path(cfg.resume) / "last.pt")
    # only settings the caller actually gave may override the saved ones (a default is not a wish)
    defaults = TrainConfig().to_dict()
    given = settings if config is None else {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}
    values = dict(saved_state["config"])
    values.update({k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES and v is not None})
    values["resume"] = cfg.resume
    return TrainConfig.from_dict(values), saved_state


def train(config: TrainConfig | None = None, **settings: Any) -> RunResult:
    """Train a classifier; ``settings`` are TrainConfig fields (``resnetlab.train(data=..., epochs=3)``).

    Started by torchrun, every process calls this and they train one model with DistributedDataParallel.
    """
    cfg, saved = _resolve_config(config, settings)
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, saved, info)
    finally:
        shutdown(info)


def _train(cfg: TrainConfig, saved: dict | None, info: DistInfo) -> RunResult:
    run_dir = Path(from_main(str(prepare_run_dir(cfg)) if info.is_main else None, info))
    started = time.perf_counter()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = info.device
    data = prepare_data(cfg, run_dir, info)

    model, spec = build_network(cfg, len(data.source.classes), data.img_size, pretrained=saved is None)
    model = model.to(device, memory_format=torch.channels_last)
    if cfg.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    total, trainable = count_parameters(model)
    log(f"model: {spec.arch}, {spec.stem} stem, {spec.head} head, width {spec.width:g}; {total / 1e6:.2f} M "
        f"parameters ({trainable / 1e6:.2f} M trainable)")

    # batches, loss, optimizer, schedule
    class_counts = torch.bincount(data.train.labels, minlength=len(data.source.classes)).float()
    class_weights = sample_weights = None
    if cfg.balance == "weights":
        class_weights = (class_counts.sum() / (len(class_counts) * class_counts.clamp_min(1))).to(device)
    elif cfg.balance == "sampler":
        sample_weights = (1.0 / class_counts.clamp_min(1))[data.train.labels].double()
    train_batches = training_batches(data, cfg, device, drop_last=len(data.train) > cfg.batch_size * info.world_size,
                                     sample_weights=sample_weights, rank=info.rank, world_size=info.world_size)
    val_batches = Batches(data.val.images, data.val.labels, batch_size=max(256, cfg.batch_size * 2), device=device,
                          mean=data.mean, std=data.std, channels_last=True, rank=info.rank,
                          world_size=info.world_size)
    steps_per_epoch = train_batches.steps_per_epoch()
    if info.is_main and saved is None:  # a fresh run (or --exist-ok) redraws it; a resume keeps the first one
        _plot_samples(run_dir / "samples.png", train_batches, data.source.classes, data.mean, data.std)
    train_loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    mixer = None
    if cfg.mixup or cfg.cutmix:  # soft targets: label smoothing moves into the mixer
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=len(data.source.classes))
        train_loss_fn = SoftTargetCrossEntropy()
    if cfg.lr == "auto" and saved is None:
        cfg = _auto_lr(cfg, model, train_batches, train_loss_fn if mixer is None else nn.CrossEntropyLoss(),
                       device, run_dir, info)
    optimizer = build_optimizer(model, cfg)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.sched == "onecycle":
        warmup_steps = max(1, min(warmup_steps or int(0.25 * cfg.epochs * steps_per_epoch),
                                  int(0.5 * cfg.epochs * steps_per_epoch)))
    schedule = Schedule(cfg.sched, cfg.epochs * steps_per_epoch, warmup_steps, steps_per_epoch, cfg.step_size)
    amp_dtype = amp_dtype_for(cfg.amp, device, first_stage_side(spec, data.img_size))
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                       torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None)
    log(f"training on {device} ({'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}), "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size}; {cfg.opt} lr {cfg.peak_lr:g}, "
        f"{cfg.sched} schedule; run folder {run_dir}")
    if info.enabled:
        log(f"distributed: {info.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}); "
            f"--batch-size {cfg.batch_size} per process = global batch {cfg.batch_size * info.world_size}; "
            f"the learning rate is used as given (no automatic scaling with the process count)")
    forward_model = _wrap(model, cfg, info)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)  # warm-up: early averages are not stale
        log(f"weights averaged with EMA decay {cfg.ema:g}; validation and best.pt use the averaged weights")

    history: list[dict] = []
    start_epoch, start_step, partial = 1, 0, None
    if saved is not None:
        state.restore(saved)
        if ema is not None and saved.get("ema"):
            ema.module.load_state_dict(saved["ema"])
        schedule.total_steps = cfg.epochs * steps_per_epoch  # --epochs may have changed on resume
        start_epoch, start_step, partial = int(saved["epoch"]) + 1, int(saved.get("step") or 0), saved.get("partial")
        history = read_history(run_dir, start_epoch - 1)
        if cfg.freeze_backbone and cfg.unfreeze_at and start_epoch > cfg.unfreeze_at:
            set_backbone_trainable(model, True)
        log(f"resuming {run_dir} at epoch {start_epoch}" + (f", step {start_step}" if start_step else "")
            + f" (best val acc so far {state.best_acc:.4f} at epoch {state.best_epoch})")
    if info.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True),
                                             encoding="utf-8")
    meta = {"model_spec": spec.to_dict(), "classes": data.source.classes, "img_size": data.img_size,
            "mean": data.mean, "std": data.std, "config": cfg.to_dict()}
    time_budget = parse_duration(cfg.time_limit) if cfg.time_limit else None
    planned_epochs, epoch, stopped = cfg.epochs, start_epoch - 1, None
    steps_run = 0  # optimizer steps in this invocation, for --stop-after-steps

    epoch_ends = [time.perf_counter()]  # wall clock at the loop's start and after each epoch, saving included
    with StopRequests() as stop:
        for epoch in itertools.count(start_epoch):  # the plan may change with --time-limit
            if epoch > planned_epochs:
                break
            if cfg.freeze_backbone and cfg.unfreeze_at == epoch and start_step == 0:
                set_backbone_trainable(model, True)
                forward_model = _wrap(model, cfg, info)  # DDP registers trainable parameters when it wraps
                log(f"epoch {epoch}: backbone unfrozen")
            totals = EpochTotals(device, partial)

            def after_step(step: int, epoch: int = epoch, totals: EpochTotals = totals) -> None:
                nonlocal steps_run
                steps_run += 1
                if ema is not None:
                    ema.update(model, step=state.scheduler.last_epoch)
                stop_now = any_rank(stop.requested, info) or bool(cfg.stop_after_steps
                                                                    and steps_run >= cfg.stop_after_steps)
                if (stop_now or (cfg.save_every and step % cfg.save_every == 0)) and step < steps_per_epoch:
                    _save(run_dir / "last.pt", {**meta, **state.payload(epoch - 1, step, totals), **_ema_state(ema)},
                          info)
                    if not stop_now:
                        log(f"saved {run_dir / 'last.pt'} at epoch {epoch}, step {step}")
                if stop_now and step < steps_per_epoch:
                    raise _StopRun(epoch, step)

            try:
                batches = train_batches.epoch(epoch, start_step)
                if mixer is not None:
                    batches = _mixed(batches, mixer, cfg.seed, epoch, start_step, info.rank)
                train_result = run_epoch(forward_model, batches, criterion=train_loss_fn, device=device,
                                         optimizer=optimizer, scheduler=state.scheduler, scaler=state.scaler,
                                         amp_dtype=amp_dtype, total_steps=steps_per_epoch, start_step=start_step,
                                         desc=f"epoch {epoch}/{planned_epochs}", progress=cfg.progress, epoch=epoch,
                                         totals=totals, on_step=after_step, grad_clip=cfg.grad_clip or None)
            except _StopRun as halt:
                stopped = "signal" if any_rank(stop.requested, info) else "steps"
                log(f"stopped at epoch {epoch}, step {halt.step} of {steps_per_epoch}; saved {run_dir / 'last.pt'}. "
                    f"Resume with: resnetlab train --resume {run_dir}")
                break
            except NonFiniteLossError as err:
                good = f"{run_dir / 'last.pt'} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
                raise NonFiniteLossError(f"{err}. Last good checkpoint kept: {good}") from None
            start_step, partial = 0, None
            train_result = _combine(train_result, totals, info)
            sync_buffers(model, info)

            def validate(network: nn.Module, epoch: int = epoch) -> EpochResult:
                val_totals = EpochTotals(device)
                # the bare module, not the DDP wrapper: ranks may have different numbers of validation batches
                result = run_epoch(network, val_batches.epoch(0), criterion=val_loss_fn, device=device,
                                   amp_dtype=amp_dtype, total_steps=len(val_batches), desc="  validate",
                                   progress=cfg.progress and info.is_main, epoch=epoch, totals=val_totals)
                return _combine(result, val_totals, info)

            val_result = validate(ema.module if ema is not None else model)
            row = {"epoch": epoch, "train_loss": train_result.loss, "train_acc": train_result.accuracy,
                   "val_loss": val_result.loss, "val_acc": val_result.accuracy,
                   "lr": optimizer.param_groups[0]["lr"], "epoch_s": train_result.seconds + val_result.seconds,
                   "img_per_s": train_result.images_per_second}
            if ema is not None:  # the raw weights' accuracy too, its time counted in the epoch's
                raw = validate(model)
                row["raw_val_acc"], row["epoch_s"] = raw.accuracy, row["epoch_s"] + raw.seconds
            history.append(row)
            if info.is_main:
                write_history(run_dir, history)
            improved = val_result.accuracy > state.best_acc
            if improved:
                state.best_acc, state.best_epoch = val_result.accuracy, epoch
            metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            if improved:
                validated = ema.module if ema is not None else unwrap(model)
                _save(run_dir / "best.pt", {**meta, "model": validated.state_dict(), "epoch": epoch,
                                            "metrics": metrics}, info)
            _save(run_dir / "last.pt", {**meta, **state.payload(epoch), **_ema_state(ema), "metrics": metrics}, info)
            log(f"epoch {epoch:3d}/{planned_epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{' *' if improved else ''} | "
                f"{row['epoch_s']:.1f}s, {row['img_per_s']:.0f} img/s")
            if info.is_main:
                _plot_curves(run_dir, history)
            if any_rank(stop.requested, info) or (cfg.stop_after_steps and steps_run >= cfg.stop_after_steps):
                stopped = "signal" if any_rank(stop.requested, info) else "steps"
                if epoch < planned_epochs:
                    log(f"stopped after epoch {epoch}; resume with: resnetlab train --resume {run_dir}")
                break
            if cfg.early_stop and epoch - state.best_epoch >= cfg.early_stop:
                stopped = "early-stop"
                log(f"early stop: no val accuracy gain for {cfg.early_stop} epochs")
                break
            if time_budget is not None:
                epoch_ends.append(time.perf_counter())
                planned_epochs = from_main(_fit_to_time(time_budget, epoch_ends[-1] - started, np.diff(epoch_ends),
                                                        epoch, planned_epochs, schedule, steps_per_epoch,
                                                        lengthen=cfg.fill_time), info)
                schedule.total_steps = planned_epochs * steps_per_epoch
    if info.enabled:
        sums = sum_over_ranks([weights_checksum(model), weights_checksum(model) ** 2], info)
        spread = sums[1] / info.world_size - (sums[0] / info.world_size) ** 2
        log(f"distributed: weights {'identical' if spread <= 1e-9 * max(1.0, sums[1]) else 'DIFFERENT'} across "
            f"{info.world_size} ranks (checksum {sums[0] / info.world_size:.6f})")
    if isinstance(train_batches, StreamBatches):  # every rank streamed its own shard: collect what each skipped
        gathered = gather_lists(train_batches.skipped_files(), info)  # a file met by 2 ranks in 2 epochs: once
        streamed_skips = list({entry["path"]: entry for entry in gathered}.values())
        if streamed_skips and info.is_main:
            _report_streamed_skips(run_dir, streamed_skips)
    if info.is_main and stopped in (None, "early-stop"):
        # the evaluation decodes nothing new but needs room for its own batches and Grad-CAM's activations:
        # drop the training batches (on the GPU when they fit there) and the optimizer's moments first
        train_batches = val_batches = batches = None  # releases the tensors they hold
        _release_training_memory(optimizer, device)
        _finish_run(run_dir, data, device, cfg)
    if stopped is None:
        log(f"done in {time.perf_counter() - started:.0f}s: best val acc {state.best_acc:.4f} at epoch "
            f"{state.best_epoch}; run folder {run_dir} (best.pt, last.pt, metrics.csv, curves.png, config.yaml, "
            "report.html)")
    final = ema.module if ema is not None else unwrap(model)
    return RunResult(run_dir, state.best_acc, state.best_epoch, len(history), history, final.eval(),
                     data.source.classes, stopped)


def _report_streamed_skips(run_dir: Path, skipped: list[dict]) -> None:
    """Streamed files are only read during training: their failures join data_report.json afterwards."""
    report_file = run_dir / "data_report.json"
    try:
        report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
        report["skipped"] = report.get("skipped", []) + [dict(item, split="train") for item in skipped]
        write_json(report_file, report)
    except (OSError, ValueError) as err:
        log(f"warning: could not update {report_file}: {err}")
    log(f"skipped {len(skipped)} unreadable training image(s) while streaming, listed in {report_file} "
        f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")


def _ema_state(ema) -> dict:  # noqa: ANN001 - timm's ModelEmaV3 or None
    return {"ema": ema.module.state_dict()} if ema is not None else {}


def _mixed(batches, mixer, seed: int, epoch: int, start_step: int, rank: int):  # noqa: ANN001, ANN202
    """Mixup/cutmix on each batch; timm's Mixup draws from numpy's global RNG, so it is seeded per step
    (from seed, epoch, step, rank) to keep resume exact."""
    for step, (x, y, index) in enumerate(batches, start=start_step):
        np.random.seed((seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % 2**32)
        x, soft = mixer(x, y)
        yield x, soft, index


def _auto_lr(cfg: TrainConfig, model: nn.Module, batches: Batches, criterion: nn.Module, device: torch.device,
             run_dir: Path, info: DistInfo) -> TrainConfig:
    """--lr auto: a learning-rate range test on a copy of the model picks the peak LR (rank 0 decides)."""
    import dataclasses

    from .lr_find import lr_range_test

    suggestion = None
    if info.is_main:
        result = lr_range_test(model, batches, criterion=criterion, device=device, cfg=cfg, progress=cfg.progress)
        result.write(run_dir)
        suggestion = result.suggestion
        log(f"--lr auto: the range test suggests {suggestion:.3g} (plot: {run_dir / 'lr_find.png'})")
    return dataclasses.replace(cfg, lr=float(from_main(suggestion, info)))


def _wrap(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """The module the training steps call: DDP across processes, optionally torch.compile'd."""
    wrapped = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device = info.device
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if cfg.compile else wrapped


def _combine(result: EpochResult, totals: EpochTotals, info: DistInfo) -> EpochResult:
    """Loss and accuracy over all ranks' shards (sums of losses, hits and images, then divided)."""
    if not info.enabled:
        return result
    loss_sum, correct, seen = sum_over_ranks([float(totals.loss_sum), float(totals.correct), totals.seen], info)
    return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), result.seconds, result.steps)


class _StopRun(Exception):
    def __init__(self, epoch: int, step: int):
        super().__init__(f"stop at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def _fit_to_time(budget: float, elapsed: float, epoch_walls: np.ndarray, epoch: int, planned: int,
                 schedule: Schedule, steps_per_epoch: int, *, lengthen: bool = False) -> int:
    """Shrink the planned epoch count so the run ends inside ``budget`` seconds (``lengthen``: or grow it to fill
    them); the schedule follows. Re-planned after every epoch from the last three epochs' wall times (checkpoints
    and figures included, which the epochs' own timings leave out)."""
    per_epoch = float(np.mean(epoch_walls[-3:]))
    fits = max(epoch, epoch + int(max(0.0, budget - elapsed) // max(per_epoch, 1e-3)))
    if fits < planned or (lengthen and fits > planned):
        log(f"time limit: the run is {'shortened' if fits < planned else 'lengthened'} to {fits} epochs")
        planned = fits
        schedule.total_steps = planned * steps_per_epoch
    return planned


def _plot_samples(path: Path, batches: Batches, classes: list[str], mean: list[float], std: list[float]) -> None:
    """samples.png: the first training batch after augmentation, de-normalised, as the model sees it."""
    from .data.transforms import denormalize, to_rgb_array
    from .plots import image_grid

    try:
        # Batches draws from its own (seed, epoch, step) generators; fork_rng makes sure that drawing this
        # batch leaves the global RNG (dropout, mixup seeding) exactly as an unobserved run would have it.
        with torch.random.fork_rng(devices=[] if batches.device.type == "cpu" else [batches.device]):
            x, y, _ = next(iter(batches.epoch(1)))
        shown = min(SAMPLE_GALLERY, len(y))
        images = to_rgb_array(denormalize(x[:shown], mean, std))
        image_grid(list(images), [classes[i] for i in y[:shown].tolist()], path, columns=8,
                   suptitle="training batch after augmentation (de-normalised)")
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        log(f"warning: could not draw samples.png: {err}")


def _release_training_memory(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Free what only training needed (optimizer moments, cached GPU blocks); never fails a finished run."""
    try:
        optimizer.state.clear()  # last.pt already holds it; momentum/Adam moments are 1-2x the weights
        gc.collect()  # the batches' tensors may sit in reference cycles (generators, closures)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as err:  # noqa: BLE001 - the checkpoints are safe; the evaluation can still try
        log(f"warning: could not release training memory before the end-of-run evaluation: {err}")


def _finish_run(run_dir: Path, data: PreparedData, device: torch.device, cfg: TrainConfig) -> None:
    """best.pt on the validation split -> metrics.json, confusion matrix, galleries; then report.html.

    Rank 0 only. Any failure is a warning: the run's checkpoints are already safe.
    """
    best = run_dir / "best.pt"
    try:  # the imports too: a broken optional dependency (grad-cam, matplotlib) must not fail the run either
        from .checkpoint import load_model
        from .evaluation import write_evaluation
        from .report import write_report

        if best.is_file():
            model, meta = load_model(best, device=device)
            metrics = write_evaluation(model, meta, data.val, data.source.splits[data.val_name], run_dir,
                                       device=device, batch_size=max(256, cfg.batch_size * 2), amp=cfg.amp,
                                       progress=False, extra={"checkpoint": str(best), "data": str(cfg.data),
                                                              "split": data.val_name})
            log(f"best.pt on {data.val_name}: accuracy {metrics['accuracy']:.4f}, macro F1 "
                f"{metrics['macro_avg']['f1']:.4f} (metrics.json, confusion_matrix.png, predictions.png)")
        log(f"report: {write_report(run_dir)}")
    except Exception as err:  # noqa: BLE001 - figures must never end (or fail) a finished run
        log(f"warning: could not write the end-of-run evaluation/report: {type(err).__name__}: {err}")


def _plot_curves(run_dir: Path, history: list[dict]) -> None:
    from .plots import plot_curves

    try:
        plot_curves(history, run_dir / "curves.png")
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        log(f"warning: could not draw curves.png: {err}")
