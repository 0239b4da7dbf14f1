"""WebDataset tar shards: write them from any source resnetlab reads, and read them back as a ``DataSource``.

A shard holds records ``KEY.jpg`` or ``KEY.png`` (the original encoded bytes; other formats re-encoded as PNG) and
``KEY.cls`` (the class index) and, as ``resnetlab shards`` writes them, ``KEY.json`` ({"source": the original file},
named in messages); ``classes.json`` and ``classes.txt`` beside the shards hold the class names. Reading
indexes each shard's members once (kept in the cache folder, keyed by the shard's path, size and time) and leaves
the images in the tar files: each record is a ``SHARD.tar#MEMBER`` path read in place (tarmembers.py), so the
decode cache, checks, evaluation and predict work as for a folder of files, and the training split can also be
streamed shard by shard (shardstream.py).

    write_shards(open_data("photos/"), "shards/", shard_size=1000)   # shards/train-000000.tar, ..., classes.json
    source = open_shards("shards/")            # or "shards/train-{000000..000003}.tar"
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, ImageReadError
from ..fileio import write_json, write_text
from ..task import task_of
from .images import open_rgb, read_regular
from .splits import DataSource, SplitData, settle_val
from .tarmembers import member_path, remember

SPLITS = ("train", "val", "test")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # a record's image member, first found
INDEX_FORMAT = 5  # 4: each record with its image's data offset and size; 5: and where it came from


def is_shards(spec: str) -> bool:
    """Whether ``spec`` names shards: a .tar file, a brace pattern of them, or a folder of train/val/test-*.tar."""
    if spec.lower().endswith(".tar"):
        return True
    path = Path(spec).expanduser()
    return path.is_dir() and any(next(path.glob(f"{name}-*.tar"), None) for name in SPLITS)


def _webdataset():  # noqa: ANN202 - the module
    try:
        import webdataset
    except ImportError:
        raise DataError("tar shards need the webdataset package: pip install 'resnetlab[shards]'") from None
    return webdataset


# ---------------------------------------------------------------------- writing
def write_shards(source: DataSource, out: str | os.PathLike, shard_size: int, seed: int = 0) -> dict[str, dict]:
    """Write each split of ``source`` to ``out/SPLIT-NNNNNN.tar`` (at most ``shard_size`` records each) and the class
    names to classes.json and classes.txt; returns per split its record count, shard files and skipped images.

    The training split's records go in a random order (``seed``), so that every shard mixes the classes: a folder
    lists them class by class, and a stream that reads shards in sequence through a shuffle buffer would otherwise
    see batches of one class. A record's key is its position in the source split either way."""
    if task_of(source.task).multilabel:
        raise DataError(f"{source.location}: shards hold one class per image (KEY.cls); {source.task} data cannot be "
                        "written as shards")
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out).expanduser()
    existing = sorted(p.name for p in out.glob("*-*.tar")) if out.is_dir() else []
    if existing:
        raise DataError(f"{out} already holds shards ({existing[0]}, ...); give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    wds = _webdataset()
    summary = {}
    for name in SPLITS:
        if name not in source.splits:
            continue
        split, skipped, count = source.splits[name], [], 0
        pattern = str(out).replace("%", "%%") + f"/{name}-%06d.tar"  # webdataset formats it with %
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
            order = np.random.default_rng(seed).permutation(len(split)) if name == "train" else range(len(split))
            for i in order:
                i = int(i)
                try:
                    ext, data = _encoded(split, i)
                except (OSError, ValueError, ImageReadError) as err:
                    skipped.append({"path": split.describe(i), "reason": getattr(err, "reason", None) or str(err)})
                    continue
                origin = json.dumps({"source": split.describe(i)}, ensure_ascii=False).encode("utf-8")
                sink.write({"__key__": f"{i:08d}", ext: data, "cls": str(int(split.labels[i])), "json": origin})
                count += 1
        summary[name] = {"records": count, "shards": sorted(p.name for p in out.glob(f"{name}-*.tar")),
                         "skipped": skipped}
    write_json(out / "classes.json", list(source.classes))
    write_text(out / "classes.txt", "".join(f"{c}\n" for c in source.classes))
    return summary


def _encoded(split: SplitData, i: int) -> tuple[str, bytes]:
    """Image ``i`` as (extension, bytes): a JPEG or PNG file's own bytes, anything else encoded as PNG."""
    if split.images is not None:
        array = split.images[i]
        image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
        return "png", _png(image)
    path = split.paths[i]
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg", ".png"):
        data = read_regular(path)
        if not data:
            raise ImageReadError(path, "empty file (0 bytes)")
        try:
            with Image.open(io.BytesIO(data)):  # the header only: a file that is no image at all stays out
                pass
        except Exception:  # noqa: BLE001 - PIL raises many kinds; the reason is the same
            raise ImageReadError(path, "not an image (unrecognised format)") from None
        return ("png" if suffix == ".png" else "jpg"), data
    # every other format as training reads it (open_rgb): 16-bit and float images rescaled, not clipped to white,
    # EXIF rotation applied, any mode made RGB
    return "png", _png(open_rgb(path))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- reading
SHOWN_SKIPS = 10  # skipped records named one by one; the rest as a count (an unlabelled test split: 100k rows)


def compact_notes(notes: list[str]) -> list[str]:
    """``notes`` with the "skipped" warnings past the first SHOWN_SKIPS replaced by one line that counts them."""
    skips = [n for n in notes if n.startswith("warning: skipped")]
    if len(skips) <= SHOWN_SKIPS:
        return notes
    kept = set(skips[:SHOWN_SKIPS])
    return [n for n in notes if not n.startswith("warning: skipped") or n in kept] + [
        f"warning: skipped {len(skips) - SHOWN_SKIPS} more records for the same kinds of reasons (the first "
        f"{SHOWN_SKIPS} are named above)"]


def open_shards(spec: str, *, val_split: float = 0.1, seed: int = 0, cache_dir: str | None = None) -> DataSource:
    """The shards ``spec`` names as a DataSource whose images stay in the tar files (``SHARD.tar#MEMBER`` paths,
    tarmembers.py), labelled by each record's .cls; records without a usable image or class are left out and named
    (shard file and key) in the notes. The training split also lists its shards, for the streamed loader."""
    root = _index_root(cache_dir)
    urls, home = _shard_files(spec)
    classes = _class_names(home)
    notes: list[str] = []
    splits = {}
    for name, files in urls.items():
        if files:
            splits[name] = _read_split(name, files, classes, notes, root)
    if classes is None:
        top = max((int(s.labels.max()) for s in splits.values() if len(s)), default=-1)
        classes = [str(i) for i in range(top + 1)]
        notes.append(f"no classes.json or classes.txt in {home}: classes named by their index 0-{top}")
    if "train" not in splits:  # as for a folder with test/ but no train/
        raise DataError(f"{spec}: no train-*.tar shards in {home} (found {', '.join(splits) or 'none'}); a data set "
                        "needs its training shards beside the others, or give the files to `resnetlab predict`")
    if not len(splits["train"]):
        raise DataError(f"no usable records in the training shards {urls['train'][0]}, ...")
    if len(classes) < 2:
        raise DataError(f"{home}: only {len(classes)} class(es); a classifier needs at least two")
    settle_val(splits, notes, val_split, seed, "val-*.tar shards")
    total = sum(len(s) for s in splits.values())
    notes.append(f"shards: {total} records read in place from {sum(len(f) for f in urls.values())} tar file(s) (each "
                 f"shard's member index kept in {root}, no copy of the images)")
    return DataSource(classes, splits, "shards", spec, compact_notes(notes))


def shard_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """``inputs`` with each shard folder, .tar file or brace pattern replaced by its records' image members
    (``SHARD.tar#MEMBER``; every split's, labelled or not): what predict reads."""
    files: list[str] = []
    for item in inputs:
        files += [file for file, _ in _all_records(item)] if is_shards(str(item)) else [str(item)]
    return files


def shard_records(spec: str | os.PathLike) -> list[tuple[str, str]]:
    """(image member path, class name or '' when the record has none) for every record of the shards ``spec``
    names (a folder: all its .tar files; a .tar file or brace pattern: those), class names from classes.json."""
    classes = _class_names(_shard_files(str(spec))[1]) or []
    return [(file, classes[label] if 0 <= label < len(classes) else str(label) if label >= 0 else "")
            for file, label in _all_records(spec)]


def _all_records(spec: str | os.PathLike) -> list[tuple[str, int]]:
    """(image member path, class index or -1) for every record of the shards ``spec`` names."""
    folder = Path(spec).expanduser()
    _shard_files(str(spec))  # checks that the files exist
    named = _webdataset().shardlists.expand_urls(str(folder))  # the .tar files given, not their siblings
    tars = sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else named
    records: list[tuple[str, int]] = []
    for url in tars:
        records += [(member_path(url, member), label) for member, label, *_ in shard_index(url)["records"]]
    return records


def _shard_files(spec: str) -> tuple[dict[str, list[str]], Path]:
    """Per split, its shard files; and the folder holding them (where classes.json is looked for)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = {name: sorted(str(p) for p in path.glob(f"{name}-*.tar")) for name in SPLITS}
        return found, path
    urls = _webdataset().shardlists.expand_urls(str(path))
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"shard file {missing[0]} does not exist ({len(missing)} of the {len(urls)} files that "
                        f"'{spec}' names are missing)")
    home = Path(urls[0]).parent
    named = Path(urls[0]).name.split("-")[0]
    if named not in SPLITS:  # 'data.tar', 'part-{0..9}.tar': training shards
        return {"train": urls}, home
    # 'test-{...}.tar' is the test split, its train-*.tar and val-*.tar siblings the others (as for a folder)
    found = {name: sorted(str(p) for p in home.glob(f"{name}-*.tar")) for name in SPLITS if name != named}
    return {named: urls, **found}, home


def _class_names(home: Path) -> list[str] | None:
    as_json, as_text = home / "classes.json", home / "classes.txt"
    if as_json.is_file():
        try:
            names = json.loads(as_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{as_json}: not valid JSON ({err})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{as_json}: expected a list of class names")
        return names
    if as_text.is_file():
        return [line.strip() for line in as_text.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def _read_split(name: str, files: list[str], classes: list[str] | None, notes: list[str], root: Path) -> SplitData:
    paths, labels, origins, shards = [], [], [], {}
    for url in files:
        index = shard_index(url, root)
        for shard_key, reason in index["bad"]:
            notes.append(f"warning: skipped record {Path(url).name} key {shard_key}: {reason}")
        shards[url] = []
        for member, label, shard_key, why, _, _, source in index["records"]:
            if label < 0:
                notes.append(f"warning: skipped record {Path(url).name} key {shard_key}: {why}")
                continue
            if classes is not None and label >= len(classes):
                notes.append(f"warning: skipped record {Path(url).name} key {shard_key}: class index {label} is not "
                             f"in 0-{len(classes) - 1} (classes.json)")
                continue
            shards[url].append(len(paths))
            paths.append(member_path(url, member))
            labels.append(label)
            origins.append(f"{Path(url).name} key {shard_key}" + (f" = {source}" if source else ""))
    return SplitData(name, np.asarray(labels, dtype=np.int64), paths, origins=origins, shards=shards)


def _index_root(cache_dir: str | None = None) -> Path:
    from .cache import cache_folder

    return cache_folder(cache_dir) / "shards"


def shard_index(url: str, root: Path | None = None) -> dict:
    """One shard's records, read once from its tar headers (kept in ``root`` while the shard's path, size and time
    are the same): {"records": [[image member, class or -1, key, why no class, data offset, bytes, source]], "bad":
    [[key, reason]]}. Where the members start is also remembered for this process and those it forks (tarmembers.py)."""
    root = _index_root() if root is None else root
    stat = os.stat(url)
    tag = f"{os.path.realpath(url)}|{stat.st_size}|{stat.st_mtime_ns}|{INDEX_FORMAT}"
    final = root / f"{Path(url).stem}-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.json"
    index = None
    if final.is_file():
        try:
            index = json.loads(final.read_text(encoding="utf-8"))
            if not all(len(record) == 7 for record in index["records"]):
                index = None
        except (ValueError, KeyError, TypeError):
            index = None  # a damaged index is read again below
    if index is None:
        index = _read_index(url, stat.st_size)
        root.mkdir(parents=True, exist_ok=True)
        write_json(final, index)
    remember(url, {member: (offset, length) for member, _, _, _, offset, length, _ in index["records"]})
    return index


def _read_index(url: str, size: int) -> dict:
    """The records of one tar file from its headers (the standard library's tarfile, which seeks past each image)
    grouped by webdataset's own key rule; only the small .cls/.json members are read."""
    base_plus_ext = _webdataset().tariterators.base_plus_ext
    records, bad, broken, groups = [], [], [], []
    try:
        with tarfile.open(url, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"the file ends inside member {info.name}")
                key, ext = base_plus_ext(info.name)
                if key is None:
                    continue
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))
                ext = ext.lower()  # KEY.CLS and KEY.JPG as webdataset reads them
                small = ext in ("cls", "json")
                groups[-1][1][ext] = tar.extractfile(info).read() if small else (info.name, info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as err:  # truncated or not a tar: keep what was read
        reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
        broken.append([f"(after {len(groups)} record(s))", f"unreadable tar data, rest of the shard skipped: "
                    f"{type(err).__name__}: {reason}"])
    for key, sample in groups:
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None:
            bad.append([key, f"no image member ({', '.join(IMAGE_KEYS[:3])}, ...)"])
            continue
        label, why = _label(sample)
        member, offset, length = sample[image_key]
        records.append([member, -1 if label is None else label, key, why, offset, length, _source(sample)])
    return {"records": records, "bad": bad + broken}


def _source(sample: dict) -> str:
    """Where a record came from, as ``resnetlab shards`` wrote it in KEY.json ("source"), else ''."""
    try:
        meta = json.loads(sample["json"]) if "json" in sample else None
    except ValueError:
        return ""
    return str(meta.get("source", ""))[:300] if isinstance(meta, dict) else ""


def _label(sample: dict) -> tuple[int | None, str]:
    """The record's class index from KEY.cls (or a KEY.json's "cls"/"label" number), else None and why not."""
    if "cls" in sample:
        text = sample["cls"].decode("utf-8", "replace").strip()
        return (int(text), "") if re.fullmatch(r"\d+", text) else (None, f"KEY.cls '{text[:20]}' is not a class index")
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return None, "KEY.json is not valid JSON"
        value = meta.get("cls", meta.get("label")) if isinstance(meta, dict) else None
        if isinstance(value, int) and value >= 0:
            return value, ""
        return None, "KEY.json has no class index ('cls' or 'label')"
    return None, "no .cls member (class index)"
