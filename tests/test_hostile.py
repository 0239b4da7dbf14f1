"""What a hostile user found (issue 14), each with a test that fails without its fix: link loops, encodings, pipes,
hidden folders, huge images, a full disk, signals mid-decode and mid-write, unsafe or broken weights files."""

from __future__ import annotations

import codecs
import errno
import io
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from conftest import TOY_CLASSES, make_image, write_class_folders
from resnetlab.checkpoint import read_checkpoint
from resnetlab.cli import main
from resnetlab.data import cache
from resnetlab.data.cache import decode_split
from resnetlab.data.sources import open_data
from resnetlab.data.splits import SplitData
from resnetlab.errors import CheckpointError, DataError
from resnetlab.signals import Terminated, signals_deferred, sigterm_as_exception

CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]


def _classes(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            make_image(rng, (60 * c, 200, 40)).save(folder / f"{i}.png")
    return root


def test_link_loops_and_links_out_of_the_data_are_not_followed(tmp_path: Path):
    data = _classes(tmp_path / "data")
    (data / "c0" / "up").symlink_to("..")  # every other class's images would count as c0
    (data / "c1" / "selfloop").symlink_to(".")  # c1 would be read again and again
    outside = _classes(tmp_path / "elsewhere", per_class=4)
    (data / "c2" / "out").symlink_to(outside / "c2")
    source = open_data(str(data), val_split=0.2, seed=0)
    counts = {name: source.class_counts("train")[name] + source.class_counts("val")[name] for name in source.classes}
    assert counts == {"c0": 10, "c1": 10, "c2": 10}
    notes = "\n".join(source.notes)
    assert "up: a link to a folder already read" in notes and "selfloop: a link to a folder already read" in notes
    assert "out: a link that leads outside" in notes
    followed = open_data(str(data), val_split=0.2, seed=0, follow_links=True)  # told to: the outside link counts
    assert sum(len(s) for s in followed.splits.values()) == 34


def test_csv_in_utf16_and_utf32_is_read_and_latin1_is_named(csv_dataset: Path):
    text = csv_dataset.read_text(encoding="utf-8")
    expected = open_data(str(csv_dataset))
    for encoding, bom in (("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                          ("utf-32-le", codecs.BOM_UTF32_LE)):
        csv_dataset.write_bytes(bom + text.encode(encoding))
        source = open_data(str(csv_dataset))
        assert source.classes == expected.classes and len(source.splits["train"]) == len(expected.splits["train"])
    first = next(i for i, line in enumerate(text.splitlines(), start=1) if "é" in line)  # "green léaf"
    csv_dataset.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=rf"labels.csv line {first}: not valid utf-8 .*save the CSV as UTF-8"):
        open_data(str(csv_dataset))


def test_a_named_pipe_is_never_read_and_hidden_class_folders_are_named(tmp_path: Path, capsys):
    data = write_class_folders(tmp_path / "data", 10)
    os.mkfifo(data / "red" / "x.jpg")  # reading it would block forever
    (data / ".cache").mkdir()
    make_image(np.random.default_rng(0), (1, 2, 3)).save(data / ".cache" / "thumb.png")
    source = open_data(str(data), val_split=0.2)
    assert all(not p.endswith("x.jpg") for split in source.splits.values() for p in split.paths)
    notes = "\n".join(source.notes)
    assert "x.jpg: not a regular file" in notes and "hidden folders" in notes and ".cache" in notes
    checkpoint_free = SplitData("p", np.zeros(1, dtype=np.int64), [str(data / "red" / "x.jpg")])
    decoded = decode_split(checkpoint_free, 16, workers=1, progress=False, use_cache=False)  # a path given anyway
    assert len(decoded) == 0 and "not a regular file" in decoded.skipped[0]["reason"]


def test_images_past_pils_warning_limit_are_named_in_check_and_the_report(tmp_path: Path, monkeypatch, capsys):
    data = write_class_folders(tmp_path / "data", 6)
    Image.new("RGB", (50, 50), (200, 30, 30)).save(data / "red" / "huge.png")  # 2,500 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # warning above 2,000, refusal above 4,000
    report_file = tmp_path / "report.json"
    assert main(["check", str(data), "--json", str(report_file), "--no-progress", "--workers", "1"]) == 0
    assert "huge.png" in capsys.readouterr().out
    report = resnetlab_json(report_file)
    huge = [p for p in report["problems"] if p["path"].endswith("huge.png")]
    assert huge and huge[0]["severity"] == "warning" and "very large image" in huge[0]["reason"]


def resnetlab_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def test_a_full_cache_disk_falls_back_to_memory_with_one_warning(tmp_path: Path, monkeypatch, capsys):
    data = write_class_folders(tmp_path / "data", 30)
    split = open_data(str(data), val_split=0.1).splits["train"]

    def no_space(fd, offset, length):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", no_space)
    decoded = decode_split(split, 16, cache_dir=str(tmp_path / "cache"), workers=1, progress=False)
    assert len(decoded) == len(split) and decoded.cache_file is None
    out = capsys.readouterr().err
    assert out.count("warning: cannot cache in") == 1 and "No space left on device" in out
    assert not list((tmp_path / "cache").glob("*"))  # no temp array left behind


@contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode()[:200]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def test_a_real_full_disk_under_the_cache_and_the_run_folder(tmp_path: Path, capsys):
    data = write_class_folders(tmp_path / "data", 40)
    with _tmpfs(tmp_path / "small", "1m") as small:
        split = open_data(str(data), val_split=0.1).splits["train"]
        decoded = decode_split(split, 64, cache_dir=str(small / "cache"), workers=1, progress=False)  # 1.3 MB
        assert len(decoded) == len(split) and decoded.cache_file is None  # no SIGBUS: memory instead
        assert not [p for p in (small / "cache").iterdir() if p.suffix == ".npy"]
        capsys.readouterr()
        code = main(["train", str(data), "--out", str(small / "run"), "--epochs", "1", *CLI_TINY])
        err = capsys.readouterr().err
        assert code == 1 and "No space left on device" in err and "MiB free" in err and "is intact" in err
        assert "could not write" in err and "Traceback" not in err
        leftovers = [p.name for p in (small / "run").iterdir() if p.name.endswith(".tmp") or p.stat().st_size == 0]
        assert leftovers == []


_REAL_DECODE = cache._decode_one


def _slow_decode(job):  # noqa: ANN001, ANN202 - runs in the forked decode workers (module level: picklable)
    time.sleep(0.05)
    return _REAL_DECODE(job)


def test_sigterm_mid_decode_ends_the_workers_and_leaves_no_temp_array(tmp_path: Path, monkeypatch):
    data = write_class_folders(tmp_path / "data", 40)
    split = open_data(str(data), val_split=0.1).splits["train"]
    monkeypatch.setattr(cache, "_decode_one", _slow_decode)
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the slowed decode reaches the workers only when they are forked")

    before = set(multiprocessing.active_children())  # another test's children in this worker are not ours

    def ours() -> set:
        return set(multiprocessing.active_children()) - before

    def terminate_when_workers_run() -> None:
        for _ in range(400):
            if ours():
                break
            time.sleep(0.025)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_workers_run)
    with pytest.raises(Terminated), sigterm_as_exception():
        killer.start()
        decode_split(split, 16, cache_dir=str(tmp_path / "cache"), workers=2, progress=False)
    killer.join(timeout=30)
    for _ in range(100):
        if not ours():
            break
        time.sleep(0.05)
    assert ours() == set()
    assert not [p for p in (tmp_path / "cache").glob("*.npy")]


def test_signals_wait_for_a_checkpoint_write_to_finish():
    hit = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: hit.append(number))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert hit == []  # held back while the file is written
        time.sleep(0.05)
        assert hit == [signal.SIGINT]  # delivered right after
    finally:
        signal.signal(signal.SIGINT, previous)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_an_onnx_file_without_its_extension_is_named_as_onnx(tmp_path: Path, split_folders: Path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])])
    bare = tmp_path / "model"  # ONNX bytes, no .onnx: once called "not a torch checkpoint"
    onnx.save(helper.make_model(graph), str(bare))
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(bare)
    assert str(caught.value) == f"cannot load {bare}: it looks like an ONNX model: give it a .onnx extension"
    assert main(["predict", str(bare), str(split_folders / "Val"), "--no-progress"]) == 1
    assert "it looks like an ONNX model: give it a .onnx extension" in capsys.readouterr().err


def test_weights_files_are_described_for_what_they_are(tmp_path: Path, split_folders: Path, capsys):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a torch checkpoint: neither torch.save's zip format nor a pickle"):
        read_checkpoint(noise)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refuses to load") as caught:
        read_checkpoint(evil)
    assert "weights_only" not in str(caught.value)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    good.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(good)
    out = tmp_path / "run"
    assert main(["train", str(split_folders), "--pretrained", str(evil), "--out", str(out), *CLI_TINY]) == 1
    err = capsys.readouterr().err
    assert "refuses to load" in err and "weights_only" not in err
    assert not out.exists()  # checked before the run folder is made: the same --out works next time


def test_a_start_that_failed_before_any_checkpoint_does_not_block_its_folder(tmp_path: Path, capsys):
    data = write_class_folders(tmp_path / "data", 8)
    for path in (data / "red").iterdir():
        path.write_bytes(b"broken")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--strict", *CLI_TINY]) == 1
    assert (out / "data_report.json").is_file()
    for i, path in enumerate(sorted((data / "red").iterdir())):
        make_image(np.random.default_rng(i), TOY_CLASSES["red"]).save(path, format="PNG")
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", *CLI_TINY]) == 0
    assert "reusing" in capsys.readouterr().err and (out / "best.pt").is_file()


def test_predict_on_an_empty_folder_and_onnx_with_tta_are_clear_errors(tmp_path: Path, split_folders: Path,
                                                                       capsys):
    from serving import train_tiny

    best, _ = train_tiny(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(best), str(tmp_path / "empty"), "--no-progress"]) == 1
    assert "no input images found" in capsys.readouterr().err
    fake_onnx = tmp_path / "m.onnx"
    fake_onnx.write_bytes(b"x")
    assert main(["predict", str(fake_onnx), str(split_folders / "Val"), "--tta", "flip", "--no-progress"]) == 2
    assert "--tta needs a PyTorch checkpoint" in capsys.readouterr().err


def test_an_image_too_large_for_pil_to_open_is_a_413_upload(tmp_path: Path):
    from fastapi.testclient import TestClient

    from resnetlab.serve import create_app
    from serving import train_tiny

    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # 400 MP: over twice PIL's limit
    best, _ = train_tiny(tmp_path / "model")
    with TestClient(create_app(resnetlab.load(best, device="cpu"))) as client:
        answer = client.post("/predict", files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert answer.status_code == 413 and "--max-pixels" in answer.json()["detail"]


CLOSED_WITHIN_S = 30  # a bound on the wait for a connection the server closes; it takes ~1 s, or none at once


@contextmanager
def _guarded_server(tmp_path: Path, limits):  # noqa: ANN001 - a ServeLimits
    """The real service (create_app + the guarded uvicorn protocol) on a free loopback port; yields the port."""
    import socket as sockets

    import uvicorn

    from resnetlab.serve import create_app
    from resnetlab.serve.protocol import server_config
    from serving import train_tiny

    best, _ = train_tiny(tmp_path / "model")
    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(resnetlab.load(best, device="cpu"), limits), host="127.0.0.1",
                                          port=port, limits=limits, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()


def test_idle_and_slow_connections_cannot_starve_the_service(tmp_path: Path):
    """Raw sockets: 140 connections that never send a request (more than --max-connections), and one that sends
    half its headers; every other client is still served once the request timeout has passed."""
    import http.client
    import socket as sockets

    from resnetlab.serve import ServeLimits
    from serving import png_bytes

    limits = ServeLimits(request_timeout_s=1.0, max_connections=128, max_connections_per_client=200)
    idle: list = []
    with _guarded_server(tmp_path, limits) as port:
        try:
            idle = [sockets.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN_S) for _ in range(140)]
            slow = sockets.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN_S)
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            idle.append(slow)
            # each recv returns b"" once the server closes that connection (1 s request timeout; past the 128th at
            # once); a connection still open after CLOSED_WITHIN_S raises TimeoutError
            assert all(conn.recv(1) == b"" for conn in idle)
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n" \
                   b"Content-Type: image/png\r\n\r\n" + png_bytes() + b"\r\n--b--\r\n"
            client.request("POST", "/predict", body, {"Content-Type": "multipart/form-data; boundary=b"})
            answer = client.getresponse()
            assert answer.status == 200 and b"predictions" in answer.read()
        finally:
            for conn in idle:
                conn.close()


def test_one_client_cannot_hold_every_connection(tmp_path: Path):
    import socket as sockets

    from resnetlab.serve import ServeLimits

    conns: list = []
    with _guarded_server(tmp_path, ServeLimits(request_timeout_s=60.0, max_connections_per_client=4)) as port:
        try:
            conns = [sockets.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN_S) for _ in range(6)]
            # the 5th and 6th from the same address are closed by the server (a TimeoutError if still open)
            assert [conn.recv(1) for conn in conns[4:]] == [b"", b""]
            for conn in conns[:4]:  # while the first four are open and served (within the 60 s request timeout)
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert conn.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
        finally:
            for conn in conns:
                conn.close()
