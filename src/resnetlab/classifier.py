"""One ``Classifier`` over several backends, chosen when the file is loaded (as Ultralytics' AutoBackend does):
a PyTorch checkpoint runs in torch, an exported file in its runtime (resnetlab.runtimes: onnxruntime, OpenVINO,
torch.jit). All take the same decoded uint8 images and apply the same preprocessing, so predict, evaluate and
serve never ask which one they have.

    clf = load("runs/x/best.pt")              # or "runs/x/best.onnx", "runs/x/best.xml"
    clf.predict(["a.jpg", pil_image])[0].label
    clf.embed(["a.jpg"])                      # N x D pooled backbone features (torch only)
    clf.runtime                               # "torch", "onnxruntime", "openvino" or "torchscript"; clf.model
                                              # (the network Grad-CAM needs) is None for an exported file
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .calibration import UNSURE, tempered
from .checkpoint import ModelMeta, load_model
from .data.images import decode_image
from .data.transforms import preprocess_batch, stats_tensor
from .device import amp_dtype_for, autocast, resolve_device
from .errors import ConfigError, ModelError
from .models import first_stage_side, unwrap
from .runtimes import ExportedBackend, OnnxBackend, meta_from_sidecar, open_exported, runtime_of
from .task import task_of

__all__ = ["Classifier", "OnnxBackend", "Prediction", "TorchBackend", "from_model", "load", "load_exported"]


@dataclass
class Prediction:
    label: str
    confidence: float
    top: list[tuple[str, float]]  # (label, probability), best first
    probabilities: np.ndarray  # one per class, in the model's class order
    labels: list[tuple[str, float]] | None = None  # multi-label: every label at or above its threshold (label: 'a|b')


class TorchBackend:
    """A PyTorch network in eval mode on ``device`` (channels-last, optional autocast); its logits are divided by the
    checkpoint's calibration ``temperature`` (an exported graph holds that division itself)."""

    runtime = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None,
                 temperature: float = 1.0):
        self.model, self.device, self.amp_dtype, self.temperature = model.eval(), device, amp_dtype, temperature

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float N x 3 x S x S on ``device`` -> logits N x K, float32 on CPU."""
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            logits = self.model(x).float().cpu()
        return logits if self.temperature == 1.0 else logits / self.temperature


class Classifier:
    """A trained model with its preprocessing: give it paths, PIL images or image tensors.

    Example::

        import resnetlab
        clf = resnetlab.load("runs/photos/best.pt")      # a resnetlab.Classifier
        best = clf.predict(["photos/cat/1.jpg"])[0]
        print(best.label, clf.classes)
    """

    def __init__(self, backend: TorchBackend | ExportedBackend, meta: ModelMeta):
        self.backend, self.meta = backend, meta
        self.classes = meta.classes
        self.device = backend.device
        self._mean, self._std = stats_tensor(meta.mean, self.device), stats_tensor(meta.std, self.device)

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch network (what Grad-CAM needs), or None for an exported runtime."""
        return self.backend.model

    def preprocess(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x S x S (already decoded) -> the normalised float input on this classifier's device."""
        return preprocess_batch(batch_uint8.to(self.device, non_blocking=True), self._mean, self._std,
                                channels_last=self.runtime == "torch")

    def logits(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x S x S (already decoded) -> logits N x K, float32 on CPU."""
        return self.backend(self.preprocess(batch_uint8))

    def decode(self, image: str | os.PathLike | Image.Image | torch.Tensor) -> torch.Tensor:
        """A path, PIL image or C x H x W tensor (uint8, or float in [0, 1]) -> uint8 3 x S x S."""
        if isinstance(image, torch.Tensor):
            from torchvision.transforms.functional import to_pil_image  # torchvision: loaded only for tensors

            image = to_pil_image(image if image.dtype == torch.uint8 else image.clamp(0, 1))
        return decode_image(image, self.meta.img_size, self.meta.crop)

    def predict(self, images: Sequence | str | Image.Image | torch.Tensor, *, topk: int = 5,
                batch_size: int = 64) -> list[Prediction]:
        """One Prediction per image; a single image may be passed without a list. An unreadable file raises
        ImageReadError naming it and why (``resnetlab predict`` on the command line writes an error row instead)."""
        if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
            images = [images]
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.decode(image) for image in images[start:start + batch_size]])
            results += self.to_predictions(self.logits(batch), topk)
        return results

    def features(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x S x S (already decoded) -> pooled backbone features N x D (what the head receives), float32
        on CPU. A TTA wrapper is looked through: the features are those of the plain view."""
        network = self._network()
        with torch.inference_mode(), autocast(self.device, self.backend.amp_dtype):
            pooled = network.forward_head(network.forward_features(self.preprocess(batch_uint8)), pre_logits=True)
        return pooled.float().cpu()

    def embed(self, images: Sequence | str | Image.Image | torch.Tensor, *, batch_size: int = 64,
              normalize: bool = False) -> np.ndarray:
        """Pooled backbone features, N x D float32, of the same inputs and preprocessing as ``predict``;
        ``normalize``: each row scaled to L2 norm 1."""
        if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
            images = [images]
        network = self._network()  # an ONNX model fails here, before any image is decoded
        chunks = [self.features(torch.stack([self.decode(image) for image in images[start:start + batch_size]]))
                  for start in range(0, len(images), batch_size)]
        features = torch.cat(chunks) if chunks else torch.zeros(0, network.num_features)
        return (torch.nn.functional.normalize(features, dim=1) if normalize else features).numpy()

    def _network(self) -> torch.nn.Module:
        if self.model is None:
            raise ModelError(f"embeddings need the PyTorch checkpoint; {self.meta.source or 'this model'} runs in "
                             f"{self.runtime}, which gives logits only")
        return unwrap(self.model)

    def to_predictions(self, logits: torch.Tensor, topk: int, *, min_confidence: float = 0.0) -> list[Prediction]:
        """``min_confidence``: a single-label prediction whose top probability is under it gets the label 'unsure'
        (its ``top`` still lists the best guesses)."""
        rows = task_of(self.meta.task).predictions(logits, self.classes, thresholds=self.meta.thresholds, topk=topk,
                                                   min_confidence=min_confidence, unsure=UNSURE)
        return [Prediction(**row) for row in rows]


def from_model(model: torch.nn.Module, meta: ModelMeta, device: torch.device, *, amp: str = "off",
               temperature: float | None = None) -> Classifier:
    """A torch-backed Classifier around an already-built network (channels-last on ``device``) whose logits are
    divided by ``temperature`` (default: the checkpoint's; 1.0 where ``model`` divides them itself)."""
    amp_dtype = amp_dtype_for(amp, device, first_stage_side(meta.spec, meta.img_size))
    return Classifier(TorchBackend(model.to(device, memory_format=torch.channels_last), device, amp_dtype,
                                   meta.temperature if temperature is None else temperature), meta)


def load(path: str | Path, *, device: str = "auto", arch: str | None = None, classes: list[str] | None = None,
         img_size: int | None = None, tta: str = "none", checkpoint: dict | None = None) -> Classifier:
    """A Classifier from a resnetlab checkpoint (or a bare state_dict with ``arch`` and ``classes``), or from an
    exported file (``.onnx`` in onnxruntime, ``.xml`` in OpenVINO, ``.torchscript`` in torch.jit). ``tta``
    (flip, flip-crop) averages flipped/shifted views.

    Example::

        import resnetlab
        clf = resnetlab.load("runs/photos/best.pt", device="cpu")   # or best.onnx, best.xml
        print(clf.predict(["photos/cat/1.jpg"])[0].label)
    """
    if runtime_of(path):
        if tta != "none":
            raise ConfigError(f"--tta needs a PyTorch checkpoint; {Path(path).name} runs as exported")
        return load_exported(path)
    torch_device = resolve_device(device)
    model, meta = load_model(path, device=torch_device, arch=arch, classes=classes, img_size=img_size,
                             checkpoint=checkpoint)
    if tta == "none":
        return from_model(model, meta, torch_device)
    # each view's logits divided by T before the views' probabilities are averaged (what T was fitted for)
    return from_model(task_of(meta.task).tta(tempered(model, meta.temperature), tta), meta, torch_device,
                      temperature=1.0)


def load_exported(path: str | Path) -> Classifier:
    """A Classifier over an exported file's runtime: .onnx (onnxruntime), .xml (OpenVINO), .torchscript."""
    backend = open_exported(path)
    return Classifier(backend, meta_from_sidecar(backend.info, Path(path)))


load_onnx = load_exported  # the name this had when ONNX was the only exported format
