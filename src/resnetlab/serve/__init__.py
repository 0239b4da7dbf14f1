"""Prediction service: a FastAPI app (JSON API + a web page) around one Classifier, run by uvicorn.

Routes: ``GET /`` (page: drop an image, see the top-5 and the Grad-CAM heat map), ``GET /health``,
``GET /classes``, ``POST /predict`` (multipart ``file`` or ``files``), ``POST /explain`` (overlay PNG),
and FastAPI's ``/openapi.json`` and ``/docs``. Safe defaults for a laptop: loopback only, upload
size, pixel-count and file-count limits, and a bounded queue in front of the model.

    resnetlab serve runs/x/best.pt --port 8000          # then open http://127.0.0.1:8000
    app = create_app(resnetlab.load("runs/x/best.pt"))    # for uvicorn, TestClient, or mounting
"""

from __future__ import annotations

import ipaddress
import tempfile
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from ..errors import ConfigError, ServeError
from ..log import logger
from .limits import MB, SERVED_CAM_METHODS, BodyLimit, ServeLimits, UploadTooLarge, decode_upload, too_large_message

__all__ = ["serve", "create_app", "page_html", "ServeLimits", "MB", "SERVED_CAM_METHODS", "InferenceWorker",
           "Busy", "decode_upload", "BodyLimit", "UploadTooLarge", "too_large_message", "ServeError"]

# Loaded on first use: the CLI imports ServeLimits and MB from here while building its parser, and the
# worker (torch) and the app (fastapi) must not load then.
_LAZY = {"InferenceWorker": ".worker", "Busy": ".worker", "create_app": ".app", "page_html": ".app"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
FAST_CPU_RUNTIMES = ("openvino", "onnxruntime")  # fastest first (benchmarks/README.md, "Inference runtimes")


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: ServeLimits | None = None, log_level: str = "info", runtime: str = "auto") -> None:
    """Load the model and serve it until Ctrl-C.

    ``runtime``: auto (an exported file in its runtime; a checkpoint in torch on a GPU, else in the fastest
    installed CPU runtime), torch, onnxruntime or openvino (a checkpoint is exported, fp32, for the server's
    lifetime). A checkpoint also serves /explain, in torch, whatever runs /predict.

    Example::

        import resnetlab
        resnetlab.serve("runs/photos/best.pt", port=8000)   # blocks; open http://127.0.0.1:8000, Ctrl-C stops
    """
    try:
        import uvicorn  # noqa: F401 - the 'serve' extra: checked before the model is loaded
    except ImportError:
        raise ServeError("serving needs the 'serve' extra: pip install 'resnetlab[serve]'") from None
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port (0-65535)")
    with tempfile.TemporaryDirectory(prefix="resnetlab-serve-") as folder:
        classifier, explainer = _load_for(checkpoint, runtime, device, Path(folder))
        _run(classifier, explainer, checkpoint, host, port, limits, log_level)


def _load_for(checkpoint: str | Path, runtime: str, device: str, folder: Path) -> tuple:
    """(the Classifier that predicts, the torch Classifier that explains or None)."""
    from ..classifier import load  # torch: loaded when serving starts, not when the CLI builds its parser
    from ..device import resolve_device
    from ..runtimes import runtime_of

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime} is not one of {', '.join(RUNTIMES)}")
    own = runtime_of(checkpoint)
    if own:
        if runtime not in ("auto", own):
            how = ("serve the checkpoint it was exported from (its sidecar's source_checkpoint)" if runtime == "torch"
                   else f"export the checkpoint: resnetlab export CHECKPOINT --format "
                        f"{'onnx' if runtime == 'onnxruntime' else runtime}")
            raise ConfigError(f"{checkpoint} is an exported model that runs in {own} (--runtime auto); for "
                              f"{runtime}, {how}")
        return load(checkpoint), None
    explainer = load(checkpoint, device=device)
    chosen = runtime
    if runtime == "auto":
        chosen = "torch" if resolve_device(device).type != "cpu" else next(
            (name for name in FAST_CPU_RUNTIMES if _installed(name)), "torch")
    if chosen == "torch":
        return explainer, explainer
    from ..errors import ExportError
    from ..export import export_model

    fmt = "onnx" if chosen == "onnxruntime" else chosen
    logger.info(f"--runtime {runtime}: exporting {checkpoint} ({fmt}, fp32) for this server; /explain runs it in torch")
    try:
        result = export_model(checkpoint, format=fmt, out=folder / f"model.{'onnx' if fmt == 'onnx' else 'xml'}",
                              dynamic_batch=True, check=False)
    except ExportError as err:
        if runtime != "auto":
            raise
        logger.warning(f"could not export for {chosen} ({err}); serving the checkpoint in torch")
        return explainer, explainer
    return load(result["path"]), explainer


def _installed(runtime: str) -> bool:
    modules = {"openvino": ("openvino", "onnx", "onnxscript"), "onnxruntime": ("onnxruntime", "onnx", "onnxscript")}
    return all(find_spec(name) is not None for name in modules[runtime])


def _run(classifier, explainer, checkpoint: str | Path, host: str, port: int,  # noqa: ANN001
         limits: ServeLimits | None, log_level: str) -> None:
    import uvicorn

    from .app import create_app
    from .protocol import server_config

    limits = limits or ServeLimits()
    app = create_app(classifier, limits, explainer=explainer)
    if not _is_loopback(host):
        logger.warning(f"listening on {host}: anyone who can reach this machine can use the model "
                       "(there is no authentication); the default --host 127.0.0.1 keeps it local")
    shown = f"[{host}]" if ":" in host else host
    logger.info(f"serving {Path(checkpoint).name} ({len(classifier.classes)} classes, {classifier.meta.img_size}px, "
                f"{classifier.runtime}) at http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.Server(server_config(app, host=host, port=port, limits=limits, log_level=log_level)).run()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
