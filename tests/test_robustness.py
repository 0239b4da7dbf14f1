"""Nothing lost: bad images and files, interruptions, exact resume, untrusted checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import resnetlab
from conftest import TOY_CLASSES, make_image, write_class_folders
from processes import Process
from resnetlab.checkpoint import save_checkpoint
from resnetlab.cli import main
from resnetlab.data.cache import decode_split
from resnetlab.data.images import ImageReadError, decode_image
from resnetlab.data.sources import SplitData

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05}
CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A tiny file whose header claims 400 M pixels: PIL must refuse it before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    write_class_folders(root / "train", 12, seed=5)
    write_class_folders(root / "val", 4, seed=6)
    red = root / "train" / "red"
    (red / "zero.png").write_bytes(b"")
    (red / "page.jpg").write_text("<html><body>404</body></html>")
    Image.effect_noise((64, 64), 40).convert("RGB").save(red / "full.jpg")
    data = (red / "full.jpg").read_bytes()
    (red / "cut.jpg").write_bytes(data[: len(data) // 3])
    png_bomb(red / "bomb.png")
    rotated = make_image(np.random.default_rng(9), TOY_CLASSES["red"])
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(red / "rotated.jpg", exif=exif)
    shutil.copy(root / "train" / "green léaf" / "img 000.png", root / "val" / "green léaf" / "copy.png")
    (root / "train" / "empty class").mkdir()
    return root


def test_check_reports_every_problem_with_its_path(messy: Path, tmp_path: Path, capsys):
    report_file = tmp_path / "report.json"
    assert main(["check", str(messy), "--json", str(report_file), "--no-progress", "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    report = json.loads(report_file.read_text())
    reasons = {Path(p["path"]).name: p["reason"] for p in report["problems"] if p["path"]}
    assert "empty file" in reasons["zero.png"]
    assert "not an image" in reasons["page.jpg"]
    assert "unreadable" in reasons["cut.jpg"]
    assert "decompression-bomb" in reasons["bomb.png"]
    assert "EXIF" in reasons["rotated.jpg"]
    assert "leakage" in reasons["copy.png"] and "img 000.png" in reasons["copy.png"]
    assert any("empty class" in p["reason"] for p in report["problems"])
    assert report["counts"]["train"]["red"] == 14  # 12 shapes + the rotated photo + full.jpg
    for name in ("zero.png", "page.jpg", "cut.jpg", "bomb.png", "copy.png"):
        assert name in printed


def test_imbalance_and_single_class(tmp_path: Path, capsys):
    root = tmp_path / "imbalanced"
    write_class_folders(root, 2, seed=1)
    for i in range(10):
        make_image(np.random.default_rng(i), (1, 2, 3)).save(root / "red" / f"extra {i}.png")
    assert main(["check", str(root), "--no-progress", "--workers", "1"]) == 0
    assert "class imbalance" in capsys.readouterr().out
    single = tmp_path / "single"
    write_class_folders(single, 2)
    for name in list(TOY_CLASSES)[1:]:
        shutil.rmtree(single / name)
    assert main(["check", str(single), "--no-progress"]) == 1
    assert "only one class" in capsys.readouterr().err


def test_training_skips_bad_files_and_strict_refuses(messy: Path, tmp_path: Path, capsys):
    result = resnetlab.train(data=str(messy), out=str(tmp_path / "run"), epochs=1, **TINY)
    assert result.epochs_done == 1
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert {Path(s["path"]).name for s in report["skipped"]} == {"zero.png", "page.jpg", "cut.jpg", "bomb.png"}
    assert "skipped 4 unreadable image(s)" in capsys.readouterr().err
    assert main(["train", str(messy), "--strict", "--out", str(tmp_path / "strict"), *CLI_TINY]) == 1
    assert "--strict: 4 unreadable image(s)" in capsys.readouterr().err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300), ext=st.sampled_from(["jpg", "png", "gif", "webp", "tif", "bmp"]))
def test_arbitrary_bytes_never_crash_and_are_named(tmp_path: Path, content: bytes, ext: str):
    path = tmp_path / f"random.{ext}"
    path.write_bytes(content)
    try:
        tensor = decode_image(path, 8)
        assert tensor.shape == (3, 8, 8)
    except ImageReadError as err:
        assert err.path == str(path) and err.reason
    decoded = decode_split(SplitData("x", np.zeros(1, dtype=np.int64), [str(path)]), 8, use_cache=False,
                           progress=False, workers=1)
    assert len(decoded) + len(decoded.skipped) == 1
    if decoded.skipped:
        assert decoded.skipped[0]["path"] == str(path) and decoded.skipped[0]["reason"]


class _Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("no pickling this")


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path: Path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1, "weights": torch.ones(3)})
    before = target.read_bytes()
    with pytest.raises(pickle.PicklingError, match=r"^no pickling this$"):  # raised inside torch.save's pickler
        save_checkpoint(target, {"epoch": 2, "bad": _Unpicklable()})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_resume_is_bitwise_exact_after_an_epoch_and_mid_epoch(split_folders: Path, tmp_path: Path, no_figures):
    settings_ = dict(TINY, epochs=4, head="mlp", hidden=16, dropout=0.3, seed=3)  # dropout: the RNG must resume
    whole = resnetlab.train(data=str(split_folders), out=str(tmp_path / "whole"), **settings_)
    steps_per_epoch = 72 // 16
    for name, stop_at in (("after-epoch-2", 2 * steps_per_epoch), ("mid-epoch-3", 2 * steps_per_epoch + 2)):
        first = resnetlab.train(data=str(split_folders), out=str(tmp_path / name), stop_after_steps=stop_at,
                                **settings_)
        assert first.stopped == "steps"
        saved = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert (saved["epoch"], saved["step"]) == ((2, 0) if name == "after-epoch-2" else (2, 2))
        resumed = resnetlab.train(resume=str(tmp_path / name), progress=False)
        assert resumed.epochs_done == 4
        final, reference = _final_weights(tmp_path / name), _final_weights(whole.run_dir)
        assert all(torch.equal(final[k], reference[k]) for k in reference), name
        assert [round(r["val_acc"], 6) for r in resumed.history] == [round(r["val_acc"], 6) for r in whole.history]
        assert resumed.history[2]["train_loss"] == pytest.approx(whole.history[2]["train_loss"], rel=1e-9)


def test_save_every_writes_mid_epoch_checkpoints(split_folders: Path, tmp_path: Path, capsys, no_figures):
    resnetlab.train(data=str(split_folders), out=str(tmp_path / "r"), epochs=1, save_every=2, **TINY)
    out = capsys.readouterr().err
    assert "at epoch 1, step 2" in out and "step 4" not in out  # the epoch's end writes last.pt anyway


# a start (python, torch, decoding the toy set) and one tiny epoch take seconds; these only bound a hang
STARTED_S = 180


def _start_training(args: list[str]) -> Process:
    """``resnetlab train ARGS`` in a session of its own; use it in a ``with`` block, which kills its tree."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return Process([sys.executable, "-m", "resnetlab", "train", *args], env=env)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_resumable_checkpoint(split_folders: Path, tmp_path: Path, sig: int):
    run = tmp_path / "run"
    # one step per epoch (72 training images, batch 72): wherever the signal lands, in the step, the validation or
    # the checkpoint, the run stops at the end of that epoch, so there is one outcome to expect
    args = [str(split_folders), "--out", str(run), "--epochs", "30", *CLI_TINY, "--batch-size", "72"]
    with _start_training(args) as process:
        process.read_until("epoch   1/30", timeout=STARTED_S)
        process.send_signal(sig)
        output = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, output  # 130 after Ctrl-C, 143 after SIGTERM
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1 and saved["step"] == 0
    assert f"stopped after epoch {saved['epoch']}; resume with: resnetlab train --resume {run}\n" in output, output
    assert main(["train", "--resume", str(run), "--epochs", str(saved["epoch"] + 1), "--no-progress"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == saved["epoch"] + 1


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(split_folders: Path, tmp_path: Path):
    # one large step per epoch (~1 s at 96 px), so the second Ctrl-C lands while the first waits for the step (or
    # the epoch's validation and checkpoint) to end; one that came later would find a clean stop, which the
    # asserts below tell apart: it fails here instead of passing for the wrong reason
    with _start_training([str(split_folders), "--out", str(tmp_path / "run"), "--epochs", "30", "--img-size", "96",
                          "--batch-size", "72", "--no-progress", "--workers", "1"]) as process:
        process.read_until("epoch   1/30", timeout=STARTED_S)
        process.send_signal(signal.SIGINT)
        process.read_until("stopping after this step", timeout=120)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in output, output
    assert "stopped after epoch" not in output, output  # not the first Ctrl-C's clean stop: the second cut it short
    # exits at once, yet says how to finish: last.pt holds the last finished epoch
    assert f"holds the last saved state. resume with: resnetlab train --resume {tmp_path / 'run'}" in output.lower()
    assert (tmp_path / "run" / "last.pt").is_file()


def test_nan_loss_stops_with_epoch_and_step(split_folders: Path, tmp_path: Path, capsys):
    assert main(["train", str(split_folders), "--out", str(tmp_path / "nan"), "--lr", "1e12", "--opt", "sgd",
                 "--epochs", "2", *CLI_TINY]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite at epoch 1, step" in err and "Last good checkpoint" in err
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_unwritable_output_folder_is_refused_before_training(split_folders: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", str(split_folders), "--out", str(blocker / "run"), *CLI_TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot write to run folder" in err


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_crafted_pickle_is_refused_everywhere(split_folders: Path, tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker)}, evil)
    assert main(["predict", str(evil), str(split_folders / "Val"), "--no-progress"]) == 1
    assert "refuses to load" in capsys.readouterr().err
    assert main(["evaluate", str(evil), str(split_folders), "--no-progress"]) == 1
    assert main(["train", str(split_folders), "--pretrained", str(evil), "--out", str(tmp_path / "p"),
                 *CLI_TINY]) == 1
    assert "cannot read weights" in capsys.readouterr().err
    assert not marker.exists()


def test_wrong_checkpoints_say_what_differs(split_folders: Path, tmp_path: Path, capsys, trained_run):
    best = trained_run.checkpoint  # the session's one-epoch run on the toy classes (read only)
    other = tmp_path / "other"
    write_class_folders(other / "train", 2)
    write_class_folders(other / "val", 2)
    (other / "val" / "zebra").mkdir()
    make_image(np.random.default_rng(0), (9, 9, 9)).save(other / "val" / "zebra" / "z.png")
    make_image(np.random.default_rng(0), (9, 9, 9)).save(other / "train" / "zebra.png")
    shutil.copytree(other / "val" / "zebra", other / "train" / "zebra")
    assert main(["evaluate", str(best), str(other), "--no-progress"]) == 1
    assert "not trained on: zebra" in capsys.readouterr().err
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:5000])
    assert main(["predict", str(truncated), str(split_folders / "Val"), "--no-progress"]) == 1
    assert "truncated" in capsys.readouterr().err
    import timm

    torch.save(timm.create_model("resnet34", num_classes=3).state_dict(), tmp_path / "r34.pth")
    assert main(["train", str(split_folders), "--pretrained", str(tmp_path / "r34.pth"), "--out",
                 str(tmp_path / "wrong"), *CLI_TINY]) == 1
    assert "another architecture" in capsys.readouterr().err
