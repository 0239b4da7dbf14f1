"""The exported-model format's metadata, in one place: what ``export`` writes beside (and inside) an ONNX,
OpenVINO or TorchScript file, and what ``runtimes.open_exported`` reads back. A plain onnxruntime client needs
only this JSON.

    info = describe(meta, "onnx", dynamic_batch=True)   # -> FILE.json and the file's own metadata
    text = read_sidecar(path, embedded)                  # JSON text from FILE.json, else from the file
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._version import __version__
from .data.crop import Crop
from .errors import ExportError
from .task import task_of

METADATA_KEY = "resnetlab"  # ONNX metadata_props key / OpenVINO rt_info key / TorchScript extra file: the JSON


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the suffix keeps ONNX, OpenVINO and TorchScript sidecars apart."""
    return Path(str(model_path) + ".json")


def describe(meta: Any, fmt: str, *, dynamic_batch: bool) -> dict[str, Any]:
    """The sidecar of a ``checkpoint.ModelMeta``: everything besides the weights that turns an image into a label."""
    s = meta.img_size
    return {
        "format": fmt,
        "resnetlab_version": __version__,
        "source_checkpoint": meta.source,
        "classes": list(meta.classes),
        "task": meta.task,  # multilabel: one sigmoid per class, a class predicted at or above its threshold
        "thresholds": None if meta.thresholds is None else [float(t) for t in meta.thresholds],
        "temperature": float(meta.temperature),  # calibration: the graph already divides its logits by it
        "img_size": s,
        **meta.crop.to_dict(),  # crop_pct, interpolation, crop_mode
        "mean": list(meta.mean),
        "std": list(meta.std),
        "model_spec": meta.spec.to_dict(),
        "input": {"name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                  "shape": ["batch" if dynamic_batch else 1, 3, s, s],
                  "preprocessing": "the steps under 'preprocessing', in order"},
        "preprocessing": preprocessing_steps(s, meta.crop),
        "output": {"name": "logits", "shape": ["batch" if dynamic_batch else 1, len(meta.classes)],
                   "note": task_of(meta.task).output_note(meta.temperature)},
    }


def embedded_json(info: dict) -> str:
    """The sidecar as stored inside an exported file (without the export-time logit check)."""
    return json.dumps({k: v for k, v in info.items() if k != "check"}, ensure_ascii=False)


def preprocessing_steps(s: int, crop: Crop = Crop()) -> list[str]:
    """What ``data.images.decode_image`` and ``Classifier.preprocess`` do, in order, so that a client with PIL,
    numpy and onnxruntime alone gets the same input (tests/test_sidecar.py is such a client, on every image mode).
    """
    scale, crop_pct, interpolation = crop.scale_size(s), crop.pct, crop.interpolation
    resize = (f"resize (aspect kept) so the shorter side is {scale} = floor({s} / crop_pct {crop_pct:g}), the longer "
              f"side int({scale} * longer / shorter), with PIL's {interpolation} filter: image.resize((w, h), "
              f"Image.Resampling.{interpolation.upper()}) (torchvision's Resize({scale}))")
    if crop.mode == "squash":
        resize = (f"resize both sides to {scale} = floor({s} / crop_pct {crop_pct:g}), the aspect ratio not kept "
                  f"(crop_mode squash), with PIL's {interpolation} filter: image.resize(({scale}, {scale}), "
                  f"Image.Resampling.{interpolation.upper()}) (torchvision's Resize(({scale}, {scale})))")
    return [
        f"open with PIL; a JPEG is decoded in draft mode: image.draft('RGB', ({scale}, {scale})) (libjpeg scales by "
        f"1/2, 1/4 or 1/8 while decoding, both sides staying >= {scale})",
        "apply the EXIF orientation: PIL.ImageOps.exif_transpose(image)",
        "modes I;16, I;16B, I;16L, I and F: scale linearly so the image's own minimum is 0 and maximum 255 "
        "(a constant image becomes 0), as uint8 mode L",
        "mode P with a 'transparency' entry: convert('RGBA')",
        "modes RGBA, LA and PA: composite over white: paste image.convert('RGBA') on an RGB (255, 255, 255) "
        "background with its alpha as the mask",
        "every other mode: convert('RGB')",
        resize,
        f"centre-crop {s} x {s}: left = int(round((w - {s}) / 2)), top = int(round((h - {s}) / 2)) "
        f"(torchvision's CenterCrop({s}))",
        "x = (pixel / 255 - mean[c]) / std[c] per RGB channel c, float32, H x W x 3 -> 3 x H x W, batch first",
    ]


def read_sidecar(path: Path, embedded: str | None) -> dict[str, Any]:
    """The metadata of exported file ``path``: ``path.json`` when present, else the copy ``embedded`` in the file."""
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        text, where = sidecar.read_text(encoding="utf-8"), str(sidecar)
    elif embedded is not None:
        text, where = embedded, f"{path} metadata"
    else:
        raise ExportError(f"{path}: no sidecar {sidecar.name} and no '{METADATA_KEY}' metadata in the file; "
                          "export it with `resnetlab export` or put the sidecar beside it")
    try:
        info = json.loads(text)
        for key in ("classes", "img_size", "mean", "std", "model_spec"):
            info[key]  # noqa: B018 - a KeyError names the missing key
        return info
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{where}: not a resnetlab sidecar ({type(err).__name__}: {err})") from None
