"""Prediction service: a FastAPI app (JSON API + a web page) around one Classifier, run by uvicorn.

Routes: ``GET /`` (page: drop an image, see the top-5 and the Grad-CAM heat map), ``GET /health``,
``GET /classes``, ``POST /predict`` (multipart ``file`` or ``files``), ``POST /explain`` (overlay PNG),
and FastAPI's ``/openapi.json`` and ``/docs``. Safe defaults for a laptop: loopback only, upload
size, pixel-count and file-count limits, and a bounded queue in front of the model.

    resnetlab serve runs/x/best.pt --port 8000          # then open http://127.0.0.1:8000
    app = create_app(resnetlab.load("runs/x/best.pt"))    # for uvicorn, TestClient, or mounting
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time,
# and the response models are local to create_app (fastapi/pydantic are imported only when serving).

import asyncio
import io
import ipaddress
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and PIL load when serving starts, so `resnetlab --help` stays fast
    import torch
    from PIL import Image

    from .predict import Classifier

MB = 1024 * 1024
# /explain runs on the single model thread that /predict waits on, so only methods costing one forward (and one
# backward) pass; scorecam and ablationcam run one forward pass per feature channel (resnetlab explain has them)
SERVED_CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam")
_STOP = ("stop", None, None)  # the worker's last job


class ServeError(ValueError):
    """The service cannot start; the message says which setting or file is wrong."""


class Busy(Exception):
    """The inference queue is full: the client should retry later (HTTP 503)."""


@dataclass
class ServeLimits:
    """What one request may cost; every field is a `resnetlab serve` flag."""

    max_upload_bytes: int = 10 * MB  # whole request body, all files together
    max_pixels: int = 50_000_000  # per image, from its header before decoding (a 50 MP photo passes)
    max_files: int = 16  # images per /predict request
    max_batch: int = 32  # images per forward pass when waiting requests are combined (one request is never split)
    max_pending: int = 64  # requests waiting for the model; more get 503
    decode_threads: int = max(1, min(4, os.cpu_count() or 1))  # images decoded at once (each may be ~MP)
    topk: int = 5  # default labels per image


class InferenceWorker:
    """One thread owns the model: requests wait in a bounded queue, and the images of all requests
    waiting when the model frees up run as one batch (throughput rises with load, memory stays bounded).

    Explanations run on the same thread, so Grad-CAM's forward hooks never see another request's forward.
    """

    def __init__(self, classifier: "Classifier", *, max_batch: int, max_pending: int):
        self.classifier, self.max_batch = classifier, max_batch
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._carry = None  # a job taken while filling a batch that must run on its own
        self.batches = self.images = 0
        self._thread = threading.Thread(target=self._loop, name="resnetlab-inference", daemon=True)
        self._thread.start()

    def submit_logits(self, images: "torch.Tensor") -> Future:
        """uint8 N x 3 x S x S -> Future of logits N x K; raises Busy when the queue is full."""
        return self._put(("logits", images))

    def submit_call(self, function: Callable[[], object]) -> Future:
        """Run ``function()`` on the model's thread, alone."""
        return self._put(("call", function))

    def _put(self, job: tuple) -> Future:
        future: Future = Future()
        try:
            self._jobs.put_nowait((*job, future))
        except queue.Full:
            raise Busy from None
        return future

    def close(self) -> None:
        self._jobs.put(_STOP)  # blocks only while the queue is full; the worker drains it
        self._thread.join()

    def _next(self, block: bool):
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._jobs.get() if block else self._jobs.get_nowait()

    def _loop(self) -> None:
        while True:
            job = self._next(block=True)
            if job is _STOP:
                return
            kind, payload, future = job
            if kind == "call":
                _settle(future, payload)
                continue
            group, count = [job], len(payload)
            while count < self.max_batch:  # take whatever else is already waiting; never wait for more
                try:
                    extra = self._next(block=False)
                except queue.Empty:
                    break
                if extra[0] != "logits" or count + len(extra[1]) > self.max_batch:
                    self._carry = extra
                    break
                group.append(extra)
                count += len(extra[1])
            self._run_group(group)

    def _run_group(self, group: list) -> None:
        import torch

        live = [(images, future) for _, images, future in group if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            logits = self.classifier.logits(torch.cat([images for images, _ in live]))  # sum(N) x K
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests, the thread lives on
            for _, future in live:
                future.set_exception(err)
            return
        self.batches += 1
        self.images += len(logits)
        start = 0
        for images, future in live:
            future.set_result(logits[start:start + len(images)])
            start += len(images)


def _settle(future: Future, function: Callable[[], object]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(function())
    except Exception as err:  # noqa: BLE001 - the request reports it; the worker keeps serving
        future.set_exception(err)


def decode_upload(name: str, data: bytes, size: int, max_pixels: int) -> tuple["torch.Tensor", "Image.Image"]:
    """Uploaded bytes -> (uint8 3 x S x S model input, RGB PIL image); ValueError-like errors name the file.

    The same decoding as every other verb (open_rgb + decode_image); the pixel count is read from the header
    first, so an oversized image is refused before it is decoded.
    """
    from PIL import Image

    from .data.images import decode_image, open_rgb

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:  # noqa: BLE001 - open_rgb below says precisely what is wrong
        width = height = 0
    if width * height > max_pixels:
        raise UploadTooLarge(f"{name}: {width} x {height} = {width * height:,} pixels; this server accepts at most "
                             f"{max_pixels:,} pixels per image (--max-pixels)")
    image = open_rgb(name, data=data, draft_size=size)  # ImageReadError for empty, broken or non-image data
    return decode_image(image, size), image


class UploadTooLarge(ValueError):
    """An upload exceeds a server limit (HTTP 413)."""


def too_large_message(limit: int) -> str:
    return f"upload too large: the request body is over {limit:,} bytes ({limit / MB:.3g} MB, --max-upload-mb)"


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 JSON message naming the limit.

    Hand-written because FastAPI's own ``max_body_size`` answers a declared oversized body with a bare
    text "Content Too Large". This one refuses from the Content-Length header before reading anything,
    and counts the bytes of chunked uploads (no Content-Length) as they arrive.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": too_large_message(self.limit)}, status_code=413,
                                    headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI re-raises HTTPExceptions from body parsing: a JSON 413
                raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, counted_receive, send)


def _explain_function():
    """resnetlab.explain.overlay_for_image, or the ImportError saying why it is unavailable."""
    try:
        from .explain import overlay_for_image
    except ImportError as err:
        return err
    return overlay_for_image


def page_html() -> str:
    return (resources.files("resnetlab") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(classifier: "Classifier", limits: ServeLimits | None = None):
    """The FastAPI app serving ``classifier``; its inference thread stops when the app shuts down."""
    from contextlib import asynccontextmanager

    import torch
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import HTMLResponse, Response
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__
    from .data.images import ImageReadError

    limits = limits or ServeLimits()
    worker = InferenceWorker(classifier, max_batch=limits.max_batch, max_pending=limits.max_pending)
    decode_slots = asyncio.Semaphore(limits.decode_threads)
    size = classifier.meta.img_size
    explain = _explain_function()
    runtime = "pytorch" if getattr(classifier, "model", None) is not None else "onnxruntime"

    class Label(BaseModel):
        label: str
        probability: float

    class ImagePrediction(BaseModel):
        filename: str
        label: str
        confidence: float
        top: list[Label]

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

    class Error(BaseModel):
        detail: str

    errors = {413: {"model": Error, "description": "upload, image or file count over a limit"},
              415: {"model": Error, "description": "not an image"},
              503: {"model": Error, "description": "queue full; retry after the Retry-After seconds"}}

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(worker.close)

    app = FastAPI(title="resnetlab", version=__version__, lifespan=lifespan,
                  description=f"Image classifier ({classifier.meta.spec.arch}, {len(classifier.classes)} classes). "
                              "POST images to /predict; /explain returns a Grad-CAM overlay PNG.")
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    too_many = f"too many images in one request; this server accepts at most {limits.max_files} (--max-files)"

    @app.exception_handler(StarletteHTTPException)
    async def _clear_message(request, exc):
        # Starlette's form parser stops at 1,000 files with a 400 in general words: say which limit instead
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            exc = HTTPException(413, too_many)
        return await http_exception_handler(request, exc)

    async def decode(upload: UploadFile) -> tuple:  # (uint8 3 x S x S tensor, RGB PIL image)
        name = Path(upload.filename or "upload").name
        data = await upload.read()
        async with decode_slots:  # bounds the decoded full-size images held at once
            try:
                return await run_in_threadpool(decode_upload, name, data, size, limits.max_pixels)
            except UploadTooLarge as err:
                raise HTTPException(413, str(err)) from None
            except ImageReadError as err:
                status = 415 if err.reason.startswith("not an image") else 422
                raise HTTPException(status, f"{err} (expected a JPEG, PNG, WebP, BMP, GIF or TIFF image)") from None

    async def on_worker(submit: Callable[[], Future]):
        try:
            future = submit()
        except Busy:
            raise HTTPException(503, f"the model is busy ({limits.max_pending} requests already waiting); retry "
                                     "shortly", headers={"Retry-After": "1"}) from None
        return await asyncio.wrap_future(future)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page_html()

    @app.get("/health", response_model=Health, summary="model, limits and queue counters")
    def health() -> dict:
        return {"status": "ok", "model": classifier.meta.spec.arch, "classes": len(classifier.classes),
                "img_size": size, "runtime": runtime, "explain": not isinstance(explain, ImportError),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_files": limits.max_files, "max_pending": limits.max_pending},
                "queue": {"waiting": worker._jobs.qsize(), "batches": worker.batches, "images": worker.images}}

    @app.get("/classes", response_model=Classes, summary="class names in the model's order")
    def classes() -> dict:
        return {"classes": list(classifier.classes)}

    @app.post("/predict", response_model=Predictions, responses=errors, summary="top-k labels for images")
    async def predict(file: UploadFile | None = File(None, description="one image"),
                      files: list[UploadFile] | None = File(None, description="several images (field repeated)"),
                      topk: int = Query(limits.topk, ge=1, le=1000, description="labels per image")) -> dict:
        uploads = ([file] if file is not None else []) + list(files or [])
        if not uploads:
            raise HTTPException(422, "no image: send one in the multipart field 'file' (or several in 'files')")
        if len(uploads) > limits.max_files:
            raise HTTPException(413, too_many)
        batch = torch.stack([(await decode(upload))[0] for upload in uploads])  # uint8 N x 3 x S x S
        logits = await on_worker(lambda: worker.submit_logits(batch))
        return {"predictions": [
            {"filename": Path(upload.filename or "upload").name, "label": p.label, "confidence": p.confidence,
             "top": [{"label": label, "probability": q} for label, q in p.top]}
            for upload, p in zip(uploads, classifier.to_predictions(logits, topk))]}

    @app.post("/explain", response_class=Response, summary="Grad-CAM heat map over the image, as PNG",
              responses={200: {"content": {"image/png": {}}, "description": "the overlay image"}, **errors,
                         501: {"model": Error, "description": "explanations unavailable (no grad-cam, ONNX model)"}})
    async def explain_image(file: UploadFile = File(..., description="one image"),
                            method: str = Query("gradcam", description="CAM method: "
                                                + ", ".join(SERVED_CAM_METHODS))) -> Response:
        if isinstance(explain, ImportError):
            raise HTTPException(501, f"explanations are not available in this installation ({explain})")
        if runtime != "pytorch":
            raise HTTPException(501, "explanations need a PyTorch checkpoint; this server runs an ONNX model")
        if method not in SERVED_CAM_METHODS:
            raise HTTPException(422, f"method '{method}' is not served; choose one of "
                                     f"{', '.join(SERVED_CAM_METHODS)} (scorecam and ablationcam run one forward "
                                     "pass per feature channel: use resnetlab explain for them)")
        _, image = await decode(file)

        def render() -> bytes:
            buffer = io.BytesIO()
            explain(classifier, image, method=method).save(buffer, format="PNG")
            return buffer.getvalue()

        try:
            png = await on_worker(lambda: worker.submit_call(render))
        except ValueError as err:  # e.g. an unknown method name
            raise HTTPException(422, str(err)) from None
        return Response(png, media_type="image/png")

    app.state.worker = worker
    return app

def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: ServeLimits | None = None, max_connections: int = 128, log_level: str = "info") -> None:
    """Load the model and serve it until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise ServeError("serving needs the 'serve' extra: pip install 'resnetlab[serve]'") from None
    from .predict import load

    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port (0-65535)")
    classifier = load(checkpoint, device=device)
    app = create_app(classifier, limits)
    if not _is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the model "
              "(there is no authentication); the default --host 127.0.0.1 keeps it local", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {Path(checkpoint).name} ({len(classifier.classes)} classes, {classifier.meta.img_size}px) at "
          f"http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", flush=True)
    # limit_concurrency: connections beyond it get 503 from uvicorn before any body is read
    uvicorn.run(app, host=host, port=port, limit_concurrency=max_connections, log_level=log_level,
                timeout_keep_alive=5)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

