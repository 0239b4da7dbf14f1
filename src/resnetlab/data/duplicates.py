"""Near-duplicates across splits: the same picture resized, re-encoded, slightly cropped or turned grey, once in
train and again in val/test, found with perceptual hashes (``imagehash``) and a vectorised Hamming distance.

Only ``resnetlab check`` searches: it reads every file a second time (2-MP JPEGs, decoded at 1/8 scale and hashed:
~10 ms each on one core, against ~30 ms for the decode at 224 px); training's inspection finds byte-identical
copies only, from the digests it computes while decoding.

    problems = near_duplicates(source, max_distance=28, workers=4)
    problems[0]["reason"]   # "near-duplicate of train image a.png (perceptual hash distance 3/128): ..."

The hash is 128 bits: a 64-bit pHash (signs of the low DCT frequencies of a 32x32 grey thumbnail) then a 64-bit
dHash (signs of the horizontal gradients of a 9x8 one). Measured on 103 non-overlapping 96/160 px patches of three
photos (sklearn's china/flower, matplotlib's grace_hopper) and on 300 random-texture images, with their copies:
pHash alone has no gap (a 5 % centre crop reaches 12 of 64 bits, two distinct flat sky patches are 6 apart); with
both, every 5 % centre crop and grey copy is within 19 of 128 bits, 99 % of resized (50 %, 150 %) and 95 % of JPEG
q60 copies within 20 (the misses: near-flat patches, whose hash is noise), and every distinct pair 34 or more
apart. A few pixels cut from one side or a corner move the whole picture: on the 78 96-px patches of those three
photos, 3 px cut from any side are within 21 bits, from a corner within 28 for 99 % (all within 31; issue 27's
report: 23), and distinct patches 36 or more apart. Hence the default of 28 bits, 6 or more under every distinct
pair measured (tests/test_duplicates.py checks both sides of it on those photos). Not found at 28: many 5 % corner
crops (up to 53 bits).

Those photos' distinct pictures are far apart; other data sets' are not. In centred objects on a plain background
(Fashion-MNIST garments resized to 60-260 px, in every image mode), 5 % of the training pictures have a distinct
neighbour within 12 bits and the median is 20: at 28 bits ``check`` listed 757 pairs of different garments as copies.
So the default distance (``"auto"``) is measured on the user's own training split: 6 bits under the distance within
which 5 % of its pictures have a distinct neighbour (the margin the default keeps under the photos' closest pair),
never over 28. On those garments that is 6 bits, where their resized, JPEG q60 and grey copies measured within 6
(5 % crops, up to 23, are then missed: they are as close as distinct garments).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import imagehash
import numpy as np
from PIL import Image
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from ..log import progress_enabled
from ..signals import raise_if_terminated
from .images import open_rgb
from .splits import DataSource, SplitData
from .workers import default_workers, worker_map

HASH_BITS = 128
DEFAULT_DISTANCE = 28  # bits of 128; see the module docstring for the measurements behind it
NEIGHBOUR_SHARE = 0.05  # "auto": the share of training pictures that may have a distinct neighbour this near...
NEIGHBOUR_MARGIN = 6  # ... less this margin (the default's under the photos' closest distinct pair: 34 - 28)
NEIGHBOUR_SAMPLE = 1000  # training pictures whose nearest neighbour is measured (against the whole split)
NEIGHBOUR_MIN_IMAGES = 20  # fewer training pictures say nothing about the data: the default stands
MAX_LISTED_PAIRS = 1000  # the closest pairs are listed; the rest only counted
POOL_MIN_IMAGES = 64  # fewer images are hashed in this process: starting workers costs more
DRAFT_SIZE = 128  # JPEGs decode at 1/2-1/8 scale (libjpeg) down to this side: hashes look at 32 px anyway
PAIR_CHUNK_BYTES = 16 * 2**20  # XOR block per step: rows x len(b) x 8 bytes, so 50k x 10k never sits in memory
SPLIT_ORDER = ("train", "val", "test")  # the later split of a pair holds the reported image
_SKIPPED_ARRAYS = {"severity": "info", "split": "", "reason": "near-duplicate search skipped for the built-in "
                   "splits: their small centred images hash alike (see resnetlab.data.duplicates)"}


def image_hash(image: Image.Image) -> np.ndarray:
    """Two uint64 words: the 64-bit pHash then the 64-bit dHash of the image's grey levels."""
    bits = np.concatenate([imagehash.phash(image, hash_size=8).hash.ravel(),
                           imagehash.dhash(image, hash_size=8).hash.ravel()])
    return np.packbits(bits).view(np.uint64)


def _hash_one(path: str) -> np.ndarray | None:
    """Runs in a worker process: the hash of one file; None when it cannot be read."""
    try:
        return image_hash(open_rgb(path, draft_size=DRAFT_SIZE))  # EXIF rotation applied, any mode made RGB
    except Exception:  # noqa: BLE001 - unreadable files are left out: the decode already reports them
        return None


def hash_split(split: SplitData, *, workers: int | None = None, progress: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the file-backed ``split`` of the images that could be read, their hashes: N x 2 uint64)."""
    items = list(split.paths)
    workers = workers or default_workers()
    bar = tqdm(total=len(items), desc=f"hash {split.name}", unit="img", disable=not progress_enabled(progress),
               leave=False)
    positions, hashes = [], []

    def collect(results) -> None:
        for i, result in enumerate(results):
            raise_if_terminated()
            if result is not None:
                positions.append(i)
                hashes.append(result)
            bar.update(1)

    if workers > 1 and len(items) >= POOL_MIN_IMAGES:
        with worker_map(_hash_one, items, workers) as results:
            collect(results)
    else:
        collect(map(_hash_one, items))
    bar.close()
    return (np.asarray(positions, dtype=np.int64),
            np.stack(hashes) if hashes else np.zeros((0, HASH_BITS // 64), dtype=np.uint64))


@cache
def _bits_per_uint16() -> np.ndarray:
    """Popcount of every 16-bit value (65,536 uint8), for numpy < 2.0, which lacks np.bitwise_count."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.uint8).reshape(-1, 2)
    return np.unpackbits(values, axis=1).sum(axis=1, dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (uint8, same shape)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _bits_per_uint16()[words.view(np.uint16)].reshape(*words.shape, 4).sum(axis=-1, dtype=np.uint8)


def pair_blocks(a: np.ndarray, b: np.ndarray, max_distance: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows i of ``a`` (N x W uint64) and j of ``b`` (M x W) at most ``max_distance`` bits apart, as (i, j,
    distance) arrays per block of ``a``'s rows.

    Hashes are compared one 64-bit word at a time (contiguous columns), so each block's XOR is rows x M words and
    50k x 10k hashes take a few seconds of numpy in a bounded amount of memory.
    """
    words_a, words_b = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)  # W x N, W x M
    rows = max(1, PAIR_CHUNK_BYTES // (8 * max(1, len(b))))
    for start in range(0, len(a), rows):
        distance = np.zeros((min(rows, len(a) - start), len(b)), dtype=np.uint16)  # rows x M
        for column_a, column_b in zip(words_a, words_b):
            distance += popcount(column_a[start:start + rows, None] ^ column_b[None, :])
        i, j = np.nonzero(distance <= max_distance)
        yield i + start, j, distance[i, j]


def nearest_neighbours(hashes: np.ndarray, sample: int = NEIGHBOUR_SAMPLE, seed: int = 0) -> np.ndarray:
    """Bits from each of a random sample of ``hashes`` (N x W uint64) to its nearest other hash, in blocks of
    columns, so a sample of 1,000 against 100k hashes never sits in memory whole."""
    rows = np.sort(np.random.default_rng(seed).choice(len(hashes), size=min(sample, len(hashes)), replace=False))
    nearest = np.full(len(rows), HASH_BITS + 1, dtype=np.uint16)
    columns = max(1, PAIR_CHUNK_BYTES // (8 * len(rows)))
    for start in range(0, len(hashes), columns):
        block = hashes[start:start + columns]
        distance = np.zeros((len(rows), len(block)), dtype=np.uint16)
        for word in range(hashes.shape[1]):
            distance += popcount(hashes[rows, word][:, None] ^ block[:, word][None, :])
        own = (rows >= start) & (rows < start + len(block))
        distance[np.flatnonzero(own), rows[own] - start] = HASH_BITS + 1  # not its own neighbour
        nearest = np.minimum(nearest, distance.min(axis=1))
    return nearest


def auto_distance(train_hashes: np.ndarray) -> tuple[int, str]:
    """The search distance for this data set ("auto", see the module docstring) and why, in words."""
    if len(train_hashes) < NEIGHBOUR_MIN_IMAGES:
        return DEFAULT_DISTANCE, "the default"
    near = int(np.quantile(nearest_neighbours(train_hashes), NEIGHBOUR_SHARE))
    if near - NEIGHBOUR_MARGIN >= DEFAULT_DISTANCE:
        return DEFAULT_DISTANCE, "the default"
    return max(0, near - NEIGHBOUR_MARGIN), (
        f"not the default {DEFAULT_DISTANCE}: distinct pictures of this data set look alike ({NEIGHBOUR_SHARE:.0%} of "
        f"the training images have another within {near} bits), so looser matches would list different pictures; "
        "resized, re-encoded and grey copies are still found, crops may not be; --near-dup-distance sets it")


def near_duplicates(source: DataSource, max_distance: int | str = DEFAULT_DISTANCE, *,
                    digests: dict[str, dict[int, str]] | None = None, workers: int | None = None,
                    progress: bool = True, limit: int = MAX_LISTED_PAIRS) -> list[dict]:
    """One warning per pair of images in two splits (train/val, train/test, val/test) whose hashes are at most
    ``max_distance`` bits apart, closest first; past ``limit`` pairs one more warning counts the rest.
    ``max_distance="auto"`` measures it on the training split (``auto_distance``); where that is under the default,
    an info item says so and why, with the distance as its ``max_distance``.

    ``digests``: split -> {position: content digest} from the decode. A val/test image that is a byte-identical
    copy of a train image is not listed again: the exact check (``check.inspect_data``) already reports it.

    Built-in splits (arrays, not files) are skipped with a note: their small centred objects on a plain background
    hash alike (Fashion-MNIST: 922,577 train/test pairs within 20 bits, 2,787 within 8), so a list would be noise.
    """
    names = sorted((n for n, split in source.splits.items() if split.paths is not None),
                   key=lambda n: SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER))
    problems = [] if len(names) == len(source.splits) else [_SKIPPED_ARRAYS | {"path": source.location}]
    hashed = {name: hash_split(source.splits[name], workers=workers, progress=progress) for name in names}
    if max_distance == "auto":
        max_distance, why = auto_distance(hashed["train"][1]) if "train" in hashed else (DEFAULT_DISTANCE, "")
        if max_distance < DEFAULT_DISTANCE:
            problems.append({"severity": "info", "split": "", "path": source.location, "max_distance": max_distance,
                             "reason": f"near-duplicate search within {max_distance} bits, {why}"})
    found, total = [], 0  # found: (distance, earlier, position, later, position) of the closest pairs
    for k, earlier in enumerate(names):
        for later in names[k + 1:]:
            (positions_a, hashes_a), (positions_b, hashes_b) = hashed[earlier], hashed[later]
            i, j, distance, count = _closest(hashes_a, hashes_b, max_distance, limit,
                                             _exact_copies(positions_b, digests, earlier, later))
            total += count
            found += [(int(d), earlier, int(positions_a[x]), later, int(positions_b[y]))
                      for x, y, d in zip(i, j, distance)]
    found.sort(key=lambda pair: (pair[0], names.index(pair[1]), names.index(pair[3]), pair[2], pair[4]))
    problems += [_problem(source, *pair) for pair in found[:limit]]
    if total > limit:
        problems.append({"severity": "warning", "split": "", "path": source.location,
                         "reason": f"{total - limit} more near-duplicate pairs across splits not listed (the "
                                   f"{limit} closest are); a lower --near-dup-distance lists fewer"})
    return problems


def _closest(a: np.ndarray, b: np.ndarray, max_distance: int, limit: int, skip_b: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The ``limit`` closest pairs (i, j, distance) with ``skip_b[j]`` false, and how many pairs there were in all;
    never more than ``limit`` + one block of pairs is held, however many images look alike."""
    kept_i, kept_j, kept_d, total = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint16), 0
    for i, j, distance in pair_blocks(a, b, max_distance):
        keep = ~skip_b[j]
        total += int(keep.sum())
        kept_i, kept_j = np.concatenate([kept_i, i[keep]]), np.concatenate([kept_j, j[keep]])
        kept_d = np.concatenate([kept_d, distance[keep]])
        if len(kept_d) > limit:
            order = np.lexsort((kept_j, kept_i, kept_d))[:limit]
            kept_i, kept_j, kept_d = kept_i[order], kept_j[order], kept_d[order]
    return kept_i, kept_j, kept_d, total


def _exact_copies(positions: np.ndarray, digests: dict[str, dict[int, str]] | None, earlier: str, later: str
                  ) -> np.ndarray:
    """Per hashed image of ``later``: is it a byte-identical copy of a train image (already reported)?"""
    if not digests or earlier != "train" or not digests.get("train"):
        return np.zeros(len(positions), dtype=bool)
    in_train, of_later = set(digests["train"].values()), digests.get(later, {})
    return np.asarray([of_later.get(int(p)) in in_train for p in positions], dtype=bool)


def _problem(source: DataSource, distance: int, earlier: str, position_a: int, later: str, position_b: int) -> dict:
    return {"severity": "warning", "split": later, "path": source.splits[later].describe(position_b),
            "reason": f"near-duplicate of {earlier} image {source.splits[earlier].describe(position_a)} (perceptual "
                      f"hash distance {distance}/{HASH_BITS}): the same picture in two splits inflates validation "
                      "scores"}
