"""Built-in data sets read from their standard files, written small into tmp_path: MNIST / Fashion-MNIST IDX files
(gzipped or plain), CIFAR-10/100 as python pickles and as binary records; the official train/test split; and the
restricted unpickler, which must refuse a pickle that would run code, without running it."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.cli import main
from resnetlab.data import builtin
from resnetlab.data.builtin import CIFAR10_CLASSES, FASHION_CLASSES, load_builtin
from resnetlab.data.sources import open_data
from resnetlab.errors import DataError

MNIST_STEMS = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> list:
    """No test here may reach the network: torchvision's downloader is replaced by one that records its calls and
    finds nothing, as it does offline."""
    calls = []

    def no_download(name: str, root: Path):
        calls.append((name, root))
        return None

    monkeypatch.setattr(builtin, "_try_torchvision_download", no_download)
    return calls


# ---------------------------------------------------------------------- MNIST family: IDX files
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, each size as big-endian int32."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, *, gz: bool, train: int = 6, test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
              "train_y": rng.integers(0, 10, train, dtype=np.uint8),
              "test_x": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
              "test_y": rng.integers(0, 10, test, dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in MNIST_STEMS.items():
        data = idx_bytes(arrays[key])
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("name,classes", [("mnist", [str(d) for d in range(10)]), ("fashion-mnist", FASHION_CLASSES)])
@pytest.mark.parametrize("layout", ["gzipped", "plain", "torchvision raw/"])
def test_idx_files_load_with_the_official_split(tmp_path: Path, name: str, classes: list[str], layout: str):
    root = tmp_path / name
    folder = root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw" if "raw" in layout else root
    arrays = write_mnist(folder, gz=layout != "plain")
    source = load_builtin(name, data_root=str(root))
    assert source.classes == classes and source.kind == "built-in" and source.location == str(root)
    assert set(source.splits) == {"train", "test"} and source.val_name == "test"  # test serves as validation
    assert source.native_size == 28
    assert any("official train/test split" in note for note in source.notes)
    for split in ("train", "test"):
        data = source.splits[split]
        assert data.paths is None and data.images.dtype == np.uint8
        assert data.images.shape == (len(arrays[f"{split}_y"]), 28, 28, 1)  # grey stays one channel
        np.testing.assert_array_equal(data.images[..., 0], arrays[f"{split}_x"])
        assert data.labels.dtype == np.int64 and data.labels.tolist() == arrays[f"{split}_y"].tolist()
        data.images[0, 0, 0, 0] = 1  # writable memory (torch.from_numpy warns on read-only arrays)


def test_open_data_recognises_built_in_names(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called "MNIST" here: the name means the built-in
    arrays = write_mnist(tmp_path / "files", gz=True)
    source = open_data("MNIST", data_root=str(tmp_path / "files"))
    assert source.kind == "built-in" and len(source.splits["train"]) == len(arrays["train_y"])
    assert source.splits["test"].labels.tolist() == arrays["test_y"].tolist()


def test_a_gzipped_file_is_preferred_and_both_kinds_may_be_mixed(tmp_path: Path):
    gzipped = write_mnist(tmp_path, gz=True, seed=1)
    plain = write_mnist(tmp_path / "other", gz=False, seed=2)
    (tmp_path / "other" / MNIST_STEMS["train_x"]).rename(tmp_path / MNIST_STEMS["train_x"])  # plain beside .gz
    (tmp_path / (MNIST_STEMS["test_y"] + ".gz")).unlink()
    (tmp_path / "other" / MNIST_STEMS["test_y"]).rename(tmp_path / MNIST_STEMS["test_y"])  # plain only
    source = load_builtin("mnist", data_root=str(tmp_path))
    np.testing.assert_array_equal(source.splits["train"].images[..., 0], gzipped["train_x"])
    assert source.splits["test"].labels.tolist() == plain["test_y"].tolist()


def test_an_idx_file_shorter_than_its_header_is_named(tmp_path: Path):
    write_mnist(tmp_path, gz=True, train=4)
    broken = tmp_path / (MNIST_STEMS["train_x"] + ".gz")
    broken.write_bytes(gzip.compress(gzip.decompress(broken.read_bytes())[:-10]))
    with pytest.raises(DataError) as caught:
        load_builtin("mnist", data_root=str(tmp_path))
    assert str(caught.value) == f"{broken} is truncated: header says (4, 28, 28), found {4 * 28 * 28 - 10} values"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_files_say_where_they_were_looked_for(tmp_path: Path, offline: list, name: str):
    root = tmp_path / "empty"
    root.mkdir()
    if name == "mnist":  # three of the four files are not enough
        write_mnist(root, gz=True)
        (root / (MNIST_STEMS["test_y"] + ".gz")).unlink()
    with pytest.raises(DataError) as caught:
        load_builtin(name, data_root=str(root))
    message = str(caught.value)
    assert message.startswith(f"built-in data set '{name}' not found in {root} and it could not be downloaded")
    assert "--data-root" in message
    assert ("dataset-fashion-mnist" in message) == (name == "fashion-mnist")  # the Debian package, where there is one
    assert offline == [(name, root)]  # the download was tried once, into the given root


# ---------------------------------------------------------------------- CIFAR: python pickles and binary records
class _Python2Pickler(pickle._Pickler):
    """Writes bytes as python 2's str (BINSTRING), the way cPickle wrote the official CIFAR archives, which python 3
    reads back with encoding="latin1"; python 3's own protocol 2 would spell bytes as a call to _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str8(self, obj: bytes) -> None:
        size = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else
                    pickle.BINSTRING + struct.pack("<i", size)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str8


def _as_python2(obj):
    """Python 2's str was bytes: keys, names and labels of text become bytes."""
    if isinstance(obj, dict):
        return {_as_python2(key): _as_python2(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_as_python2(item) for item in obj]
    return obj.encode() if isinstance(obj, str) else obj


def python2_pickle(obj) -> bytes:
    """``obj`` as the official archives hold it: protocol 2, every str as a python 2 str, numpy.core names."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(_as_python2(obj))
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """n images as CIFAR stores them: one row of 3072 bytes each, the red plane, then green, then blue, row-major."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def as_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_cifar_python(root: Path, *, fine: bool = False, meta: bool = True, per_batch: int = 2, test: int = 3,
                       dump=python2_pickle) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (or cifar-100-python/train, test, meta)."""
    folder = root / ("cifar-100-python" if fine else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes = 100 if fine else 10
    files = {"train": [(f, per_batch) for f in (["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)])]}
    files["test"] = [("test" if fine else "test_batch", test)]
    expected = {}
    for split, batches in files.items():
        all_rows, all_labels = [], []
        for seed, (file, n) in enumerate(batches, start=len(expected) * 10):
            rows = cifar_rows(n, seed)
            labels = [(7 * seed + 3 * i) % classes for i in range(n)]
            batch = {"data": rows, "batch_label": file, "filenames": ["x.png"] * n}
            if fine:  # the coarse labels (20 superclasses) are there too and must not be used
                batch.update({"fine_labels": labels, "coarse_labels": [label % 20 for label in labels]})
            else:
                batch["labels"] = labels
            (folder / file).write_bytes(dump(batch))
            all_rows.append(rows)
            all_labels += labels
        expected[split] = (as_hwc(np.concatenate(all_rows)), all_labels)
    if meta:
        names = [f"fine {i}" for i in range(100)] if fine else [f"kind {i}" for i in range(10)]
        key = "fine_label_names" if fine else "label_names"
        (folder / ("meta" if fine else "batches.meta")).write_bytes(dump({key: names, "num_vis": 3072}))
    return expected


def write_cifar_binary(root: Path, *, fine: bool = False, meta: bool = True, per_batch: int = 2,
                       test: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin, batches.meta.txt: records of <label> + 3072 bytes;
    cifar-100-binary/train.bin, test.bin, fine_label_names.txt: <coarse label> <fine label> + 3072 bytes."""
    folder = root / ("cifar-100-binary" if fine else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    files = {"train": ["train.bin"] if fine else [f"data_batch_{i}.bin" for i in range(1, 6)],
             "test": ["test.bin"] if fine else ["test_batch.bin"]}
    expected = {}
    for split, names in files.items():
        all_rows, all_labels = [], []
        for seed, file in enumerate(names, start=len(expected) * 10):
            n = per_batch if split == "train" else test
            rows = cifar_rows(n, seed)
            labels = [(7 * seed + 3 * i) % (100 if fine else 10) for i in range(n)]
            label_bytes = [[label % 20, label] for label in labels] if fine else [[label] for label in labels]
            records = np.concatenate([np.asarray(label_bytes, dtype=np.uint8), rows], axis=1)
            records.tofile(folder / file)
            all_rows.append(rows)
            all_labels += labels
        expected[split] = (as_hwc(np.concatenate(all_rows)), all_labels)
    if meta:
        names = [f"fine_{i}" for i in range(100)] if fine else [f"kind_{i}" for i in range(10)]
        (folder / ("fine_label_names.txt" if fine else "batches.meta.txt")).write_text("\n".join(names) + "\n\n")
    return expected


def check_cifar(source, expected: dict, classes: list[str], root: Path) -> None:
    assert source.classes == classes and source.kind == "built-in" and source.location == str(root)
    assert set(source.splits) == {"train", "test"} and source.val_name == "test" and source.native_size == 32
    for split, (images, labels) in expected.items():
        data = source.splits[split]
        assert data.images.shape == (len(labels), 32, 32, 3) and data.images.dtype == np.uint8
        assert data.images.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(data.images, images)  # batches in order 1..5, planes to H x W x RGB
        assert data.labels.dtype == np.int64 and data.labels.tolist() == labels


@pytest.mark.parametrize("fine", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_python_batches_as_the_official_archives_hold_them(tmp_path: Path, fine: bool):
    expected = write_cifar_python(tmp_path, fine=fine)
    source = load_builtin("cifar100" if fine else "cifar10", data_root=str(tmp_path))
    assert len(source.splits["train"]) == (2 if fine else 10) and len(source.splits["test"]) == 3
    check_cifar(source, expected, [f"fine {i}" for i in range(100)] if fine else [f"kind {i}" for i in range(10)],
                tmp_path)
    # the first pixel of the first training image: byte 0 of the red, the green and the blue plane
    rows = cifar_rows(2, 0)
    assert source.splits["train"].images[0, 0, 0].tolist() == [rows[0, 0], rows[0, 1024], rows[0, 2048]]
    assert source.splits["train"].images[0, 0, 1].tolist() == [rows[0, 1], rows[0, 1025], rows[0, 2049]]
    assert source.splits["train"].images[0, 1, 0].tolist() == [rows[0, 32], rows[0, 1056], rows[0, 2080]]


@pytest.mark.parametrize("fine", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_binary_records(tmp_path: Path, fine: bool):
    expected = write_cifar_binary(tmp_path, fine=fine)
    source = load_builtin("cifar100" if fine else "cifar10", data_root=str(tmp_path))
    check_cifar(source, expected, [f"fine_{i}" for i in range(100)] if fine else [f"kind_{i}" for i in range(10)],
                tmp_path)


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar_without_its_names_file_uses_the_standard_names(tmp_path: Path, kind: str):
    writer = write_cifar_python if kind == "python" else write_cifar_binary
    writer(tmp_path / "ten", meta=False)
    assert load_builtin("cifar10", data_root=str(tmp_path / "ten")).classes == CIFAR10_CLASSES
    writer(tmp_path / "hundred", fine=True, meta=False)
    classes = load_builtin("cifar100", data_root=str(tmp_path / "hundred")).classes
    assert classes == [f"class_{i:02d}" for i in range(100)]


def test_cifar_files_directly_in_the_data_root(tmp_path: Path):
    expected = write_cifar_python(tmp_path / "unpacked")
    flat = tmp_path / "flat"
    (tmp_path / "unpacked" / "cifar-10-batches-py").rename(flat)  # no cifar-10-batches-py/ level
    check_cifar(load_builtin("cifar10", data_root=str(flat)), expected, [f"kind {i}" for i in range(10)], flat)


def test_binary_records_win_over_python_pickles(tmp_path: Path):
    write_cifar_python(tmp_path)
    expected = write_cifar_binary(tmp_path, per_batch=1)
    source = load_builtin("cifar10", data_root=str(tmp_path))
    check_cifar(source, expected, [f"kind_{i}" for i in range(10)], tmp_path)


@pytest.mark.parametrize("protocol", [
    pytest.param(2, id="2"),
    pytest.param(3, id="3"),
    pytest.param(4, id="4"),
    pytest.param(5, id="5"),
])
def test_cifar_pickles_written_by_python_3(tmp_path: Path, protocol: int):
    expected = write_cifar_python(tmp_path, dump=lambda obj: pickle.dumps(obj, protocol=protocol))
    check_cifar(load_builtin("cifar10", data_root=str(tmp_path)), expected, [f"kind {i}" for i in range(10)],
                tmp_path)


# ---------------------------------------------------------------------- the restricted unpickler
class _Payload:
    """Unpickling this calls ``function(argument)``: what a malicious 'data file' would do."""

    def __init__(self, function, argument: str):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def payloads(marker: Path) -> dict[str, _Payload]:
    """Each creates ``marker`` when it runs."""
    return {"os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
            "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
            "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()")}


# the names the unpickler is asked for (protocol 2 spells python 3's builtins as python 2's __builtin__)
REFUSED_NAME = {"os.system": f"{os.system.__module__}.system", "builtins.eval": "__builtin__.eval",
                "builtins.exec": "__builtin__.exec"}


@pytest.mark.parametrize("where", ["data_batch_1", "test_batch", "batches.meta"])
@pytest.mark.parametrize("payload", list(REFUSED_NAME))
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path, payload: str, where: str):
    # the payload is real: the standard unpickler runs it and it creates its marker
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(payloads(control)[payload], protocol=2))
    assert control.is_file()

    root = tmp_path / "data"
    write_cifar_python(root)
    marker = tmp_path / "payload-ran"
    evil = {"data": payloads(marker)[payload], "labels": [1], "label_names": ["a"] * 10}
    (root / "cifar-10-batches-py" / where).write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises((pickle.UnpicklingError, DataError),
                       match=f"refusing to load {REFUSED_NAME[payload]} from a data file"):
        load_builtin("cifar10", data_root=str(root))
    assert not marker.exists()


def test_a_refused_pickle_is_a_data_error_naming_the_file(tmp_path: Path, capsys):
    write_cifar_python(tmp_path)
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": payloads(marker)["os.system"], "labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="data_batch_1"):
        load_builtin("cifar10", data_root=str(tmp_path))
    assert main(["check", "cifar10", "--data-root", str(tmp_path), "--no-progress", "--workers", "1"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("resnetlab check: error: ") and str(evil) in err


@pytest.mark.parametrize("damage", ["a missing batch", "a truncated binary batch"])
def test_damaged_cifar_files_are_a_data_error_naming_the_file(tmp_path: Path, damage: str):
    if damage == "a missing batch":
        write_cifar_python(tmp_path)
        file = tmp_path / "cifar-10-batches-py" / "data_batch_3"
        file.unlink()
    else:
        write_cifar_binary(tmp_path)
        file = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
        file.write_bytes(file.read_bytes()[:-5])
    with pytest.raises(DataError, match=file.name):
        load_builtin("cifar10", data_root=str(tmp_path))


# ---------------------------------------------------------------------- digits and the CLI
def test_digits_have_a_fixed_stratified_split():
    first, again = load_builtin("digits"), load_builtin("digits")
    assert first.classes == [str(d) for d in range(10)] and first.native_size == 8
    train, test = first.splits["train"], first.splits["test"]
    assert len(train) + len(test) == 1797 and len(test) == pytest.approx(0.2 * 1797, abs=10)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(test.labels).tolist()) == set(range(10))  # stratified: every digit in the test set
    np.testing.assert_array_equal(test.labels, again.splits["test"].labels)  # the test set never moves
    np.testing.assert_array_equal(test.images, again.splits["test"].images)


def test_train_and_check_on_built_in_files(tmp_path: Path, capsys):
    root = tmp_path / "fashion"
    write_mnist(root, gz=True, train=32, test=12)
    report = tmp_path / "check.json"
    assert main(["check", "fashion-mnist", "--data-root", str(root), "--json", str(report), "--no-progress",
                 "--workers", "1"]) == 0
    counts = json.loads(report.read_text())["counts"]
    assert sum(counts["train"].values()) == 32 and sum(counts["test"].values()) == 12
    assert list(counts["train"]) == FASHION_CLASSES
    run = tmp_path / "run"
    assert main(["train", "fashion-mnist", "--data-root", str(root), "--out", str(run), "--epochs", "1",
                 "--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]) == 0
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["classes"] == FASHION_CLASSES and checkpoint["img_size"] == 16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 12  # validated on the official test split
