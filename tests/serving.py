"""Helpers shared by the export, serve and browser tests: a tiny trained model and a live loopback server."""

from __future__ import annotations

import io
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from conftest import trained_tiny_run


def train_tiny(root: Path) -> tuple[Path, Path]:
    """(best.pt, data folder) in ``root``: private copies of the session's trained run (one epoch of a quarter-width
    ResNet-18 on 16 px toy images, trained once per session: conftest.trained_tiny_run) and of its toy data."""
    trained = trained_tiny_run()
    run = trained.copy_to(root / "run")
    data = shutil.copytree(trained.data, root / "toy")
    return run / "best.pt", data


def png_bytes(size: int = 20, colour: tuple[int, int, int] = (230, 40, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port in a thread; yields the base URL, then stops it.

    The socket is bound and listening before the thread starts, so requests made at once wait in the
    backlog until uvicorn accepts them: no polling for readiness.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
