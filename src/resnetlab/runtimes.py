"""The runtimes an exported model runs in, one backend each, chosen by the file (as Ultralytics' AutoBackend does):
``.onnx`` in onnxruntime, ``.xml`` (OpenVINO IR, with its ``.bin``) in OpenVINO, ``.torchscript`` in torch.jit.
Each takes the normalised float32 N x 3 x S x S batch and returns logits; the preprocessing comes from the
file's sidecar (resnetlab.sidecar), so a ``Classifier`` over any of them decodes images exactly as a checkpoint's.

    backend = open_exported("runs/x/best.xml")          # OpenVinoBackend; backend.info is the sidecar
    runtime_of("runs/x/best.onnx")                      # "onnxruntime"; None for a checkpoint
    classifier.load_exported(path)                      # a Classifier over it
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import ModelMeta
from .errors import ExportError
from .sidecar import METADATA_KEY, read_sidecar, sidecar_path

RUNTIMES = {".onnx": "onnxruntime", ".xml": "openvino", ".torchscript": "torchscript"}


def runtime_of(path: str | Path) -> str | None:
    """The runtime an exported file runs in, or None for a checkpoint (.pt, .safetensors)."""
    return RUNTIMES.get(Path(path).suffix.lower())


class _Chunked:
    """Runs a fixed-batch export in chunks of its batch size; ``fixed_batch`` None: any size at once."""

    runtime = ""
    model = None  # no torch module: no gradients, so no Grad-CAM, no embeddings
    device = torch.device("cpu")
    amp_dtype = None
    fixed_batch: int | None = None

    def run_normalised(self, x: np.ndarray) -> np.ndarray:
        """float32 N x 3 x S x S, already normalised -> logits N x K."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.fixed_batch or len(x)
        return np.concatenate([self._run(x[i:i + step]) for i in range(0, len(x), max(step, 1))])

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_normalised(x.numpy()))


class OnnxBackend(_Chunked):
    """An exported ONNX model in onnxruntime on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, session, path: Path, info: dict | None = None):  # noqa: ANN001 - onnxruntime.InferenceSession
        self.session, self.path, self.info = session, path, info or {}  # info: the sidecar
        batch = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": x})[0]


class OpenVinoBackend(_Chunked):
    """An OpenVINO IR model compiled for the CPU (fp32 math for an fp32 model: OpenVINO would otherwise pick bf16
    on CPUs that have it, and its logits would no longer match the checkpoint's)."""

    runtime = "openvino"

    def __init__(self, compiled, path: Path, info: dict | None = None):  # noqa: ANN001 - openvino.CompiledModel
        self.compiled, self.path, self.info = compiled, path, info or {}
        shape = compiled.inputs[0].get_partial_shape()[0]
        self.fixed_batch = None if shape.is_dynamic else shape.get_length()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0])


class TorchScriptBackend(_Chunked):
    """A traced TorchScript file in torch.jit (any batch size)."""

    runtime = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, path: Path, info: dict | None = None):
        self.module, self.path, self.info = module, path, info or {}

    def _run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).float().numpy()


ExportedBackend = OnnxBackend | OpenVinoBackend | TorchScriptBackend


def open_exported(path: str | Path) -> ExportedBackend:
    """The backend for exported file ``path``, its sidecar (``path.json``, else the copy in the file) as ``.info``."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model not found: {path}")
    return {"onnxruntime": _onnx, "openvino": _openvino, "torchscript": _torchscript}[runtime_of(path)](path)


def meta_from_sidecar(info: dict, path: Path) -> ModelMeta:
    return ModelMeta.from_dict(info, str(path))


def _onnx(path: Path) -> OnnxBackend:
    try:
        import onnxruntime as ort  # an optional extra: imported where it is needed
    except ImportError:
        raise ExportError("running an ONNX model needs onnxruntime: pip install 'resnetlab[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # honour OMP_NUM_THREADS like torch does
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ExportError(f"cannot load ONNX model {path}: {str(err)[:300]}") from None
    info = read_sidecar(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
    _check_shapes(path, info, session.get_inputs()[0].shape, session.get_outputs()[0].shape)
    return OnnxBackend(session, path, info)


def _openvino(path: Path) -> OpenVinoBackend:
    try:
        import openvino as ov  # the optional 'openvino' extra
    except ImportError:
        raise ExportError("running an OpenVINO model needs openvino: pip install 'resnetlab[openvino]'") from None
    try:
        core = ov.Core()
        model = core.read_model(str(path))
        embedded = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
        info = read_sidecar(path, embedded)
        _check_shapes(path, info, *(_static_dims(port.get_partial_shape()) for port in (model.inputs[0],
                                                                                         model.outputs[0])))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own text
        raise ExportError(f"cannot load OpenVINO model {path} (and its .bin): {str(err)[:300]}") from None
    return OpenVinoBackend(compiled, path, info)


def _torchscript(path: Path) -> TorchScriptBackend:
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; its files still load
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:  # noqa: BLE001 - torch.jit raises RuntimeError with its own text
        raise ExportError(f"cannot load TorchScript model {path}: {str(err)[:300]}") from None
    info = read_sidecar(path, extra[f"{METADATA_KEY}.json"] or None)
    backend = TorchScriptBackend(module.eval(), path, info)
    size = int(info["img_size"])
    try:  # a traced file keeps no shapes: one tiny pass on the sidecar's input shape shows them
        output = backend.run_normalised(np.zeros((1, 3, size, size), dtype=np.float32)).shape
    except Exception as err:  # noqa: BLE001 - torch.jit raises RuntimeError with its own text
        raise ExportError(f"{path} does not run on the {size} x {size} input its sidecar ({_sidecar_name(path)}) "
                          f"describes: {str(err).strip().splitlines()[-1][:200]}") from None
    _check_shapes(path, info, [1, 3, size, size], output)
    return backend


def _static_dims(shape) -> list[int | None]:  # noqa: ANN001 - an OpenVINO PartialShape
    return [dim.get_length() if dim.is_static else None for dim in shape]


def _sidecar_name(path: Path) -> str:
    sidecar = sidecar_path(path)
    return str(sidecar) if sidecar.is_file() else f"the copy inside {path.name}"


def _check_shapes(path: Path, info: dict, inputs: list, outputs: list) -> None:
    """Refuse a sidecar that does not describe its model (a stale FILE.json beside a file exported again), naming
    the mismatch: otherwise it loads, a service reports itself healthy, and every prediction fails in the runtime.
    Dimensions that are not whole numbers (dynamic: 'batch', None) are not compared."""
    size, classes = int(info["img_size"]), len(info["classes"])
    wrong = [f"{name} {list(found)} where the sidecar says {expected}"
             for name, found, expected in (("input", inputs, ["N", 3, size, size]), ("output", outputs, ["N", classes]))
             if len(found) != len(expected)
             or any(isinstance(f, int) and f != e for f, e in zip(list(found)[1:], expected[1:]))]
    if wrong:
        raise ExportError(f"{path} does not match its sidecar {_sidecar_name(path)} ({size} px, {classes} classes): "
                          f"the model's {'; '.join(wrong)}; export the model again, or remove the stale sidecar")

