"""The export verb: a checkpoint to ONNX or TorchScript with a JSON sidecar (resnetlab.sidecar), checked
against PyTorch on random images. ``classifier.load`` runs an exported ONNX file.

The exported network takes the *normalised* float image (N x 3 x S x S, RGB) and returns logits;
the sidecar ``FILE.json`` (also embedded in the file) says how to get there: classes, image size,
mean/std and the input layout, so a consumer needs nothing else.

    export_model("runs/x/best.pt", format="onnx", dynamic_batch=True)   # -> runs/x/best.onnx + best.onnx.json
    resnetlab.load("runs/x/best.onnx").predict("cat.jpg")[0].label
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .calibration import tempered
from .checkpoint import load_model, read_checkpoint
from .classifier import from_model, load_exported
from .config import require_at_least
from .data.builtin import BUILTIN_NAMES
from .errors import ConfigError, ExportError
from .fileio import writable_file, write_json
from .log import logger
from .openvino_ir import embed_ir, move_ir, write_ir
from .options import Shared, SharedOptions
from .quantize import CALIBRATION_METHODS, ExportData, quantize_int8
from .runtimes import open_exported
from .sidecar import METADATA_KEY, describe, embedded_json, sidecar_path

if TYPE_CHECKING:
    from typing_extensions import Unpack

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": ".xml"}
QUANTIZABLE = ("onnx", "openvino")
CHECK_TOLERANCE = 1e-4  # max |runtime - PyTorch| on logits accepted at export time (fp32)
HALF_TOLERANCE = 2e-2  # fp16: relative to the largest logit (fp16 keeps ~3 significant digits)


def export_model(checkpoint: str | Path, *, format: str = "onnx", out: str | Path | None = None,
                 dynamic_batch: bool = False, opset: int | None = None, quantize: str | None = None,
                 data: str | None = None, check: bool = True, half: bool = False,
                 **options: Unpack[SharedOptions]) -> dict[str, Any]:
    """Write the model and its sidecar: checked against PyTorch's logits on random images, and (``check``, when
    the run's data is there; always for ``quantize="int8"``) against the original's accuracy on the validation
    split. A drop of more than ``max_drop`` points refuses the export: nothing is written. ``half``: fp16
    weights and math (float32 input and output), for GPUs; with OpenVINO, fp16 weights computed in fp32.
    ``options`` (options.SharedOptions): max_drop (1.0 points), calib_images (256) and calib_method (minmax) for
    int8, workers, and arch, classes, img_size for a bare weights file. (``resnetlab.export`` is this function.)

    Example::

        import resnetlab
        resnetlab.export("runs/photos/best.pt", format="onnx")   # runs/photos/best.onnx + best.onnx.json
        clf = resnetlab.load("runs/photos/best.onnx")            # predicts like the checkpoint, in onnxruntime
    """
    shared = Shared.of("export_model", options, device="cpu")
    _check_options(format, quantize, half, shared.calib_method)
    require_at_least("--calib-images", shared.calib_images)
    out = _checked_out(checkpoint, out, format)  # before any work: a bad --out costs nothing
    payload = read_checkpoint(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
    model, meta = load_model(checkpoint, device="cpu", **shared.bare, checkpoint=payload)
    model = model.float().eval()
    saved = (payload or {}).get("config") or {}
    images = None
    data = _run_data(saved, data, needed=bool(quantize)) if check or quantize else None
    if quantize or (check and data):
        images = ExportData.open(saved, data, meta.classes, meta.img_size, shared.compute.workers, meta.crop)
    elif check and not saved.get("data"):
        logger.warning("no data to check the export's accuracy on (pass --data DATA); only its logits are compared")
    info = describe(meta, format, dynamic_batch=dynamic_batch or format in ("torchscript", "openvino"))
    # how the run split its data: evaluate on the exported file opens the same validation split
    info["training"] = {k: saved[k] for k in ("data", "val_split", "seed", "data_root", "follow_links", "label_sep")
                        if k in saved}
    info["precision"] = "int8" if quantize else "fp16" if half else "fp32"
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:  # gone on any failure
        # a calibrated checkpoint's temperature goes into the graph: a plain client's softmax is calibrated
        written = _write_checked(tempered(model, meta.temperature), meta, info, Path(folder), out.name, half=half,
                                 opset=opset, images=images, quantize=quantize,
                                 calib=(shared.calib_images, shared.calib_method))
        if images is not None:
            info["validation"] = _accuracy_check(model, meta, written, info, images, shared.max_drop)
        if format == "onnx":
            _embed(written, info)
            os.replace(written, out)
        elif format == "openvino":
            move_ir(embed_ir(written, Path(folder) / "final" / out.name, info), out)
        else:
            os.replace(written, out)
    sidecar = sidecar_path(out)
    write_json(sidecar, info)
    worst, sizes = info["check"]["max_abs_diff_logits"], info["check"]["batch_sizes"]
    logger.info(f"exported {format} {info['precision']} to {out} (+ {sidecar.name}); max |{format} - PyTorch| on "
                f"logits = {worst:.1e} for batch sizes {sizes}" + (" (the fp32 graph, before quantisation)"
                                                                    if quantize else ""))
    return {"path": str(out), "sidecar": str(sidecar), "format": format, "max_abs_diff": worst,
            "batch_sizes": sizes, "validation": info.get("validation"), "precision": info["precision"]}


def _checked_out(checkpoint: str | Path, out: str | Path | None, format: str) -> Path:
    """The file to write: a file name (not a folder) in a folder that can be written; OpenVINO's writer takes
    only an .xml name (the .bin goes beside it)."""
    out = Path(out) if out else Path(checkpoint).with_suffix(FORMATS[format])
    if format == "openvino" and out.suffix.lower() != ".xml" and not out.is_dir():
        raise ConfigError(f"--out {out}: --format openvino writes an .xml file (and its .bin beside it); e.g. --out "
                          f"{out.with_suffix('.xml')}")
    return writable_file(out, example=Path(checkpoint).stem + FORMATS[format])


def _run_data(saved: dict, data: str | None, *, needed: bool) -> str | None:
    """What the accuracy check (and int8 calibration) reads: ``data``, else the run's data set when it is there.
    Older runs stored the path as typed, relative to the folder training ran in: from elsewhere it is not found,
    and the check is skipped with a warning (int8 needs the images: refused, naming --data)."""
    if data or not saved.get("data"):
        return data
    spec = str(saved["data"])
    if Path(spec).expanduser().exists() or spec.lower() in BUILTIN_NAMES:
        return spec
    where = f"{spec} (from {os.getcwd()})" if not Path(spec).is_absolute() else spec
    if needed:
        raise ExportError(f"--quantize int8 calibrates on the run's training images, but its data {where} is not "
                          "there; pass --data DATA")
    logger.warning(f"the run's data {where} is not there: the accuracy check is skipped (pass --data DATA to run "
                   "it); the logits are still compared with PyTorch's")
    return None


def _check_options(format: str, quantize: str | None, half: bool, calib_method: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8") or (quantize and format not in QUANTIZABLE):
        raise ConfigError(f"--quantize {quantize} is not available for {format}; use --format onnx or openvino "
                          "with --quantize int8")
    if quantize and half:
        raise ConfigError("--half and --quantize int8 exclude each other: pick fp16 (GPUs) or int8 (CPUs)")
    if calib_method not in CALIBRATION_METHODS:
        raise ConfigError(f"--calib-method {calib_method} is not one of {', '.join(CALIBRATION_METHODS)}")
    if calib_method != "minmax" and format != "onnx":
        raise ConfigError("--calib-method applies to --format onnx (OpenVINO's NNCF picks its own statistics)")


def _write_checked(model: torch.nn.Module, meta, info: dict, folder: Path, name: str, *, half: bool,  # noqa: ANN001
                   opset: int | None, images: ExportData | None, quantize: str | None, calib: tuple) -> Path:
    """The file in ``folder``: ONNX/TorchScript written and checked against PyTorch; OpenVINO converted from the
    checked ONNX; int8 quantised from the checked fp32 graph (its accuracy is checked by the caller)."""
    format, dynamic = info["format"], info["input"]["shape"][0] == "batch"
    network = _Half(model) if half and format != "openvino" else model
    first = "onnx" if format == "openvino" else format
    written = _write(network, meta, info, folder / (Path(name).stem + FORMATS[first]), first, dynamic, opset,
                     reference=model)
    if quantize:
        count, method = calib
        info["quantization"] = {"type": "int8", "calibration_images": count, "method": (
            "OpenVINO NNCF post-training quantisation (symmetric int8, fast bias correction)" if format == "openvino"
            else f"onnxruntime static QDQ, per-channel int8 weights, uint8 activations ({method})")}
        calibration = images.calibration(count)
    if format == "openvino":
        ir = write_ir(written, folder / name, info, calibration=calibration if quantize else None,
                      mean=meta.mean, std=meta.std, half=half)
        if not quantize:  # the IR itself against PyTorch (int8 is judged by its accuracy instead)
            _check_logits(ir, model, info, half=half)
        return ir
    if quantize:
        quantized = folder / f"int8-{name}"
        quantize_int8(written, quantized, calibration, meta.mean, meta.std, method=calib[1])
        _embed(quantized, info)  # onnxruntime's quantiser need not keep the metadata; the check loads from it
        return quantized
    return written


class _Half(torch.nn.Module):
    """fp16 weights and math behind a float32 input and output: the sidecar's contract stays the same."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.eval()  # a new Module trains by default: the exporter would warn "training mode" for the wrapper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _write(model: torch.nn.Module, meta, info: dict, path: Path, format: str, dynamic_batch: bool,  # noqa: ANN001
           opset: int | None, reference: torch.nn.Module | None = None) -> Path:
    """The file at ``path`` (onnx or torchscript), its logits checked against the fp32 ``reference``."""
    # batch 1 for a fixed-size export; 2 when dynamic, so the exporter cannot specialise the batch dim to 1
    example = torch.randn(2 if dynamic_batch else 1, 3, meta.img_size, meta.img_size)
    if format == "onnx":
        _export_onnx(model, example, path, info, dynamic_batch=dynamic_batch, opset=opset)
    else:
        _export_torchscript(model, example, path, info)
    _check_logits(path, reference or model, info, half=isinstance(model, _Half))
    return path


def _check_logits(path: Path, reference: torch.nn.Module, info: dict, *, half: bool) -> None:
    """``path``'s logits against PyTorch fp32's on random images (``info["check"]``): within CHECK_TOLERANCE, or
    HALF_TOLERANCE of the largest logit for fp16; refused (ExportError) past it."""
    run = open_exported(path).run_normalised
    size = info["img_size"]
    # batch 1 always, and an odd batch size when the batch dimension is dynamic
    sizes = [1, 3] if info["input"]["shape"][0] == "batch" else [1]
    generator = torch.Generator().manual_seed(0)
    worst, scale = 0.0, 1.0
    for n in sizes:
        x = torch.randn(n, 3, size, size, generator=generator)
        with torch.inference_mode():
            expected = reference(x).numpy()
        worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    limit = HALF_TOLERANCE * scale if half else CHECK_TOLERANCE
    if worst > limit:
        raise ExportError(f"exported logits differ from PyTorch's by {worst:.2e} (> {limit:.1e}); the export is not "
                          "faithful; nothing was written")
    info["check"] = {"max_abs_diff_logits": worst, "batch_sizes": sizes, "tolerance": limit}


def _accuracy_check(model: torch.nn.Module, meta, written: Path, info: dict, images: ExportData,  # noqa: ANN001
                    max_drop: float) -> dict:
    """The original and the exported model on the validation split, side by side; a drop over ``max_drop``
    points is an ExportError (the caller's temp folder goes, so nothing is written)."""
    original, count = images.accuracy(from_model(model, meta, torch.device("cpu")))
    exported, _ = images.accuracy(load_exported(written))
    drop = 100.0 * (original - exported)
    logger.info(f"validation accuracy on {count} images: PyTorch {original:.4f}, exported {exported:.4f} "
                f"({drop:+.2f} points lost; --max-drop {max_drop:g})")
    if drop > max_drop:
        raise ExportError(f"the exported model loses {drop:.2f} accuracy points on the validation split "
                          f"({original:.4f} -> {exported:.4f}), more than --max-drop {max_drop:g}; nothing was written")
    return {"images": count, "accuracy_pytorch": original, "accuracy_exported": exported, "drop_points": drop}


def _embed(path: Path, info: dict) -> None:
    """The sidecar inside the ONNX file too (metadata_props), so the file alone is enough for load_onnx."""
    import onnx

    proto = onnx.load(path)
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, embedded_json(info)
    onnx.save(proto, path)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, info: dict, *, dynamic_batch: bool,
                 opset: int | None) -> None:
    try:
        import onnx  # noqa: F401 - needed to embed the sidecar
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
    _embed(out, info)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path, info: dict) -> None:
    # torch.jit is deprecated upstream in favour of torch.export, but TorchScript is what C++/LibTorch and
    # mobile runtimes still load; a traced ResNet takes any batch size.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        # serialised in memory, written by Python: torch.jit.save into a file on a full disk throws from a C++
        # destructor, which aborts the process (exit 134) and leaves the temp folder behind
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(info, ensure_ascii=False)})
    try:
        out.write_bytes(buffer.getbuffer())
    except OSError as err:  # out is in the caller's temp folder, which its folder holds: name that one
        raise ExportError(f"TorchScript export of {info['model_spec']['arch']} failed: could not write "
                          f"{len(buffer.getbuffer()) / 2**20:.1f} MiB in {out.parent.parent}: "
                          f"{err.strerror or err}") from None
