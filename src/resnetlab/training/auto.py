"""--recipe auto (the CLI's default): settings chosen from the data and the time the run is given.

From the training split's statistics (images, classes and their imbalance, median image side, grey or colour),
the device's measured training speed and the budget (--time-limit; 15 minutes on a CPU when none is given, none
on a GPU), ``choose`` picks the image size, stem, width, epochs, batch size, optimizer and learning rate,
augmentation, label smoothing, EMA, class balancing, normalisation and the metric that picks best.pt. A setting
the user gave (flag, YAML, or a keyword of ``resnetlab.train``) is never changed. Each choice is logged with its
reason and saved in config.yaml (``chosen``) and the report.

Where the rules come from (benchmarks/README.md): the fast/accurate presets' measurements on 28-32 px sets (a
half-width ResNet-18 with the small stem, flips and padded crops, EMA 0.999, random erasing for long
schedules; their SGD 0.1 one-cycle lost every small-picture race to AdamW 2e-3, which auto now uses); issue 17's
measurement on ~2,000 grey 200-400 px images (160 px, AdamW one-cycle, flips, label smoothing and 20 epochs beat
224 px for 10 epochs by 10 points in the same time: on a CPU, epochs matter more than pixels);
benchmarks/defaults.py checks the whole on seven data sets.

    chosen = choose(stats, budget_s=900, speed=probe, pretrained=False)   # {setting: (value, reason)}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..config import TrainConfig, parse_duration
from ..data.images import SMALL_SIZE, header_source
from ..data.splits import DataSource
from ..device import amp_dtype_for, autocast
from ..log import logger
from ..models import ModelSpec, build_model, first_stage_side

CPU_BUDGET_S = 15 * 60  # the budget on a CPU when none is given
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
TRAIN_SHARE = 0.8  # of the budget, for the training epochs
IMBALANCE = 3.0  # largest / smallest class above which classes are balanced and best.pt is picked by macro F1
LADDER_SIZES = (224, 192, 160, 128, 112, 96, 80, 64)  # photo-sized inputs with ImageNet weights
# from scratch: the plain script's full-width ResNet-18 at <= 160 px learnt issue 25's real set (and the grey defects
# set in 3 epochs) where half width at 128 px with 5x the epochs did not: width first, then pixels, then epochs
SCRATCH_SIZES = (160, 128, 112, 96, 80, 64)
SCRATCH_FIT_EPOCHS = 8  # a full-width rung is kept while this many epochs fit (the plain script fitted 5-9)
WHOLE_VIEW_MIN_SIZE = 128  # grey photo-sized images are not trained below this (1-3 px marks of 300 px vanish)
Speed = Callable[[int, str, float, int], float]  # (img_size, stem, width, batch) -> training images per second


@dataclass
class DataStats:
    images: int  # training images
    counts: list[int]  # per class
    side: int  # median shorter side of a sample of the training images (a built-in's native side)
    grey: bool  # every sampled image is grey

    @property
    def imbalance(self) -> float:
        return max(self.counts) / max(1, min(self.counts))


def data_stats(source: DataSource, sample: int = 200) -> DataStats:
    """The training split's statistics; image sides and modes from the headers of an even sample."""
    split = source.splits["train"]
    labels = np.asarray(split.labels, dtype=np.int64)
    counts = (labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(source.classes))).tolist()
    if split.images is not None:  # a built-in: N x H x W (grey) or N x H x W x C
        grey = split.images.ndim == 3 or split.images.shape[-1] == 1
        return DataStats(len(split), counts, int(source.native_size or split.images.shape[1]), grey)
    sides, modes = [], set()
    for path in split.paths[:: max(1, len(split.paths) // sample)][:sample]:
        try:
            with Image.open(header_source(path)) as image:
                sides.append(min(image.size))
                modes.add(image.mode)
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the decode, not here
            continue
    side = int(np.median(sides)) if sides else 224
    return DataStats(len(split), counts, side, bool(modes) and modes <= GREY_MODES)


def target_epochs(images: int) -> int:
    """Epochs a from-scratch run wants: many for small sets, few for large ones (60k: 5, the fast preset's
    measured knee; 2k: 28, near the 20+ of the issue's notebook; 1k: 40)."""
    return int(min(40, max(5, round(40 / math.sqrt(max(images, 1) / 1000)))))


def whole_view(stats: DataStats, pretrained: bool, fixed: dict | None = None) -> bool:
    """Whether photo-sized images trained from scratch, grey or colour, get the whole-picture view (``_view``):
    not when the user chose the centre crop, or gave only a crop fraction (a centre-crop setting)."""
    fixed = fixed or {}
    mode = fixed.get("crop_mode")
    return (not pretrained and stats.side > SMALL_SIZE and mode in (None, "squash")
            and (mode == "squash" or "crop_pct" not in fixed))


def candidates(stats: DataStats, pretrained: bool, whole: bool = False) -> list[tuple[int, str, float]]:
    """(img_size, stem, width) in order of preference, most accurate (and costly) first; ``whole``: the
    whole-picture view's size floor."""
    side = max(16, stats.side) if stats.side <= SMALL_SIZE else int(min(224, round(stats.side / 8) * 8))
    if side <= SMALL_SIZE:
        ladder = [(side, "small", 1.0), (side, "small", 0.5), (side, "small", 0.25), (side, "standard", 1.0),
                  (side, "standard", 0.5)]
    else:
        sizes = [s for s in (LADDER_SIZES if pretrained else SCRATCH_SIZES) if s <= side] or [side]
        if whole:  # the whole-picture view (_view): a small mark needs pixels, the epochs wait
            sizes = [s for s in sizes if s >= min(WHOLE_VIEW_MIN_SIZE, side)] or sizes[:1]
        ladder = [(s, "standard", 1.0) for s in sizes] + [(s, "standard", 0.5) for s in sizes if s <= 128]
        if side < sizes[0]:
            ladder.insert(0, (side, "standard", 1.0))
    if pretrained:  # ImageNet weights fix the width and the stem
        ladder = [entry for entry in ladder if entry[1:] == ("standard", 1.0)] or [(side, "standard", 1.0)]
    return ladder


def relative_cost(size: int, stem: str, width: float) -> float:
    """Training seconds per image of a rung relative to others: pixels x width^1.5 (half width ran ~2.8x faster,
    not 4x: the memory-bound layers shrink less than the FLOPs) x 16 for the small stem (no stride-4 entry)."""
    return size * size * width ** 1.5 * (16.0 if stem == "small" else 1.0)


def _fit_ladder(ladder: list[tuple[int, str, float]], speed: Speed, batch: int, per_image_s: float
                ) -> tuple[tuple[int, str, float], float]:
    """The first rung that trains at least 1 / ``per_image_s`` images per second, and its measured speed.

    The cheapest rung is measured first (a second or two even on a busy CPU) and scaled to the others by
    ``relative_cost``; the rung that estimate picks is then measured, and while the rung above it would fit once
    the estimate is corrected by that measurement, it is measured too (four measurements at most). Small rungs
    carry more fixed cost per pixel, so the scaled estimates of larger rungs err on the slow side."""
    need = 1.0 / max(per_image_s, 1e-9)
    last = len(ladder) - 1
    base = speed(*ladder[last], batch)
    estimate = [base * relative_cost(*ladder[last]) / relative_cost(*entry) for entry in ladder]
    index = next((i for i, value in enumerate(estimate) if value >= need), last)
    measured = base if index == last else speed(*ladder[index], batch)
    for _ in range(2):
        if index == 0 or measured * estimate[index - 1] / max(estimate[index], 1e-9) < need:
            break
        above = speed(*ladder[index - 1], batch)
        if above < need:
            break
        index, measured = index - 1, above
    return ladder[index], measured


def choose(stats: DataStats, *, budget_s: float | None, speed: Speed, pretrained: bool, fixed: dict | None = None
           ) -> dict[str, tuple]:
    """Every auto setting as {name: (value, reason)}; ``speed`` measures (or, in tests, scripts) throughput.

    The first rung of ``candidates`` that fits the wanted epochs in 80 % of the budget (the rest goes to decoding,
    validation and the final evaluation) wins, the cheapest when none does (``_fit_ladder``); without a budget,
    the first rung and the wanted epochs. ``fixed``: the settings the user gave (img_size, stem, width,
    batch_size, epochs, opt, lr): the ladder keeps only rungs that agree with them, and what depends on them
    (the learning rate on the optimizer) follows them."""
    n, chosen, fixed = stats.images, {}, fixed or {}
    batch = fixed.get("batch_size") or (128 if n >= 20_000 else 64 if n >= 2_000 else 32)
    chosen["batch_size"] = (batch, f"{n} training images: {max(1, n // batch)} steps per epoch")
    want = int(fixed.get("epochs") or target_epochs(n))
    ladder = _agreeing(candidates(stats, pretrained, whole_view(stats, pretrained, fixed)), fixed)
    pick, epochs, measured = ladder[0], want, 0.0
    if budget_s:
        fit = min(want, SCRATCH_FIT_EPOCHS) if stats.side > SMALL_SIZE and not pretrained else want
        pick, measured = _fit_ladder(ladder, speed, batch, TRAIN_SHARE * budget_s * 1.0 / (n * fit))
        epochs = int(max(1, min(TRAIN_SHARE * budget_s * measured / n, 3 * want)))
    size, stem, width = pick
    why = (f"{measured:.0f} img/s measured: {epochs} epochs of {n} images fit in {budget_s:.0f}s (wanted {want})"
           if budget_s else f"{want} epochs for {n} images")
    chosen["img_size"] = (size, f"median image side {stats.side}px; {why}")
    chosen["stem"] = (stem, "small stem for <= 64 px (keeps detail)" if stem == "small" else "ImageNet stem")
    chosen["width"] = (width, "full width" if width == 1.0 else f"{width}x width: the full network fits too few "
                                                                "epochs in the budget")
    chosen["epochs"] = (epochs, why)
    if budget_s and "epochs" not in fixed:
        chosen["fill_time"] = (True, "re-planned after each epoch to use the whole budget")
    chosen.update(_optimisation(stats, epochs, batch, pretrained, fixed))
    return chosen


def _agreeing(ladder: list[tuple[int, str, float]], fixed: dict) -> list[tuple[int, str, float]]:
    """The rungs with the given image size, stem and width put in (duplicates dropped, order kept)."""
    out: list[tuple[int, str, float]] = []
    for size, stem, width in ladder:
        size = int(fixed.get("img_size") or size)
        given_stem = fixed.get("stem")
        if given_stem in ("small", "standard"):
            stem = given_stem
        elif given_stem == "auto" or "img_size" in fixed:  # the stem --stem auto gives the size in use
            stem = "small" if size <= SMALL_SIZE else "standard"
        entry = (size, stem, float(fixed.get("width") or width))
        if entry not in out:
            out.append(entry)
    return out


def _optimisation(stats: DataStats, epochs: int, batch: int, pretrained: bool, fixed: dict) -> dict[str, tuple]:
    """Optimizer, learning rate and weight decay as one group (a given --opt gets its own learning rate; a given
    --lr alone keeps the default optimizer, SGD), then augmentation, averaging, balance, metric, normalisation.
    AdamW 2e-3 from scratch (the races' winner on small pictures, issue 17's on photos), 5e-4 fine-tuning. The
    small-image augmentation (padded crops) is for data whose images are small; photos trained at a small
    size keep AdamW and photo augmentation (benchmarks/defaults.py: SGD 0.1 with a 15:1 class-weighted loss on
    64 px views of 244 px grey images collapsed to the rarest class)."""
    chosen: dict[str, tuple] = {}
    small = stats.side <= SMALL_SIZE
    if "lr" in fixed and "opt" not in fixed:
        opt, why = "sgd", "--lr was given: the default optimizer it is meant for"
    elif "opt" in fixed:
        opt, why = fixed["opt"], "given"
    else:  # small pictures too: SGD 0.1 (the presets') lost every small-picture race by 6-12 points
        opt, why = "adamw", ("AdamW one-cycle: beat SGD 0.1 in the races on all three small-picture sets (session 19)"
                             if small and not pretrained else
                             "AdamW one-cycle: robust from scratch on photos (issue 17's measurement)")
    chosen["opt"] = (opt, why)
    if opt == "sgd":
        chosen["lr"] = (0.01 if pretrained else 0.1, "SGD one-cycle" + (", fine-tuning" if pretrained else ""))
        chosen["weight_decay"] = (5e-4, "SGD's usual coupled decay")
    else:
        chosen["lr"] = (5e-4 if pretrained else 2e-3, f"{opt}, " + ("fine-tuning ImageNet weights" if pretrained
                                                                     else "from scratch"))
        chosen["weight_decay"] = (0.05 if opt == "adamw" else 0.0, "decoupled decay" if opt == "adamw" else
                                  "Adam's decay acts on the gradient: off")
    chosen["sched"] = ("onecycle", "one-cycle: best in short, time-limited runs")
    if stats.side > SMALL_SIZE and not pretrained:
        chosen["warmup_epochs"] = (round(0.3 * epochs, 2), "30 % of the run (one-cycle's usual rise): a 0.4-epoch "
                                   "rise kept a from-scratch ResNet-18 at the majority class where 1.2 epochs learnt "
                                   "86 % in 4 epochs (benchmarks/README.md, Defaults, session 16)")
    else:
        chosen["warmup_epochs"] = (round(min(2.0, max(0.3, 0.1 * epochs)), 2), "a tenth of the run, 0.3-2 epochs")
    whole = whole_view(stats, pretrained, fixed)
    chosen.update(_view(stats, epochs, whole, "crop_pct" in fixed))
    long_run = epochs * max(1, stats.images // batch) >= 3000
    chosen["erase"] = ((0.0, "whole-picture view: erasing would hide the mark that makes the label")
                       if whole else
                       (0.25, "random erasing: regularises long runs") if epochs >= 10 and not pretrained
                       else (0.0, "short run: no random erasing"))
    chosen["label_smoothing"] = (0.1, "every preset's value")
    chosen["ema"] = ((0.999, ">= 3000 optimizer steps") if long_run else (0.0, "too few steps for an average"))
    imbalanced = stats.imbalance > IMBALANCE
    photo = stats.side > SMALL_SIZE and not pretrained
    chosen["balance"] = (("none", f"classes {stats.imbalance:.0f}:1 imbalanced, but photo-sized from scratch: the "
                          "plain unweighted loss (weights sent issue 25's majority-class images to the rarest class; "
                          "the race tries them)") if imbalanced and photo else
                         ("sqrt", f"classes {stats.imbalance:.0f}:1 imbalanced: loss weights 1/sqrt(frequency) "
                          "(full 1/frequency weights collapse short runs onto the rarest class)")
                         if imbalanced else ("none", f"classes within {IMBALANCE:g}:1"))
    chosen["best_metric"] = (("macro_f1", "imbalanced: best.pt by macro F1, not accuracy") if imbalanced
                             else ("val_acc", "balanced classes"))
    chosen["norm"] = (("imagenet", "pretrained weights expect ImageNet statistics") if pretrained
                      else ("dataset", "grey images: the training split's own statistics") if stats.grey
                      else ("imagenet", "colour images"))
    return chosen


def _view(stats: DataStats, epochs: int, whole: bool, pct_given: bool) -> dict[str, tuple]:
    """What the network sees of each image: augmentation, and for photo-sized images trained from scratch
    (surfaces, scans, X-rays, photos of any aspect ratio: what makes the label can be small and anywhere) the whole
    picture squashed to a square (timm's crop_mode squash, no crop) with horizontal and vertical flips only
    (random-resized crops cut small marks out of most views; shifts, rotations and average + max pooling learnt
    slower: the race tries them). Measured in benchmarks/README.md ("Defaults": the grey defects set;
    colour-200-400, session 21: a centre crop scored 21 %, random-resized crops with colour jitter 25 %, the whole
    picture with horizontal flips 25 % and with both flips 53 %)."""
    if stats.side <= SMALL_SIZE:
        return {"aug": ("crop", "flips and padded crops (small images: rotation slows short schedules)")}
    if whole:
        why = "photo-sized, from scratch: the whole field of view matters"
        view = {"crop_mode": ("squash", f"{why}: all of each picture, edges included, resized to a square")}
        if not pct_given:
            view["crop_pct"] = (1.0, f"{why}: no crop")
        view["aug"] = ("flip", "flips of the whole picture, as the plain script: shifts, rotations and "
                               "random-resized crops learnt nothing in 4 epochs where flips learnt 86 % (the race "
                               "tries shifts and max pooling)")
        view["vflip"] = (True, "vertical flips too, as the plain script: its recipe learnt 600 colour pictures "
                               "(colour-200-400) where auto's horizontal flips alone stayed at chance (session 21); "
                               "a race slice is too short to tell flips apart")
        return view
    return {"aug": ("standard", "random-resized crops of the whole picture + colour") if epochs >= 15 else
            ("light", "flips, shifts, small rotations: too few epochs for random-resized crops")}


MEASURE_PIXELS = 64 * 32 * 32  # pixels per measured batch: 64 images of 32 px, 16 from 64 px up


def measured_batch(batch: int, size: int) -> int:
    """The batch a speed measurement times: the real one on small pictures (at batch 16 a 28 px step is mostly fixed
    cost: Fashion-MNIST measured 231 img/s where its training ran 465, and the ladder fell from the small stem to
    the ImageNet one), 16 from 64 px up, where a step is compute and the real batch would take seconds per rung."""
    return min(batch, max(16, round(MEASURE_PIXELS / (size * size))))


def measure_speed(arch: str, classes: int, device: torch.device, amp: str) -> Speed:
    """A ``Speed`` that times a few real training steps (forward, backward, SGD step) on random images."""

    def speed(size: int, stem: str, width: float, batch: int) -> float:
        spec = ModelSpec(arch, classes, stem=stem, width=width)
        model = build_model(spec).to(device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        dtype = amp_dtype_for(amp, device, first_stage_side(spec, size))
        batch = measured_batch(batch, size)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (batch,), device=device)
        timings = []
        for _ in range(3):  # the first step warms up (kernel choice, allocations)
            started = time.perf_counter()
            with autocast(device, dtype):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(time.perf_counter() - started)
        return batch / min(timings[1:])

    return speed


def apply_auto(cfg: TrainConfig, source: DataSource, device: torch.device, *, speed: Speed | None = None,
               clock: Callable[[], float] = time.perf_counter, timed: bool = True) -> TrainConfig:
    """``cfg`` with every auto setting the user did not give; the choices and reasons are logged and kept in
    ``cfg.chosen``. The budget: --time-limit, else 15 minutes on a CPU unless --epochs was given, else none; the
    seconds spent measuring come out of it. ``timed=False`` (lr-find): no budget, nothing measured."""
    started = clock()
    given = set(cfg.given or [])
    if not timed:
        budget = None
    elif cfg.time_limit is not None:
        budget: float | None = parse_duration(cfg.time_limit)
    elif device.type == "cpu" and "epochs" not in given:
        budget = float(CPU_BUDGET_S)
    else:
        budget = None
    stats = data_stats(source)
    logger.info(f"auto: {stats.images} training images, {len(stats.counts)} classes (largest/smallest "
                f"{stats.imbalance:.1f}), median side {stats.side}px, {'grey' if stats.grey else 'colour'}; budget "
                + (f"{budget:.0f}s" if budget else "none"))
    pretrained = bool(cfg.pretrained)
    fixed = {name: getattr(cfg, name) for name in ("img_size", "stem", "width", "batch_size", "epochs", "opt", "lr",
                                                   "crop_mode", "crop_pct") if name in given}
    options = choose(stats, budget_s=budget, speed=speed or measure_speed(cfg.model, len(stats.counts), device,
                                                                           cfg.amp), pretrained=pretrained,
                     fixed=fixed)
    if getattr(source, "task", "multiclass") == "multilabel":
        options.pop("best_metric")  # multi-label runs pick best.pt by mAP (multilabel/training.py)
    values, chosen = {}, {}
    for name, (value, reason) in options.items():
        if name in given:
            logger.info(f"auto: {name} = {getattr(cfg, name)} (given)")
            continue
        values[name], chosen[name] = value, {"value": value, "why": reason}
        logger.info(f"auto: {name} = {value} ({reason})")
    if budget:  # the limit is the run's whole wall time: measuring counts too
        spent = clock() - started
        values["time_limit"] = f"{max(1.0, budget - spent):.0f}s"
        chosen["time_limit"] = {"value": values["time_limit"], "why": f"{budget:.0f}s less the {spent:.0f}s measuring"}
        logger.info(f"auto: time_limit = {values['time_limit']} ({chosen['time_limit']['why']})")
    return TrainConfig.from_dict({**cfg.to_dict(), **values, "chosen": chosen})
