"""Built-in data sets read from their standard files on disk (nothing here needs the network).

Fashion-MNIST / MNIST: the four ``*-idx?-ubyte[.gz]`` files. CIFAR-10/100: the binary or the python
version of the archives, unpacked. digits: scikit-learn's bundled 8x8 digits. When the files are
missing, torchvision's downloader is tried once (it works only online) before a clear error.

    source = load_builtin("fashion-mnist")            # /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from .splits import DataSource, SplitData, stratified_split

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BUILTIN_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits")
DEFAULT_ROOTS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/resnetlab/datasets/fashion-mnist"],
                 "mnist": ["/usr/share/datasets/mnist", "~/.cache/resnetlab/datasets/mnist"],
                 "cifar10": ["~/.cache/resnetlab/datasets/cifar10"],
                 "cifar100": ["~/.cache/resnetlab/datasets/cifar100"]}


def load_builtin(name: str, *, data_root: str | None = None) -> DataSource:
    """Load a built-in data set; its official train/test split is kept and test serves as validation."""
    if name == "digits":
        return _digits()
    roots = [Path(data_root).expanduser()] if data_root else [Path(p).expanduser() for p in DEFAULT_ROOTS[name]]
    loader = _mnist_like if name in ("fashion-mnist", "mnist") else _cifar
    for root in roots:
        loaded = loader(name, root)
        if loaded is not None:
            return loaded
    downloaded = _try_torchvision_download(name, roots[0])
    if downloaded is not None:
        return downloaded
    hint = ("install Debian's package 'dataset-fashion-mnist' or " if name == "fashion-mnist" else "")
    raise DataError(f"built-in data set '{name}' not found in {', '.join(map(str, roots))} and it could not be "
                    f"downloaded (offline?); {hint}put its standard files there or pass --data-root")


def _source(name: str, classes: list[str], train: tuple, test: tuple, root: Path, size: int) -> DataSource:
    splits = {"train": SplitData("train", train[1].astype(np.int64), images=train[0]),
              "test": SplitData("test", test[1].astype(np.int64), images=test[0])}
    notes = [f"{name}: official train/test split; test serves as the validation split"]
    return DataSource(classes, splits, "built-in", str(root), notes, native_size=size)


# ---------------------------------------------------------------------- MNIST family
def _read_idx(path: Path) -> np.ndarray:
    """IDX format (big-endian header: magic, dims) -> uint8 array."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape).copy()  # frombuffer views are read-only; torch wants writable memory


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"):
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


def _mnist_like(name: str, root: Path) -> DataSource | None:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    files = [_find(root, s) for s in stems]
    if any(f is None for f in files):
        return None
    x_train, y_train, x_test, y_test = (_read_idx(f) for f in files)
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(d) for d in range(10)]
    # N x 28 x 28 -> N x 28 x 28 x 1: grey stays one channel in memory and is expanded to RGB per batch.
    return _source(name, classes, (x_train[..., None], y_train), (x_test[..., None], y_test), root, 28)


# ---------------------------------------------------------------------- CIFAR
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python archives are pickles; allow only the numpy names they need, never arbitrary code."""

    # _codecs.encode: how protocol 2 stores bytes written by Python 3 (it only turns a str into bytes);
    # _frombuffer: how protocol 5 (Python 3.14's default) stores arrays. Neither can run code.
    _allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _ArrayOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: {err} (a CIFAR python batch holds only numpy arrays and lists)") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as err:
        raise DataError(f"{path}: not a readable CIFAR python batch ({type(err).__name__}: {err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None


def _cifar(name: str, root: Path) -> DataSource | None:
    fine = name == "cifar100"
    label_bytes = 2 if fine else 1
    binary_dir = next((d for d in (root / "cifar-100-binary", root / "cifar-10-batches-bin", root)
                       if (d / ("train.bin" if fine else "data_batch_1.bin")).is_file()), None)
    if binary_dir is not None:
        def read_bin(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
            parts = []
            for file in files:
                path = binary_dir / file
                if not path.is_file():
                    raise DataError(f"{path} is missing: {name} needs {', '.join(files)} in {binary_dir}")
                part = np.fromfile(path, dtype=np.uint8)
                if part.size % (label_bytes + 3072):
                    raise DataError(f"{path} is truncated or not a {name} batch: {part.size} bytes is not a whole "
                                    f"number of {label_bytes + 3072}-byte records")
                parts.append(part)
            records = np.concatenate(parts).reshape(-1, label_bytes + 3072)
            images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            return np.ascontiguousarray(images), records[:, label_bytes - 1]

        train = read_bin(["train.bin"] if fine else [f"data_batch_{i}.bin" for i in range(1, 6)])
        test = read_bin(["test.bin"] if fine else ["test_batch.bin"])
        meta = binary_dir / ("fine_label_names.txt" if fine else "batches.meta.txt")
        classes = [c for c in meta.read_text().split() if c] if meta.is_file() else None
        return _source(name, classes or _default_cifar_classes(fine), train, test, root, 32)

    py_dir = next((d for d in (root / "cifar-100-python", root / "cifar-10-batches-py", root)
                   if (d / ("train" if fine else "data_batch_1")).is_file()), None)
    if py_dir is None:
        return None
    key = "fine_labels" if fine else "labels"

    def read_py(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [f for f in files if not (py_dir / f).is_file()]
        if missing:
            raise DataError(f"{py_dir / missing[0]} is missing: {name} needs {', '.join(files)} in {py_dir}")
        batches = [_unpickle(py_dir / f) for f in files]
        if not all(isinstance(b, dict) and "data" in b and key in b for b in batches):
            raise DataError(f"{py_dir}: a batch without 'data' and '{key}' entries is not a {name} python batch")
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), np.concatenate([np.asarray(b[key]) for b in batches])

    train = read_py(["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)])
    test = read_py(["test"] if fine else ["test_batch"])
    meta_file = py_dir / ("meta" if fine else "batches.meta")
    classes = None
    if meta_file.is_file():
        classes = list(_unpickle(meta_file)["fine_label_names" if fine else "label_names"])
    return _source(name, classes or _default_cifar_classes(fine), train, test, root, 32)


def _default_cifar_classes(fine: bool) -> list[str]:
    return [f"class_{i:02d}" for i in range(100)] if fine else CIFAR10_CLASSES


def _try_torchvision_download(name: str, root: Path) -> DataSource | None:
    """Only useful online; any failure (no network here) is swallowed and reported by the caller."""
    import torchvision.datasets as tvd

    makers = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
    try:
        makers[name](str(root), train=True, download=True)
        makers[name](str(root), train=False, download=True)
    except Exception:  # noqa: BLE001 - offline or blocked: fall through to the clear error
        return None
    loader = _mnist_like if name in ("fashion-mnist", "mnist") else _cifar
    return loader(name, root)


# ---------------------------------------------------------------------- digits
def _digits() -> DataSource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0-16 grey levels -> 0-255 uint8, N x 8 x 8 x 1
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)[..., None]
    everything = SplitData("all", bunch.target.astype(np.int64), images=images)
    train, test = stratified_split(everything, 0.2, seed=0)  # fixed seed: the test set never moves
    train.name, test.name = "train", "test"
    notes = ["digits: scikit-learn's 8x8 digits, fixed 80/20 stratified train/test split; test serves as "
             "validation"]
    return DataSource([str(d) for d in range(10)], {"train": train, "test": test}, "built-in",
                      "sklearn.datasets.load_digits", notes, native_size=8)
