"""Class activation maps (Grad-CAM family, from the grad-cam library): computed on a Classifier's network,
drawn on the images. ``explain``, ``predict --cam``, evaluation's misclassified.png and serve's /explain use it.

    cams = cams_for_batch(classifier, batch_uint8, targets=None)       # N x S x S in [0, 1]
    picture = overlay_for_image(classifier, Image.open("cat.jpg"))   # RGB, the predicted class's heat map
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.images import decode_image, open_rgb
from ..task import task_of
from .compute import CAM_METHODS, cam_class, compute_cams, default_target_layer, resolve_layer
from .overlay import caption, model_view_box, overlay, overlay_name, save_png

__all__ = ["CAM_METHODS", "cam_class", "compute_cams", "default_target_layer", "resolve_layer", "caption",
           "model_view_box", "overlay", "overlay_name", "save_png", "cams_for_batch", "overlay_for_image", "CamRequest"]


@dataclass(frozen=True)
class CamRequest:
    """What explain's heat maps show: the CAM ``method``, the ``layer`` asked for (None: the last stage) and the name
    of the one used, and the ``target``: "pred", "true" or a class index (multi-label: a label index, or None for
    every predicted label)."""

    method: str = "gradcam"
    layer: str | None = None
    layer_name: str = ""
    target: str | int | None = "pred"


def cams_for_batch(classifier, batch_uint8: torch.Tensor, targets: Sequence[int] | None, *,  # noqa: ANN001
                   method: str = "gradcam", layer: str | None = None, batch_size: int = 32,
                   progress: bool = True) -> np.ndarray:
    """uint8 N x C x S x S decoded images -> N x S x S heat maps, with the classifier's own normalisation."""
    return compute_cams(classifier.model, classifier.preprocess(batch_uint8), targets, method=method, layer=layer,
                        batch_size=batch_size, progress=progress)


def overlay_for_image(classifier, image: Image.Image, method: str = "gradcam") -> Image.Image:
    """The predicted class's heat map on ``image`` at its original size (what ``serve``'s /explain returns)."""
    cam_class(method)  # an unknown method fails before any work
    rgb = open_rgb(image)
    batch = decode_image(rgb, classifier.meta.img_size, classifier.meta.crop)[None]  # 1 x 3 x S x S uint8, as /predict
    logits = classifier.logits(batch)
    # K, the same prediction as /predict (multi-label: the most probable label's sigmoid)
    probabilities = task_of(classifier.meta.task).probabilities(logits)[0]
    predicted = int(probabilities.argmax())
    cams = cams_for_batch(classifier, batch, [predicted], method=method, progress=False)  # a server: no bars
    result = overlay(rgb, cams[0], crop=classifier.meta.crop, size=classifier.meta.img_size)
    probability = float(probabilities[predicted])
    result.info.update({"predicted": classifier.classes[predicted], "probability": f"{probability:.6f}",
                        "method": method})
    return result
