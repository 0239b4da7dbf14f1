"""Tiny data sets written to temporary folders: coloured shapes whose class is easy to learn."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image, ImageDraw

from resnetlab.log import configure

# What results depend on, pinned for every test and every process a test starts: the CPU (never a GPU that a
# machine happens to have), no hub downloads, and fp32 under --amp auto (bf16 only where a test asks for it), so
# accuracy thresholds mean the same on an AMX Xeon, an AVX512-BF16 EPYC and a CPU without bf16.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RESNETLAB_CPU_BF16"] = "0"
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

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
    """Each test session gets its own decode cache, so tests never see the user's cache."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _messages_on_stdout():
    """resnetlab's log messages printed as the CLI prints them, so API calls and CLI runs read alike in capsys."""
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
