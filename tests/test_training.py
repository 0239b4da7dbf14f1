"""The training loop's options by their effect: --early-stop, every --sched and --opt (the learning rate each step
really used), exact resume with --ema and --mixup, --save-every checkpoints, and top-5 accuracy."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

import resnetlab
import resnetlab.training.loop
from conftest import make_image, write_class_folders
from resnetlab.checkpoint import ModelMeta, describe_model, save_checkpoint
from resnetlab.cli import main
from resnetlab.config import TrainConfig
from resnetlab.metrics import classification_metrics, topk_accuracy
from resnetlab.models import ModelSpec, build_model
from resnetlab.training.schedule import make_schedule

# the plain recipe: these tests are about the loop's mechanics, not auto's choices (test_auto, test_race)
TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "device": "cpu",
        "recipe": "plain"}
STEPS = 72 // 16  # split_folders: 72 training images in batches of 16 (the last, short one dropped)
SIX = {"blue": (40, 60, 230), "green": (40, 200, 60), "red": (230, 40, 40), "yellow": (230, 220, 40),
       "magenta": (220, 40, 220), "cyan": (40, 220, 220)}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def history(result, column: str) -> list[float]:  # noqa: ANN001 - a RunResult
    return [float(row[column]) for row in result.history]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def learning_rates():
    """(optimizer class name, the learning rate of each param group) at every optimizer step, as the step used it."""
    seen: list[tuple[str, list[float]]] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append((type(optimizer).__name__,
                                                     [group["lr"] for group in optimizer.param_groups])))
    yield seen
    handle.remove()


# ------------------------------------------------------------------------------------------------------ early stop
def test_early_stop_ends_the_run_n_epochs_after_the_best_and_keeps_that_epochs_weights(tmp_path: Path, no_figures):
    data = tmp_path / "plateau"
    write_class_folders(data / "Train", 8, seed=4)
    grey = Image.new("RGB", (20, 20), (128, 128, 128))
    for name in ("blue sky", "green léaf", "red"):  # the same image in every class: val accuracy is 1/3, always
        (data / "Val" / name).mkdir(parents=True)
        for i in range(2):
            grey.save(data / "Val" / name / f"grey {i}.png")
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), epochs=8, early_stop=2, keep=8, lr=0.05,
                             **TINY)
    assert result.stopped == "early-stop" and result.epochs_done == 3  # best at 1, no gain in 2 and 3
    assert result.best_epoch == 1 and result.best_val_acc == pytest.approx(1 / 3)
    assert [round(row["val_acc"], 6) for row in result.history] == [round(1 / 3, 6)] * 3
    assert [int(row["epoch"]) for row in read_csv(result.run_dir / "metrics.csv")] == [1, 2, 3]
    best, last = load(result.best_checkpoint), load(result.last_checkpoint)
    assert best["epoch"] == 1 and last["epoch"] == 3
    assert best["metrics"]["train_loss"] == pytest.approx(result.history[0]["train_loss"])
    assert same_tensors(best["model"], load(result.run_dir / "epoch_001.pt")["model"])  # the weights of epoch 1
    assert not same_tensors(best["model"], last["model"])  # training went on for two more epochs
    assert sorted(p.name for p in result.run_dir.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt",
                                                                         "epoch_003.pt"]
    assert no_figures == [result.run_dir]  # an early stop is a finished run: best.pt gets its evaluation


# --------------------------------------------------------------------------------------- schedules and optimizers
@pytest.mark.parametrize("sched, opt, end", [("onecycle", "sgd", 0.0), ("cosine", "adamw", 0.0),
                                             ("step", "adam", 0.1), ("none", "sgd", 1.0)])
def test_every_schedule_and_optimizer_steps_with_the_planned_learning_rates(
        sched: str, opt: str, end: float, split_folders: Path, tmp_path: Path, learning_rates, no_figures):
    settings = {"sched": sched, "opt": opt, "warmup_epochs": 0.5, "step_size": 1, "epochs": 1}
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / sched), **settings, **TINY)
    peak = 0.1 if opt == "sgd" else 1e-3  # the default --lr of each optimizer
    schedule = make_schedule(TrainConfig(data="x", **settings), STEPS)
    names = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
    assert [name for name, _ in learning_rates] == [names[opt]] * STEPS
    for step, (_, group_lrs) in enumerate(learning_rates):  # weight-decayed weights, then norms and biases
        assert group_lrs == pytest.approx([peak * schedule(step)] * 2, rel=1e-12, abs=1e-15), step
    recorded = float(read_csv(result.run_dir / "metrics.csv")[0]["lr"])  # after the epoch's last step
    assert recorded == pytest.approx(peak * schedule(STEPS), rel=1e-9, abs=1e-15)
    assert recorded == pytest.approx(peak * end, abs=1e-12)  # annealed to 0 / decayed x0.1 / constant
    if sched == "onecycle":
        assert learning_rates[0][1][0] == pytest.approx(0.04 * peak)  # one-cycle starts at 1/25 of the peak
    last = load(result.last_checkpoint)
    groups = last["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    if opt == "sgd":
        assert groups[0]["momentum"] == 0.9 and groups[0]["nesterov"] is True
    else:
        assert tuple(groups[0]["betas"]) == (0.9, 0.999)
    assert np.isfinite(result.history[0]["train_loss"]) and result.epochs_done == 1


# --------------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("feature", [{"ema": 0.9}, {"mixup": 0.2, "cutmix": 1.0}], ids=["ema", "mixup"])
def test_resume_is_bitwise_exact_with_ema_and_mixup(feature: dict, split_folders: Path, tmp_path: Path, no_figures):
    settings = dict(TINY, epochs=2, lr=0.05, **feature)
    whole = resnetlab.train(data=str(split_folders), out=str(tmp_path / "whole"), **settings)
    reference = load(whole.last_checkpoint)
    if "ema" in feature:
        assert not same_tensors(reference["ema"], reference["model"])  # the average is not the raw weights
    for name, stop_at in (("after-epoch-1", STEPS), ("mid-epoch-2", STEPS + 2)):
        run_dir = tmp_path / name
        first = resnetlab.train(data=str(split_folders), out=str(run_dir), stop_after_steps=stop_at, **settings)
        assert first.stopped == "steps"
        saved = load(run_dir / "last.pt")
        assert (saved["epoch"], saved["step"]) == divmod(stop_at, STEPS)
        # the saved config holds stop_after_steps: this invocation may run to the end
        resumed = resnetlab.train(resume=str(run_dir), stop_after_steps=0, progress=False)
        assert resumed.stopped is None and resumed.epochs_done == 2
        final = load(run_dir / "last.pt")
        assert same_tensors(final["model"], reference["model"]), name
        if "ema" in feature:
            assert same_tensors(final["ema"], reference["ema"]), name
            assert same_tensors(load(run_dir / "best.pt")["model"], load(whole.best_checkpoint)["model"]), name
        for key, value in reference["optimizer"]["state"].items():  # momentum buffers too
            assert same_tensors(final["optimizer"]["state"][key], value), name
        columns = ("val_acc", "val_loss", "raw_val_acc") if "ema" in feature else ("val_acc", "val_loss")
        for column in (*columns, "train_loss"):  # epochs before a resume are read back from metrics.csv (6 digits)
            assert history(resumed, column) == pytest.approx(history(whole, column), rel=1e-5), (name, column)
        assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], rel=1e-9), name


def test_a_step_limit_on_the_runs_last_step_still_finishes_the_run(split_folders: Path, tmp_path: Path,
                                                                   no_figures):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "run"), epochs=1, stop_after_steps=STEPS,
                             lr=0.05, **TINY)
    assert result.epochs_done == 1 and load(result.last_checkpoint)["epoch"] == 1  # every planned step ran
    assert result.stopped is None  # nothing was left to stop
    assert no_figures == [result.run_dir]  # so best.pt gets the evaluation of a finished run


# ------------------------------------------------------------------------------------------------------ save-every
def test_save_every_writes_a_resumable_checkpoint_at_its_step(split_folders: Path, tmp_path: Path, monkeypatch,
                                                              no_figures, capsys):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    original = resnetlab.training.loop.save

    def keep_mid_epoch_copies(path: Path, payload: dict, info) -> None:  # noqa: ANN001
        original(path, payload, info)
        if path.name == "last.pt" and payload["step"]:
            shutil.copy(path, snapshots / f"epoch{payload['epoch'] + 1}-step{payload['step']}.pt")

    monkeypatch.setattr(resnetlab.training.loop, "save", keep_mid_epoch_copies)
    whole = resnetlab.train(data=str(split_folders), out=str(tmp_path / "run"), epochs=2, save_every=3, lr=0.05,
                            **TINY)
    assert sorted(p.name for p in snapshots.iterdir()) == ["epoch1-step3.pt", "epoch2-step3.pt"]
    printed = capsys.readouterr().err
    assert "at epoch 2, step 3" in printed and "step 4" not in printed  # an epoch's end writes last.pt anyway
    mid = load(snapshots / "epoch2-step3.pt")
    assert (mid["epoch"], mid["step"]) == (1, 3) and mid["partial"]["seen"] == 3 * 16

    copy = tmp_path / "from-step-3"
    shutil.copytree(whole.run_dir, copy)
    shutil.copy(snapshots / "epoch2-step3.pt", copy / "last.pt")  # as if the run had died after step 3
    monkeypatch.setattr(resnetlab.training.loop, "save", original)
    resumed = resnetlab.train(resume=str(copy), progress=False)
    assert f"resuming {copy} at epoch 2, step 3" in capsys.readouterr().err
    assert same_tensors(load(copy / "last.pt")["model"], load(whole.last_checkpoint)["model"])
    for column in ("val_acc", "val_loss", "train_loss"):
        assert history(resumed, column) == pytest.approx(history(whole, column), rel=1e-5), column
    # epoch 2's running sums went on from those saved at step 3
    assert resumed.history[1]["train_loss"] == pytest.approx(whole.history[1]["train_loss"], rel=1e-9)


# ------------------------------------------------------------------------------------------------------------ top-5
def write_six_classes(root: Path, train: int, val: int) -> Path:
    rng = np.random.default_rng(6)
    for split, count in (("Train", train), ("Val", val)):
        for name, colour in SIX.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                make_image(rng, colour).save(root / split / name / f"{i:02d}.png")
    return root


def test_top5_accuracy_is_the_share_of_images_whose_class_is_among_the_five_highest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [9.0, 8, 7, 6, 5, 4], [1.0, 2, 3, 4, 5, 6], [0.0, 0, 0, 0, 9, 1]])
    targets = torch.tensor([0, 5, 5, 5])  # top-1 hit, rank 6 (miss), top-1 hit, rank 2
    assert topk_accuracy(logits, targets, 1) == 0.5 and topk_accuracy(logits, targets, 5) == 0.75
    assert topk_accuracy(logits, targets, 10) == 1.0  # k beyond the classes: every class is in the top k
    metrics = classification_metrics(logits, targets, list("abcdef"))
    assert metrics["accuracy"] == 0.5 and metrics["top5_accuracy"] == 0.75
    for classes in (3, 4):  # below five classes top-5 would be trivially 1: not reported
        assert "top5_accuracy" not in classification_metrics(logits[:, :classes], targets % classes,
                                                             list("abcdef"[:classes]))
    assert classification_metrics(logits[:, :5], targets % 5, list("abcde"))["top5_accuracy"] == 1.0


def test_evaluate_reports_top5_from_the_models_logits_with_six_classes(tmp_path: Path, capsys):
    data = write_six_classes(tmp_path / "six", train=1, val=5)
    classes = sorted(SIX)
    spec = ModelSpec("resnet18", len(classes), stem="small", width=0.25)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = build_model(spec)  # untrained: a spread of ranks, so top-5 is neither 0, 1 nor the top-1
    checkpoint = tmp_path / "random.pt"
    meta = ModelMeta(spec, classes, 16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    save_checkpoint(checkpoint, {**describe_model(meta, {}), "model": model.state_dict(), "epoch": 0})

    classifier = resnetlab.load(checkpoint, device="cpu")
    files = sorted((data / "Val").rglob("*.png"))
    targets = torch.tensor([classes.index(f.parent.name) for f in files])
    logits = classifier.logits(torch.stack([classifier.decode(f) for f in files]))
    rank = (logits > logits.gather(1, targets.view(-1, 1))).sum(dim=1)  # how many classes score higher
    top5, top1 = float((rank < 5).float().mean()), float((rank == 0).float().mean())
    assert top5 == topk_accuracy(logits, targets, 5) and top5 not in (0.0, 1.0, top1)

    out = tmp_path / "eval"
    assert main(["evaluate", str(checkpoint), str(data), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 30 and metrics["top5_accuracy"] == pytest.approx(top5)
    assert metrics["accuracy"] == pytest.approx(top1)
    assert f"top-5 {top5:.4f}" in capsys.readouterr().err


def test_training_records_val_top5_with_six_classes_and_not_with_three(tmp_path: Path, split_folders: Path,
                                                                       no_figures):
    data = write_six_classes(tmp_path / "six", train=4, val=4)
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), epochs=1, lr=0.05, **TINY)
    classifier = resnetlab.load(result.best_checkpoint, device="cpu")
    files = sorted((data / "Val").rglob("*.png"))
    targets = torch.tensor([classifier.classes.index(f.parent.name) for f in files])
    logits = classifier.logits(torch.stack([classifier.decode(f) for f in files]))
    row = read_csv(result.run_dir / "metrics.csv")[0]
    assert float(row["val_top5"]) == pytest.approx(topk_accuracy(logits, targets, 5), abs=1e-6)
    assert float(row["val_acc"]) == pytest.approx(topk_accuracy(logits, targets, 1), abs=1e-6)
    three = resnetlab.train(data=str(split_folders), out=str(tmp_path / "three"), epochs=1, lr=0.05, **TINY)
    assert "val_top5" not in read_csv(three.run_dir / "metrics.csv")[0]
    # what a notebook cell shows for the result: the summary, not the network or every epoch's row
    assert repr(three).startswith("RunResult(run_dir=") and "Conv2d" not in repr(three) and "history" not in repr(three)


def test_auto_keeps_the_finished_schedules_last_epoch_when_an_earlier_peak_is_within_noise():
    """benchmarks/README.md, session 18: on the 15-minute Fashion-MNIST run auto's best.pt was the validation peak at
    epoch 16 (0.903 of 1,000 images; 88.5 % on test) where the finished one-cycle schedule's epoch 32 (0.894, one
    standard error below) scored 89.7 %. Now the last epoch is kept unless the peak beats it by more."""
    from types import SimpleNamespace

    from resnetlab.training.loop import _last_within_noise

    def run(**cfg):  # noqa: ANN003, ANN202
        settings = {"chosen": {"opt": {}}, "given": [], "best_metric": "val_acc", "sched": "onecycle",
                    "early_stop": 0, **cfg}
        return SimpleNamespace(cfg=SimpleNamespace(**settings), state=SimpleNamespace(best_score=0.903, best_epoch=16),
                               val_batches=SimpleNamespace(labels=[0] * 1000))

    last = {"epoch": 32, "val_acc": 0.894}
    reason = _last_within_noise(run(), 32, last, planned=32)
    assert reason and "within one standard error (0.0094, 1000 images) of epoch 16's peak 0.9030" in reason
    assert _last_within_noise(run(), 32, {"epoch": 32, "val_acc": 0.88}, planned=32) is None  # the peak is real
    assert _last_within_noise(run(), 31, last, planned=32) is None  # not the schedule's end
    assert _last_within_noise(run(given=["best_metric"]), 32, last, planned=32) is None  # asked for the peak
    assert _last_within_noise(run(chosen=None), 32, last, planned=32) is None  # not auto
    assert _last_within_noise(run(sched="step"), 32, last, planned=32) is None  # no annealed end
