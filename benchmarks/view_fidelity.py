"""How far the training view of a picture is from what evaluation feeds the model, for the whole-picture view
(``--crop-mode squash --crop-pct 1``, auto's choice for photo-sized images from scratch), by cache layout.

Evaluation resizes each picture to a square with torchvision's antialiased resize (``images.eval_crop``). Training
used to store the picture letterboxed at 1.5x the training size (cache layout ``whole``) and resample it to the
training size on the batch's bilinear grid (``BatchAugment``); since session 24 auto stores it squashed at the
training size, as evaluation does (``training/data._trains_on_eval_view``). Here both training paths are run with
no random change (preset ``none``) on every image of a folder and compared with the evaluation view: the mean and
the 99th percentile of the absolute difference in grey levels (0-255), and the share of the evaluation view's fine
detail (the energy of its Laplacian) that the training view keeps, by the pictures' aspect ratio.

    python benchmarks/view_fidelity.py DATA_FOLDER [--size 160] [--limit 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.data.cache import storage_side
from resnetlab.data.images import IMAGE_EXTENSIONS, Crop, decode_image, letterbox, open_rgb
from resnetlab.data.transforms import BatchAugment

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def detail(x: torch.Tensor) -> float:
    """The energy of a picture's Laplacian (its fine detail), grey levels squared."""
    grey = x.mean(dim=0, keepdim=True)[None] * 255
    return float(F.conv2d(grey, LAPLACIAN).pow(2).mean())


def views(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(evaluation view, training view from the letterboxed cache, training view from the squashed cache, aspect)"""
    crop = Crop(1.0, "bilinear", "squash")
    image = open_rgb(path)
    evaluated = decode_image(image, size, crop).float() / 255
    array, height, width = letterbox(image, storage_side(size, "whole"))
    boxed = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    from_whole = BatchAugment("none", size, crop=crop)(boxed, torch.Generator(), torch.tensor([[height, width]]))[0]
    # the square layout stores the evaluation view itself; training flips it on the batch's grid (no flip drawn here)
    from_square = BatchAugment("flip", size, hflip=False, crop=crop)(evaluated[None], torch.Generator())[0]
    return evaluated, from_whole, from_square, max(image.size) / min(image.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a folder of pictures (searched recursively)")
    parser.add_argument("--size", type=int, default=160, help="the training size (auto's for photos: 128-160)")
    parser.add_argument("--limit", type=int, default=400, help="at most this many pictures, in name order")
    args = parser.parse_args()
    paths = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:args.limit]
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for path in paths:
        evaluated, from_whole, from_square, aspect = views(path, args.size)
        band = "up to 3:2" if aspect <= 1.5 else "longer than 3:2"
        reference = detail(evaluated)
        for layout, view in (("whole (letterboxed 1.5x, before)", from_whole), ("square (squashed, now)", from_square)):
            difference = (view - evaluated).abs() * 255
            rows.setdefault(f"{layout} | {band}", []).append(
                (float(difference.mean()), float(difference.flatten().quantile(0.99)),
                 detail(view) / max(reference, 1e-9)))
    print(f"{len(paths)} pictures from {args.data}, training size {args.size} px, whole view (squash, crop 1)\n")
    print("| training cache layout | aspect ratio | pictures | mean abs diff | 99th pct abs diff | fine detail kept |")
    print("|---|---|---|---|---|---|")
    for key in sorted(rows):
        values = np.asarray(rows[key])
        layout, band = key.split(" | ")
        print(f"| {layout} | {band} | {len(values)} | {values[:, 0].mean():.2f} | {values[:, 1].mean():.1f} | "
              f"{values[:, 2].mean():.0%} |")
    print("\ngrey levels 0-255 against the evaluation view; fine detail: the Laplacian's energy, training view / "
          "evaluation view")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
