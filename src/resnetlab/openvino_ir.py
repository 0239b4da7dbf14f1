"""OpenVINO IR (``best.xml`` + ``best.bin``) from the checked fp32 ONNX export, with OpenVINO's own tools:
``openvino.convert_model`` for fp32 and NNCF's post-training quantisation for int8 (calibrated on the run's
training images, as the ONNX int8 path is), the sidecar embedded in the model's rt_info.

    write_ir(Path("tmp/best.onnx"), Path("tmp/best.xml"), info)                              # fp32
    write_ir(onnx, xml, info, calibration=images.calibration(256), mean=m, std=s)             # int8
    embed_ir(Path("tmp/best.xml"), Path("tmp/final/best.xml"), info)                         # re-saved with info
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import torch

from .data.cache import DecodedSplit
from .data.transforms import preprocess_batch, stats_tensor
from .errors import ExportError
from .log import logger, progress_enabled
from .sidecar import METADATA_KEY, embedded_json


def _openvino():  # noqa: ANN202 - the module
    try:
        import openvino as ov  # the optional 'openvino' extra
    except ImportError:
        raise ExportError("--format openvino needs the 'openvino' extra: pip install 'resnetlab[openvino]'") from None
    return ov


def write_ir(onnx_fp32: Path, out: Path, info: dict, *, calibration: DecodedSplit | None = None,
             mean: list[float] | None = None, std: list[float] | None = None, half: bool = False) -> Path:
    """``out`` (.xml, its .bin beside it) from ``onnx_fp32``; int8 when ``calibration`` images are given; ``half``
    stores the weights as fp16 (OpenVINO's 'FP16 IR': half the file, computed in fp32 on CPUs)."""
    ov = _openvino()
    try:
        model = ov.convert_model(str(onnx_fp32))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises its own errors with their text
        raise ExportError(f"OpenVINO could not convert the ONNX export: {str(err)[:300]}") from None
    if calibration is not None:
        model = _quantize(model, calibration, mean or [], std or [])
    model.set_rt_info(embedded_json(info), [METADATA_KEY])
    ov.save_model(model, str(out), compress_to_fp16=half)
    return out


def _quantize(model, calibration: DecodedSplit, mean: list[float], std: list[float]):  # noqa: ANN001, ANN202
    """NNCF's default post-training quantisation (symmetric int8 weights and activations, fast bias correction),
    statistics from ``calibration`` one image at a time."""
    try:
        import nncf
    except ImportError:
        raise ExportError("--format openvino --quantize int8 needs NNCF: pip install 'resnetlab[openvino]'") from None
    if len(calibration) == 0:
        raise ExportError("no readable training images to calibrate the int8 model on")
    mean_t, std_t = stats_tensor(mean, "cpu"), stats_tensor(std, "cpu")
    images = calibration.images

    def normalised(i: int):  # noqa: ANN202 - a numpy array
        return preprocess_batch(images[i:i + 1], mean_t, std_t).numpy()

    logger.info(f"int8 (OpenVINO NNCF): calibrating on {len(calibration)} training images")
    nncf.set_log_level(logging.WARNING)
    quiet = contextlib.nullcontext() if progress_enabled(True) else contextlib.redirect_stdout(io.StringIO())
    with quiet, torch.inference_mode():  # NNCF's progress bars (rich) only on a terminal
        return nncf.quantize(model, nncf.Dataset(range(len(calibration)), normalised), subset_size=len(calibration))


def embed_ir(path: Path, out: Path, info: dict) -> Path:
    """``path`` re-saved as ``out`` with ``info`` as its embedded sidecar (the final one, with the validation)."""
    ov = _openvino()
    model = ov.Core().read_model(str(path))
    model.set_rt_info(embedded_json(info), [METADATA_KEY])
    ov.save_model(model, str(out), compress_to_fp16=False)  # weights as they are (fp16 stays fp16)
    return out


def move_ir(written: Path, out: Path) -> None:
    """The .bin, then the .xml that names it, into place (each rename atomic)."""
    os.replace(written.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(written, out)
