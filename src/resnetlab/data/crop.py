"""The evaluation crop as one value (torchvision's ``ClassificationPresetEval``, timm's ``pretrained_cfg``): what
the model is shown of a picture, carried whole from the config through the checkpoint, the sidecar, the
runtimes, the batch transforms and the heat-map overlays. Torch-free, so any module may import it.

    crop = Crop.from_dict(read_checkpoint("best.pt"))   # the file's flat keys; missing ones: the old defaults
    tensor = decode_image("cat.jpg", 224, crop)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CROP_MODES = ("center", "squash")  # timm's crop_mode values resnetlab implements ("border" is not one)


@dataclass(frozen=True)
class Crop:
    """The standard evaluation crop (timm's and torchvision's): resize the shorter side to floor(size / pct) with
    ``interpolation``, then centre-crop size x size. pct 1.0 is the whole centre square. ``mode`` is timm's
    ``crop_mode``: "center" (that), or "squash": resize the whole image to floor(size / pct) on both sides (the
    aspect ratio is not kept), then centre-crop; with pct 1.0 the model sees all of the picture, edges included.
    A new setting is a field here, its key in to_dict/from_dict (and a TrainConfig flag of that name)."""

    pct: float = 1.0
    interpolation: str = "bilinear"
    mode: str = "center"

    def scale_size(self, size: int) -> int:
        return int(math.floor(size / self.pct))  # timm's transforms_imagenet_eval rounds down too

    def view_fraction(self, size: int) -> float:
        """The share of an image's shorter side (squash: of each side) that the size x size view shows."""
        return size / self.scale_size(size)

    def describe(self) -> str:
        return f"{self.mode} crop {self.pct:g}, {self.interpolation}"

    def to_dict(self) -> dict[str, Any]:
        """The keys of checkpoints and sidecars (flat, beside the other top-level keys): TrainConfig's names."""
        return {"crop_pct": self.pct, "interpolation": self.interpolation, "crop_mode": self.mode}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Crop:
        """From a checkpoint payload or a sidecar; a key missing from files written before it existed takes
        the default (before 0.3: the whole square, bilinear; before crop_mode: center)."""
        return cls(float(data.get("crop_pct", cls.pct)), str(data.get("interpolation", cls.interpolation)),
                   str(data.get("crop_mode", cls.mode)))
