"""Training options and CLI conventions: --accum-steps, --keep, --best-metric, --device auto, exit codes,
--quiet/--verbose, --allow-errors, logging through the `resnetlab` logger."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import resnetlab
from resnetlab.cli import main
from resnetlab.device import resolve_device
from resnetlab.engine import Step, optimizer_steps, train_one_epoch
from resnetlab.errors import ConfigError

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "device": "cpu"}
CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]


def _linear_step(batches: list[tuple[torch.Tensor, torch.Tensor]], accum: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Linear(6, 3)  # no BatchNorm: a batch of 4B and 4 batches of B see the same statistics
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    items = [(x, y, torch.arange(len(y))) for x, y in batches]
    step = Step(nn.CrossEntropyLoss(), torch.device("cpu"), steps=len(items), optimizer=optimizer, accum_steps=accum)
    train_one_epoch(model, items, step)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulated_small_batches_step_like_one_large_batch():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    one_big = _linear_step([(x, y)], accum=1)
    four_small = _linear_step([(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], accum=4)
    assert torch.allclose(one_big, four_small, atol=1e-6)
    no_accum = _linear_step([(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], accum=1)  # 4 steps: differs
    assert not torch.allclose(one_big, no_accum, atol=1e-3)
    # a short last group: 3 batches with accum 2 -> steps on (b0+b1)/2 and on b2 alone
    assert optimizer_steps(3, 2) == 2 and optimizer_steps(4, 2) == 2 and optimizer_steps(5, 1) == 5


def test_accum_steps_schedule_counts_optimizer_steps(split_folders: Path, tmp_path: Path):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "acc"), epochs=2, accum_steps=3,
                             lr=0.05, **TINY)
    lrs = [row["lr"] for row in result.history]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[0] > 0  # annealed at the end of the last epoch
    last = torch.load(result.last_checkpoint, weights_only=True)
    # 72 training images, batch 16 -> 4 batches an epoch -> 2 optimizer steps (3 + 1) an epoch
    assert last["scheduler"]["last_epoch"] == 4


def test_keep_holds_the_last_n_epochs_and_best_metric_picks_best_pt(split_folders: Path, tmp_path: Path):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "keep"), epochs=3, keep=2,
                             best_metric="val_loss", **TINY)
    kept = sorted(p.name for p in result.run_dir.glob("epoch_*.pt"))
    assert kept == ["epoch_002.pt", "epoch_003.pt"]
    assert torch.load(result.run_dir / "epoch_002.pt", weights_only=True)["epoch"] == 2
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv", encoding="utf-8")))
    losses = [float(r["val_loss"]) for r in rows]
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["epoch"] == losses.index(min(losses)) + 1 == result.best_epoch
    assert all(0 <= float(r["val_f1"]) <= 1 for r in rows)


def test_best_metric_top5_needs_five_classes(split_folders: Path, tmp_path: Path, capsys):
    assert main(["train", str(split_folders), "--best-metric", "top5", "--out", str(tmp_path / "t5"),
                 *CLI_TINY]) == 2
    assert "top5 needs at least 5 classes; this data has 3" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="best_metric = 'f1' is not one of"):
        resnetlab.TrainConfig(data="x", best_metric="f1").validate()


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_exit_codes_quiet_and_allow_errors(split_folders: Path, tmp_path: Path, capsys):
    assert main(["train", str(split_folders), "--out", str(tmp_path / "r"), "--epochs", "1", "-q", *CLI_TINY]) == 0
    out = capsys.readouterr().err
    assert "epoch" not in out and "data:" not in out  # --quiet: warnings and errors only
    (split_folders / "Val" / "red" / "broken.png").write_bytes(b"not an image")
    inputs = [str(tmp_path / "r" / "best.pt"), str(split_folders / "Val")]
    assert main(["predict", *inputs, "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 1
    assert "1 failed" in capsys.readouterr().err
    assert main(["predict", *inputs, "--out", str(tmp_path / "p.csv"), "--no-progress", "--allow-errors"]) == 0
    assert main(["evaluate", str(tmp_path / "missing.pt"), str(split_folders), "--no-progress"]) == 1  # bad input
    assert main(["train", str(split_folders), "--epochs", "0", "--out", str(tmp_path / "z")]) == 2  # usage
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and resnetlab.__version__ in capsys.readouterr().out


def test_library_logging_is_routable_and_silent_off_rank_zero(split_folders: Path, tmp_path: Path, caplog,
                                                               monkeypatch):
    logger = logging.getLogger("resnetlab")
    monkeypatch.setattr(logger, "propagate", True)  # the CLI (conftest) prints itself; a library caller's handler
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        resnetlab.train(data=str(split_folders), out=str(tmp_path / "a"), epochs=1, **TINY)
    assert any(r.name == "resnetlab" and r.getMessage().startswith("epoch   1/1") for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("RANK", "1")  # what torchrun sets on the second process
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        logger.info("only rank 0 speaks")
    assert not caplog.records


def test_a_log_file_gets_lines_not_progress_bars(split_folders: Path, tmp_path: Path):
    """`resnetlab check DATA > log` once wrote every tqdm refresh into the log (issue 16)."""
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "resnetlab", "check", str(split_folders), "--workers", "1",
                               "--img-size", "16", "--near-dup-distance", "28"], stdout=handle,
                              stderr=subprocess.STDOUT, timeout=300, start_new_session=True)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text and "it/s" not in text and "img/s" not in text  # no bars: the output is not a terminal
    assert text.startswith(f"split folders at {split_folders}: 3 classes, image size 16px\n"
                           "  train: 72 images; blue sky=24, green léaf=24, red=24\n")
    # the toy pictures (a square on a dark background) look alike to a perceptual hash: at 28 bits (given; the
    # distance measured on them is lower) 90 val/train near-duplicates, a list long enough to be cut
    assert "\n90 warning(s):\n" in text and text.count(": near-duplicate of train image") == 50
    assert text.endswith("  ... and 40 more (see the JSON report)\n")
