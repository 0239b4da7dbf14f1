"""One settings pipeline (settings.resolve) for the CLI and the Python API: the same defaults (auto), the same
precedence (flag or keyword > YAML > recipe > auto > default), a frozen result, and data paths kept absolute."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import resnetlab
from conftest import write_class_folders
from resnetlab.cli import build_parser, main
from resnetlab.cli.data import train_config
from resnetlab.config import TrainConfig
from resnetlab.errors import ConfigError
from resnetlab.settings import merge, resolve

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "epochs": 1}


def test_the_api_and_the_cli_resolve_to_the_same_settings(tmp_path):
    (tmp_path / "s.yaml").write_text("lr: 0.01\nepochs: 4\nwidth: 0.5\n", encoding="utf-8")
    args = build_parser().parse_args(["train", "photos", "--epochs", "3", "--config", str(tmp_path / "s.yaml")])
    from_cli = train_config(args)
    from_api = merge({"data": "photos", "epochs": 3}, yaml_path=tmp_path / "s.yaml")
    assert from_cli == from_api
    # flag > YAML > recipe > default; auto is the recipe when none is named, and knows what was given
    assert (from_api.epochs, from_api.lr, from_api.width, from_api.recipe) == (3, 0.01, 0.5, "auto")
    assert from_api.given == ["epochs", "lr", "width"]
    fast = merge({"data": "photos", "recipe": "fast", "width": 1.0})
    assert (fast.width, fast.aug, fast.given) == (1.0, "crop", None)  # the preset under the keyword
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.epochs = 5  # nothing changes settings once resolved
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        merge({"data": "photos", "epoch": 3})
    with pytest.raises(ConfigError, match="no data given"):
        resolve({"epochs": 3})


def test_a_config_object_counts_its_own_values_as_given_and_keywords_win(tmp_path):
    cfg = resnetlab.TrainConfig(data="digits", epochs=5, lr=0.01)
    resolved, saved = resolve({"epochs": 2}, config=cfg)
    assert saved is None and (resolved.recipe, resolved.epochs, resolved.lr) == ("auto", 2, 0.01)
    assert resolved.given == ["epochs", "lr"]
    preset = resnetlab.TrainConfig(data="digits", recipe="plain", epochs=7)
    assert resolve({}, config=preset)[0].epochs == 7 and resolve({}, config=preset)[0].given is None


def test_a_data_folder_is_kept_as_an_absolute_path(tmp_path, monkeypatch):
    write_class_folders(tmp_path / "toy", 2)
    monkeypatch.chdir(tmp_path)
    assert merge({"data": "toy"}).data == str((tmp_path / "toy").resolve())
    assert merge({"data": "digits"}).data == "digits"  # a built-in name stays a name


def test_resnetlab_train_and_resnetlab_train_write_the_same_config(tmp_path, no_figures):
    data = write_class_folders(tmp_path / "toy", 8)
    cache = str(tmp_path / "cache")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"]
    assert main(["train", str(data), "--out", str(tmp_path / "cli"), "--cache-dir", cache, "--no-progress",
                 *flags]) == 0
    resnetlab.train(data=str(data), out=str(tmp_path / "api"), cache_dir=cache, **TINY)
    saved = [yaml.safe_load((tmp_path / name / "config.yaml").read_text(encoding="utf-8")) for name in ("cli", "api")]
    for values in saved:
        values.pop("out")
    assert saved[0] == saved[1]
    assert saved[0]["recipe"] == "auto" and "opt" in saved[0]["chosen"]  # auto, from both entry points


def test_a_resume_from_another_folder_finds_moved_data_when_it_is_given(tmp_path, monkeypatch, no_figures):
    write_class_folders(tmp_path / "here" / "toy", 8)
    monkeypatch.chdir(tmp_path / "here")
    first = resnetlab.train(data="toy", out=str(tmp_path / "run"), recipe="plain", stop_after_steps=1,
                            cache_dir=str(tmp_path / "cache"), **{**TINY, "epochs": 2})
    saved = yaml.safe_load((first.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert first.stopped == "steps" and saved["data"] == str((tmp_path / "here" / "toy").resolve())
    (tmp_path / "here" / "toy").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    resumed = resnetlab.train(resume=str(tmp_path / "run"), data=str(tmp_path / "moved"), progress=False)
    assert resumed.stopped is None and resumed.epochs_done == 2


def test_a_resumed_runs_own_config_yaml_resumes_it_rather_than_starting_over(tmp_path):
    (tmp_path / "config.yaml").write_text(f"data: x\nresume: {tmp_path / 'nothing'}\n", encoding="utf-8")
    with pytest.raises(Exception, match="nothing/last.pt"):  # it reads the run's last.pt: never a fresh start
        resolve({}, yaml_path=tmp_path / "config.yaml")


def test_a_resume_names_the_settings_it_ignores(tmp_path, caplog):
    import logging

    import torch

    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig(data=str(tmp_path), lr=0.01).to_dict()
    torch.save({"epoch": 2, "config": saved}, run / "last.pt")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        cfg, _ = resolve({"resume": str(run), "lr": 0.5, "epochs": 9})
    assert cfg.lr == 0.01 and cfg.epochs == 9  # lr is not a resumable setting; epochs is
    assert "--lr ignored" in caplog.text and "--epochs" not in caplog.text.split("ignored")[0]
