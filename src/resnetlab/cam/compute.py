"""CAM computation with the grad-cam library: pick the layer, batch the images, and leave the model as it was
found (mode, requires_grad flags, .grad tensors, the target layer).

    cams = compute_cams(model, x, targets=None, method="gradcam")   # N x S x S in [0, 1]
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
import tqdm
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    ablation_cam,
    score_cam,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..errors import ExplainError
from ..log import progress_enabled
from ..models import unwrap

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last block of the last stage (``layer4[-1]`` in every ResNet of models.ARCHITECTURES): the finest map
    that still sees whole objects. The stage is the last of timm's ``feature_info``; without one, the last Conv2d."""
    network = unwrap(model)
    info = getattr(network, "feature_info", None)
    if info:
        stage = network.get_submodule(info[-1]["module"])
        if isinstance(stage, nn.Sequential) and len(stage):
            return stage[-1]
        if not isinstance(stage, nn.Identity):
            return stage
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(network).__name__} has no last stage and no Conv2d layer; pass --layer NAME")
    return convs[-1]


def _default_layer_name(network: nn.Module) -> str:
    layer = default_target_layer(network)
    return next(name for name, module in network.named_modules() if module is layer)


def resolve_layer(model: nn.Module, name: str | None) -> nn.Module:
    """A dotted module name ("layer3.1", "layer4.-1") of the unwrapped network, or the default layer for None."""
    network = unwrap(model)
    if not name:
        return default_target_layer(network)
    module = network
    for atom in name.split("."):
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and re.fullmatch(r"-?\d+", atom):
            index = int(atom)
            module = module[index] if -len(module) <= index < len(module) else None
        else:
            module = module._modules.get(atom) if atom else None
        if module is None:
            names = [n for n, _ in network.named_modules() if n]
            close = difflib.get_close_matches(name, names, n=3)
            examples = [n for n in names if n.count(".") == 0] + [n for n in names if re.fullmatch(r"layer\d\.\d+", n)]
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ExplainError(f"unknown --layer '{name}' in {type(network).__name__}; {hint}valid names include "
                               f"{', '.join(examples[:24])} (default: {_default_layer_name(network)})")
    return module


def cam_class(method: str) -> type:
    """The grad-cam class for a method name; an unknown name is an ExplainError listing the valid ones."""
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown CAM method '{method}'; choose one of {', '.join(CAM_METHODS)}")
    return CAM_METHODS[method]


# ---------------------------------------------------------------------- heat maps
def compute_cams(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, *,
                 method: str = "gradcam", layer: str | None = None, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """x: normalised float N x 3 x S x S on the model's device; targets: class index per image (None = predicted).

    Returns N x S x S float32 in [0, 1]. Batched: one CAM object, forward passes of ``batch_size`` images.
    The model's train/eval mode, ``requires_grad`` flags and ``.grad`` tensors are as before afterwards.
    ``progress=False`` silences the per-channel progress bars scorecam and ablationcam draw on stderr.
    """
    factory = cam_class(method)
    network = unwrap(model)
    target_layer = resolve_layer(network, layer)
    if targets is not None and len(targets) != len(x):
        raise ValueError(f"{len(targets)} targets for {len(x)} images")
    classes = _num_classes(network)
    if targets is not None and classes and any(not 0 <= int(t) < classes for t in targets):
        raise ExplainError(f"target class indices must be in 0..{classes - 1}, got {sorted(set(map(int, targets)))}")
    batch_size = max(1, int(batch_size))
    result = np.zeros((len(x), *x.shape[-2:]), dtype=np.float32)  # N x S x S
    if len(x) == 0:
        return result
    saved = _ModelState(network, target_layer)
    done = 0
    try:
        network.eval()
        # The gradient reaches the layer through the input, so parameters need none: no weight gradients are
        # computed, and a frozen backbone (requires_grad False) still gets its CAM.
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            # leaving the `with` releases the CAM's hooks (and puts grad-cam's progress bars back)
            bars = _library_bars(progress_enabled(progress))
            with bars, _make_cam(factory, network, target_layer, batch_size) as cam:
                for start in range(0, len(x), batch_size):
                    # a plain fp32 leaf even when x was made under inference_mode or autocast
                    batch = x[start:start + batch_size].detach().clone().float().requires_grad_(True)
                    chosen = None if targets is None else [ClassifierOutputTarget(int(t))
                                                            for t in targets[start:start + batch_size]]
                    try:
                        result[start:start + len(batch)] = cam(input_tensor=batch, targets=chosen)
                    except ValueError as err:
                        if "shape" in str(err):  # the library's words for a layer without an N x C x H x W output
                            raise ExplainError(f"--layer '{layer}' gives no 2-D feature map (it is not a "
                                               f"convolutional block); try {_default_layer_name(network)}") from None
                        raise
                    done += len(batch)
    finally:
        saved.restore(network)
    if done != len(x):  # the library's __exit__ swallows IndexError; never return half-filled maps silently
        raise RuntimeError(f"{method} stopped after {done} of {len(x)} images")
    return np.clip(result, 0.0, 1.0)


@contextmanager
def _library_bars(shown: bool) -> Iterator[None]:
    """grad-cam's ScoreCAM and AblationCAM wrap their per-channel loops in ``tqdm.tqdm(...)`` with no switch:
    with ``shown`` False their modules see a tqdm that is disabled, for the duration of the block only."""
    if shown:
        yield
        return
    quiet = SimpleNamespace(tqdm=partial(tqdm.tqdm, disable=True))
    saved = [(module, module.tqdm) for module in (score_cam, ablation_cam)]
    for module, _ in saved:
        module.tqdm = quiet
    try:
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


def _make_cam(factory: type, network: nn.Module, target_layer: nn.Module, batch_size: int):
    if factory is AblationCAM:  # a fresh ablation layer: the library's default one is shared between instances
        return AblationCAM(network, [target_layer], ablation_layer=AblationLayer(), batch_size=batch_size)
    cam = factory(network, [target_layer])
    cam.batch_size = batch_size  # ScoreCAM: masked copies scored per forward pass
    return cam


def _num_classes(network: nn.Module) -> int | None:
    return getattr(network, "num_classes", None)


class _ModelState:
    """What CAM computation changes on a model, put back afterwards: its mode, requires_grad flags and .grad
    tensors, and the target layer (AblationCAM swaps it out for a while; an error could leave it swapped)."""

    def __init__(self, network: nn.Module, target_layer: nn.Module):
        self.training = network.training
        self.parameters = [(p, p.requires_grad, p.grad) for p in network.parameters()]
        self.layer = target_layer
        self.layer_name = next(n for n, m in network.named_modules() if m is target_layer)

    def restore(self, network: nn.Module) -> None:
        for parameter, requires_grad, grad in self.parameters:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        network.train(self.training)
        parent_name, _, last = self.layer_name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        if self.layer_name and parent._modules.get(last) is not self.layer:
            parent._modules[last] = self.layer
