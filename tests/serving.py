"""Helpers shared by the export, serve and browser tests: a tiny trained model and a live loopback server."""

from __future__ import annotations

import io
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import learned_tiny_run, trained_tiny_run


def train_tiny(root: Path, *, learned: bool = False) -> tuple[Path, Path]:
    """(best.pt, data folder) in ``root``: private copies of the session's trained run (one epoch of a quarter-width
    ResNet-18 on 16 px toy images, trained once per session: conftest.trained_tiny_run) and of its toy data;
    ``learned``: the three-epoch run whose labels follow the images (conftest.learned_tiny_run)."""
    trained = learned_tiny_run() if learned else trained_tiny_run()
    run = trained.copy_to(root / "run")
    data = shutil.copytree(trained.data, root / "toy")
    return run / "best.pt", data


# int8 and fp16 exports against the fp32 checkpoint on the 96 toy images of the learned run (train_tiny(learned=True)):
# the least share of top labels that agree, and the largest difference allowed in any class probability. Measured:
# int8 100 % and 0.015 (onnxruntime), 0.040 (OpenVINO NNCF); fp16 100 % and 4e-4.
AGREEMENT = {"int8": (0.95, 0.08), "fp16": (1.0, 5e-3)}


def toy_images(data: Path) -> list[str]:
    """Every image of the toy set (Train and Val), in a stable order."""
    return sorted(str(p) for p in data.rglob("*.png"))


def assert_agrees(got: np.ndarray, reference: np.ndarray, precision: str) -> None:
    """``got`` (N x K probabilities of an int8 or fp16 export) gives the checkpoint's top label on at least the
    share of images AGREEMENT[precision] states, and no probability further from ``reference``'s than it allows."""
    same_labels, probability = AGREEMENT[precision]
    assert got.shape == reference.shape
    same = float((got.argmax(1) == reference.argmax(1)).mean())
    worst = float(np.abs(got - reference).max())
    assert same >= same_labels and worst <= probability, (
        f"{precision}: {same:.1%} of {len(got)} labels agree (>= {same_labels:.0%} expected), max |probability "
        f"difference| {worst:.4f} (<= {probability} expected)")
    assert len(set(reference.argmax(1))) == reference.shape[1]  # a model that tells the classes apart


def one_per_class(data: Path) -> list[Path]:
    """The first validation image of each class of a toy set (Val/<class>/...), in class order."""
    return [sorted(folder.glob("*.png"))[0] for folder in sorted((data / "Val").iterdir())]


def uploads(files: list[Path]) -> list[tuple]:
    """``files`` as the multipart field ``files`` of one /predict request."""
    return [("files", (file.name, file.read_bytes(), "image/png")) for file in files]


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
