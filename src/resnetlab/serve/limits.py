"""What one request may cost, and the checks that enforce it before the model sees anything: the request-body
limit (ASGI middleware) and the pixel-count check on uploaded images.

    limits = ServeLimits(max_upload_bytes=20 * MB, max_files=4)
"""

# Nothing heavy at import time: the CLI imports ServeLimits and MB while it builds its parser, so torch, PIL,
# fastapi and starlette are imported inside the functions that need them.

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

MB = 1024 * 1024
# /explain runs on the single model thread that /predict waits on, so only methods costing one forward (and one
# backward) pass; scorecam and ablationcam run one forward pass per feature channel (resnetlab explain has them)
SERVED_CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam")


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
    max_connections: int = 128  # open connections; more get 503
    max_connections_per_client: int = 32  # from one address: idle ones cannot starve the other clients
    request_timeout_s: float = 15.0  # to send a whole request (headers and body); slower clients are cut off

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        """The `resnetlab serve` flags for these limits, with their defaults."""
        d = ServeLimits()
        parser.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / MB,
                            help=f"largest request body in MB (default: {d.max_upload_bytes / MB:g})")
        parser.add_argument("--max-pixels", type=int, default=d.max_pixels,
                            help=f"largest image, width x height (default: {d.max_pixels:,})")
        parser.add_argument("--max-files", type=int, default=d.max_files,
                            help=f"images per /predict request (default: {d.max_files})")
        parser.add_argument("--max-batch", type=int, default=d.max_batch,
                            help=f"images per forward pass when requests are batched (default: {d.max_batch})")
        parser.add_argument("--max-pending", type=int, default=d.max_pending,
                            help=f"requests waiting for the model before new ones get 503 (default: {d.max_pending})")
        parser.add_argument("--topk", type=int, default=d.topk, help=f"default labels per image (default: {d.topk})")
        parser.add_argument("--max-connections", type=int, default=d.max_connections,
                            help=f"open connections; more get 503 (default: {d.max_connections})")
        parser.add_argument("--max-connections-per-client", type=int, default=d.max_connections_per_client,
                            help="open connections from one address; more are closed at once "
                                 f"(default: {d.max_connections_per_client})")
        parser.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                            help="seconds a client has to send a whole request, headers and body; idle and slow "
                                 f"connections are closed (default: {d.request_timeout_s:g})")

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> ServeLimits:
        return cls(max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=args.max_pixels,
                   max_files=args.max_files, max_batch=args.max_batch, max_pending=args.max_pending, topk=args.topk,
                   max_connections=args.max_connections, max_connections_per_client=args.max_connections_per_client,
                   request_timeout_s=args.request_timeout)


class UploadTooLarge(ValueError):
    """An upload exceeds a server limit (HTTP 413)."""


def too_large_message(limit: int) -> str:
    return f"upload too large: the request body is over {limit:,} bytes ({limit / MB:.3g} MB, --max-upload-mb)"


def decode_upload(name: str, data: bytes, size: int, max_pixels: int, crop=None) -> tuple[torch.Tensor, Image.Image]:  # noqa: ANN001
    """Uploaded bytes -> (uint8 3 x S x S model input, RGB PIL image); ValueError-like errors name the file.

    The same decoding as every other verb (open_rgb + decode_image); the pixel count is read from the header
    first, so an oversized image is refused before it is decoded.
    """
    # Imported here, not at the top: this module must stay light for the CLI (data.images loads torch)
    from PIL import Image

    from ..data.images import decode_image, open_rgb

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as err:  # over twice PIL's limit: PIL refuses to even open it
        raise UploadTooLarge(f"{name}: {err}; this server accepts at most {max_pixels:,} pixels per image "
                             "(--max-pixels)") from None
    except Exception:  # noqa: BLE001 - open_rgb below says precisely what is wrong
        width = height = 0
    if width * height > max_pixels:
        raise UploadTooLarge(f"{name}: {width} x {height} = {width * height:,} pixels; this server accepts at most "
                             f"{max_pixels:,} pixels per image (--max-pixels)")
    from ..data.images import Crop

    crop = crop or Crop()  # the model's evaluation crop (ModelMeta.crop)
    image = open_rgb(name, data=data, draft_size=crop.scale_size(size))  # ImageReadError: empty, broken, not an image
    return decode_image(image, size, crop), image


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
        # Imported here, not at the top: this module must stay light for the CLI (starlette is the serve extra)
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
