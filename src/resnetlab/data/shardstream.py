"""Stream the training split from its tar shards in sequence, as WebDataset pipelines do: no file list to seek in.

Each epoch permutes the shard list (seed, epoch); each process takes its share (split by rank), each of its
DataLoader workers a share of that (split by worker), and reads its shards front to back (at the offsets their tar
headers gave) through ``webdataset``'s shuffle buffer. The shards left over when they do not divide among the
readers (fewer than the readers) are read by every reader, each keeping every n-th record, so that equal shards
give equal readers.
Records are decoded in the workers and augmented as batches on the device exactly as the folder path's are.

An epoch is ``steps_per_epoch`` batches on every process (equal steps keep data-parallel ranks in step); a reader
whose shards run out before its share of the steps starts them over, re-shuffled. Worker ``w`` makes the batches of
steps ``w, w + W, w + 2W, ...`` and the DataLoader hands them out in that order, so the stream is a function of
(seed, epoch, number of processes, workers, batch size). Resume is exact to the step when those are the same:
each reader reads past the records of the steps already done without decoding them.

    batches = ShardStreamBatches(split, 224, workers=8, batch_size=128, device=device, mean=m, std=s,
                                 order=Order(shuffle=True, seed=0, drop_last=True), augment=augment)
    for x, y, index in batches.epoch(3, start_step=40): ...
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from ..log import logger
from .loaders import _generator
from .splits import SplitData
from .stream import StreamBatches, collate, decode_record
from .tarmembers import member_offsets, member_path

SHUFFLE_BUFFER = 1000  # records each reader holds to shuffle (encoded bytes); webdataset's own default size
MIXED_MIN_RECORDS = 20  # shards smaller than this say little about how they mix the classes


@dataclass(frozen=True)
class Part:
    """What one reader reads in an epoch: ``whole`` shards, all their records, then ``striped`` shards, only the
    records whose split position is ``which`` modulo ``every`` (the shards that do not divide among the readers)."""

    whole: tuple[str, ...]
    striped: tuple[str, ...] = ()
    every: int = 1
    which: int = 0


def stream_parts(shards: list[str], *, seed: int, epoch: int, rank: int, world_size: int, workers: int
                 ) -> list[Part]:
    """Each of this process's ``workers`` readers' Part for ``epoch``: the shard list permuted by (seed, epoch); as
    many whole shards as divide evenly among all readers, split by rank, then by worker; the rest (fewer than the
    readers) read by every reader, each keeping its own records. Disjoint across all readers of all processes, and
    equal in records when the shards are."""
    order = torch.randperm(len(shards), generator=_generator(torch.device("cpu"), seed, epoch, -2)).tolist()
    permuted = [shards[i] for i in order]
    readers = world_size * workers
    whole, striped = permuted[:len(permuted) - len(permuted) % readers], tuple(permuted[len(permuted) - len(
        permuted) % readers:])
    mine = whole[rank::world_size]
    return [Part(tuple(mine[w::workers]), striped, readers if striped else 1, rank * workers + w)
            for w in range(workers)]


class ShardRecords(IterableDataset):
    """One process's batches of one epoch, made by its DataLoader workers (or in-process without workers)."""

    def __init__(self, batches: ShardStreamBatches, epoch: int, start_step: int):
        self.records, self.size, self.layout = batches.records, batches.size, batches.layout
        self.batch_size, self.seed, self.epoch, self.rank = batches.batch_size, batches.seed, epoch, batches.rank
        self.readers, self.start_step, self.steps = batches.reader_count, start_step, batches.steps_per_epoch()
        self.buffer = batches.buffer
        self.parts = stream_parts(sorted(batches.records), seed=batches.seed, epoch=epoch, rank=batches.rank,
                                  world_size=batches.world_size, workers=self.readers)

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        # the DataLoader asks worker 0 first: on resume it plays the reader whose step comes next
        reader = ((info.id if info is not None else 0) + self.start_step) % self.readers
        done = len(range(reader, self.start_step, self.readers))  # this reader's batches before start_step
        mine = len(range(reader, self.steps, self.readers)) - done
        records = self._records(self.parts[reader], reader)
        try:
            for _ in range(done * self.batch_size):  # read past, undecoded
                next(records)
            for _ in range(mine):
                batch = [next(records) for _ in range(self.batch_size)]
                yield collate([(position, *decode_record(path, self.size, self.layout, data))
                               for position, path, data in batch])
        finally:
            records.close()  # and with it the shard being read

    def _records(self, part: Part, reader: int) -> Iterator[tuple[int, str, bytes]]:
        """(split position, member path, image bytes) of the part's records, shuffled through the buffer, for ever:
        each pass over the part re-shuffled."""
        import webdataset as wds

        for repeat in range(1 << 62):
            rng = random.Random(hash((self.seed, self.epoch, self.rank, reader, repeat)))
            shards = [*part.whole, *part.striped]
            if repeat:
                rng.shuffle(shards)
            count = 0
            for record in wds.shuffle(self.buffer, initial=min(100, self.buffer), rng=rng)(self._read(shards, part)):
                count += 1
                yield record
            if not count:
                raise DataError(f"no readable records in the shards {', '.join(shards[:3])}"
                                f"{', ...' if len(shards) > 3 else ''} (reader {reader} of process {self.rank})")

    def _read(self, shards: list[str], part: Part) -> Iterator[tuple[int, str, bytes]]:
        """The part's records in these shards' order, each shard read front to back at the offsets its tar headers
        gave (tarmembers.py). Hand-written rather than webdataset's tar iterator, which parses every header again
        as it reads: 133 us a record against 24 us here, on 9,000 records of 32 px JPEGs (2.5x their decoding),
        which made the stream 0.74-0.78x the folder path's images/s (benchmarks/README.md, Scale; shard_read.py)."""
        for url in shards:
            every = part.every if url in part.striped else 1
            try:
                with open(url, "rb") as stream:
                    for position, member, offset, size in self.records[url]:
                        if position % every != part.which % every:
                            continue  # another reader's
                        stream.seek(offset)
                        data = stream.read(size)
                        if len(data) < size:
                            break  # cut off since it was indexed: the rest of the shard is left out
                        yield position, member_path(url, member), data
            except OSError:
                continue  # a shard that went away since it was indexed: its records are left out of this pass


def unmixed(split: SplitData) -> str | None:
    """Why the split's shards cannot be read in sequence (they hold one class each, mostly, as shards written class
    by class do: a shuffle buffer of a few shards' records would then make batches of one or two classes), or None.
    """
    labels = np.asarray(split.labels)
    if split.shards is None or labels.ndim != 1 or not len(labels):
        return None
    overall = np.bincount(labels).max() / len(labels)
    shares = [np.bincount(labels[p]).max() / len(p) for p in split.shards.values() if len(p) >= MIXED_MIN_RECORDS]
    if not shares:
        return None
    typical = float(np.median(shares))
    if typical <= overall + 0.5 * (1 - overall):
        return None
    return (f"the training shards hold sorted classes (the median shard's most common class is {typical:.0%} of it, "
            f"against {overall:.0%} of the split)")


def read_at_random(split: SplitData, sampler: bool) -> str | None:
    """Why a shard-backed training split is read record by record at random (by offset) rather than in sequence,
    or None to read it in sequence; ``sampler``: --balance sampler's draws with replacement."""
    if sampler:
        return "--balance sampler draws with replacement"
    sorted_classes = unmixed(split)
    return (f"{sorted_classes}, so batches read in sequence would hold one or two classes; resnetlab shards writes "
            "them mixed" if sorted_classes else None)


class ShardStreamBatches(StreamBatches):
    """A shard-backed training split's shuffled batches, streamed shard by shard (same interface as Batches)."""

    def __init__(self, split: SplitData, size: int, *, workers: int, batch_size: int, device: torch.device,
                 mean, std, strict: bool = False, layout: str = "square", buffer: int = SHUFFLE_BUFFER, **options):
        super().__init__(split, size, workers=workers, batch_size=batch_size, device=device, mean=mean, std=std,
                         strict=strict, layout=layout, **options)
        if split.shards is None or self.sample_weights is not None:
            raise ValueError("streaming from shards needs a shard-backed split and plain shuffling")
        self.size, self.layout, self.buffer = size, layout, buffer
        self.records: dict[str, list[tuple]] = {}  # shard -> (split position, member, data offset, bytes), in order
        for url, positions in split.shards.items():
            if positions:  # a shard whose records all went elsewhere (validation), or none could be read: not read
                offsets = member_offsets(url)
                found = [(p, split.paths[p][len(url) + 1:]) for p in positions]  # path: url#member
                self.records[url] = sorted(((p, m, *offsets[m]) for p, m in found if m in offsets),
                                           key=lambda record: record[2])
        # at most one reader per step: a reader without a batch of its own would leave its records unread
        self.reader_count = max(1, min(max(1, workers), self.steps_per_epoch()))
        readers = self.world_size * self.reader_count
        if len(self.records) % readers:
            logger.info(f"data path: {len(self.records)} training shard(s) for {readers} readers: "
                        f"{len(self.records) % readers} of them read by every reader, each keeping its own records "
                        f"(a multiple of {readers} shards splits whole: resnetlab shards --shard-size)")

    @property
    def readers(self) -> str:
        """What fixes the stream's order (resume is exact when it is the same)."""
        workers = self.reader_count
        return (f"{self.world_size} process{'es' if self.world_size > 1 else ''} x {workers} reader"
                f"{'s' if workers > 1 else ''}, batch {self.batch_size}")

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if start_step >= self.steps_per_epoch():
            return
        loader = DataLoader(ShardRecords(self, epoch, start_step), batch_size=None,
                            num_workers=self.reader_count if self.workers else 0,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None)
        for step, (x, y, index, content) in enumerate(self._received(loader), start=start_step):
            yield self._finish(x, epoch, step, content), y, index

    def in_order(self, augment, batch_size: int, *, seed: int) -> StreamBatches:
        """One pass in the split's order reads the records by offset (tarmembers.py), as a folder's files are read."""
        ordered = StreamBatches(self.split, self.size, workers=self.workers, batch_size=batch_size,
                                device=self.device, mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist(),
                                strict=self.strict, layout=self.layout, augment=augment,
                                channels_last=self.channels_last)
        ordered.seed = seed
        return ordered

