"""Recipe features: EMA, mixup/cutmix, test-time augmentation, lr-find / --lr auto, shipped presets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

import resnetlab
from resnetlab.cli import main
from resnetlab.config import ConfigError, TrainConfig, recipe_values
from resnetlab.models import TTAModel

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05}
CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]


def test_ema_is_validated_and_checkpointed(split_folders: Path, tmp_path: Path):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "ema"), epochs=2, ema=0.9, **TINY)
    last = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    assert set(last["ema"]) == set(last["model"])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])  # really averaged
    best = torch.load(tmp_path / "ema" / "best.pt", weights_only=True)
    if best["epoch"] == 2:
        assert all(torch.equal(best["model"][k], last["ema"][k]) for k in best["model"])
    rows = list(csv.DictReader(open(tmp_path / "ema" / "metrics.csv")))
    assert "raw_val_acc" in rows[0] and 0 <= float(rows[-1]["raw_val_acc"]) <= 1
    assert result.model is not None


def test_mixup_and_cutmix_train_and_need_even_batches(split_folders: Path, tmp_path: Path):
    settings = dict(TINY, epochs=6, mixup=0.2, cutmix=1.0, mix_prob=0.8)
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "mix"), **settings)
    assert result.best_val_acc > 0.8
    with pytest.raises(ConfigError, match="even batch_size"):
        TrainConfig(data="x", mixup=0.2, batch_size=15).validate()


def test_tta_averages_views_and_is_used_by_evaluate(split_folders: Path, tmp_path: Path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    symmetric = torch.rand(2, 3, 16, 8)
    symmetric = torch.cat([symmetric, symmetric.flip(dims=[3])], dim=3)  # mirror-symmetric images
    with torch.no_grad():
        plain = net(symmetric).softmax(dim=1)
        flipped = TTAModel(net, "flip")(symmetric).exp()
        crops = TTAModel(net, "flip-crop")(symmetric).exp()
    assert torch.allclose(flipped, plain, atol=1e-6)
    assert torch.allclose(crops.sum(dim=1), torch.ones(2), atol=1e-5)
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "r"), epochs=2, **TINY)
    assert main(["evaluate", str(result.best_checkpoint), str(split_folders), "--tta", "flip-crop", "--out",
                 str(tmp_path / "e"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["tta"] == "flip-crop" and 0 <= metrics["accuracy"] <= 1
    out = tmp_path / "p.csv"
    assert main(["predict", str(result.best_checkpoint), str(split_folders / "Val"), "--tta", "flip", "--out",
                 str(out), "--no-progress"]) == 0
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == 24


def test_lr_find_writes_plot_and_lr_auto_uses_it(split_folders: Path, tmp_path: Path, capsys):
    out = tmp_path / "finder"
    assert main(["lr-find", str(split_folders), "--out", str(out), *CLI_TINY]) == 0
    assert (out / "lr_find.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out / "lr_find.csv")))
    lrs = [float(r["lr"]) for r in rows]
    assert len(rows) > 20 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)
    printed = capsys.readouterr().out
    suggested = float(printed.split("suggested learning rate for sgd: ")[1].split()[0])
    assert 1e-6 <= suggested <= 10
    run = tmp_path / "auto"
    assert main(["train", str(split_folders), "--lr", "auto", "--epochs", "1", "--out", str(run), *CLI_TINY]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert isinstance(saved["lr"], float) and (run / "lr_find.png").is_file()


def test_grad_clip_and_recipes(split_folders: Path, tmp_path: Path, capsys):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "clip"), epochs=1, grad_clip=0.5, **TINY)
    assert result.epochs_done == 1
    for name in ("fast", "accurate", "photos"):
        values = recipe_values(name)
        TrainConfig.from_dict(dict(values, data="x"))  # every shipped preset is valid
    with pytest.raises(ConfigError, match="shipped recipes: accurate, fast, photos"):
        recipe_values("turbo")


def test_fill_time_needs_a_time_limit():
    with pytest.raises(ConfigError, match="fill_time needs a time limit"):
        TrainConfig(data="x", fill_time=True).validate()
