"""The export verb: a checkpoint to ONNX or TorchScript with a JSON sidecar (resnetlab.sidecar), checked
against PyTorch on random images. ``classifier.load`` runs an exported ONNX file.

The exported network takes the *normalised* float image (N x 3 x S x S, RGB) and returns logits;
the sidecar ``FILE.json`` (also embedded in the file) says how to get there: classes, image size,
mean/std and the input layout, so a consumer needs nothing else.

    export_model("runs/x/best.pt", format="onnx", dynamic_batch=True)   # -> runs/x/best.onnx + best.onnx.json
    resnetlab.load("runs/x/best.onnx").predict("cat.jpg")[0].label
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_model
from .classifier import load_onnx
from .errors import ExportError
from .fileio import write_text
from .log import logger
from .sidecar import METADATA_KEY, describe, sidecar_path

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
CHECK_TOLERANCE = 1e-4  # max |runtime - PyTorch| on logits accepted at export time


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
        run = load_onnx(out).backend.run_normalised
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
    write_text(sidecar, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    logger.info(f"exported {format} to {out} (+ {sidecar.name}); max |{format} - PyTorch| on logits = {worst:.1e} "
                f"for batch sizes {sizes}")
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
