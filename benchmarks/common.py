"""What the benchmarks share: Fashion-MNIST written as PNG class folders, and the plain PyTorch recipe.

The plain recipe is what the seed notebooks do: torchvision ImageFolder + PIL transforms + DataLoader
workers + an fp32 training loop, on the same model resnetlab trains.

    root = fashion_mnist_folders(6000)               # ~/.cache/resnetlab/bench/fmnist-png-6000/{train,test}/<class>/
    loader = plain_loader(root / "train", img_size=32, batch_size=128, workers=2)
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BENCH_CACHE = Path(os.environ.get("RESNETLAB_BENCH_DIR", "~/.cache/resnetlab/bench")).expanduser()


def fashion_mnist_folders(train_images: int, test_images: int = 2000, data_root: str | None = None) -> Path:
    """The first ``train_images`` / ``test_images`` Fashion-MNIST images as PNG files in class folders."""
    from resnetlab.data.builtin import load_builtin

    root = BENCH_CACHE / f"fmnist-png-{train_images}-{test_images}"
    done = root / ".complete"
    if done.is_file():
        return root
    source = load_builtin("fashion-mnist", data_root=data_root)
    for split, count in (("train", train_images), ("test", test_images)):
        data = source.splits[split]
        for i in range(min(count, len(data))):
            name = source.classes[int(data.labels[i])].replace("/", "-")  # "T-shirt/top" is not a folder name
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i][..., 0]).save(folder / f"{i:05d}.png")
    done.write_text("ok")
    return root


def plain_transforms(img_size: int, train: bool):
    from torchvision import transforms as T

    steps = [T.Grayscale(3), T.Resize(img_size)]
    if train:
        steps += [T.RandomHorizontalFlip(), T.RandomCrop(img_size, padding=img_size // 8)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def plain_loader(folder: Path, *, img_size: int, batch_size: int, workers: int, train: bool = True):
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(folder), transform=plain_transforms(img_size, train))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                                       drop_last=train, persistent_workers=workers > 0)


def plain_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """The notebook's step: fp32, default memory format."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def timed(function, repeats: int = 1) -> float:
    """Seconds per call of ``function`` (a CUDA device is synchronised by the caller's function)."""
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def cpu_name() -> str:
    """The CPU's model name (for the benchmarks' header line)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                        platform.processor() or "unknown CPU")
    except OSError:
        return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def print_table(header: list[str], rows: list[list], title: str = "") -> None:
    """A fixed-width table: what every benchmark prints."""
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if title:
        print(title)
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def seed_everything(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
