"""Epochs of ready-to-use batches: shuffled, sharded per process, augmented and normalised on device.

Randomness is derived from (seed, epoch, step) alone, so an epoch can be replayed from any step:
that is what makes resume exact and keeps data-parallel ranks on disjoint shards.

    batches = Batches(decoded.images, decoded.labels, batch_size=128, device=device, mean=m, std=s,
                      order=Order(shuffle=True, seed=0), augment=BatchAugment("light", 32))
    for step, (x, y, index) in enumerate(batches.epoch(3)): ...
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .transforms import BatchAugment, normalize, rgb, stats_tensor


def _generator(device: torch.device, *seeds: int) -> torch.Generator:
    g = torch.Generator(device=device)
    # A simple mix of the integers into one 63-bit seed; collisions between (epoch, step) pairs of one run
    # would need ~2^31 epochs.
    mixed = 0x9E3779B97F4A7C15
    for s in seeds:
        mixed = (mixed * 6364136223846793005 + int(s) + 1442695040888963407) % (1 << 63)
    g.manual_seed(mixed)
    return g


@dataclass(frozen=True)
class Order:
    """Which images an epoch visits and in what order: shuffled or not (from ``seed``), class-balanced draws
    (``sample_weights``, with replacement), the last short batch dropped, and this process's shard (``rank`` of
    ``world_size``)."""

    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    sample_weights: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1


class Batches:
    """Batches of one decoded split held as a uint8 tensor (on CPU, or on the GPU when it fits)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device: torch.device,
                 mean, std, order: Order = Order(), augment: BatchAugment | None = None,
                 channels_last: bool = False, content: torch.Tensor | None = None):
        self.device = torch.device(device)
        if self._keep_on_device(images) and self.device.type != "cpu":
            images, labels = images.to(self.device), labels.to(self.device)
        elif self.device.type == "cuda":
            images = images if images.is_pinned() else _try_pin(images)
        self.images, self.labels = images, labels
        self.content = content  # whole images: N x 2 content sizes in their letterboxed squares (cache.py)
        if content is not None and augment is None:
            raise ValueError("whole images (content sizes given) need a BatchAugment to take their crops")
        self.batch_size, self.augment, self.channels_last = batch_size, augment, channels_last
        self.shuffle, self.seed, self.drop_last = order.shuffle, order.seed, order.drop_last
        self.sample_weights, self.rank, self.world_size = order.sample_weights, order.rank, order.world_size
        self.mean, self.std = stats_tensor(mean, self.device), stats_tensor(std, self.device)

    def _keep_on_device(self, images: torch.Tensor) -> bool:
        """The decoded array moves to the GPU when it fits there (file-backed batches keep nothing)."""
        return self.device.type == "cuda" and _fits_on_gpu(images, self.device)

    def _order(self, epoch: int) -> torch.Tensor:
        """This process's image positions for ``epoch``: the same permutation on every rank, then sharded."""
        n = len(self.labels)
        if self.sample_weights is not None:  # class-balanced sampling, with replacement
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=_generator(
                torch.device("cpu"), self.seed, epoch, -1))
        elif self.shuffle:
            order = torch.randperm(n, generator=_generator(torch.device("cpu"), self.seed, epoch, -1))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle or self.sample_weights is not None:  # equal shard sizes keep ranks in step
                order = order[: n - n % self.world_size] if n >= self.world_size else order
            order = order[self.rank::self.world_size]  # evaluation: no padding, so no image counts twice
        return order

    def in_order(self, augment: BatchAugment | None, batch_size: int, *, seed: int) -> Batches:
        """The same images in the split's order, all of them once, each batch augmented by ``augment`` (one pass
        over the data, e.g. to compute features); randomness from (seed, epoch, step) as usual."""
        ordered = copy.copy(self)
        ordered.augment, ordered.batch_size, ordered.seed = augment, batch_size, seed
        ordered.shuffle, ordered.drop_last, ordered.sample_weights = False, False, None
        ordered.rank, ordered.world_size = 0, 1
        return ordered

    def steps_per_epoch(self) -> int:
        n = len(self._order(0))
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields (x: float N x 3 x S x S normalised, y: int64 N, index: positions in the split)."""
        for step, (x, y, index, content) in enumerate(self._uint8_batches(self.step_indices(epoch, start_step)),
                                                      start=start_step):
            yield self._finish(x, epoch, step, content), y, index

    def step_indices(self, epoch: int, start_step: int) -> list[torch.Tensor]:
        order, size = self._order(epoch), self.batch_size
        return [order[step * size:(step + 1) * size] for step in range(start_step, self.steps_per_epoch())]

    def _uint8_batches(self, indices: list[torch.Tensor]) -> Iterator[tuple]:
        """(uint8 images, labels, positions, content sizes or None) on the device for each index batch: here,
        slices of the decoded array."""
        for index in indices:
            device_index = index.to(self.images.device, non_blocking=True)
            x = self.images.index_select(0, device_index).to(self.device, non_blocking=True)
            y = self.labels.index_select(0, device_index).to(self.device, non_blocking=True)
            yield x, y, index, None if self.content is None else self.content[index]

    def _finish(self, x: torch.Tensor, epoch: int, step: int, content: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 batch -> augmented, normalised float batch; randomness from (seed, epoch, step[, rank])."""
        x = x.float().div_(255.0)
        if self.augment is not None:
            # each rank draws its own augmentation; single-process runs keep the (seed, epoch, step) stream
            streams = (self.seed, epoch, step) if self.world_size == 1 else (self.seed, epoch, step, self.rank)
            x = self.augment(x, _generator(self.device, *streams), content)
        x = normalize(rgb(x), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def _fits_on_gpu(images: torch.Tensor, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() < 0.25 * free


def _try_pin(images: torch.Tensor) -> torch.Tensor:
    try:
        return images.pin_memory()
    except RuntimeError:
        return images
