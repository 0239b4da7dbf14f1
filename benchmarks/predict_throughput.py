"""Prediction images/s over a folder of JPEGs of mixed sizes: ``resnetlab predict`` against a plain PIL loop.

The folder: 2,000 Fashion-MNIST images upscaled to random sizes between 96 and 800 px and saved as JPEG
(written once). The model: a resnetlab checkpoint (ResNet-18, 10 classes, random weights: speed does not
depend on the weights). (a) the notebook's loop: for each file PIL open -> RGB -> Resize -> CenterCrop ->
ToTensor -> Normalize -> model(x[None]) in fp32 under no_grad. (b) ``predict_files`` end to end (model load,
parallel decode with JPEG draft scaling, batches, bf16 where the CPU has it, the CSV written).

    python benchmarks/predict_throughput.py
    python benchmarks/predict_throughput.py --img-size 224 --images 500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_CACHE, load_average, print_table  # noqa: E402
from resnetlab.checkpoint import load_model, save_checkpoint  # noqa: E402
from resnetlab.data.builtin import load_builtin  # noqa: E402
from resnetlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from resnetlab.device import resolve_device  # noqa: E402
from resnetlab.models import ModelSpec, build_model  # noqa: E402
from resnetlab.predict import predict_files  # noqa: E402


def jpeg_folder(count: int) -> Path:
    root = BENCH_CACHE / f"jpegs-mixed-{count}"
    if (root / ".complete").is_file():
        return root
    rng = np.random.default_rng(0)
    test = load_builtin("fashion-mnist").splits["test"]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        width, height = (int(v) for v in rng.integers(96, 801, 2))
        grey = Image.fromarray(test.images[i % len(test)][..., 0]).resize((width, height), Image.BILINEAR)
        tint = tuple(int(v) for v in rng.integers(150, 256, 3))  # colour, so the JPEGs are real RGB
        Image.merge("RGB", [grey.point(lambda v, t=t: v * t // 255) for t in tint]).save(
            root / f"photo {i:04d}.jpg", quality=90)
    (root / ".complete").write_text("ok")
    return root


def make_checkpoint(path: Path, img_size: int, stem: str) -> None:
    spec = ModelSpec("resnet18", 10, stem=stem)
    save_checkpoint(path, {"model": build_model(spec).state_dict(), "model_spec": spec.to_dict(),
                           "classes": [f"class {i}" for i in range(10)], "img_size": img_size,
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "config": {}})


def plain_loop(checkpoint: Path, files: list[Path], img_size: int, device: torch.device) -> float:
    from torchvision import transforms as T

    model, _ = load_model(checkpoint, device=device)
    transform = T.Compose([T.Resize(img_size), T.CenterCrop(img_size), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    started = time.perf_counter()
    with torch.no_grad():
        for file in files:
            x = transform(Image.open(file).convert("RGB")).unsqueeze(0).to(device)
            model(x).softmax(dim=1).cpu()
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--img-size", type=int, default=64, help="the model's input size (default: 64)")
    parser.add_argument("--stem", default="standard", choices=("standard", "small"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    folder = jpeg_folder(args.images)
    files = sorted(folder.glob("*.jpg"))
    print(f"{len(files)} JPEGs (96-800 px) -> resnet18 at {args.img_size} px ({args.stem} stem) on {device}; "
          f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        make_checkpoint(checkpoint, args.img_size, args.stem)
        a = plain_loop(checkpoint, files, args.img_size, device)
        started = time.perf_counter()
        predict_files(checkpoint, [str(folder)], out=Path(tmp) / "predictions.csv", device=str(device),
                      progress=False)
        b = len(files) / (time.perf_counter() - started)
    print_table(["path", "img/s", "ratio"], [["(a) plain PIL loop, one image per forward pass, fp32", a, 1.0],
                                             ["(b) resnetlab predict (CSV written)", b, b / a]])
    print(f"b/a = {b / a:.2f}; load average after: {load_average()}")


if __name__ == "__main__":
    main()
