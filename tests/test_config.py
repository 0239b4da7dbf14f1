"""Training settings: every validation message names its setting, unknown names get a 'did you mean', YAML errors
name the file, durations parse, and defaults < --recipe < --config YAML < flags on real CLI runs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import TrainConfig, load_yaml, parse_duration, recipe_values
from resnetlab.errors import ConfigError

CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]
SHIPPED = "auto, accurate, fast, photos, plain"


def config(**values) -> TrainConfig:
    return TrainConfig.from_dict({"data": "x", **values})


# ---------------------------------------------------------------------- validation
CHOICES = [(f.name, f.metadata["choices"]) for f in fields(TrainConfig) if f.metadata.get("choices")]


@pytest.mark.parametrize("name,choices", CHOICES, ids=[name for name, _ in CHOICES])
def test_a_value_outside_the_choices_names_the_setting_and_lists_them(name: str, choices: tuple):
    with pytest.raises(ConfigError) as caught:
        config(**{name: "bogus"})
    assert str(caught.value) == f"{name} = 'bogus' is not one of: {', '.join(choices)}"
    for choice in choices:  # and every listed choice is accepted
        assert getattr(config(**{name: choice}), name) == choice


BAD_VALUES = [  # (settings, the exact message)
    ({"lr": "fast"}, "lr must be a number or 'auto', got 'fast'"),
    ({"lr": 0}, "lr must be > 0 or 'auto', got 0"),
    ({"lr": "-0.1"}, "lr must be > 0 or 'auto', got -0.1"),  # a string from YAML is converted first
    ({"mean": [0.5, 0.5]}, "mean needs 3 values (R,G,B), got [0.5, 0.5]"),
    ({"std": "0.2,0.2,0.2,0.2"}, "std needs 3 values (R,G,B), got [0.2, 0.2, 0.2, 0.2]"),
    ({"std": [0.2, 0.0, 0.2]}, "std values must be > 0, got [0.2, 0.0, 0.2]"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"val_split": 0.0}, "val_split must be between 0 and 1, got 0.0"),
    ({"val_split": 1.0}, "val_split must be between 0 and 1, got 1.0"),
    ({"img_size": 7}, "img_size must be 8-1024, got 7"),
    ({"img_size": 1025}, "img_size must be 8-1024, got 1025"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1), got 1.0"),
    ({"label_smoothing": -0.1}, "label_smoothing must be in [0, 1), got -0.1"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"width": 0.05}, "width must be between 0.0625 and 4, got 0.05"),
    ({"width": 4.5}, "width must be between 0.0625 and 4, got 4.5"),
    ({"erase": 1.5}, "erase must be a probability in [0, 1], got 1.5"),
    ({"erase": -0.5}, "erase must be a probability in [0, 1], got -0.5"),
    ({"ema": 1.0}, "ema decay must be in [0, 1), got 1.0"),
    ({"mixup": -0.2}, "mixup and cutmix alphas must be >= 0"),
    ({"cutmix": -1.0}, "mixup and cutmix alphas must be >= 0"),
    ({"mix_prob": 1.5}, "mix_prob must be in [0, 1], got 1.5"),
    ({"grad_clip": -1.0}, "grad_clip must be >= 0, got -1.0"),
    ({"mixup": 0.2, "batch_size": 15}, "mixup/cutmix need an even batch_size, got 15"),
    ({"cutmix": 1.0, "batch_size": 15}, "mixup/cutmix need an even batch_size, got 15"),
    ({"early_stop": -1}, "early_stop must be >= 0, got -1"),
    ({"save_every": -1}, "save_every must be >= 0, got -1"),
    ({"stop_after_steps": -1}, "stop_after_steps must be >= 0, got -1"),
    ({"accum_steps": 0}, "accum_steps must be >= 1, got 0"),
    ({"keep": -1}, "keep must be >= 0, got -1"),
    ({"time_limit": "soon"}, "time_limit 'soon' is not a duration like 90s, 5m or 1h"),
    ({"fill_time": True}, "fill_time needs a time limit to fill: add --time-limit, e.g. --time-limit 30m"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[",".join(v) + "=" + str(list(v.values())[-1])
                                                            for v, _ in BAD_VALUES])
def test_every_bad_value_is_refused_with_a_message_naming_the_setting(values: dict, message: str):
    with pytest.raises(ConfigError) as caught:
        config(**values)
    assert str(caught.value) == message


def test_values_at_the_edges_of_their_ranges_are_accepted():
    config(val_split=0.5, img_size=8, width=0.0625, erase=1.0, mix_prob=0.0, ema=0.0, label_smoothing=0.0,
           dropout=0.0, lr="auto", early_stop=0, save_every=0, grad_clip=0.0)
    config(img_size=1024, width=4.0, erase=0.0, mix_prob=1.0, mixup=0.2, cutmix=1.0, batch_size=16, lr=1e-6,
           time_limit="90s", fill_time=True)


def test_text_from_yaml_becomes_numbers():
    cfg = config(lr="0.01", mean="0.5,0.4,0.3", std="0.2,0.2,0.25")
    assert cfg.lr == 0.01 and cfg.peak_lr == 0.01
    assert cfg.mean == [0.5, 0.4, 0.3] and cfg.std == [0.2, 0.2, 0.25]
    assert config(lr="auto").lr == "auto"
    assert config(opt="adamw").peak_lr == 1e-3 and config().peak_lr == 0.1  # no lr: the optimizer's default


@pytest.mark.parametrize("values", [{"epochs": "ten"}, {"epochs": None}, {"mean": "a,b,c"}],
                         ids=["epochs=ten", "epochs=null", "mean=a,b,c"])
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting(values: dict):
    with pytest.raises(ConfigError, match=list(values)[0]):
        config(**values)


def test_bad_flags_fail_before_anything_is_written(split_folders: Path, tmp_path: Path, capsys):
    for flags, message in ((["--epochs", "0"], "epochs must be >= 1, got 0"),
                           (["--width", "8"], "width must be between 0.0625 and 4, got 8.0"),
                           (["--time-limit", "soon"], "time_limit 'soon' is not a duration like 90s, 5m or 1h"),
                           (["--mixup", "0.2", "--batch-size", "15"], "mixup/cutmix need an even batch_size, got 15")):
        run = tmp_path / "never"
        assert main(["train", str(split_folders), "--out", str(run), "--no-progress", *flags]) == 2, flags
        assert capsys.readouterr().err == f"resnetlab train: error: {message}\n"
        assert not run.exists()


# ---------------------------------------------------------------------- unknown names
@pytest.mark.parametrize("key,hint", [("epocs", "; did you mean 'epochs'?"),
                                      ("lable_smoothing", "; did you mean 'label_smoothing'?"),
                                      ("batch-sise", "; did you mean 'batch_size'?"),  # flag spelling, too
                                      ("colour_space", "")])  # nothing close: no guess
def test_unknown_settings_get_a_did_you_mean(tmp_path: Path, key: str, hint: str):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({key: 1})
    assert str(caught.value) == f"unknown setting '{key}' in settings{hint}"
    file = tmp_path / "settings.yaml"
    file.write_text(f"{key}: 1\n")
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_sources(file)
    assert str(caught.value) == f"unknown setting '{key}' in {file}{hint}"  # the file is named


def test_flag_spellings_are_accepted_in_yaml(tmp_path: Path):
    file = tmp_path / "dashes.yaml"
    file.write_text("label-smoothing: 0.0\nbatch-size: 8\n")
    cfg = TrainConfig.from_sources(file, {"data": "x"})
    assert cfg.label_smoothing == 0.0 and cfg.batch_size == 8


def test_an_unknown_setting_in_a_recipe_file_names_the_recipe_file(tmp_path: Path):
    recipe = tmp_path / "my-recipe.yaml"
    recipe.write_text("epocs: 3\n")
    settings = tmp_path / "settings.yaml"
    settings.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="my-recipe.yaml"):
        TrainConfig.from_sources(settings, {"data": "x"}, base=recipe_values(str(recipe)))


# ---------------------------------------------------------------------- YAML files
@pytest.mark.parametrize("content,message", [
    (None, "config file not found: {path}"),
    ("epochs: [1, 2\n", "config file {path} is not valid YAML: "),
    ("epochs: 1\n  img_size: 2\n", "config file {path} is not valid YAML: "),
    ("- epochs\n- 3\n", "config file {path} must hold a mapping of setting: value"),
    ("just a sentence\n", "config file {path} must hold a mapping of setting: value"),
], ids=["missing", "unclosed list", "bad indent", "a list", "a string"])
def test_yaml_problems_name_the_file(tmp_path: Path, split_folders: Path, capsys, content: str | None, message: str):
    path = tmp_path / "settings.yaml"
    if content is not None:
        path.write_text(content)
    expected = message.format(path=path)
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert str(caught.value).startswith(expected)
    if content is not None:  # a --recipe file is read the same way
        with pytest.raises(ConfigError) as caught:
            recipe_values(str(path))
        assert str(caught.value).startswith(expected)
    assert main(["train", str(split_folders), "--config", str(path), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"resnetlab train: error: {expected}")
    assert not (tmp_path / "run").exists()


def test_an_empty_yaml_file_sets_nothing(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_yaml(path) == {}
    assert TrainConfig.from_sources(path, {"data": "x"}).to_dict() == TrainConfig(data="x").to_dict()


# ---------------------------------------------------------------------- durations
@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("1.5h", 5400), ("45", 45), ("2.5", 2.5),
                                          (" 2M ", 120), ("1e3s", 1000), (30, 30), (0.5, 0.5)])
def test_durations_in_seconds_minutes_hours_or_plain_numbers(text, seconds: float):
    assert parse_duration(text) == seconds and isinstance(parse_duration(text), float)
    assert config(time_limit=text).time_limit == text  # kept as given; parsed when the run plans its time


@pytest.mark.parametrize("text", ["", "soon", "5min", "h", "1.5x", "m5", "90 seconds", "1h30m"])
def test_junk_durations_are_refused(text: str):
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"time_limit {text.strip().lower()!r} is not a duration like 90s, 5m or 1h"


@pytest.mark.parametrize("text", ["-5m", "-1", "nan"])
def test_negative_and_nan_durations_are_refused(text: str):
    with pytest.raises(ConfigError, match="time_limit"):
        config(time_limit=text)
    with pytest.raises(ConfigError, match="above zero"):
        parse_duration(text)


# ---------------------------------------------------------------------- precedence on real runs
def saved_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))


def test_defaults_then_recipe_then_yaml_then_flags(split_folders: Path, tmp_path: Path):
    fast = recipe_values("fast")
    # the shipped recipe sets these; the test means something only while it does
    assert (fast["epochs"], fast["width"], fast["aug"], fast["ema"], fast["warmup_epochs"], fast["lr"]) == (
        6, 0.5, "crop", 0.999, 0.5, 0.1)
    settings = tmp_path / "settings.yaml"
    settings.write_text("epochs: 3\nwidth: 0.125\naug: none\nema: 0.5\nseed: 7\n")
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--recipe", "fast", "--config", str(settings), "--epochs", "1",
                 "--out", str(run), *CLI_TINY]) == 0
    saved = saved_config(run)
    defaults = TrainConfig().to_dict()
    assert saved["warmup_epochs"] == 0.5 != defaults["warmup_epochs"]  # recipe only
    assert saved["lr"] == 0.1 and defaults["lr"] is None  # recipe only
    assert saved["aug"] == "none" and saved["ema"] == 0.5  # recipe and YAML: the YAML
    assert saved["seed"] == 7  # YAML only
    assert saved["epochs"] == 1 and saved["width"] == 0.25  # recipe, YAML and flag: the flag
    assert saved["img_size"] == 16 and saved["batch_size"] == 16  # flags over the recipe's 128
    assert saved["momentum"] == defaults["momentum"] and saved["grad_clip"] == defaults["grad_clip"]  # nobody
    assert (run / "metrics.csv").read_text().strip().count("\n") == 1  # header + the one epoch the flag asked for


def test_a_recipe_given_as_a_yaml_file(split_folders: Path, tmp_path: Path):
    recipe = tmp_path / "my recipe.yaml"
    recipe.write_text("warmup_epochs: 0.25\nlabel_smoothing: 0.05\naug: crop\nepochs: 5\n")
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--recipe", str(recipe), "--epochs", "1", "--out", str(run),
                 *CLI_TINY]) == 0
    saved = saved_config(run)
    assert (saved["warmup_epochs"], saved["label_smoothing"], saved["aug"]) == (0.25, 0.05, "crop")
    assert saved["epochs"] == 1


def test_an_unknown_recipe_name_lists_the_shipped_ones(split_folders: Path, tmp_path: Path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", str(split_folders), "--recipe", "turbo", "--out", str(run), *CLI_TINY]) == 2
    assert capsys.readouterr().err == (f"resnetlab train: error: unknown recipe 'turbo'; shipped recipes: {SHIPPED}, "
                                       "or give a YAML file\n")
    assert not run.exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"unknown recipe 'missing.yaml'; shipped recipes: {SHIPPED}"):
        recipe_values("missing.yaml")  # neither a file nor a shipped name
    assert recipe_values(None) == {} and recipe_values("") == {}


def test_timm_flag_names_are_aliases_of_the_canonical_settings(capsys):
    """A timm user's command line (train.py's names) sets the same settings; `given` and config.yaml only ever hold
    the canonical names, and --help lists both."""
    from resnetlab.cli import build_parser
    from resnetlab.cli.data import train_config

    args = build_parser().parse_args(["train", "photos/", "--smoothing", "0.1", "--clip-grad", "1", "-b", "64", "-j",
                                      "2", "--reprob", "0.25", "--model-ema-decay", "0.999", "--grad-accum-steps", "2",
                                      "--output", "runs/timm"])
    cfg = train_config(args)
    assert (cfg.label_smoothing, cfg.grad_clip, cfg.batch_size, cfg.workers, cfg.erase) == (0.1, 1, 64, 2, 0.25)
    assert (cfg.ema, cfg.accum_steps, cfg.out) == (0.999, 2, "runs/timm")
    assert set(cfg.given) == {"label_smoothing", "grad_clip", "batch_size", "workers", "erase", "ema", "accum_steps",
                              "out"}
    assert train_config(build_parser().parse_args(["train", "photos/", "--smoothing", "0.2"])).to_dict()[
        "label_smoothing"] == 0.2  # what config.yaml is written from
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for canonical, alias in (("--label-smoothing", "--smoothing"), ("--grad-clip", "--clip-grad"),
                             ("--batch-size", "-b"), ("--workers", "-j"), ("--erase", "--reprob"),
                             ("--ema", "--model-ema-decay"), ("--accum-steps", "--grad-accum-steps"),
                             ("--out", "--output")):
        metavar = canonical[2:].replace("-", "_").upper()
        assert f"{canonical} {metavar}, {alias} {metavar}" in text
    # tune: --out/--output name the study's folder there (as --out did), -j stays the decode workers of each trial
    tune = build_parser().parse_args(["tune", "photos/", "--output", "study", "-j", "3"])
    assert tune.study_out == "study" and tune.workers == 3 and "out" not in vars(tune)


def test_a_timm_users_command_line_trains(tmp_path, no_figures):
    """The issue's line, as typed: `resnetlab train DATA --smoothing 0.1 --clip-grad 1 -b 64 -j 2 --reprob 0.25`."""
    import yaml

    from conftest import write_class_folders
    from resnetlab.cli import main

    data = write_class_folders(tmp_path / "toy", 8)
    assert main(["train", str(data), "--smoothing", "0.1", "--clip-grad", "1", "-b", "64", "-j", "2", "--reprob",
                 "0.25", "--epochs", "1", "--img-size", "16", "--width", "0.25", "--no-progress",
                 "--output", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["label_smoothing"], saved["grad_clip"], saved["batch_size"], saved["workers"], saved["erase"]) == (
        0.1, 1.0, 64, 2, 0.25)
    assert (tmp_path / "run" / "best.pt").is_file()
