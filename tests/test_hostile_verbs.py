"""What a hostile test of the newer verbs found (issue 27), each with a test that fails without its fix: file names
that are not UTF-8, a full disk under a TorchScript export, a run's data that is not where export looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image, write_class_folders
from processes import Process
from resnetlab.cli import main
from resnetlab.errors import ConfigError

CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]
LATIN1 = b"latin1_\xe9.png"  # a Latin-1 byte: not UTF-8, so Python's str for it holds the surrogate '\udce9'
SHOWN = "latin1_\\xe9.png"  # how resnetlab prints and writes it for people (fileio.NAME_BYTES)


def _latin1_folder(root: Path) -> tuple[Path, str]:
    """Class folders with one good image and one broken file whose names are not valid UTF-8; the good one's path."""
    data = write_class_folders(root, 6)
    image = os.fsencode(data / "red") + b"/" + LATIN1
    with open(image, "wb") as handle:
        make_image(np.random.default_rng(0), (230, 40, 40)).save(handle, format="png")
    with open(os.fsencode(data / "blue sky") + b"/bad_\xe9.png", "wb") as handle:
        handle.write(b"not a png")
    return data, os.fsdecode(image)


def _run(argv: list, capsys) -> tuple[int, str]:  # noqa: ANN001
    """One CLI run; its stdout and stderr. pytest's captured streams are strict UTF-8, as a terminal's stdout is:
    printing the name unchanged would fail here as it does there."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Logging error" not in out.err and "Traceback" not in out.err, out.err
    return code, out.out + out.err


def test_names_that_are_not_utf8_pass_check_and_training(tmp_path: Path, capsys):
    data, _ = _latin1_folder(tmp_path / "data")
    code, printed = _run(["check", data, "--json", tmp_path / "check.json"], capsys)
    assert code == 1 and "bad_\\xe9.png" in printed, printed  # 1: an unreadable file (named), not a crash
    report = json.loads((tmp_path / "check.json").read_text(encoding="utf-8"))  # JSON keeps the name exactly
    assert os.fsdecode(os.fsencode(data / "blue sky") + b"/bad_\xe9.png") in json.dumps(report, ensure_ascii=False)
    for loader in ("memory", "stream"):
        run = tmp_path / loader
        code, printed = _run(["train", data, "--out", run, "--epochs", "1", "--loader", loader, *CLI_TINY], capsys)
        assert code == 0, printed
        assert SHOWN in (run / "split.csv").read_text(encoding="utf-8")  # valid UTF-8, the byte shown as \xe9


def test_names_that_are_not_utf8_pass_predict_explain_and_embed(tmp_path: Path, capsys, trained_run):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet

    data, image = _latin1_folder(tmp_path / "data")
    checkpoint = trained_run.checkpoint
    code, printed = _run(["predict", checkpoint, data, "--out", tmp_path / "p.csv", "--no-progress",
                          "--allow-errors"], capsys)  # bad_\xe9.png fails: a row with its reason
    rows = (tmp_path / "p.csv").read_text(encoding="utf-8")
    assert code == 0 and SHOWN in rows and "bad_\\xe9.png,,,,,,,not an image" in rows, printed
    code, printed = _run(["predict", checkpoint, image, "--out", tmp_path / "one.csv", "--cam", tmp_path / "cams",
                          "--no-progress"], capsys)  # the file itself given, its heat map PNG carrying its name
    assert code == 0 and SHOWN in (tmp_path / "one.csv").read_text(encoding="utf-8"), printed
    code, printed = _run(["explain", checkpoint, data, "--out", tmp_path / "explain", "--no-progress"], capsys)
    assert code == 0 and SHOWN in (tmp_path / "explain" / "explain.csv").read_text(encoding="utf-8"), printed
    for suffix in (".npz", ".csv", ".parquet"):
        out = tmp_path / f"features{suffix}"
        code, printed = _run(["embed", checkpoint, data, "--out", out, "--no-progress"], capsys)
        assert code == 0 and out.is_file(), printed
    assert SHOWN in (tmp_path / "features.csv").read_text(encoding="utf-8")
    assert any(p.endswith(SHOWN) for p in pyarrow.parquet.read_table(tmp_path / "features.parquet")["path"].to_pylist())
    with np.load(tmp_path / "features.npz") as saved:  # the array keeps the str itself: the file opens again
        assert image in saved["paths"].tolist() and os.path.isfile(image)


def _tmpfs(folder: Path, size: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode()[:200]}")
    return folder


def test_torchscript_export_to_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, trained_run):
    small = _tmpfs(tmp_path / "small", "1m")  # the model is ~2.9 MB
    try:
        # a process of its own: before the fix, torch's writer aborted it (exit 134), which would end pytest too
        command = [sys.executable, "-m", "resnetlab", "export", str(trained_run.checkpoint), "--format", "torchscript",
                   "--out", str(small / "model.torchscript"), "--no-check"]
        with Process(command) as process:
            output = process.communicate(timeout=300)
        assert process.returncode == 1, output
        assert "TorchScript export of resnet18 failed" in output and "No space left on device" in output
        assert "Traceback" not in output and list(small.iterdir()) == []  # no temp folder filling the disk
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


def test_export_from_another_folder_skips_the_accuracy_check(tmp_path: Path, trained_run, monkeypatch, capsys):
    from resnetlab.checkpoint import read_checkpoint, save_checkpoint

    payload = read_checkpoint(trained_run.checkpoint)
    payload["config"]["data"] = "toy"  # how older runs stored it: relative to the folder training ran in
    save_checkpoint(tmp_path / "old.pt", payload)
    monkeypatch.chdir(tmp_path)  # where no toy/ is
    code, printed = _run(["export", "old.pt", "--format", "torchscript", "--out", "old.torchscript"], capsys)
    assert code == 0, printed
    assert f"the run's data toy (from {tmp_path}) is not there: the accuracy check is skipped" in printed
    assert "validation" not in json.loads((tmp_path / "old.torchscript.json").read_text(encoding="utf-8"))
    code, printed = _run(["export", "old.pt", "--format", "onnx", "--quantize", "int8", "--out", "q.onnx"], capsys)
    assert code == 1 and "calibrates on the run's training images, but its data toy" in printed
    assert "pass --data DATA" in printed and not (tmp_path / "q.onnx").exists()


def _fake_trials(monkeypatch, trained: list) -> None:  # noqa: ANN001
    """Workers whose trials 'train' in 0.3 s (the value: the learning rate), and no study files written."""
    import time

    from resnetlab.tune import worker

    def train(self, trial, settings, run_dir):  # noqa: ANN001, ANN202, ARG001 - Worker._train's signature
        trained.append(settings["lr"])
        time.sleep(0.3)
        return float(settings["lr"])

    monkeypatch.setattr(worker.Worker, "_train", train)
    monkeypatch.setattr(worker, "refresh", lambda plan, study: None)


def test_two_tune_commands_never_train_the_same_settings_twice(tmp_path: Path, monkeypatch):
    """Two commands on one study (here: two workers with locks of their own, as two processes have) used to draw the
    same settings in lockstep and train each twice at the same time."""
    import threading

    pytest.importorskip("optuna")
    from resnetlab.tune.plan import Plan
    from resnetlab.tune.space import Dimension
    from resnetlab.tune.worker import Worker

    trained: list = []
    _fake_trials(monkeypatch, trained)
    space = {"lr": Dimension("choice", choices=(0.1, 0.05, 0.02, 0.01, 0.005))}
    plan = Plan(name="twins", out=str(tmp_path), storage=f"sqlite:///{tmp_path / 'study.db'}", base={}, space=space,
                metric="val_acc", pruner="none", heartbeat_s=30)
    workers = [Worker(plan, 0), Worker(plan, 0)]  # each command's first worker: the same seed before the fix
    threads = [threading.Thread(target=w.run, args=(threading.Lock(),)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(trained) == sorted(set(trained)), f"trained twice: {trained}"
    assert sorted(trained) == sorted(space["lr"].choices)  # and every setting was still tried


def test_the_starting_settings_leave_no_waiting_trial_and_are_queued_again_after_a_failed_start(tmp_path: Path,
                                                                                                  monkeypatch):
    """Issue 27: a command whose time was up left a WAITING trial; an interrupted or failed first trial (the starting
    settings) was never run again, because Optuna's skip_if_exists counts FAILED trials too. Each step below is what
    one `resnetlab tune` command does (search.run_study): queue the start, run the workers, unqueue what none
    started."""
    import threading
    import time
    from dataclasses import replace

    optuna = pytest.importorskip("optuna")
    from resnetlab.tune import worker
    from resnetlab.tune.plan import Plan
    from resnetlab.tune.space import Dimension
    from resnetlab.tune.worker import Worker, queue_the_start, unqueue_unstarted

    calls: list = []

    def train(self, trial, settings, run_dir):  # noqa: ANN001, ANN202, ARG001 - Worker._train's signature
        calls.append(settings["lr"])
        if settings["lr"] == 0.05:
            raise ConfigError("the start fails (as an interrupted one is FAILED)")
        return float(settings["lr"])

    def command(plan: Plan) -> list:
        one = Worker(plan, 0)
        queue_the_start(one.study, plan)
        one.run(threading.Lock())
        unqueue_unstarted(one.study)
        return one.study.get_trials()

    monkeypatch.setattr(Worker, "_train", train)
    monkeypatch.setattr(worker, "refresh", lambda plan, study: None)
    space = {"lr": Dimension("choice", choices=(0.1, 0.05, 0.02))}
    plan = Plan(name="start", out=str(tmp_path), storage=f"sqlite:///{tmp_path / 'study.db'}", base={"lr": 0.05},
                space=space, metric="val_acc", pruner="none", trials=1)
    FAIL, WAITING = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING
    trials = command(replace(plan, deadline=time.time() - 1))  # time up at once: nothing runs
    assert calls == [] and [t.state for t in trials] == [FAIL] and "not started" in trials[0].user_attrs["note"]
    trials = command(plan)  # the start is queued again and runs first; it fails; a drawn trial completes the one
    assert calls[0] == 0.05 and not [t for t in trials if t.state == WAITING]
    study = optuna.load_study(study_name="start", storage=plan.storage)
    queue_the_start(study, plan)  # every trial with the start's settings FAILED: the next command queues it again
    waiting = study.get_trials(states=(WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"lr": 0.05}]


def test_a_trial_at_the_last_epoch_of_its_plan_is_complete_not_pruned(tmp_path: Path, monkeypatch):
    """Issue 27: "pruned after epoch 3 (100 % of its planned run)" was stored PRUNED and its result lost."""
    import threading
    from types import SimpleNamespace

    optuna = pytest.importorskip("optuna")
    from resnetlab import training
    from resnetlab.tune import worker
    from resnetlab.tune.plan import Plan
    from resnetlab.tune.space import Dimension
    from resnetlab.tune.worker import Worker

    def train(cfg, on_epoch):  # noqa: ANN001, ANN202 - training.train's signature
        history = []
        for epoch in (1, 2, 3):
            history.append({"epoch": epoch, "val_acc": 0.2 * epoch})
            if on_epoch({**history[-1], "planned_epochs": 3}):
                return SimpleNamespace(history=history, stopped="pruned", stop_signal=None)
        return SimpleNamespace(history=history, stopped=None, stop_signal=None)

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(worker, "refresh", lambda plan, study: None)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)  # the pruner says so at every step
    plan = Plan(name="last", out=str(tmp_path), storage=f"sqlite:///{tmp_path / 'study.db'}", base={"data": "x"},
                space={"lr": Dimension("choice", choices=(0.1,))}, metric="val_acc", pruner="median", trials=1,
                prune_after=3)
    Worker(plan, 0).run(threading.Lock())
    trial, = optuna.load_study(study_name="last", storage=plan.storage).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == pytest.approx(0.6)


def test_tune_on_multilabel_data_ranks_trials_by_the_metric_that_picks_their_best_pt(tmp_path: Path, monkeypatch):
    pytest.importorskip("optuna")
    import yaml

    from resnetlab.tune.worker import Worker
    from test_multilabel import labelled_set

    ranked: list = []

    def train(self, trial, settings, run_dir):  # noqa: ANN001, ANN202, ARG001 - Worker._train's signature
        ranked.append((self.plan.metric, settings["best_metric"]))
        return 0.5

    monkeypatch.setattr(Worker, "_train", train)
    data = labelled_set(tmp_path / "multi", count=24)
    out = tmp_path / "study"
    assert main(["tune", str(data), "--trials", "1", "--no-plots", "--out", str(out), "--no-progress"]) == 0
    assert ranked == [("map", "map")]  # each trial's best.pt is picked by mAP: the study ranks by mAP too
    assert yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))["best_metric"] == "map"


def _read_only(folder: Path) -> None:
    """``folder`` read-only even for root (a read-only bind mount), or the test is skipped."""
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, timeout=30)
    if done.returncode == 0:
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only folder here (needs root): {done.stderr.decode()[:200]}")


def test_a_read_only_study_database_is_one_line(tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    data = write_class_folders(tmp_path / "data", 4)
    _fake_trials(monkeypatch, [])
    out = tmp_path / "study"
    command = ["tune", str(data), "--trials", "2", "--no-plots", "--out", str(out), "--no-progress"]
    assert main(command) == 0  # a finished study
    capsys.readouterr()
    _read_only(out)
    try:
        code, printed = _run(command, capsys)
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True, timeout=30)
    assert code == 1 and f"the study storage sqlite:///{out / 'study.db'} cannot be written" in printed
    assert "attempt to write a readonly database" in printed


def _train_into_a_read_only_store(tmp_path: Path, store: Path, uri: str, capfd) -> str:  # noqa: ANN001
    """A one-epoch run with --mlflow URI while ``store`` is read-only; the run must finish (exit 0). Its output."""
    _read_only(store)
    data = write_class_folders(tmp_path / "data", 6)
    try:
        code = main(["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--mlflow", uri, *CLI_TINY])
    finally:
        subprocess.run(["umount", "-l", str(store)], capture_output=True, timeout=30)
    printed = "".join(capfd.readouterr())
    assert code == 0, printed
    return printed


def test_mlflow_on_a_read_only_sqlite_store_is_one_warning_at_once(tmp_path: Path, capfd, no_figures):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the database made, then its folder read-only
    printed = _train_into_a_read_only_store(tmp_path, store, uri, capfd)
    assert f"warning: mlflow: could not open the tracking store at {uri} (OperationalError: attempt to write a " \
           "readonly database)" in printed
    assert "SQLAlchemy database error" not in printed and "Traceback" not in printed  # MLflow never tried


def test_mlflow_on_a_read_only_file_store_is_a_store_that_cannot_be_written_not_an_unreachable_server(
        tmp_path: Path, capfd, no_figures):
    pytest.importorskip("mlflow")
    store = tmp_path / "store"
    store.mkdir()
    uri = store.as_uri()
    printed = _train_into_a_read_only_store(tmp_path, store, uri, capfd)
    assert f"warning: mlflow: could not open the tracking store at {uri} (PermissionError: cannot write in {store}: " \
           "the store's folder is read-only)" in printed
    assert "reach the tracking server" not in printed and "Traceback" not in printed


def test_evaluate_mlflow_after_a_run_whose_server_was_down_says_so(tmp_path: Path, capfd, no_figures):
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = write_class_folders(tmp_path / "data", 6)
    run = tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--mlflow", uri, *CLI_TINY]) == 0
    capfd.readouterr()
    assert main(["evaluate", str(run / "best.pt"), str(data), "--out", str(tmp_path / "eval"), "--mlflow",
                 "--no-progress"]) == 0
    printed = "".join(capfd.readouterr())
    assert f"mlflow: {run} was trained with --mlflow but its MLflow run never started (the store at {uri} could not " \
           "be reached or opened then): nothing to attach to" in printed, printed
    assert "trained without --mlflow" not in printed


def test_a_stale_sidecar_is_refused_when_the_model_loads(tmp_path: Path, trained_run, capsys):
    pytest.importorskip("onnxruntime")
    import resnetlab
    from resnetlab.errors import ExportError

    model = tmp_path / "model.onnx"
    assert main(["export", str(trained_run.checkpoint), "--format", "onnx", "--out", str(model), "--no-check"]) == 0
    sidecar = Path(f"{model}.json")
    info = json.loads(sidecar.read_text(encoding="utf-8"))
    sidecar.write_text(json.dumps({**info, "img_size": 64, "classes": ["a", "b"]}), encoding="utf-8")  # another run's
    capsys.readouterr()
    with pytest.raises(ExportError, match=r"does not match its sidecar .*model.onnx.json \(64 px, 2 classes\): the "
                                          r"model's input \[1, 3, 16, 16\] where the sidecar says \['N', 3, 64, 64\]; "
                                          r"output \[1, 3\] where the sidecar says \['N', 2\]"):
        resnetlab.load(model)  # what serve loads at start: it refuses to start instead of answering 500s
    code, printed = _run(["predict", model, trained_run.data / "Val", "--out", tmp_path / "p.csv"], capsys)
    assert code == 1 and "does not match its sidecar" in printed and not (tmp_path / "p.csv").exists()


def test_outputs_that_cannot_be_written_are_one_line_before_any_work(tmp_path: Path, trained_run, capsys):
    checkpoint, images = trained_run.checkpoint, trained_run.data / "Val"
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "folder").mkdir()
    _read_only(locked)
    try:
        runs = {fmt: ["export", checkpoint, "--format", fmt, "--out", locked / f"m{suffix}"]
                for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".torchscript"), ("openvino", ".xml"))}
        runs["predict"] = ["predict", checkpoint, images, "--out", locked / "p.csv", "--no-progress"]
        runs["embed"] = ["embed", checkpoint, images, "--out", locked / "e.npz", "--no-progress"]
        results = {what: _run(argv, capsys) for what, argv in runs.items()}
    finally:
        subprocess.run(["umount", "-l", str(locked)], capture_output=True, timeout=30)
    for what, (code, printed) in results.items():
        assert code == 2 and f"cannot write in {locked}: Read-only file system" in printed, (what, printed)
    code, printed = _run(["export", checkpoint, "--format", "onnx", "--out", tmp_path / "folder"], capsys)
    assert code == 2 and f"--out {tmp_path / 'folder'} is a folder; give a file name, e.g. " in printed
    code, printed = _run(["export", checkpoint, "--format", "openvino", "--out", tmp_path / "x.onnx"], capsys)
    assert code == 2 and "--format openvino writes an .xml file (and its .bin beside it)" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "locked"]  # no temp folder, no partial file


def test_label_errors_csv_stays_small_with_thousands_of_labels(tmp_path: Path):
    from resnetlab.data.splits import SplitData
    from resnetlab.multilabel.evaluation import SET_SHOWN, _write_errors

    images, count = 6, 1837
    rng = np.random.default_rng(0)
    classes = [f"label number {k:04d}" for k in range(count)]
    probabilities = rng.random((images, count)).astype(np.float32)
    truth = np.zeros((images, count), dtype=np.float32)
    truth[:, :3] = 1  # three true labels each
    thresholds = np.full(count, 0.01, dtype=np.float32)  # nearly every label predicted: thousands of errors
    wrong = np.argwhere((probabilities >= thresholds) & (truth == 0))[:300]  # ~1,800 per image; 300 will do
    split = SplitData("val", np.zeros(images, dtype=np.int64), [f"img{i}.png" for i in range(images)])
    out = tmp_path / "label_errors.csv"
    _write_errors(out, wrong, np.zeros((0, 2), dtype=np.int64), probabilities, truth, thresholds, split,
                  np.arange(images), classes)
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(wrong) + 1  # still every wrong decision
    assert out.stat().st_size < 250 * len(rows)  # each row bounded (the full sets: ~32 KB a row)
    first = rows[1].split(",")
    assert first[5] == "label number 0000|label number 0001|label number 0002"  # a small set in full
    shown = first[6].split("|")
    assert len(shown) == SET_SHOWN + 1 and shown[-1].startswith("(+") and shown[-1].endswith(" more)")


def test_the_training_log_stays_small_with_thousands_of_labels(tmp_path: Path, capsys):
    """1,837 labels made a 230 KB training log: the per-split count line and the end-of-run per-label table each
    listed every label. Both now name the first few and count the rest (the files keep them all)."""
    from resnetlab.multilabel.evaluation import TABLE_SHOWN, print_summary
    from resnetlab.training.data import COUNTS_SHOWN, counts_text

    classes = [f"label number {k:04d}" for k in range(1837)]
    line = counts_text({name: 3 for name in classes})
    assert line.startswith("label number 0000=3, label number 0001=3") and len(line) < 40 * COUNTS_SHOWN
    assert line.endswith(f", ... (+{1837 - COUNTS_SHOWN} more in data_report.json)")
    assert counts_text({"cat": 2, "dog": 1}) == "cat=2, dog=1"  # a short list in full

    row = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "ap": 0.25, "support": 3, "threshold": 0.4}
    metrics = {"split": "val", "images": 6, "map_macro": 0.25, "map_micro": 0.3, "macro_avg": {"f1": 0.5},
               "micro_avg": {"f1": 0.5}, "exact_match": 0.0, "loss": 0.7, "threshold_rule": "per label",
               "per_class": {name: row for name in classes}, "skipped": []}
    print_summary(metrics, classes, tmp_path)
    printed = capsys.readouterr().err
    assert printed.count("label number ") == TABLE_SHOWN and len(printed) < 100 * TABLE_SHOWN + 1000
    assert f"... (+{1837 - TABLE_SHOWN} more labels in {tmp_path / 'per_label.csv'})" in printed


def test_an_empty_validation_split_says_why_and_what_to_do(tmp_path: Path, capsys):
    one_each = write_class_folders(tmp_path / "one", 1)  # one image per class: nothing can be held out
    code, printed = _run(["train", one_each, "--out", tmp_path / "run1", "--epochs", "1", *CLI_TINY], capsys)
    assert code != 0 and "could be read" not in printed
    assert (f"the val split of {one_each} is empty: every class has a single image, so none can be held out for "
            "validation; add images (with 2 or more per class --val-split holds some out) or give a val/ folder of "
            "class folders (a CSV: rows with split 'val')") in printed
    split = tmp_path / "split"
    write_class_folders(split / "train", 3)
    for name in ("red", "blue sky"):
        (split / "val" / name).mkdir(parents=True)  # a val/ folder with class folders but no images
    code, printed = _run(["train", split, "--out", tmp_path / "run2", "--epochs", "1", *CLI_TINY], capsys)
    assert code != 0 and "could be read" not in printed
    assert (f"the val split of {split} is empty (no images in its class folders or rows); add images to it, or "
            "leave it out and --val-split holds out a share of train") in printed
    # check says the same, as an error, and exits 1 (it used to say "no problems found")
    code, printed = _run(["check", one_each, "--no-progress", "--no-near-dups"], capsys)
    assert code == 1 and "no problems found" not in printed
    assert f"[val] the val split of {one_each} is empty: every class has a single image" in printed


def test_check_fills_the_cache_dir_it_is_given(tmp_path: Path, capsys):
    data = write_class_folders(tmp_path / "data", 2)
    cache = tmp_path / "my cache"
    code, printed = _run(["check", data, "--img-size", "16", "--cache-dir", cache, "--no-near-dups", "--workers", 1,
                          "--no-progress"], capsys)
    assert code == 0, printed
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".json", ".npy", ".npy"]  # train and val, here
