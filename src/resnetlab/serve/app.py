"""The FastAPI app around one Classifier: the web page, the JSON API and the Grad-CAM overlay route.

    app = create_app(resnetlab.load("runs/x/best.pt"))    # for uvicorn, TestClient, or mounting
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.
# fastapi, pydantic and starlette are imported at the top: this module is imported only when serving.

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..classifier import Classifier
from ..errors import ImageReadError
from .limits import SERVED_CAM_METHODS, BodyLimit, ServeLimits, UploadTooLarge, decode_upload
from .worker import Busy, InferenceWorker

# /health's "runtime" keeps the names clients already read ("pytorch", not the Classifier's "torch")
_RUNTIME_NAMES = {"torch": "pytorch"}


class Label(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    label: str
    confidence: float
    top: list[Label]
    labels: list[Label] | None = None  # multi-label models: every label at or above its threshold (label: 'a|b')


class Predictions(BaseModel):
    predictions: list[ImagePrediction]


class Classes(BaseModel):
    classes: list[str]


class Health(BaseModel):
    status: str
    model: str
    classes: int
    img_size: int
    runtime: str
    explain: bool
    limits: dict[str, int]
    queue: dict[str, int]
    task: str = "multiclass"  # or "multilabel": /predict's 'labels' lists every label above its threshold
    temperature: float = 1.0  # calibration: probabilities are softmax(logits / temperature)


class Error(BaseModel):
    detail: str


ERRORS = {413: {"model": Error, "description": "upload, image or file count over a limit"},
          415: {"model": Error, "description": "not an image"},
          503: {"model": Error, "description": "queue full; retry after the Retry-After seconds"}}


def page_html() -> str:
    return (resources.files("resnetlab") / "static" / "index.html").read_text(encoding="utf-8")


def _explain_function():
    """resnetlab.cam.overlay_for_image, or the ImportError saying why it is unavailable."""
    try:
        from ..cam import overlay_for_image  # grad-cam is optional: without it /explain answers 501
    except ImportError as err:
        return err
    return overlay_for_image


@dataclass
class _Service:
    """What the routes share: the model, its worker thread, the limits and the decoding slots."""

    classifier: Classifier
    limits: ServeLimits
    worker: InferenceWorker
    decode_slots: asyncio.Semaphore
    explain: object  # overlay_for_image, or the ImportError that made it unavailable
    runtime: str  # as /health reports it: "pytorch", "onnxruntime", "openvino" or "torchscript"
    explainer: Classifier | None = None  # the torch network /explain runs (None: an exported file only)

    @property
    def size(self) -> int:
        return self.classifier.meta.img_size

    @property
    def too_many(self) -> str:
        return f"too many images in one request; this server accepts at most {self.limits.max_files} (--max-files)"

    async def decode(self, upload: UploadFile) -> tuple:  # (uint8 3 x S x S tensor, RGB PIL image)
        name = Path(upload.filename or "upload").name
        data = await upload.read()
        async with self.decode_slots:  # bounds the decoded full-size images held at once
            try:
                return await run_in_threadpool(decode_upload, name, data, self.size, self.limits.max_pixels,
                                               self.classifier.meta.crop)
            except UploadTooLarge as err:
                raise HTTPException(413, str(err)) from None
            except ImageReadError as err:
                status = 415 if err.reason.startswith("not an image") else 422
                raise HTTPException(status, f"{err} (expected a JPEG, PNG, WebP, BMP, GIF or TIFF image)") from None

    async def on_worker(self, submit: Callable[[], Future]):
        try:
            future = submit()
        except Busy:
            raise HTTPException(503, f"the model is busy ({self.limits.max_pending} requests already waiting); "
                                     "retry shortly", headers={"Retry-After": "1"}) from None
        return await asyncio.wrap_future(future)

    def health(self) -> dict:
        limits, worker = self.limits, self.worker
        return {"status": "ok", "model": self.classifier.meta.spec.arch, "classes": len(self.classifier.classes),
                "task": self.classifier.meta.task, "temperature": self.classifier.meta.temperature,
                "img_size": self.size, "runtime": self.runtime,
                "explain": self.explainer is not None and not isinstance(self.explain, ImportError),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_files": limits.max_files, "max_pending": limits.max_pending},
                "queue": {"waiting": worker._jobs.qsize(), "batches": worker.batches, "images": worker.images}}


def create_app(classifier: Classifier, limits: ServeLimits | None = None, *, explainer: Classifier | None = None):
    """The FastAPI app serving ``classifier``; its inference thread stops when the app shuts down. /explain runs
    ``explainer`` (default: ``classifier`` when it is a torch network)."""
    limits = limits or ServeLimits()
    worker = InferenceWorker(classifier, max_batch=limits.max_batch, max_pending=limits.max_pending)
    explainer = explainer or (classifier if classifier.model is not None else None)
    service = _Service(classifier, limits, worker, asyncio.Semaphore(limits.decode_threads), _explain_function(),
                       _RUNTIME_NAMES.get(classifier.runtime, classifier.runtime), explainer)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(worker.close)

    app = FastAPI(title="resnetlab", version=__version__, lifespan=lifespan,
                  description=f"Image classifier ({classifier.meta.spec.arch}, {len(classifier.classes)} classes). "
                              "POST images to /predict; /explain returns a Grad-CAM overlay PNG.")
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def _clear_message(request, exc):
        # Starlette's form parser stops at 1,000 files with a 400 in general words: say which limit instead
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            exc = HTTPException(413, service.too_many)
        return await http_exception_handler(request, exc)

    _add_info_routes(app, service)
    _add_predict_route(app, service)
    _add_explain_route(app, service)
    app.state.worker = worker
    return app


def _add_info_routes(app: FastAPI, service: _Service) -> None:
    """GET /, /health and /classes."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page_html()

    @app.get("/health", response_model=Health, summary="model, limits and queue counters")
    def health() -> dict:
        return service.health()

    @app.get("/classes", response_model=Classes, summary="class names in the model's order")
    def classes() -> dict:
        return {"classes": list(service.classifier.classes)}


def _add_predict_route(app: FastAPI, service: _Service) -> None:
    """POST /predict: top-k labels for one image (``file``) or several (``files``), run as one batch."""
    classifier, limits, worker = service.classifier, service.limits, service.worker

    @app.post("/predict", response_model=Predictions, responses=ERRORS, summary="top-k labels for images",
              response_model_exclude_none=True)
    async def predict(file: UploadFile | None = File(None, description="one image"),
                      files: list[UploadFile] | None = File(None, description="several images (field repeated)"),
                      topk: int = Query(limits.topk, ge=1, le=1000, description="labels per image"),
                      min_confidence: float = Query(0.0, ge=0.0, le=1.0, description="label 'unsure' under this "
                                                    "top probability (single-label models)")) -> dict:
        uploads = ([file] if file is not None else []) + list(files or [])
        if not uploads:
            raise HTTPException(422, "no image: send one in the multipart field 'file' (or several in 'files')")
        if len(uploads) > limits.max_files:
            raise HTTPException(413, service.too_many)
        batch = torch.stack([(await service.decode(upload))[0] for upload in uploads])  # uint8 N x 3 x S x S
        logits = await service.on_worker(lambda: worker.submit_logits(batch))
        return {"predictions": [
            {"filename": Path(upload.filename or "upload").name, "label": p.label, "confidence": p.confidence,
             "top": [{"label": label, "probability": q} for label, q in p.top],
             "labels": None if p.labels is None else [{"label": label, "probability": q} for label, q in p.labels]}
            for upload, p in zip(uploads, classifier.to_predictions(logits, topk, min_confidence=min_confidence))]}


def _add_explain_route(app: FastAPI, service: _Service) -> None:
    """POST /explain: the predicted class's Grad-CAM heat map over the image, as PNG (501 when unavailable)."""
    explain = service.explain

    @app.post("/explain", response_class=Response, summary="Grad-CAM heat map over the image, as PNG",
              responses={200: {"content": {"image/png": {}}, "description": "the overlay image"}, **ERRORS,
                         501: {"model": Error, "description": "no explanations (no grad-cam, exported model)"}})
    async def explain_image(file: UploadFile = File(..., description="one image"),
                            method: str = Query("gradcam", description="CAM method: "
                                                + ", ".join(SERVED_CAM_METHODS))) -> Response:
        if isinstance(explain, ImportError):
            raise HTTPException(501, f"explanations are not available in this installation ({explain})")
        if service.explainer is None:
            raise HTTPException(501, f"explanations need a PyTorch checkpoint; this server runs an exported model "
                                     f"({service.runtime}): serve the .pt file it was exported from")
        if method not in SERVED_CAM_METHODS:
            raise HTTPException(422, f"method '{method}' is not served; choose one of "
                                     f"{', '.join(SERVED_CAM_METHODS)} (scorecam and ablationcam run one forward "
                                     "pass per feature channel: use resnetlab explain for them)")
        _, image = await service.decode(file)

        def render() -> bytes:
            buffer = io.BytesIO()
            explain(service.explainer, image, method=method).save(buffer, format="PNG")
            return buffer.getvalue()

        try:
            png = await service.on_worker(lambda: service.worker.submit_call(render))
        except ValueError as err:  # e.g. an unknown method name
            raise HTTPException(422, str(err)) from None
        return Response(png, media_type="image/png")
