"""Training images/s: (a) the plain recipe, (b) resnetlab, (c) the compute-only ceiling, in one run.

All three train the same model with the same batch size and step count on the same PNG class folders
(Fashion-MNIST, written by the script). (a) ImageFolder + PIL transforms + DataLoader workers + fp32;
(b) resnetlab's own path: decode once (timed separately), batches augmented as tensors, channels_last,
bf16 autocast where the hardware has it; (b2) the same with ``--loader stream`` (files decoded per batch by
DataLoader workers, the path for sets larger than memory); (c) (b)'s step on one batch already in memory, no data path.
A second table compares resnetlab's step in fp32 and bf16 (the precision gain alone).

    python benchmarks/train_throughput.py                       # resnet18, 32 px, standard stem
    python benchmarks/train_throughput.py --stem small --img-size 28
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    fashion_mnist_folders,
    load_average,
    plain_loader,
    plain_train_step,
    print_table,
    seed_everything,
)
from resnetlab.data.cache import decode_split  # noqa: E402
from resnetlab.data.loaders import Batches, Order  # noqa: E402
from resnetlab.data.sources import open_data  # noqa: E402
from resnetlab.data.stream import StreamBatches  # noqa: E402
from resnetlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment  # noqa: E402
from resnetlab.device import amp_dtype_for, resolve_device  # noqa: E402
from resnetlab.engine import Step, train_one_epoch  # noqa: E402
from resnetlab.models import ModelSpec, build_model, first_stage_side  # noqa: E402


def _model(args, device: torch.device, channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    seed_everything(0)
    model = build_model(ModelSpec(args.model, 10, stem=args.stem, width=args.width)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(args, root: Path, device: torch.device):
    """(a) the notebook recipe, data loading included; returns run(steps) -> images/s."""
    model, optimizer = _model(args, device, channels_last=False)
    loader = plain_loader(root / "train", img_size=args.img_size, batch_size=args.batch_size, workers=args.workers)
    batches = iter(itertools.cycle(loader))  # an epoch may be shorter than the steps of all rounds

    def run(count: int) -> float:
        _sync(device)
        started = time.perf_counter()
        for _ in range(count):
            x, y = next(batches)
            plain_train_step(model, optimizer, x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        _sync(device)
        return count * args.batch_size / (time.perf_counter() - started)

    return run


def resnetlab_path(args, root: Path, device: torch.device, dtype: torch.dtype | None):
    """(b) resnetlab's training steps (its real loop and batches); returns (run, decode seconds, decode img/s)."""
    source = open_data(str(root))
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        decoded = decode_split(source.splits["train"], args.img_size, cache_dir=cache, progress=False)
        decode_s = time.perf_counter() - started
    model, optimizer = _model(args, device, channels_last=True)
    batches = Batches(decoded.images, decoded.labels, batch_size=args.batch_size, device=device, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, order=Order(shuffle=True, drop_last=True),
                      augment=BatchAugment("light", args.img_size), channels_last=True)
    stream = (b for epoch in itertools.count() for b in batches.epoch(epoch))
    return _stepper(model, optimizer, lambda count: itertools.islice(stream, count), device, dtype), decode_s, \
        len(decoded) / decode_s


def streamed_path(args, root: Path, device: torch.device, dtype: torch.dtype | None):
    """(b2) resnetlab with --loader stream: each batch decoded from the PNG files by DataLoader workers."""
    source = open_data(str(root))
    model, optimizer = _model(args, device, channels_last=True)
    batches = StreamBatches(source.splits["train"], args.img_size, workers=args.workers, batch_size=args.batch_size,
                            device=device, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            order=Order(shuffle=True, drop_last=True), augment=BatchAugment("light", args.img_size),
                            channels_last=True)
    stream = (b for epoch in itertools.count() for b in batches.epoch(epoch))
    return _stepper(model, optimizer, lambda count: itertools.islice(stream, count), device, dtype)


def ceiling(args, device: torch.device, dtype: torch.dtype | None):
    """(c) resnetlab's step on one batch already on the device: the compute-only upper bound."""
    model, optimizer = _model(args, device, channels_last=True)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    return _stepper(model, optimizer, lambda count: itertools.repeat((x, y, y), count), device, dtype)


def _stepper(model, optimizer, batches, device: torch.device, dtype: torch.dtype | None):
    loss = torch.nn.CrossEntropyLoss()

    def run(count: int) -> float:
        step = Step(loss, device, dtype, steps=count, optimizer=optimizer)
        return train_one_epoch(model, batches(count), step).images_per_second

    return run


def measure(runs: dict, args) -> dict[str, float]:
    """Warm each up, then alternate them in rounds and keep each one's best round: on a shared machine
    another job's burst then slows one round of every configuration, not one configuration."""
    for run in runs.values():
        run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(run(per_round))
    return {name: max(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--stem", default="standard", choices=("standard", "small"))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each path's best counts")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=6000, help="training images written as PNG")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (plain recipe and --loader stream)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST files (default: Debian's location)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    root = fashion_mnist_folders(args.images, data_root=args.data_root)
    # what `--amp auto` picks for this model and image size (bf16 only where it is faster), and the other one
    amp_auto = amp_dtype_for("auto", device, first_stage_side(ModelSpec(args.model, 10, stem=args.stem),
                                                               args.img_size))
    bf16_capable = amp_dtype_for("auto", device) is not None
    name = lambda dtype: "fp32" if dtype is None else str(dtype).removeprefix("torch.")  # noqa: E731
    precision = name(amp_auto)
    print(f"{args.model} width {args.width:g}, {args.stem} stem, {args.img_size} px, batch {args.batch_size}, "
          f"{args.steps} timed steps in {args.rounds} rounds, on {device} ({torch.get_num_threads()} threads); "
          f"resnetlab precision (--amp auto): {precision}; load average before: {load_average()}")

    b_run, decode_s, decode_rate = resnetlab_path(args, root, device, amp_auto)
    runs = {"a": plain(args, root, device), "b": b_run, "b2": streamed_path(args, root, device, amp_auto),
            "c": ceiling(args, device, amp_auto)}
    other = (None if amp_auto is not None else torch.bfloat16) if bf16_capable else None
    if bf16_capable:
        runs["other"] = ceiling(args, device, other)
    rates = measure(runs, args)
    a, b, c = rates["a"], rates["b"], rates["c"]
    print_table(["path", "img/s", "vs plain (x/a)", "vs ceiling (x/c)"], [
        ["(a) plain recipe: ImageFolder + DataLoader, fp32", a, 1.0, a / c],
        [f"(b) resnetlab ({precision})", b, b / a, b / c],
        [f"(b2) resnetlab --loader stream ({args.workers} workers, {precision})", rates["b2"], rates["b2"] / a,
         rates["b2"] / c],
        [f"(c) compute-only ceiling ({precision})", c, c / a, 1.0],
    ])
    print(f"resnetlab's one-time decode: {args.images} PNGs in {decode_s:.1f}s ({decode_rate:.0f} img/s), then "
          "cached on disk; not counted above")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}")
    if bf16_capable:
        fp32, bf16 = (rates["other"], c) if amp_auto is not None else (c, rates["other"])
        print_table(["resnetlab step (compute only)", "img/s", "ratio"], [["fp32", fp32, 1.0], ["bfloat16", bf16,
                                                                                               bf16 / fp32]])
        print(f"bfloat16/fp32 = {bf16 / fp32:.2f} (--amp auto chose {precision})")
    else:
        print("this device has no fast bf16: resnetlab trains in fp32 here (--amp bf16 forces it)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
