"""The predict verb and the Python ``Classifier``: softmax probabilities and top-k for files, folders, images.

    clf = resnetlab.load("runs/x/best.pt")
    clf.predict(["a.jpg", pil_image])[0].label
    predict_files("runs/x/best.pt", ["photos/"], out="predictions.csv", topk=3, cam="heatmaps/")
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import ModelMeta, load_model
from .config import ConfigError, require_at_least
from .data.cache import decode_split
from .data.images import decode_image, list_images
from .data.sources import SplitData
from .data.transforms import preprocess_batch, stats_tensor
from .engine import _autocast, amp_dtype_for, resolve_device
from .models import TTAModel, first_stage_side

PREDICT_CHUNK = 1024  # files decoded per round: bounds memory on huge folders


@dataclass
class Prediction:
    label: str
    confidence: float
    top: list[tuple[str, float]]  # (label, probability), best first
    probabilities: np.ndarray  # one per class, in the model's class order


class Classifier:
    """A trained model with its preprocessing: give it paths, PIL images or image tensors."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: torch.device, amp: str = "off"):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.classes = meta.classes
        self._mean, self._std = stats_tensor(meta.mean, device), stats_tensor(meta.std, device)
        self._amp_dtype = amp_dtype_for(amp, device, first_stage_side(meta.spec, meta.img_size))

    def _to_uint8(self, image: str | os.PathLike | Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):  # C x H x W, uint8 or float in [0, 1]
            from torchvision.transforms.functional import to_pil_image

            image = to_pil_image(image if image.dtype == torch.uint8 else image.clamp(0, 1))
        return decode_image(image, self.meta.img_size)

    def preprocess(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x S x S (already decoded) -> the normalised float input on this classifier's device."""
        return preprocess_batch(batch_uint8.to(self.device, non_blocking=True), self._mean, self._std,
                                channels_last=True)

    def logits(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x S x S (already decoded) -> logits N x K, float32 on CPU."""
        x = self.preprocess(batch_uint8)
        with torch.inference_mode(), _autocast(self.device, self._amp_dtype):
            return self.model(x).float().cpu()

    def predict(self, images: Sequence | str | Image.Image | torch.Tensor, *, topk: int = 5,
                batch_size: int = 64) -> list[Prediction]:
        """One Prediction per image; a single image may be passed without a list."""
        if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
            images = [images]
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self._to_uint8(image) for image in images[start:start + batch_size]])
            results += self.to_predictions(self.logits(batch), topk)
        return results

    def to_predictions(self, logits: torch.Tensor, topk: int) -> list[Prediction]:
        probabilities = logits.softmax(dim=1)
        k = min(topk, len(self.classes))
        top_p, top_i = probabilities.topk(k, dim=1)
        return [Prediction(self.classes[int(i[0])], float(p[0]),
                           [(self.classes[int(c)], float(q)) for c, q in zip(i, p)], row.numpy())
                for p, i, row in zip(top_p, top_i, probabilities)]


def load(path: str | Path, *, device: str = "auto", arch: str | None = None, classes: list[str] | None = None,
         img_size: int | None = None, tta: str = "none") -> Classifier:
    """A Classifier from a resnetlab checkpoint (or a bare state_dict with ``arch`` and ``classes``).

    An exported ``.onnx`` file (``resnetlab export``) gives an OnnxClassifier that runs in onnxruntime.
    ``tta`` (flip, flip-crop) averages the probabilities of flipped/shifted views.
    """
    if Path(path).suffix.lower() == ".onnx":
        if tta != "none":
            raise ValueError("--tta needs a PyTorch checkpoint; exported ONNX models run as exported")
        from .export import load_onnx

        return load_onnx(path)
    torch_device = resolve_device(device)
    model, meta = load_model(path, device=torch_device, arch=arch, classes=classes, img_size=img_size)
    model = TTAModel(model.to(memory_format=torch.channels_last), tta) if tta != "none" else model
    return Classifier(model.to(memory_format=torch.channels_last), meta, torch_device)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (whatever their extension) and image files found recursively in folders."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += [str(p) for p in list_images(path)]
        else:
            files.append(str(path))  # a missing or odd file still gets its row, with the error
    return files


def predict_files(checkpoint: str | Path, inputs: Iterable[str], *, out: str | Path = "predictions.csv",
                  topk: int = 3, batch_size: int = 256, device: str = "auto", workers: int | None = None,
                  arch: str | None = None, classes: list[str] | None = None, img_size: int | None = None,
                  progress: bool = True, tta: str = "none", cam: str | Path | None = None) -> dict:
    """Write one CSV row per input file; unreadable files get an ``error`` and the rest still run.

    ``cam``: a folder that gets a Grad-CAM overlay PNG of the predicted class per image (explain.py), its path in
    a ``cam`` column before ``error``.
    """
    require_at_least("--batch-size", batch_size)  # before the model is loaded
    classifier = load(checkpoint, device=device, arch=arch, classes=classes, img_size=img_size, tta=tta)
    files = expand_inputs(inputs)
    if not files:
        raise ValueError("no input images found")
    k = max(1, min(topk, len(classifier.classes)))
    header = ["path", "label", "confidence"] + [f"top{j}_{w}" for j in range(2, k + 1) for w in ("label", "prob")]
    header += ["cam", "error"] if cam else ["error"]
    cam_dir = Path(cam) if cam else None
    if cam_dir and getattr(classifier, "model", None) is None:
        raise ConfigError(f"--cam needs a PyTorch checkpoint (heat maps need gradients); {checkpoint} runs in "
                          "onnxruntime")
    if cam_dir:
        cam_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    out = Path(out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, leave=False)
        for start in range(0, len(files), PREDICT_CHUNK):
            chunk = files[start:start + PREDICT_CHUNK]
            # the same parallel decode as training, without the disk cache
            decoded = decode_split(SplitData("predict", np.zeros(len(chunk), dtype=np.int64), chunk),
                                   classifier.meta.img_size, workers=workers, progress=False, use_cache=False)
            predictions: dict[int, Prediction] = {}
            overlays: dict[int, str] = {}
            for b in range(0, len(decoded), batch_size):
                batch = decoded.images[b:b + batch_size]
                logits = classifier.logits(batch)
                batch_predictions = classifier.to_predictions(logits, k)
                for position, prediction in zip(decoded.kept[b:b + batch_size], batch_predictions):
                    predictions[int(position)] = prediction
                if cam_dir:
                    positions = [int(p) for p in decoded.kept[b:b + batch_size]]
                    overlays.update(_write_cams(classifier, batch, logits.argmax(dim=1).tolist(), batch_predictions,
                                                [chunk[p] for p in positions], [start + p for p in positions],
                                                len(files), cam_dir))
            reasons = {s["path"]: s["reason"] for s in decoded.skipped}
            for i, path in enumerate(chunk):
                if i in predictions:
                    p = predictions[i]
                    row = [path, p.label, f"{p.confidence:.6f}"]
                    for label, probability in p.top[1:]:
                        row += [label, f"{probability:.6f}"]
                    row += [""] * (len(header) - len(row) - (2 if cam_dir else 1))
                    writer.writerow(row + ([overlays.get(start + i, ""), ""] if cam_dir else [""]))
                    counts[p.label] = counts.get(p.label, 0) + 1
                else:
                    failed += 1
                    writer.writerow([path] + [""] * (len(header) - 2) + [reasons.get(path, "unreadable")])
            bar.update(len(chunk))
        bar.close()
    summary = {"images": len(files), "predicted": len(files) - failed, "failed": failed, "out": str(out),
               "per_label": counts}
    print(f"predicted {summary['predicted']} of {len(files)} image(s), {failed} failed; wrote {out}"
          + (f" and heat maps in {cam_dir}" if cam_dir else ""), flush=True)
    return summary


def _write_cams(classifier: Classifier, batch: torch.Tensor, targets: list[int], predictions: list[Prediction],
                paths: list[str], numbers: list[int], total: int, cam_dir: Path) -> dict[int, str]:
    """Overlay PNGs of the predicted class for one decoded batch (one batched CAM pass); file number -> path."""
    from .data.images import ImageReadError, open_rgb
    from .explain import cams_for_batch, overlay, overlay_name, save_png

    written: dict[int, str] = {}
    cams = cams_for_batch(classifier, batch, targets)  # forward/backward passes of 32 images
    for cam, prediction, path, number in zip(cams, predictions, paths, numbers):
        try:
            picture = overlay(open_rgb(path), cam)
        except ImageReadError:  # changed since it was decoded: the row keeps its prediction, no heat map
            continue
        file = cam_dir / overlay_name(number, path, total)
        save_png(picture, file, {"source": path, "predicted": prediction.label,
                                 "probability": f"{prediction.confidence:.6f}", "target": prediction.label,
                                 "method": "gradcam"})
        written[number] = str(file)
    return written
