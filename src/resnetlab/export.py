"""Export a checkpoint to ONNX or TorchScript with a JSON sidecar, and run an exported ONNX model.

The exported network takes the *normalised* float image (N x 3 x S x S, RGB) and returns logits;
the sidecar ``FILE.json`` (also embedded in the file) says how to get there: classes, image size,
mean/std and the input layout, so a consumer needs nothing else.

    export_model("runs/x/best.pt", format="onnx", dynamic_batch=True)   # -> runs/x/best.onnx + best.onnx.json
    clf = load_onnx("runs/x/best.onnx"); clf.predict("cat.jpg")[0].label
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import ModelMeta, load_model
from .data.transforms import preprocess_batch, stats_tensor
from .models import ModelSpec
from .predict import Classifier

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
METADATA_KEY = "resnetlab"  # ONNX metadata_props key / TorchScript extra file holding the sidecar JSON
CHECK_TOLERANCE = 1e-4  # max |runtime - PyTorch| on logits accepted at export time


class ExportError(ValueError):
    """An export or an exported model cannot be used; the message says which file and why."""


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the suffix keeps ONNX and TorchScript sidecars apart."""
    return Path(str(model_path) + ".json")


def describe(meta: ModelMeta, fmt: str, *, dynamic_batch: bool) -> dict[str, Any]:
    """The sidecar: everything besides the weights that turns an image file into a label."""
    s = meta.img_size
    return {
        "format": fmt,
        "resnetlab_version": __version__,
        "source_checkpoint": meta.source,
        "classes": list(meta.classes),
        "img_size": s,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "model_spec": meta.spec.to_dict(),
        "input": {"name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                  "shape": ["batch" if dynamic_batch else 1, 3, s, s],
                  "preprocessing": f"RGB, EXIF rotation applied; shorter side resized to {s} px (bilinear) and "
                                   f"centre-cropped to {s}x{s}; x = (pixel / 255 - mean) / std per channel"},
        "output": {"name": "logits", "shape": ["batch" if dynamic_batch else 1, len(meta.classes)],
                   "note": "raw logits in the order of 'classes'; apply softmax for probabilities"},
    }


def export_model(checkpoint: str | Path, *, format: str = "onnx", out: str | Path | None = None,
                 dynamic_batch: bool = False, opset: int | None = None, arch: str | None = None,
                 classes: list[str] | None = None, img_size: int | None = None) -> dict[str, Any]:
    """Write the model and its sidecar, then check the runtime's logits against PyTorch's on random images."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}'; expected one of {', '.join(FORMATS)}")
    model, meta = load_model(checkpoint, device="cpu", arch=arch, classes=classes, img_size=img_size)
    model = model.float().eval()
    out = Path(out) if out else Path(checkpoint).with_suffix(FORMATS[format])
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    info = describe(meta, format, dynamic_batch=dynamic_batch or format == "torchscript")
    # batch 1 for a fixed-size export; 2 when dynamic, so the exporter cannot specialise the batch dim to 1
    example = torch.randn(2 if dynamic_batch else 1, 3, meta.img_size, meta.img_size)
    if format == "onnx":
        _export_onnx(model, example, out, info, dynamic_batch=dynamic_batch, opset=opset)
        runner = load_onnx(out)
        run = runner.run_normalised
    else:
        _export_torchscript(model, example, out, info)
        traced = _load_torchscript(out)
        run = lambda x: traced(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    # check batch 1 always, and an odd batch size when the batch dimension is dynamic
    sizes = [1, 3] if info["input"]["shape"][0] == "batch" else [1]
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in sizes:
        x = torch.randn(n, 3, meta.img_size, meta.img_size, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
    if worst > CHECK_TOLERANCE:
        raise ExportError(f"{out}: exported logits differ from PyTorch's by {worst:.2e} (> {CHECK_TOLERANCE}); "
                          "the export is not faithful")
    info["check"] = {"max_abs_diff_logits": worst, "batch_sizes": sizes, "tolerance": CHECK_TOLERANCE}
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"exported {format} to {out} (+ {sidecar.name}); max |{format} - PyTorch| on logits = {worst:.1e} "
          f"for batch sizes {sizes}", flush=True)
    return {"path": str(out), "sidecar": str(sidecar), "format": format, "max_abs_diff": worst,
            "batch_sizes": sizes}


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, info: dict, *, dynamic_batch: bool,
                 opset: int | None) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
    except ImportError as err:
        raise ExportError(f"ONNX export needs the 'export' extra ({err.name} is missing): "
                          "pip install 'resnetlab[export]'") from None
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        torch.onnx.export(model, (example,), out, input_names=["image"], output_names=["logits"], dynamo=True,
                          external_data=False, dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; say which model failed
        raise ExportError(f"ONNX export of {info['model_spec']['arch']} failed: {str(err)[:400]}") from None
    # embed the sidecar too, so the .onnx file alone is enough for load_onnx
    proto = onnx.load(out)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, ensure_ascii=False)
    onnx.save(proto, out)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path, info: dict) -> None:
    # torch.jit is deprecated upstream in favour of torch.export, but TorchScript is what C++/LibTorch and
    # mobile runtimes still load; a traced ResNet takes any batch size.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": json.dumps(info, ensure_ascii=False)})


def _load_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


class OnnxClassifier(Classifier):
    """An exported ONNX model behind the Classifier interface: same decoding, same ``logits(uint8 batch)``."""

    def __init__(self, path: str | Path, info: dict, session):
        # No torch model here: the attributes Classifier's predict/to_predictions read are set directly.
        self.model, self.device, self.session, self.path = None, torch.device("cpu"), session, Path(path)
        self.meta = ModelMeta(ModelSpec.from_dict(info["model_spec"]), list(info["classes"]), int(info["img_size"]),
                              list(info["mean"]), list(info["std"]), source=str(path))
        self.classes = self.meta.classes
        self._mean, self._std = stats_tensor(self.meta.mean, "cpu"), stats_tensor(self.meta.std, "cpu")
        self._amp_dtype = None
        batch = session.get_inputs()[0].shape[0]
        self._fixed_batch = batch if isinstance(batch, int) else None  # None: any batch size

    def run_normalised(self, x: np.ndarray) -> np.ndarray:
        """float32 N x 3 x S x S, already normalised -> logits N x K (chunks of a fixed-batch model's size)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self._fixed_batch or len(x)
        return np.concatenate([self.session.run(["logits"], {"image": x[i:i + step]})[0]
                               for i in range(0, len(x), max(step, 1))])

    def logits(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x S x S -> logits N x K, float32, through onnxruntime."""
        x = preprocess_batch(batch_uint8.cpu(), self._mean, self._std)
        return torch.from_numpy(self.run_normalised(x.numpy()))


def load_onnx(path: str | Path) -> OnnxClassifier:
    """An OnnxClassifier from ``model.onnx`` (metadata from ``model.onnx.json`` or, failing that, the file)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model not found: {path}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running an ONNX model needs onnxruntime: pip install 'resnetlab[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # honour OMP_NUM_THREADS like torch does
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ExportError(f"cannot load ONNX model {path}: {str(err)[:300]}") from None
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        text, where = sidecar.read_text(encoding="utf-8"), str(sidecar)
    else:
        text, where = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), f"{path} metadata"
        if text is None:
            raise ExportError(f"{path}: no sidecar {sidecar.name} and no '{METADATA_KEY}' metadata in the file; "
                              "export it with `resnetlab export` or put the sidecar beside it")
    try:
        info = json.loads(text)
        return OnnxClassifier(path, info, session)
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{where}: not a resnetlab sidecar ({type(err).__name__}: {err})") from None
