"""The README's and the demo's command lines as a user types them: `resnetlab train DATA` with no flag but a time
limit (the real speed probe, auto's rules and its race), `train --name/--exist-ok` into runs/NAME, and `evaluate
--split test`."""

from __future__ import annotations

import json

import yaml

from conftest import write_class_folders
from resnetlab.cli import main


def test_train_with_no_flag_measures_races_and_finishes_in_its_budget(tmp_path, capsys):
    data = write_class_folders(tmp_path / "toy", 40)
    run = tmp_path / "run"
    assert main(["train", str(data), "--time-limit", "30s", "--out", str(run), "--cache-dir", str(tmp_path / "c"),
                 "--no-progress", "--workers", "1"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    chosen = saved["chosen"]
    assert saved["recipe"] == "auto" and chosen["img_size"]["why"].count("img/s measured") == 1  # the real probe
    race = chosen["race"]
    assert [row["candidate"] for row in race["table"]] == ["rules", "plain", "stronger-aug"]
    assert all(row["epochs"] >= 1 and 0.0 <= row["val_acc"] <= 1.0 for row in race["table"])
    assert race["value"] in ("rules", "plain", "stronger-aug") and race["why"]
    assert float(saved["time_limit"].rstrip("s")) <= 27  # measuring and racing came out of the budget
    err = capsys.readouterr().err
    assert "race: 3 candidates" in err and f"race: {race['why']}" in err
    assert (run / "report.html").is_file() and "the race" in (run / "report.html").read_text(encoding="utf-8")


def test_the_demo_commands_name_a_run_reuse_it_and_score_the_test_split(tmp_path, monkeypatch, capsys):
    data = tmp_path / "toy"
    for split, count, seed in (("train", 16, 1), ("val", 4, 2), ("test", 6, 3)):
        write_class_folders(data / split, count, seed=seed)
    monkeypatch.chdir(tmp_path)
    train = ["train", str(data), "--recipe", "fast", "--epochs", "1", "--img-size", "16", "--width", "0.25",
             "--batch-size", "16", "--no-progress", "--workers", "1", "--name", "demo"]
    assert main([*train, "--exist-ok"]) == 0 and (tmp_path / "runs" / "demo" / "best.pt").is_file()
    assert main(train) == 2 and "already exists" in capsys.readouterr().err  # without --exist-ok: refused
    assert main([*train, "--exist-ok"]) == 0  # the demo's second run reuses the folder
    assert main(["evaluate", "runs/demo/best.pt", str(data), "--split", "test", "--out", "runs/demo/test",
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "runs" / "demo" / "test" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "test" and metrics["images"] == 18  # 6 test images x 3 classes, not val's 12
