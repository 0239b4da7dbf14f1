"""The train verb: parse -> build (data, model, optimizer, schedule) -> loop {train, validate, log, save}.

    result = train(TrainConfig(data="photos/", epochs=5))
    result.run_dir, result.best_val_acc
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .checkpoint import read_checkpoint, save_checkpoint, unwrap
from .config import ConfigError, TrainConfig, parse_duration
from .data.cache import DecodedSplit, channel_stats, decode_split
from .data.images import image_size
from .data.loaders import Batches
from .data.sources import DataError, DataSource, open_data
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from .engine import amp_dtype_for, resolve_device, run_epoch
from .models import (
    ModelSpec,
    build_model,
    count_parameters,
    load_pretrained,
    resolve_stem,
    set_backbone_trainable,
)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "img_per_s"]
# Settings a resumed run may change; everything else comes from the run's saved config.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "progress", "time_limit", "early_stop", "cache_dir")


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = None  # the network as it was after the last epoch, in eval mode
    classes: list[str] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------- schedule
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


# ---------------------------------------------------------------------- set-up helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """Refuse an existing run folder (unless --exist-ok / --resume) and an unwritable one, before any work."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"cannot resume: {run_dir / 'last.pt'} does not exist")
        return run_dir
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        data_name = Path(str(cfg.data)).stem or "data"
        name = cfg.name or f"{cfg.model}-{data_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path("runs") / name
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.exist_ok:
        raise ConfigError(f"run folder {run_dir} already exists and is not empty; use --resume {run_dir} to "
                          "continue it, --exist-ok to overwrite it, or another --name/--out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to run folder {run_dir}: {err.strerror or err}") from None
    return run_dir


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
    median = float(np.median(sides))
    return int(min(224, max(32, round(median / 8) * 8)))


def resolve_norm(cfg: TrainConfig, train: DecodedSplit) -> tuple[list[float], list[float]]:
    if cfg.mean is not None or cfg.std is not None:
        return list(cfg.mean or IMAGENET_MEAN), list(cfg.std or IMAGENET_STD)
    if cfg.norm == "dataset":
        return channel_stats(train.images)
    if cfg.norm == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _write_split_csv(run_dir: Path, source: DataSource) -> None:
    if any(s.paths is None for s in source.splits.values()):
        return
    with open(run_dir / "split.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for name, split in source.splits.items():
            for path, label in zip(split.paths, split.labels):
                writer.writerow([path, source.classes[label], name])


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_history(run_dir: Path, up_to_epoch: int) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def _write_history(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    tmp.replace(run_dir / "metrics.csv")


# ---------------------------------------------------------------------- the run
def train(config: TrainConfig | None = None, **settings: Any) -> RunResult:
    """Train a classifier; ``settings`` are TrainConfig fields (``resnetlab.train(data=..., epochs=3)``)."""
    cfg = config or TrainConfig.from_dict(settings)
    if config is not None and settings:
        cfg = TrainConfig.from_dict({**config.to_dict(), **settings})
    resume_state = None
    if cfg.resume:
        resume_state = read_checkpoint(Path(cfg.resume) / "last.pt")
        saved = dict(resume_state["config"])
        saved.update({k: v for k, v in cfg.to_dict().items() if k in RESUMABLE_OVERRIDES and v is not None})
        saved["resume"] = cfg.resume
        cfg = TrainConfig.from_dict(saved)
    if not cfg.data:
        raise ConfigError("no data given: pass a folder, a CSV file or a built-in name")
    run_dir = prepare_run_dir(cfg)
    started = time.perf_counter()
    _seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    # data: sources -> decode once -> batches
    source = open_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed, data_root=cfg.data_root)
    for note in source.notes:
        log(note)
    img_size = resolve_img_size(cfg, source)
    val_name = source.val_name
    log(f"data: {source.kind} at {source.location}; {len(source.classes)} classes; image size {img_size}px")
    for name in ("train", val_name):
        counts = source.class_counts(name)
        log(f"  {name}: {len(source.splits[name])} images; per class: "
            + ", ".join(f"{c}={n}" for c, n in counts.items()))
    train_decoded = decode_split(source.splits["train"], img_size, cache_dir=cfg.cache_dir, workers=cfg.workers,
                                 progress=cfg.progress)
    val_decoded = decode_split(source.splits[val_name], img_size, cache_dir=cfg.cache_dir, workers=cfg.workers,
                               progress=cfg.progress)
    for name, decoded in (("train", train_decoded), (val_name, val_decoded)):
        if len(decoded) == 0:
            raise DataError(f"none of the {len(source.splits[name])} images of the {name} split could be read "
                            f"(first: {decoded.skipped[0]['path']}: {decoded.skipped[0]['reason']})"
                            if decoded.skipped else f"the {name} split is empty")
    skipped = [dict(s, split=n) for n, d in (("train", train_decoded), (val_name, val_decoded)) for s in d.skipped]
    (run_dir / "data_report.json").write_text(json.dumps(
        {"kind": source.kind, "location": source.location, "classes": source.classes, "image_size": img_size,
         "counts": {n: source.class_counts(n) for n in source.splits}, "notes": source.notes,
         "skipped": skipped}, indent=2, ensure_ascii=False))
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s), listed in {run_dir / 'data_report.json'} "
            f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    log(f"data path: decoded once into memory ({train_decoded.images.numel() / 2**20:.0f} MiB uint8"
        + (f", cache {train_decoded.cache_file}" if train_decoded.cache_file else "") + "); batches augmented on "
        f"{device.type}")
    _write_split_csv(run_dir, source)
    mean, std = resolve_norm(cfg, train_decoded)

    # model
    spec = ModelSpec(cfg.model, len(source.classes), cfg.head, cfg.hidden, cfg.dropout,
                     resolve_stem(cfg.stem, img_size), cfg.width)
    model = build_model(spec)
    if cfg.pretrained and resume_state is None:
        for note in load_pretrained(model, cfg.pretrained, spec):
            log(f"pretrained: {note}")
    if cfg.freeze_backbone:
        set_backbone_trainable(model, False)
    channels_last = True
    model = model.to(device, memory_format=torch.channels_last)
    total, trainable = count_parameters(model)
    log(f"model: {spec.arch}, {spec.stem} stem, {spec.head} head; {total / 1e6:.2f} M parameters "
        f"({trainable / 1e6:.2f} M trainable)")

    # optimisation
    class_counts = torch.bincount(train_decoded.labels, minlength=len(source.classes)).float()
    class_weights = None
    sample_weights = None
    if cfg.balance == "weights":
        class_weights = (class_counts.sum() / (len(class_counts) * class_counts.clamp_min(1))).to(device)
    elif cfg.balance == "sampler":
        sample_weights = (1.0 / class_counts.clamp_min(1))[train_decoded.labels].double()
    augment = BatchAugment(cfg.aug, img_size, hflip=cfg.hflip) if cfg.aug != "none" else None
    train_batches = Batches(train_decoded.images, train_decoded.labels, batch_size=cfg.batch_size, device=device,
                            mean=mean, std=std, shuffle=True, augment=augment, seed=cfg.seed,
                            drop_last=len(train_decoded) > cfg.batch_size, sample_weights=sample_weights,
                            channels_last=channels_last)
    val_batches = Batches(val_decoded.images, val_decoded.labels, batch_size=max(256, cfg.batch_size * 2),
                          device=device, mean=mean, std=std, channels_last=channels_last)
    steps_per_epoch = train_batches.steps_per_epoch()
    train_loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    optimizer = build_optimizer(model, cfg)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.sched == "onecycle":
        warmup_steps = max(1, min(warmup_steps or int(0.25 * cfg.epochs * steps_per_epoch),
                                  int(0.5 * cfg.epochs * steps_per_epoch)))
    schedule = Schedule(cfg.sched, cfg.epochs * steps_per_epoch, warmup_steps, steps_per_epoch, cfg.step_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = amp_dtype_for(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    log(f"training on {device} ({'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}), "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size}; {cfg.opt} lr {cfg.peak_lr:g}, "
        f"{cfg.sched} schedule; run folder {run_dir}")
    forward_model = torch.compile(model) if cfg.compile else model

    history: list[dict] = []
    start_epoch, best_acc, best_epoch = 1, -1.0, 0
    if resume_state is not None:
        unwrap(model).load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        schedule.total_steps = cfg.epochs * steps_per_epoch  # --epochs may have changed on resume
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        _restore_rng(resume_state["rng"])
        start_epoch = int(resume_state["epoch"]) + 1
        best_acc, best_epoch = float(resume_state["best_val_acc"]), int(resume_state["best_epoch"])
        history = _read_history(run_dir, start_epoch - 1)
        if cfg.freeze_backbone and cfg.unfreeze_at and start_epoch > cfg.unfreeze_at:
            set_backbone_trainable(model, True)
        log(f"resuming {run_dir} at epoch {start_epoch} (best val acc so far {best_acc:.4f} at epoch {best_epoch})")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))

    meta = {"model_spec": spec.to_dict(), "classes": source.classes, "img_size": img_size, "mean": mean, "std": std}
    time_budget = parse_duration(cfg.time_limit) if cfg.time_limit else None
    planned_epochs = cfg.epochs
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        if epoch > planned_epochs:
            break
        if cfg.freeze_backbone and cfg.unfreeze_at == epoch:
            set_backbone_trainable(model, True)
            log(f"epoch {epoch}: backbone unfrozen")
        train_result = run_epoch(forward_model, train_batches.epoch(epoch), criterion=train_loss_fn, device=device,
                                 optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype,
                                 total_steps=steps_per_epoch, desc=f"epoch {epoch}/{planned_epochs}",
                                 progress=cfg.progress, epoch=epoch)
        val_result = run_epoch(forward_model, val_batches.epoch(0), criterion=val_loss_fn, device=device,
                               amp_dtype=amp_dtype, total_steps=len(val_batches), desc="  validate",
                               progress=cfg.progress, epoch=epoch)
        row = {"epoch": epoch, "train_loss": train_result.loss, "train_acc": train_result.accuracy,
               "val_loss": val_result.loss, "val_acc": val_result.accuracy, "lr": optimizer.param_groups[0]["lr"],
               "epoch_s": train_result.seconds + val_result.seconds, "img_per_s": train_result.images_per_second}
        history.append(row)
        _write_history(run_dir, history)
        improved = val_result.accuracy > best_acc
        if improved:
            best_acc, best_epoch = val_result.accuracy, epoch
        metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
        if improved:
            save_checkpoint(run_dir / "best.pt", {**meta, "model": unwrap(model).state_dict(), "epoch": epoch,
                                                  "metrics": metrics, "config": cfg.to_dict()})
        save_checkpoint(run_dir / "last.pt", {
            **meta, "model": unwrap(model).state_dict(), "epoch": epoch, "metrics": metrics, "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state(),
            "best_val_acc": best_acc, "best_epoch": best_epoch})
        log(f"epoch {epoch:3d}/{planned_epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{' *' if improved else ''} | "
            f"{row['epoch_s']:.1f}s, {row['img_per_s']:.0f} img/s")
        _plot_curves(run_dir, history)
        if cfg.early_stop and epoch - best_epoch >= cfg.early_stop:
            log(f"early stop: no val accuracy gain for {cfg.early_stop} epochs")
            break
        if time_budget is not None:
            planned_epochs = _fit_to_time(time_budget, time.perf_counter() - started, history, epoch,
                                          planned_epochs, schedule, steps_per_epoch)
    log(f"done in {time.perf_counter() - started:.0f}s: best val acc {best_acc:.4f} at epoch {best_epoch}; "
        f"run folder {run_dir} (best.pt, last.pt, metrics.csv, curves.png, config.yaml)")
    return RunResult(run_dir, best_acc, best_epoch, epoch, history, unwrap(model).eval(), source.classes)


def _fit_to_time(budget: float, elapsed: float, history: list[dict], epoch: int, planned: int, schedule: Schedule,
                 steps_per_epoch: int) -> int:
    """Shrink the planned epoch count so the run ends inside ``budget`` seconds; the schedule follows."""
    per_epoch = float(np.mean([r["epoch_s"] for r in history[-3:]]))
    fits = epoch + int(max(0.0, budget - elapsed) // max(per_epoch, 1e-6))
    if fits < planned:
        planned = max(epoch, fits)
        schedule.total_steps = planned * steps_per_epoch
        log(f"time limit: the run is shortened to {planned} epochs")
    return planned


def _plot_curves(run_dir: Path, history: list[dict]) -> None:
    from .plots import plot_curves

    try:
        plot_curves(history, run_dir / "curves.png")
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        log(f"warning: could not draw curves.png: {err}")
