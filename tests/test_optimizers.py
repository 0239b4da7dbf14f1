"""Optimizers built by timm's create_optimizer_v2: resnetlab's no-decay groups kept, sgd/adam/adamw as before, the
new names train, an unknown name is refused with the list."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from timm.optim import list_optimizers

from conftest import FAST
from resnetlab.cli import main
from resnetlab.config import OPTIMIZERS, TrainConfig, default_lr
from resnetlab.errors import ConfigError
from resnetlab.training.setup import build_network, build_optimizer

TRAIN = ["--img-size", "16", "--epochs", "1", *FAST, "--batch-size", "16", "--seed", "0"]


def test_the_choices_are_timms_names_less_the_cuda_only_ones():
    expected = {n for n in list_optimizers() if not n.startswith(("bnb", "fused")) and n != "adahessian"}
    assert set(OPTIMIZERS) == expected
    assert {"sgd", "adam", "adamw", "lamb", "lars", "lion", "rmsprop", "nadam"} <= set(OPTIMIZERS)
    assert (default_lr("sgd"), default_lr("lars"), default_lr("adamw"), default_lr("lion")) == (0.1, 0.1, 1e-3, 1e-4)


def _groups(cfg: TrainConfig) -> tuple[torch.optim.Optimizer, set[int], set[int]]:
    model, _ = build_network(cfg, num_classes=3, img_size=16)
    optimizer = build_optimizer(model, cfg)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {id(p) for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}
    every = {id(p) for p in model.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == every  # frozen ones too (--unfreeze-at)
    return optimizer, decayed, exempt


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_norms_and_biases_are_never_decayed_and_the_old_defaults_hold(opt: str):
    cfg = TrainConfig(opt=opt, width=0.25, freeze_backbone=True, weight_decay=0.01)
    optimizer, decayed, exempt = _groups(cfg)
    assert decayed and exempt and not decayed & exempt
    assert all(g["weight_decay"] in (0.0, 0.01) and g["lr"] == cfg.peak_lr for g in optimizer.param_groups)
    if opt == "sgd":
        assert type(optimizer) is torch.optim.SGD and cfg.peak_lr == 0.1
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)
    else:
        assert type(optimizer) is torch.optim.AdamW and cfg.peak_lr == 1e-3
        assert all(g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)


def test_momentum_is_sgds_momentum_and_adams_beta1():
    plain = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(opt="sgd", momentum=0.0))
    assert not plain.param_groups[0]["nesterov"] and plain.param_groups[0]["momentum"] == 0.0
    adam = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(opt="adam", momentum=0.8))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.999)
    lion = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(opt="lion", momentum=0.8))
    assert lion.param_groups[0]["betas"] == (0.8, 0.99)  # beta2 stays Lion's own


def test_a_tiny_run_trains_with_lion(split_folders: Path, tmp_path: Path):
    out = tmp_path / "lion"
    assert main(["train", str(split_folders), "--opt", "lion", "--out", str(out), *TRAIN]) == 0
    with open(out / "metrics.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
                        for row in rows)
    assert "opt: lion" in (out / "config.yaml").read_text(encoding="utf-8")


def test_lamb_and_lars_step_the_network_to_a_finite_lower_loss():
    torch.manual_seed(0)
    images, labels = torch.randn(16, 3, 16, 16), torch.arange(16) % 3
    for opt in ("lamb", "lars"):
        cfg = TrainConfig(opt=opt, width=0.25)
        model, _ = build_network(cfg, num_classes=3, img_size=16)
        optimizer = build_optimizer(model, cfg)
        losses = []
        for _ in range(4):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], (opt, losses)


def test_an_unknown_optimizer_is_refused_with_the_list(split_folders: Path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", str(split_folders), "--opt", "adamz"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'adamz'" in err and "lamb" in err and "lion" in err
    with pytest.raises(ConfigError, match=r"opt = 'adamz' is not one of: sgd, adam, adamw, .*lamb.*lion"):
        TrainConfig.from_dict({"opt": "adamz"})
