"""resnetlab tune against the real pieces: Optuna studies in real SQLite files, real worker processes (one killed
with SIGKILL in the middle of its trial), a trial left RUNNING by a "lost machine" failed by the heartbeat, the CLI
end to end, and best.yaml trained again by `resnetlab train --config`."""

from __future__ import annotations

import csv
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_class_folders
from processes import Process, children
from resnetlab.cli import main
from resnetlab.config import TrainConfig
from resnetlab.errors import ConfigError

optuna = pytest.importorskip("optuna", reason="the 'tune' extra is not installed")

from optuna.trial import TrialState  # noqa: E402

from resnetlab.tune.plan import progress_step  # noqa: E402
from resnetlab.tune.space import base_params, default_space, load_space  # noqa: E402
from resnetlab.tune.study import open_storage  # noqa: E402

TINY = ["--width", "0.25", "--img-size", "16", "--epochs", "2", "--batch-size", "16", "--decode-workers", "1",
        "--no-progress", "--seed", "0"]
STARTUP_S = 240  # a worker process imports torch before its first trial: slow on a loaded 2-core machine


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """72 training and 24 validation images of 3 colour classes."""
    root = tmp_path_factory.mktemp("tune") / "toy"
    write_class_folders(root / "Train", 24, seed=1)
    write_class_folders(root / "Val", 8, seed=2)
    return root


def _trials(out: Path, name: str | None = None) -> list:
    storage = f"sqlite:///{out / 'study.db'}"
    name = name or optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_the_pruner_compares_trials_at_the_same_share_of_their_planned_runs():
    assert [progress_step(e, 2) for e in (1, 2)] == [5, 10]
    assert [progress_step(e, 4) for e in (1, 2, 3, 4)] == [2, 5, 8, 10]  # round half to even: 2.5 -> 2, 7.5 -> 8
    assert progress_step(3, 12) == 2 and progress_step(1, 40) == 1 and progress_step(9, 6) == 10  # clamped


def _kill_if_in_a_trial(pid: int, out: Path) -> int | None:
    """SIGKILL ``pid`` if it is running a trial, checked while it is stopped (a tiny trial can end before a busy
    machine gets here: then it goes on and the next of its trials is tried)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        running = [t for t in _trials(out) if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == pid]
    except Exception:  # noqa: BLE001 - stopped while it held the database's write lock: try its next trial
        running = []
    if running:
        os.kill(pid, signal.SIGKILL)
        return pid
    os.kill(pid, signal.SIGCONT)
    return None


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("text", "expected"), [
    ("lrr: {low: 0.01, high: 0.1}", "unknown setting 'lrr'.*did you mean 'lr'"),
    ("lr: {low: 0.1, high: 0.01}", "low must be below high"),
    ("lr: {low: 0, high: 1, log: true}", "log range needs low > 0"),
    ("lr: {lo: 0.1, high: 1}", "unknown key.*lo"),
    ("epochs: {low: 1.5, high: 4}", "whole numbers"),
    ("aug: {low: 1, high: 2}", "not a number.*choices"),
    ("aug: {choices: [crop, strnog]}", "aug = 'strnog' is not a valid setting"),
    ("width: [0.5, 9.0]", "width = 9.0 is not a valid setting"),
    ("out: {choices: [a, b]}", "cannot be searched"),
    ("time_limit: {choices: [1m, 2m]}", "--trial-time"),
])
def test_space_file_mistakes_name_the_file_and_the_setting(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "my space.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as caught:
        load_space(path, TrainConfig(data="photos").to_dict())
    assert str(path) in str(caught.value)


def test_space_file_ranges_and_choices(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 0.01, high: 0.4, log: true}\nepochs: {low: 2, high: 8, step: 2}\n"
                    "aug: [crop, light]\nlabel-smoothing: {low: 0, high: 0.2}\n", encoding="utf-8")
    space = load_space(path, TrainConfig(data="photos").to_dict())
    assert {name: d.kind for name, d in space.items()} == {"lr": "float", "epochs": "int", "aug": "choice",
                                                           "label_smoothing": "float"}
    assert space["lr"].log and space["epochs"].step == 2
    # the first trial measures the starting settings where they lie in the space (epochs 10 does not)
    assert base_params(space, TrainConfig(data="photos").to_dict()) == {"lr": 0.1, "aug": "light",
                                                                        "label_smoothing": 0.1}


def test_default_space_by_data_size_leaves_the_flags_out():
    base = TrainConfig(data="photos").to_dict()
    small, large = default_space(500, base, set()), default_space(60_000, base, {"width", "lr"})
    assert small["aug"].choices == ("crop", "light") and small["width"].choices == (0.25, 0.5)
    assert "strong" in large["aug"].choices and "width" not in large and "lr" not in large
    assert default_space(500, {**base, "opt": "adamw"}, set())["lr"].high < 0.01  # Adam's rates, not SGD's


def test_cli_refuses_a_bad_space_and_a_missing_budget(toy: Path, tmp_path: Path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lrr: {low: 0.01, high: 0.1}\n", encoding="utf-8")
    assert main(["tune", str(toy), "--space", str(space), "--trials", "2", "--out", str(tmp_path / "s")]) == 2
    assert f"unknown setting 'lrr' in {space}; did you mean 'lr'?" in capsys.readouterr().err
    assert main(["tune", str(toy), "--out", str(tmp_path / "s")]) == 2
    assert "--trials N" in capsys.readouterr().err
    space.write_text("width: [0.25, 0.5]\n", encoding="utf-8")
    assert main(["tune", str(toy), "--space", str(space), "--width", "0.5", "--trials", "2"]) == 2
    assert "both searched" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_killed_worker_fails_only_its_trial(toy: Path, tmp_path: Path):
    """`--workers 2`: this process and a spawned one fill one SQLite study; the spawned worker is SIGKILLed in the
    middle of a trial: that trial is FAILED, the other worker finishes the study's 4 trials."""
    out = tmp_path / "study"
    command = [sys.executable, "-m", "resnetlab", "tune", str(toy), *TINY, "--trials", "4", "--workers", "2",
               "--out", str(out)]
    with Process(command) as process:
        seen, killed = "", None
        while killed is None:  # a trial that the spawned worker (not the main process) is still running
            seen += process.read_until("started by worker", timeout=STARTUP_S)
            pid = int(re.findall(r"started by worker (\d+)", seen)[-1])
            if pid != process.pid and pid in children(process.pid):
                killed = _kill_if_in_a_trial(pid, out)
        output = seen + process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"worker process {killed} ended (killed by SIGKILL)" in output, output
    trials = _trials(out)
    assert [t.number for t in trials] == list(range(len(trials)))  # every number once
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["pid"] == killed, output
    assert f"worker process {killed} died" in failed[0].user_attrs["note"]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4, output
    rows = _csv_rows(out / "trials.csv")
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    assert [r["state"] for r in rows] == [t.state.name for t in trials]
    best = TrainConfig.from_sources(out / "best.yaml")  # best.yaml is a train config as it is
    assert best.data == str(toy) and best.width == 0.25 and best.out is None
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (out / "optimization_history.png").is_file() and "data:image/png;base64," in page
    assert not (out / "trials" / f"{failed[0].number:03d}").exists()  # a failed trial's folder is not kept


@pytest.mark.slow
def test_study_resumes_prunes_survives_a_lost_machine_and_best_yaml_trains_the_same(toy: Path, tmp_path: Path,
                                                                                   capsys, no_figures):
    """One worker here, in this process: a RUNNING trial whose "machine" stopped beating is failed by the heartbeat;
    a learning rate of 1e-9 falls behind the median after epoch 1 and is pruned; the same command with a higher
    --trials resumes the study (old trials kept); best.yaml trains to the best trial's exact metrics."""
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {choices: [0.1, 0.05, 1.0e-9]}\n", encoding="utf-8")
    storage = open_storage(f"sqlite:///{out / 'study.db'}", heartbeat_s=1)
    with pytest.warns(UserWarning, match="Heartbeat"):  # asked outside optimize(): as a lost worker would have
        lost = optuna.create_study(storage=storage, study_name="toy-search", direction="maximize").ask()
    lost.set_user_attr("host", "another-machine")
    storage.record_heartbeat(lost._trial_id)
    time.sleep(2.2)  # two heartbeats missed
    command = ["tune", str(toy), *TINY, "--space", str(space), "--name", "toy-search", "--out", str(out),
               "--prune-after", "1", "--prune-startup", "1", "--heartbeat", "1", "--no-plots"]

    assert main(command + ["--trials", "2"]) == 0
    first = _trials(out, "toy-search")
    assert first[0].state == TrialState.FAIL  # the lost machine's trial
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in first) == 2
    assert first[1].params == {"lr": 0.1}  # the starting settings go first

    assert main(command + ["--trials", "30"]) == 0  # the same study, a higher total: it resumes
    output = capsys.readouterr().err
    resumed = _trials(out, "toy-search")
    assert len(resumed) > len(first)
    assert [(t.number, t.state, t.params) for t in resumed[:len(first)]] == [(t.number, t.state, t.params)
                                                                               for t in first]
    assert "every one of the space's 3 combinations has been tried" in output
    pruned = [t for t in resumed if t.state == TrialState.PRUNED and "repeat_of" not in t.user_attrs]
    assert [t.params["lr"] for t in pruned if t.params["lr"] == 1e-9]
    assert max(pruned[0].intermediate_values) == 5  # pruned after epoch 1 of 2: half its run
    assert main(command + ["--trials", "30"]) == 0  # nothing left to try: no new trial
    assert len(_trials(out, "toy-search")) == len(resumed)

    best = optuna.load_study(study_name="toy-search", storage=f"sqlite:///{out / 'study.db'}").best_trial
    settings = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    assert settings["lr"] == best.params["lr"] and settings["seed"] == 0 and "out" not in settings
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    trial_rows = _csv_rows(Path(best.user_attrs["run_dir"]) / "metrics.csv")
    again_rows = _csv_rows(tmp_path / "again" / "metrics.csv")
    columns = ("epoch", "train_loss", "val_loss", "val_acc", "val_f1")
    assert [float(r[c]) for r in again_rows for c in columns] == pytest.approx(
        [float(r[c]) for r in trial_rows for c in columns], abs=1e-6)
    assert max(float(r["val_acc"]) for r in again_rows) == pytest.approx(best.value, abs=1e-6)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_trial_exits_like_train_and_names_no_deleted_folder(toy: Path, tmp_path: Path, monkeypatch,
                                                                         caplog, signum: int, code: int):
    """A trial stopped by Ctrl-C or SIGTERM: exit 130 or 143 (the README's codes); its folder is deleted with the
    failed trial, so training's "resume with: ... trials/000" hint is not shown for it."""
    from types import SimpleNamespace

    from resnetlab.log import logger

    groups = []

    def stopped_train(cfg, on_epoch):  # noqa: ANN001, ANN202, ARG001 - training.train's signature
        groups.append(cfg.wandb_group)
        Path(cfg.out).mkdir(parents=True)
        logger.info(f"stopped after epoch 1; resume with: resnetlab train --resume {cfg.out}")
        return SimpleNamespace(history=[], stopped="signal", stop_signal=signum)

    monkeypatch.setattr("resnetlab.training.train", stopped_train)
    out = tmp_path / "study"
    with caplog.at_level("INFO", logger="resnetlab"):
        assert main(["tune", str(toy), *TINY, "--trials", "2", "--out", str(out)]) == code
    messages = [r.getMessage() for r in caplog.records]
    assert "trial 0: stopped after epoch 1" in messages, messages
    assert not [m for m in messages if "resume with" in m], messages
    assert not (out / "trials" / "000").exists()
    # a trial's W&B run (with --wandb) joins the study's group
    assert groups == optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}")
