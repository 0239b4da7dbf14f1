"""Helpers shared by the export, serve and browser tests: a tiny trained model and a live loopback server."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

import resnetlab
from conftest import write_class_folders


def train_tiny(root: Path) -> tuple[Path, Path]:
    """(best.pt, data folder): one epoch of a quarter-width ResNet-18 on 16 px toy images, a few seconds."""
    data = root / "toy"
    write_class_folders(data / "Train", 24, seed=1)
    write_class_folders(data / "Val", 8, seed=2)
    run = root / "run"
    resnetlab.train(data=str(data), out=str(run), epochs=1, img_size=16, width=0.25, batch_size=16, lr=0.05,
                    progress=False, workers=1, cache_dir=str(root / "cache"))
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
