"""A run's data: open the source, decode (once, cached) or stream the training split, inspect it, choose the
normalisation, and hand out training and validation batches.

    data = prepare_data(cfg, run_dir, info)
    batches = training_batches(data, cfg, device, drop_last=True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.cache import DecodedSplit, channel_stats, decode_split, storage_side
from ..data.check import empty_split_reason, empty_splits, inspect_data
from ..data.images import SMALL_SIZE, Crop
from ..data.loaders import Batches, Order
from ..data.shardstream import SHUFFLE_BUFFER, ShardStreamBatches, read_at_random
from ..data.sources import default_img_size, open_configured
from ..data.splits import DataSource, SplitData
from ..data.stream import StreamBatches, choose_loader, decoded_bytes, streamed_split
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from ..data.workers import default_workers
from ..distributed import DistInfo, barrier
from ..errors import DataError
from ..fileio import write_json
from ..log import logger, progress_enabled
from ..models import default_crop
from ..runfiles import write_split_csv

NORM_SAMPLE = 5000  # images that estimate a streamed split's mean/std (a decoded split uses all of them)


@dataclass
class PreparedData:
    source: DataSource
    img_size: int
    val_name: str
    train: DecodedSplit
    val: DecodedSplit
    mean: list[float]
    std: list[float]
    crop: Crop = Crop()  # the evaluation crop (validation, evaluate, predict, export, serve)
    layout: str = "square"  # how the training split is stored (cache.py)


def resolve_crop(cfg: TrainConfig, img_size: int) -> tuple[Crop, str]:
    """--crop-pct, --interpolation and --crop-mode (the TrainConfig fields named as Crop.to_dict's keys), each as
    given or else by ``models.default_crop``'s rule; and why."""
    chosen, reason = default_crop(cfg.model, img_size, bool(cfg.pretrained))
    if "crop_mode" in (cfg.chosen or {}):
        reason = "auto: " + cfg.chosen["crop_mode"]["why"]
    elif cfg.crop_pct is not None or cfg.crop_mode is not None:
        reason = "given"
    given = {key: getattr(cfg, key, None) for key in chosen.to_dict() if getattr(cfg, key, None) is not None}
    return Crop.from_dict({**chosen.to_dict(), **given}), reason


def resolve_norm(cfg: TrainConfig, train: DecodedSplit, split: SplitData | None = None, img_size: int = 0,
                 crop: Crop = Crop()) -> tuple[list[float], list[float]]:
    if cfg.mean is not None or cfg.std is not None:
        return list(cfg.mean or IMAGENET_MEAN), list(cfg.std or IMAGENET_STD)
    if cfg.norm == "dataset" and train.images is None:  # streamed: estimate from an evenly spread sample
        sample = split.subset(np.arange(0, len(split), max(1, len(split) // NORM_SAMPLE)))
        return channel_stats(decode_split(sample, img_size, crop=crop, workers=cfg.workers, progress=False,
                                          use_cache=False).images)
    if cfg.norm == "dataset":
        return channel_stats(train.images, train.content)
    if cfg.norm == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def prepare_data(cfg: TrainConfig, run_dir: Path, info: DistInfo | None = None, source: DataSource | None = None
                 ) -> PreparedData:
    """Open (unless ``source`` is given), decode (once, cached), inspect and report the training and validation
    splits. Under torchrun rank 0 decodes and writes the cache first; the other ranks then read it.
    """
    info = info or DistInfo()
    if not info.is_main:
        barrier(info)
    if source is None:
        source = open_configured(cfg)
    for note in source.notes:
        logger.info(note)
    _require_images(source)
    img_size = cfg.img_size or default_img_size(source)
    crop, why = resolve_crop(cfg, img_size)
    layout = cfg.cache_layout if cfg.cache_layout != "auto" else "whole" if img_size > SMALL_SIZE else "square"
    if crop.mode == "squash" and layout == "square":  # a centre square would not be what evaluation sees
        logger.info("data: --crop-mode squash trains on whole images (cache layout whole)")
        layout = "whole"
    logger.info(f"data: {source.kind} at {source.location}; {len(source.classes)} classes; image size {img_size}px; "
                f"evaluation crop {crop.pct:g} ({crop.interpolation}"
                f"{', squash' if crop.mode == 'squash' else ''}; {why})")
    loader = choose_loader(cfg.loader, source.splits["train"], storage_side(img_size, layout))
    squashed = loader != "stream" and _trains_on_eval_view(cfg, crop, layout)
    if squashed:
        layout = "square"
        logger.info(f"data: the training split is stored as evaluation sees it (each whole picture squashed to "
                    f"{img_size} px), so training's views differ from it only by the augmentation")
    options = {"cache_dir": cfg.cache_dir, "workers": cfg.workers, "progress": progress_enabled(cfg.progress)}
    decoded = {"train": streamed_split(source.splits["train"]) if loader == "stream" else
               decode_split(source.splits["train"], img_size, layout=layout, crop=crop if squashed else Crop(),
                            **options),
               source.val_name: decode_split(source.splits[source.val_name], img_size, crop=crop, **options)}
    if info.is_main:
        barrier(info)
    report = inspect_data(source, decoded, img_size)
    if info.is_main:
        write_json(run_dir / "data_report.json", report)
    _log_report(cfg, source, decoded, report, run_dir)
    _log_data_path(cfg, decoded["train"], storage_side(img_size, layout), source.splits["train"])
    if info.is_main:
        write_split_csv(run_dir, source)
    mean, std = resolve_norm(cfg, decoded["train"], source.splits["train"], img_size, Crop(mode=crop.mode))
    return PreparedData(source, img_size, source.val_name, decoded["train"], decoded[source.val_name], mean, std,
                        crop, layout)


def _trains_on_eval_view(cfg: TrainConfig, crop: Crop, layout: str) -> bool:
    """True when the training split is better stored as evaluation sees it, each whole picture squashed to the
    training size: the whole view (``--crop-mode squash --crop-pct 1``) under augmentation that moves no window out
    of it (none, flip, crop, light), with the layout left to auto. The letterboxed whole image at 1.5x the size
    was resampled by the batch's bilinear grid to the training size: without antialiasing along the longer side
    (a 1.5x shrink that drops thin lines) and stretched along the shorter side of pictures longer than 3:2, so
    training saw a view that evaluation (an antialiased resize) never did (benchmarks/view_fidelity.py)."""
    return (layout == "whole" and cfg.cache_layout == "auto" and crop.mode == "squash" and crop.pct >= 1.0
            and cfg.aug in ("none", "flip", "crop", "light"))


def _require_images(source: DataSource) -> None:
    """An empty training or validation split is an error that says why and what to do (data/check.py)."""
    for name in empty_splits(source):
        raise DataError(empty_split_reason(source, name))


COUNTS_SHOWN = 40  # classes or labels named in the log's per-split count line; data_report.json has them all


def counts_text(counts: dict[str, int], shown: int = COUNTS_SHOWN) -> str:
    """'cat=12, dog=9' for the first ``shown`` classes and a count of the rest: the line stays short with thousands of
    labels (1,837 labels made a 230 KB training log, issue 27)."""
    text = ", ".join(f"{c}={n}" for c, n in list(counts.items())[:shown])
    return text + (f", ... (+{len(counts) - shown} more in data_report.json)" if len(counts) > shown else "")


def _log_report(cfg: TrainConfig, source: DataSource, decoded: dict[str, DecodedSplit], report: dict,
                run_dir: Path) -> None:
    """Counts per split and class; unreadable files and warnings named; an unusable split is an error."""
    for name, split in decoded.items():
        logger.info(f"  {name}: {len(split)} images; per class: {counts_text(report['counts'][name])}")
        if len(split) == 0:
            first = split.skipped[0] if split.skipped else None
            raise DataError(f"none of the {len(source.splits[name])} images of the {name} split could be read"
                            + (f" (first: {first['path']}: {first['reason']})" if first else ""))
    skipped = report["skipped"]
    if skipped:
        logger.warning(f"skipped {len(skipped)} unreadable image(s), listed in {run_dir / 'data_report.json'} "
                       f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
        if cfg.strict:
            raise DataError(f"--strict: {len(skipped)} unreadable image(s), first {skipped[0]['path']}: "
                            f"{skipped[0]['reason']} (all listed in {run_dir / 'data_report.json'})")
    for problem in report["problems"]:
        if problem["severity"] == "warning":
            reason = problem["reason"]
            chosen = (cfg.chosen or {}).get("balance")
            if reason.startswith("class imbalance") and cfg.balance != "none":  # not advice for what is done
                reason = reason.split("; consider")[0] + f"; balanced with --balance {cfg.balance}"
            elif reason.startswith("class imbalance") and chosen:  # auto's own choice, and why
                reason = reason.split("; consider")[0] + f"; auto chose --balance none ({chosen['why']})"
            logger.warning(f"{problem['path'] + ': ' if problem['path'] else ''}{reason}")


def _log_data_path(cfg: TrainConfig, train: DecodedSplit, side: int, split: SplitData) -> None:
    if train.images is None and split.shards is not None:
        workers, at_random = cfg.workers or default_workers(), read_at_random(split, cfg.balance == "sampler")
        how = (f"record by record at random, each read by its offset ({at_random})" if at_random else
               "in sequence: each process reads its own shards, each of its DataLoader workers its own of those, "
               f"front to back, through a shuffle buffer of {SHUFFLE_BUFFER} records")
        logger.info(f"data path: streamed from {len(split.shards)} tar shard(s) {how}; decoded by {workers} DataLoader "
                    f"worker{'s' if workers > 1 else ''}; validation decoded once; batches augmented on the device")
    elif train.images is None:
        size, workers = decoded_bytes(len(train), side), cfg.workers or default_workers()
        size_text = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        logger.info(f"data path: streamed: the training split ({size_text} decoded; --loader {cfg.loader}) is "
                    f"decoded per batch from its files by {workers} DataLoader worker{'s' if workers > 1 else ''} "
                    "(torchvision.io or PIL, whichever is faster for the file); validation decoded once; batches "
                    "augmented on the device")
    else:
        shape = "x".join(map(str, train.images.shape[1:]))
        logger.info(f"data path: decoded once into memory ({train.images.numel() / 2**20:.0f} MiB uint8, "
                    + ("whole images letterboxed in " if train.content is not None else "") + f"{shape} per image"
                    + (f", cache {train.cache_file}" if train.cache_file else "")
                    + "); batches augmented on the device")


def training_batches(data: PreparedData, cfg: TrainConfig, device: torch.device, *, drop_last: bool,
                     sample_weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1) -> Batches:
    """The training split's shuffled, augmented batches: slices of the decoded array, or streamed from files."""
    augment = (BatchAugment(cfg.aug, data.img_size, hflip=cfg.hflip, erase=cfg.erase, crop=data.crop, vflip=cfg.vflip)
               if cfg.aug != "none" or cfg.erase or data.layout == "whole" else None)
    order = Order(shuffle=True, seed=cfg.seed, drop_last=drop_last, sample_weights=sample_weights, rank=rank,
                  world_size=world_size)
    options = {"batch_size": cfg.batch_size, "device": device, "mean": data.mean, "std": data.std, "order": order,
               "augment": augment, "channels_last": True}
    if data.train.images is None:
        split = data.source.splits["train"]
        sequential = split.shards is not None and read_at_random(split, sample_weights is not None) is None
        kind = ShardStreamBatches if sequential else StreamBatches
        return kind(split, data.img_size, workers=cfg.workers or default_workers(), strict=cfg.strict,
                    layout=data.layout, **options)
    return Batches(data.train.images, data.train.labels, content=data.train.content, **options)


def validation_batches(data: PreparedData, cfg: TrainConfig, device: torch.device, info: DistInfo) -> Batches:
    """The validation split in order, each rank its shard; twice the training batch (no gradients kept)."""
    return Batches(data.val.images, data.val.labels, batch_size=max(256, cfg.batch_size * 2), device=device,
                   mean=data.mean, std=data.std, channels_last=True,
                   order=Order(rank=info.rank, world_size=info.world_size))


def report_streamed_skips(run_dir: Path, skipped: list[dict]) -> None:
    """Streamed files are only read during training: their failures join data_report.json afterwards."""
    report_file = run_dir / "data_report.json"
    try:
        report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
        report["skipped"] = report.get("skipped", []) + [dict(item, split="train") for item in skipped]
        write_json(report_file, report)
    except (OSError, ValueError) as err:
        logger.warning(f"could not update {report_file}: {err}")
    logger.warning(f"skipped {len(skipped)} unreadable training image(s) while streaming, listed in {report_file} "
                   f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
