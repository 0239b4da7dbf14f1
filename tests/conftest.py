"""Tiny data sets written to temporary folders: coloured shapes whose class is easy to learn."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image, ImageDraw

import resnetlab
from resnetlab.log import configure

# What results depend on, pinned for every test and every process a test starts: the CPU (never a GPU that a
# machine happens to have), no hub downloads, and fp32 under --amp auto (bf16 only where a test asks for it), so
# accuracy thresholds mean the same on an AMX Xeon, an AVX512-BF16 EPYC and a CPU without bf16.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RESNETLAB_CPU_BF16"] = "0"
# One compute thread per process (and per process a test starts), unless OMP_NUM_THREADS says otherwise: the tiny
# models here are too small to gain from two, and on a 2-core machine that is shared, or busy with a server thread
# or a second rank beside the test, two OpenMP threads waiting on each other make a training step 5-40x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# RESNETLAB_REQUIRE=all (.ci/run sets it): a test skipped for a missing component (an extra, chromium, a tmpfs) is
# a failure that names it, so CI cannot go green without the real parts; locally the skips stay, listed by -ra.
REQUIRE_ALL = os.environ.get("RESNETLAB_REQUIRE") == "all"
INSTALL_HINT = "make test installs every extra (pip install -e '.[dev]') and Debian's chromium (make browser)"


def _required(report) -> None:  # noqa: ANN001 - a pytest TestReport or CollectReport
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"RESNETLAB_REQUIRE=all: skipped for a missing component: {reason}\n({INSTALL_HINT})"


def pytest_collection_modifyitems(items) -> None:  # noqa: ANN001
    """The tests marked slow (torchrun, tune studies, servers, signals: 10-45 s each) go first, so the two workers
    share them and the suite does not end with one worker running a 40-second test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ARG001
    _required((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # noqa: ANN001, ARG001 - a module-level importorskip
    _required((yield).get_result())


settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

def _quick_grid(images, titles, path, **kwargs) -> None:  # noqa: ANN001, ARG001 - plots.image_grid's signature
    """plots.image_grid's stand-in: the images side by side in a real PNG, without matplotlib's titled axes."""
    if len(images) == 0:
        raise ValueError("image_grid needs at least one image")
    if len(titles) != len(images):
        raise ValueError("image_grid needs one title per image")
    arrays = [np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image) for image in images]
    side = max(max(a.shape[:2]) for a in arrays)
    sheet = Image.new("RGB", (side * min(8, len(arrays)), side * ((len(arrays) + 7) // 8)), "white")
    for i, array in enumerate(arrays):
        sheet.paste(Image.fromarray(array), ((i % 8) * side, (i // 8) * side))
    _write_png(sheet, path)


def _quick_save(fig, path) -> None:  # noqa: ANN001 - plots.save_figure's signature
    """plots.save_figure's stand-in: a blank PNG of the figure's pixel size, the figure closed undrawn."""
    import matplotlib.pyplot as plt

    width, height = (fig.get_size_inches() * 100).astype(int)
    plt.close(fig)
    _write_png(Image.new("RGB", (int(width), int(height)), "white"), path)


def _write_png(image: Image.Image, path) -> None:  # noqa: ANN001
    from resnetlab.fileio import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="png")


@pytest.fixture(autouse=True)
def quick_figures(request, monkeypatch) -> None:
    """Figures written undrawn (``_quick_grid``, ``_quick_save``, no tight_layout) unless the test is marked
    ``real_figures``: matplotlib's drawing is ~0.3 s a figure on 2 cores and a tiny run writes 5-10 of them,
    a third of its time. test_report, the explain tests and the marked ones look at the real figures."""
    if request.node.get_closest_marker("real_figures"):
        return
    import sys

    import matplotlib.figure

    import resnetlab.evaluation
    import resnetlab.explain
    import resnetlab.multilabel.figures
    import resnetlab.multilabel.outputs
    import resnetlab.plots
    import resnetlab.training.finish
    import resnetlab.training.lr_find  # noqa: F401 - every module that holds them, imported before the swap

    swaps = {"image_grid": (resnetlab.plots.image_grid, _quick_grid),
             "save_figure": (resnetlab.plots.save_figure, _quick_save)}
    for name, module in list(sys.modules.items()):
        if name.startswith("resnetlab"):
            for attribute, (real, quick) in swaps.items():
                if getattr(module, attribute, None) is real:
                    monkeypatch.setattr(module, attribute, quick)
    monkeypatch.setattr(matplotlib.figure.Figure, "tight_layout", lambda self, *args, **kwargs: None)


# Class -> fill colour. Names have a space and an accent on purpose.
TOY_CLASSES = {"blue sky": (40, 60, 230), "green léaf": (40, 200, 60), "red": (230, 40, 40)}
FAST = ["--width", "0.25", "--batch-size", "32", "--no-progress", "--workers", "1"]


def make_image(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 20) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 70, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(0, size // 2, 2))
    draw.rectangle([x, y, x + size // 2, y + size // 2], fill=colour)
    return image


def write_class_folders(root: Path, per_class: int, seed: int = 0, ext: str = "png") -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in TOY_CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(rng, colour).save(folder / f"img {i:03d}.{ext}")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own decode cache, so tests never see the user's cache; likewise an empty Hugging Face
    hub cache and no RESNETLAB_WEIGHTS folder, so `--pretrained hub` and the auto recipe's weights lookup find only
    what a test puts there (HF_HUB_OFFLINE, set above, keeps every test off the network)."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-hub"))
    monkeypatch.delenv("RESNETLAB_WEIGHTS", raising=False)


@pytest.fixture(autouse=True)
def _messages_on_stderr():
    """resnetlab's log messages printed (on stderr) as the CLI prints them, even though pytest's own log capture
    gives the root logger a handler: API calls and CLI runs then read alike in capsys.readouterr().err."""
    configure(0)


@pytest.fixture
def split_folders(tmp_path: Path) -> Path:
    """toy/Train/<class>/..., toy/Val/<class>/... (capitalised on purpose)."""
    root = tmp_path / "toy"
    write_class_folders(root / "Train", 24, seed=1)
    write_class_folders(root / "Val", 8, seed=2)
    return root


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "classes", 20, seed=3)


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    """images/<n>.png listed in labels.csv with a split column."""
    rng = np.random.default_rng(4)
    folder = tmp_path / "csvdata" / "images"
    folder.mkdir(parents=True)
    rows = []
    for name, colour in TOY_CLASSES.items():
        for i in range(20):
            file = folder / f"{name[:3]}_{i}.jpg"
            make_image(rng, colour).save(file, quality=95)
            rows.append([f"images/{file.name}", name, "val" if i % 5 == 0 else "train"])
    csv_path = tmp_path / "csvdata" / "labels.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return csv_path


# One tiny trained run for the whole session: the tests that only need *a* checkpoint (evaluate, predict, export, serve,
# report, explain, TTA) share it instead of each training their own. It is read-only: a test that writes into a run
# folder (export beside best.pt, evaluate into it) works on ``trained_run.copy_to(tmp_path / ...)``.
TRAINED_SETTINGS = {"epochs": 1, "img_size": 16, "width": 0.25, "batch_size": 16, "lr": 0.05, "progress": False,
                    "workers": 1, "device": "cpu", "seed": 0}
# Three epochs of the same: 100 % validation accuracy and a mean top probability near 0.5 (the one-epoch model calls
# 22 of the 24 validation images one class, with probabilities within 0.04 of 1/3): for tests that compare an export
# or a server with the checkpoint, where a model that says the same thing for every image would agree with anything.
LEARNED_SETTINGS = {**TRAINED_SETTINGS, "epochs": 3}


@dataclass(frozen=True)
class TrainedRun:
    run_dir: Path  # best.pt, last.pt, metrics.csv, config.yaml, report.html, ...: never write here
    data: Path  # the toy set it was trained on: Train/<class>/..., Val/<class>/... (TOY_CLASSES)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    def copy_to(self, destination: Path) -> Path:
        """A private copy of the run folder, for tests that write into it; returns ``destination``."""
        shutil.copytree(self.run_dir, destination)
        return destination


_SESSION: dict = {}


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _session_tmp(tmp_path_factory):
    """Remembers the session's tmp_path_factory for ``trained_tiny_run`` (also called outside fixtures, by
    serving.train_tiny); at the end, fails if any test changed the shared run or its data."""
    _SESSION["factory"] = tmp_path_factory
    yield
    fingerprints = _SESSION.get("fingerprints", {})
    _SESSION.clear()
    changed = [name for name, (folder, before) in fingerprints.items() if _fingerprint(folder) != before]
    assert not changed, f"a test wrote into the shared trained run's {changed}: copy it first (copy_to)"


def trained_tiny_run() -> TrainedRun:
    """The session's trained run, trained on first use: one epoch of a quarter-width ResNet-18 on 16 px toy images
    (3 classes, 72 training and 24 validation images), seeded, on the CPU."""
    return _session_run("trained", TRAINED_SETTINGS)


def learned_tiny_run() -> TrainedRun:
    """Like ``trained_tiny_run`` but three epochs (LEARNED_SETTINGS): a model whose labels follow the images."""
    return _session_run("learned", LEARNED_SETTINGS)


def _session_run(name: str, settings: dict) -> TrainedRun:
    if name not in _SESSION:
        root = _SESSION["factory"].mktemp(name)
        data = root / "toy"
        write_class_folders(data / "Train", 24, seed=1)
        write_class_folders(data / "Val", 8, seed=2)
        result = resnetlab.train(data=str(data), out=str(root / "run"), cache_dir=str(root / "cache"), **settings)
        trained = TrainedRun(result.run_dir, data)
        fingerprints = _SESSION.setdefault("fingerprints", {})
        fingerprints[f"{name} run folder"] = (trained.run_dir, _fingerprint(trained.run_dir))
        fingerprints[f"{name} data"] = (data, _fingerprint(data))
        _SESSION[name] = trained
    return _SESSION[name]


@pytest.fixture(scope="session")
def trained_run(_session_tmp) -> TrainedRun:
    return trained_tiny_run()


@pytest.fixture(scope="session")
def learned_run(_session_tmp) -> TrainedRun:
    return learned_tiny_run()


@pytest.fixture
def no_figures(monkeypatch) -> list[Path]:
    """Training without samples.png, curves.png and the end-of-run evaluation and report.html, which take a few
    seconds of every tiny run on 2 cores: for tests about the training itself (test_report covers those files).
    Returns the run folders whose end-of-run evaluation was called, in order."""
    import resnetlab.training.loop
    import resnetlab.training.run

    finished: list[Path] = []
    monkeypatch.setattr(resnetlab.training.run, "finish_run", lambda run_dir, *args, **kwargs: finished.append(run_dir))
    monkeypatch.setattr(resnetlab.training.run, "plot_samples", lambda *args, **kwargs: None)
    monkeypatch.setattr(resnetlab.training.loop, "plot_curves", lambda *args, **kwargs: None)
    return finished
