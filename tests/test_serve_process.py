"""`resnetlab serve` as a user starts it: the console script in a process of its own on a port the OS picks (--port 0,
read from uvicorn's start line), with its limit flags, answering, refusing past its limits, warning when it listens
beyond loopback, and stopping cleanly on Ctrl-C (exit 130) and SIGTERM (exit 143) with nothing left running."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from conftest import TOY_CLASSES
from processes import Process, descendants
from resnetlab.cli import main
from serving import one_per_class, uploads

SERVE_EXTRA = "the 'serve' extra: pip install 'resnetlab[serve]'"
httpx = pytest.importorskip("httpx", reason=SERVE_EXTRA)
pytest.importorskip("uvicorn", reason=SERVE_EXTRA)

CLI = str(Path(sys.executable).parent / "resnetlab")
STARTED = "Uvicorn running on"
START_S = 180  # importing torch, loading (and exporting) the model on a busy 2-core host: generous
WAIT_S = 30  # any other bounded wait (a response, a closed connection, the exit)


def start(checkpoint: Path, *flags: str) -> tuple[Process, str, int]:
    """(the server process, its stderr up to the start line, its port). Every message is read from stderr alone."""
    process = Process([CLI, "serve", str(checkpoint), "--port", "0", *flags], stderr_only=True)
    output = process.read_until(STARTED, timeout=START_S)
    port = int(re.search(rf"{STARTED} http://\S+?:(\d+)", output).group(1))
    assert port != 0
    return process, output, port


def stop(process: Process, sig: int, port: int) -> str:
    """Send ``sig``, wait for the exit; the rest of the output. Afterwards nothing it started runs and the port
    is free."""
    below = descendants(process.pid)
    process.send_signal(sig)
    rest = process.communicate(timeout=WAIT_S)
    for pid in below:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"process {pid} outlived the server"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=WAIT_S):
        pass
    return rest


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone between the two looks


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (recv sees the end) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def keep_alive_request(port: int) -> socket.socket:
    """A connection that has had its answer to GET /health and stays open (kept alive): one of the server's open
    connections for the next 5 s (uvicorn's keep-alive timeout)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while b'"status":"ok"' not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the answer: {answer!r}"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.slow
def test_serve_answers_within_its_limit_flags_and_stops_on_ctrl_c(trained_run):
    # --runtime torch: no export at start (the in-server export is covered in-process: test_quantize, test_deploy)
    flags = ["--runtime", "torch", "--max-batch", "4", "--max-pending", "3", "--max-files", "2",
             "--max-upload-mb", "0.05", "--max-connections", "2", "--request-timeout", "0.5"]
    process, output, port = start(trained_run.checkpoint, *flags)
    with process:
        assert "exporting" not in output and "anyone who can reach" not in output  # torch as asked; loopback
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            health = client.get("/health").json()
            assert health["status"] == "ok" and health["runtime"] == "pytorch" and health["classes"] == 3
            assert health["limits"] == {"max_upload_bytes": int(0.05 * 1024 * 1024), "max_pixels": 50_000_000,
                                        "max_files": 2, "max_pending": 3}
            images = one_per_class(trained_run.data)
            answer = client.post("/predict", files=uploads(images[:2]))
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            assert [p["filename"] for p in predictions] == [image.name for image in images[:2]]
            assert all(p["label"] in TOY_CLASSES and len(p["top"]) == 3 for p in predictions)

            too_many = client.post("/predict", files=uploads(images[:3]))  # --max-files 2
            assert too_many.status_code == 413 and "--max-files" in too_many.json()["detail"]
            too_big = client.post("/predict", files={"file": ("big.png", os.urandom(80_000), "image/png")})
            assert too_big.status_code == 413 and "--max-upload-mb" in too_big.json()["detail"]

        idle = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)  # sends nothing: --request-timeout
        with idle:  # 0.5 s asked; the bound is 20 times that and under the default 15 s
            assert closed_by_server(idle, within=10)
        held = keep_alive_request(port)  # with this one open, a second connection reaches --max-connections 2
        with held, httpx.Client(base_url=url, timeout=WAIT_S) as other:
            assert other.get("/health").status_code == 503

        rest = stop(process, signal.SIGINT, port)
    assert process.returncode == 130, output + rest
    assert "resnetlab serve: interrupted" in rest and "Application shutdown complete" in rest
    assert "Traceback" not in output + rest


@pytest.mark.slow
def test_serve_on_every_network_warns_and_stops_on_sigterm(trained_run):
    process, output, port = start(trained_run.checkpoint, "--host", "0.0.0.0", "--runtime", "torch", "--device", "cpu")
    with process:
        assert "listening on 0.0.0.0: anyone who can reach this machine can use the model" in output  # on stderr
        assert f"{STARTED} http://0.0.0.0:{port}" in output
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
            assert client.get("/health").json()["runtime"] == "pytorch"
            image = one_per_class(trained_run.data)[0]
            answer = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")})
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in TOY_CLASSES
        rest = stop(process, signal.SIGTERM, port)
    assert process.returncode == 143, output + rest
    assert "resnetlab serve: interrupted" in rest and "Traceback" not in output + rest


def test_serve_refuses_a_port_out_of_range_in_one_line(trained_run, capsys):
    assert main(["serve", str(trained_run.checkpoint), "--port", "70000"]) == 1
    assert capsys.readouterr().err.strip() == "resnetlab serve: error: --port 70000 is not a TCP port (0-65535)"
