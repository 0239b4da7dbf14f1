"""Batch-level preprocessing on the training device: augmentation presets and normalisation.

Images arrive as uint8 batches (N x C x S x S). Augmentation draws its random numbers per image but
runs as a handful of batched tensor ops (one affine resample for flip, rotation, padded crop and
random-resized-crop). torchvision's v2 transforms draw one set of parameters per call, so on a batch
they would apply the same crop to every image; calling them per image costs a Python loop per sample.

    augment = BatchAugment("light", size=32)
    x = normalize(augment(batch_uint8.float() / 255, generator), mean, std)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .crop import Crop

if TYPE_CHECKING:
    import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUG_PRESETS = ("none", "flip", "crop", "light", "standard", "strong")


def rgb(batch: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W (grey) -> N x 3 x H x W as a view; 3-channel batches unchanged."""
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def to_float_rgb(batch: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W (C = 1 or 3) -> float32 N x 3 x H x W in [0, 1]."""
    batch = batch.float().div_(255.0)
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with mean/std shaped 1 x 3 x 1 x 1 on the batch's device."""
    return (batch - mean) / std


def denormalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float N x 3 x H x W (as the model sees it) -> uint8 N x 3 x H x W for viewing."""
    mean_t, std_t = stats_tensor(mean, batch.device), stats_tensor(std, batch.device)
    return (batch.float() * std_t + mean_t).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def to_rgb_array(batch: torch.Tensor) -> np.ndarray:
    """uint8 N x C x H x W tensor (C = 1 or 3) -> N x H x W x 3 numpy array, what image plots take."""
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def stats_tensor(values, device: torch.device | str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def preprocess_batch(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
                     channels_last: bool = False) -> torch.Tensor:
    """The eval transform after decoding: uint8 batch -> normalised float model input."""
    x = normalize(to_float_rgb(batch), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class BatchAugment:
    """Per-image random augmentation of a float batch in [0, 1] (N x C x S x S, or whole images letterboxed in
    larger squares with their content sizes), on its own device.

    flip: a horizontal flip only (with ``vflip``: and a vertical one, the plain script's augmentation and the race's
    "plain" candidate). crop: horizontal
    flip and a shift by up to S/8 pixels (a padded crop, as the fast CIFAR recipes use: short
    schedules learn faster without rotation). light: crop + rotation within +-10 degrees (= crop with
    zero padding). standard: random-resized-crop (8-100 % of the area, aspect 3/4-4/3) instead of the
    shift, plus colour jitter (0.3). strong: standard + TrivialAugment per image + random erasing (0.25).
    ``erase``: random erasing (a box of 2-25 % of the image filled with noise) with this probability on top
    of any preset, the regulariser of the best Fashion-MNIST entries (Zhong et al. 2017).
    """

    def __init__(self, preset: str, size: int, *, hflip: bool = True, erase: float = 0.0, crop: Crop = Crop(),
                 vflip: bool = False):
        if preset not in AUG_PRESETS:
            raise ValueError(f"augmentation preset '{preset}' is not one of {', '.join(AUG_PRESETS)}")
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"random erasing probability must be within 0-1, got {erase}")
        self.preset, self.size, self.hflip, self.vflip = preset, size, hflip, vflip
        self.crop = crop  # whole images, presets without random-resized-crop: the evaluation crop's zoom and shape
        self.erase = erase if erase or preset != "strong" else 0.25
        self._trivial = None
        if preset == "strong":
            from torchvision.transforms import v2

            self._trivial = v2.TrivialAugmentWide()

    def __call__(self, x: torch.Tensor, generator: torch.Generator, content: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """x: float N x C x H x W in [0, 1] (C = 1 or 3). ``content``: N x 2, each whole image's height and width
        at the top-left of its letterboxed square (cache layout "whole"); the crop is then taken from the whole
        picture. Returns N x 3 x S x S."""
        if self.preset == "none" and content is None:
            x = rgb(x)
            return self._random_erase(x, generator, probability=self.erase) if self.erase else x
        if self._trivial is not None and content is None:
            x = self._trivial_augment(rgb(x), generator)
        x = rgb(self._affine(x, generator, content))
        if self._trivial is not None and content is not None:  # on the S x S view, not the padded square
            x = self._trivial_augment(x, generator)
        if self.preset in ("standard", "strong"):
            x = self._colour_jitter(x, generator, strength=0.3)
        if self.erase:
            x = self._random_erase(x, generator, probability=self.erase)
        return x

    def _uniform(self, n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
        return torch.rand(n, generator=g, device=device) * (high - low) + low

    def _affine(self, x: torch.Tensor, g: torch.Generator, content: torch.Tensor | None) -> torch.Tensor:
        """One bilinear resample per batch: flip, then the preset's window (a shifted/rotated square, or a
        random-resized-crop), mapped into each image's content box when ``content`` is given."""
        n, side, device = x.shape[0], x.shape[-1], x.device
        heights, widths = ((content[:, 0].to(device, torch.float32), content[:, 1].to(device, torch.float32))
                           if content is not None else (torch.full((n,), float(side), device=device),) * 2)
        sign = torch.ones(n, device=device)
        if self.hflip and self.preset != "none":
            sign = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -sign, sign)
        if self.preset in ("none", "flip", "crop", "light"):
            theta = self._square_window(n, sign, g, device)
            if content is not None and self.crop.mode == "squash":  # the window spans the evaluation crop's share
                theta *= self.crop.pct                                 # of each side of the whole image
            elif content is not None:  # the window lives in the evaluation crop's centre square of the whole image
                shorter = torch.minimum(heights, widths) * self.crop.pct
                theta[:, 0] *= (shorter / widths).view(n, 1)
                theta[:, 1] *= (shorter / heights).view(n, 1)
        else:
            theta = self._random_resized_crop(sign, heights, widths, g)
        if self.vflip and self.preset != "none":  # the output's y mirrored: the y column of output -> input negated
            flip_y = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
            theta[:, :, 1] *= flip_y.view(n, 1)
        if content is not None:  # content coordinates -> the letterboxed square's
            for row, extent in ((0, widths / side), (1, heights / side)):
                theta[:, row] *= extent.view(n, 1)
                theta[:, row, 2] += extent - 1
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _square_window(self, n: int, sign: torch.Tensor, g: torch.Generator, device) -> torch.Tensor:
        """crop/light: a shift by up to 1/8 of the side (light: and a rotation within +-10 degrees); none and flip:
        all of it (flip: mirrored at random by ``_affine``)."""
        zeros = torch.zeros(n, device=device)
        angle, shift_x, shift_y = zeros, zeros, zeros
        if self.preset not in ("none", "flip"):
            angle = self._uniform(n, -10.0, 10.0, g, device) * (math.pi / 180)
            if self.preset == "crop":  # drawn all the same, so both presets consume one random stream
                angle = torch.zeros_like(angle)
            max_shift = 2.0 * max(1, self.size // 8) / self.size  # normalised coords span 2
            # whole-pixel shifts keep unrotated pixels exact under bilinear resampling
            steps = max(1, self.size // 8)
            shift_x = torch.randint(-steps, steps + 1, (n,), generator=g, device=device) * (max_shift / steps)
            shift_y = torch.randint(-steps, steps + 1, (n,), generator=g, device=device) * (max_shift / steps)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack([torch.stack([cos * sign, -sin, shift_x], dim=1),
                            torch.stack([sin * sign, cos, shift_y], dim=1)], dim=1)  # N x 2 x 3: output -> input

    def _random_resized_crop(self, sign: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
                             g: torch.Generator) -> torch.Tensor:
        """torchvision's RandomResizedCrop window per image, in its content's coordinates: 8-100 % of the whole
        image's area, aspect 3/4-4/3, ten tries for a window that fits, else the whole image with its aspect
        clamped to 3/4-4/3."""
        n, device, tries = len(sign), sign.device, 10
        area = (heights * widths).view(n, 1) * (torch.rand(n, tries, generator=g, device=device) * 0.92 + 0.08)
        log_ratio = torch.rand(n, tries, generator=g, device=device) * math.log(16 / 9) + math.log(3 / 4)
        crop_w, crop_h = torch.sqrt(area * torch.exp(log_ratio)), torch.sqrt(area / torch.exp(log_ratio))
        fits = (crop_w <= widths.view(n, 1)) & (crop_h <= heights.view(n, 1))
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits
        aspect = widths / heights
        fallback_w = torch.where(aspect > 4 / 3, heights * 4 / 3, widths)
        fallback_h = torch.where(aspect < 3 / 4, widths * 4 / 3, heights)
        found = fits.any(dim=1)
        scale_x = torch.where(found, crop_w.gather(1, first).squeeze(1), fallback_w) / widths
        scale_y = torch.where(found, crop_h.gather(1, first).squeeze(1), fallback_h) / heights
        shift_x = (torch.rand(n, generator=g, device=device) * 2 - 1) * (1 - scale_x)
        shift_y = (torch.rand(n, generator=g, device=device) * 2 - 1) * (1 - scale_y)
        zeros = torch.zeros(n, device=device)
        return torch.stack([torch.stack([scale_x * sign, zeros, shift_x], dim=1),
                            torch.stack([zeros, scale_y, shift_y], dim=1)], dim=1)

    def _colour_jitter(self, x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
        n, device = x.shape[0], x.device
        brightness = self._uniform(n, 1 - strength, 1 + strength, g, device).view(n, 1, 1, 1)
        contrast = self._uniform(n, 1 - strength, 1 + strength, g, device).view(n, 1, 1, 1)
        saturation = self._uniform(n, 1 - strength, 1 + strength, g, device).view(n, 1, 1, 1)
        x = x * brightness
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # N x 1 x H x W
        x = (x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = grey + (x - grey) * saturation
        return x.clamp(0.0, 1.0)

    def _random_erase(self, x: torch.Tensor, g: torch.Generator, probability: float) -> torch.Tensor:
        n, _, h, w = x.shape
        device = x.device
        area = self._uniform(n, 0.02, 0.25, g, device)
        ratio = torch.exp(self._uniform(n, math.log(0.3), math.log(3.3), g, device))
        eh = (torch.sqrt(area / ratio) * h).clamp(max=h)
        ew = (torch.sqrt(area * ratio) * w).clamp(max=w)
        top = torch.rand(n, generator=g, device=device) * (h - eh)
        left = torch.rand(n, generator=g, device=device) * (w - ew)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)))
        apply = (torch.rand(n, generator=g, device=device) < probability).view(n, 1, 1)
        noise = torch.rand(x.shape, generator=g, device=device)
        return torch.where((inside & apply).unsqueeze(1), noise, x)

    def _trivial_augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # TrivialAugment draws from the global RNG: seed it from our generator so runs stay reproducible.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device).item())
        as_uint8 = (x * 255).round().to(torch.uint8)
        with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
            torch.manual_seed(seed)
            out = torch.stack([self._trivial(image) for image in as_uint8])
        return out.float() / 255.0
