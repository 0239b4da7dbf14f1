"""Recipe features: EMA, mixup/cutmix, gradient clipping, test-time augmentation, lr-find / --lr auto, shipped
presets. Each is checked by its effect (soft targets, clipped gradients, averaged views, the steepest fall), not
only by a run finishing."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.nn.functional import cross_entropy
from torch.optim.optimizer import register_optimizer_step_pre_hook

import resnetlab
import resnetlab.training.lr_find
import resnetlab.training.run
import resnetlab.training.setup
from conftest import TrainedRun
from resnetlab.checkpoint import save_checkpoint
from resnetlab.cli import main
from resnetlab.config import ConfigError, TrainConfig, recipe_values
from resnetlab.models import TTAModel
from resnetlab.training.lr_find import _steepest_descent
from resnetlab.training.setup import build_objective

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05, "device": "cpu"}
CLI_TINY = ["--img-size", "16", "--width", "0.25", "--batch-size", "16", "--no-progress", "--workers", "1"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _scores(run_dir: Path, weights: dict[str, torch.Tensor], data: Path, tmp_path: Path) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``weights`` with the run's model description on data/Val."""
    last = torch.load(run_dir / "last.pt", weights_only=True)
    file = tmp_path / f"scored-{len(list(tmp_path.glob('scored-*')))}.pt"
    save_checkpoint(file, {**{k: last[k] for k in ("model_spec", "classes", "img_size", "mean", "std")},
                           "model": weights})
    classifier = resnetlab.load(file, device="cpu")
    files = sorted((data / "Val").rglob("*.png"))
    targets = torch.tensor([classifier.classes.index(f.parent.name) for f in files])
    logits = classifier.logits(torch.stack([classifier.decode(f) for f in files]))
    return float((logits.argmax(dim=1) == targets).float().mean()), float(cross_entropy(logits, targets))


def test_ema_weights_are_validated_checkpointed_and_the_raw_ones_scored_beside_them(split_folders: Path,
                                                                                   tmp_path: Path, no_figures):
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "ema"), epochs=2, ema=0.9, **TINY)
    last = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    assert set(last["ema"]) == set(last["model"])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])  # really averaged
    best = torch.load(tmp_path / "ema" / "best.pt", weights_only=True)
    # best.pt holds the averaged weights of its epoch: at epoch 2 exactly last.pt's EMA copy
    if best["epoch"] == 2:
        assert all(torch.equal(best["model"][k], last["ema"][k]) for k in best["model"])
    else:
        assert any(not torch.equal(best["model"][k], last["ema"][k]) for k in best["model"])
    # epoch 2's val_acc / val_loss are the averaged weights' scores, raw_val_acc the raw weights'
    ema_acc, ema_loss = _scores(result.run_dir, last["ema"], split_folders, tmp_path)
    raw_acc, raw_loss = _scores(result.run_dir, last["model"], split_folders, tmp_path)
    assert abs(ema_loss - raw_loss) > 1e-3  # so the loss tells which weights were scored
    row = read_csv(tmp_path / "ema" / "metrics.csv")[-1]
    assert float(row["val_loss"]) == pytest.approx(ema_loss, rel=1e-4)
    assert float(row["val_acc"]) == pytest.approx(ema_acc, abs=1e-6)
    assert float(row["raw_val_acc"]) == pytest.approx(raw_acc, abs=1e-6)
    assert result.model is not None


def test_mixup_objective_gives_soft_targets_and_a_soft_target_loss():
    cfg = TrainConfig(data="x", mixup=0.2, cutmix=1.0, mix_prob=1.0, label_smoothing=0.1, batch_size=8)
    objective = build_objective(cfg, 3, None)
    assert type(objective.train).__name__ == "SoftTargetCrossEntropy" and objective.mixer is not None
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    np.random.seed(0)  # timm's Mixup draws from numpy's global RNG
    mixed, soft = objective.mixer(x.clone(), y)  # timm mixes the batch in place
    assert mixed.shape == x.shape and soft.shape == (8, 3)
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert (soft.max(dim=1).values < 1 - 0.1 * 2 / 3 + 1e-6).all()  # never more than a smoothed one-hot
    assert ((soft > 0.15).sum(dim=1) >= 2).any(), soft  # two images' labels really mixed
    assert not torch.equal(mixed, x)
    plain = build_objective(TrainConfig(data="x"), 3, None)
    assert plain.mixer is None and isinstance(plain.train, torch.nn.CrossEntropyLoss)
    assert plain.train.label_smoothing == 0.1 and plain.val.label_smoothing == 0.0


def test_mixup_and_cutmix_train_on_soft_targets_and_need_even_batches(split_folders: Path, tmp_path: Path,
                                                                      monkeypatch, no_figures):
    from timm.loss import SoftTargetCrossEntropy

    seen: list[torch.Tensor] = []

    class Recording(SoftTargetCrossEntropy):
        def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            seen.append(target.detach().clone())
            return super().forward(x, target)

    import timm.loss

    monkeypatch.setattr(timm.loss, "SoftTargetCrossEntropy", Recording)  # task.py's single-label objective reads it
    settings = dict(TINY, epochs=5, mixup=0.2, cutmix=1.0, mix_prob=0.8)
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "mix"), **settings)
    assert result.best_val_acc > 0.8  # it still learns the colours
    assert len(seen) == 5 * (72 // 16)  # every training step's loss saw the mixed targets
    targets = torch.cat(seen)
    assert targets.shape == (5 * 64, 3) and torch.allclose(targets.sum(dim=1), torch.ones(len(targets)))
    assert ((targets > 0.15).sum(dim=1) >= 2).float().mean() > 0.3  # many rows mix two classes
    with pytest.raises(ConfigError, match="even batch_size"):
        TrainConfig(data="x", mixup=0.2, batch_size=15).validate()


def test_grad_clip_bounds_the_gradient_the_optimizer_steps_with(split_folders: Path, tmp_path: Path, monkeypatch,
                                                                no_figures):
    clip = 0.05
    before_clip: list[tuple[float, float]] = []  # (total norm before clipping, max_norm) per call
    at_step: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        total = original(parameters, max_norm, *args, **kwargs)
        before_clip.append((float(total), max_norm))
        return total

    def norm_at_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        at_step.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    handle = register_optimizer_step_pre_hook(norm_at_step)
    try:
        resnetlab.train(data=str(split_folders), out=str(tmp_path / "clip"), epochs=1, grad_clip=clip, **TINY)
        clipped_steps = len(at_step)
        resnetlab.train(data=str(split_folders), out=str(tmp_path / "free"), epochs=1, **TINY)
    finally:
        handle.remove()
    assert clipped_steps == len(before_clip) == 72 // 16
    assert all(max_norm == clip for _, max_norm in before_clip)
    assert max(total for total, _ in before_clip) > 2 * clip  # the clip really had work to do
    assert max(at_step[:clipped_steps]) <= clip * (1 + 1e-4)
    assert max(at_step[clipped_steps:]) > 2 * clip  # without --grad-clip the optimizer sees the raw gradient


def test_recipes_are_valid_and_unknown_names_are_listed():
    for name in ("fast", "accurate", "photos"):
        values = recipe_values(name)
        TrainConfig.from_dict(dict(values, data="x"))  # every shipped preset is valid
    with pytest.raises(ConfigError, match="shipped recipes: auto, accurate, fast, photos, plain"):
        recipe_values("turbo")


def test_tta_averages_the_probabilities_of_flipped_and_shifted_views():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 3)).eval()
    x = torch.rand(2, 3, 16, 16)
    x[:, :, :, :4] += 2.0  # a bright left edge: the mirror image is a different input

    def probs(views: torch.Tensor) -> torch.Tensor:
        return net(views).softmax(dim=1)

    with torch.no_grad():
        plain, mirrored = probs(x), probs(x.flip(dims=[3]))
        flip = TTAModel(net, "flip")(x).exp()
        crops = TTAModel(net, "flip-crop")(x).exp()
        assert torch.equal(TTAModel(net, "none")(x), net(x))
        shifted = [probs(torch.roll(base, shifts=shift, dims=(2, 3))) for base in (x, x.flip(dims=[3]))
                   for shift in ((1, 0), (-1, 0), (0, 1), (0, -1))]  # one pixel per 16
    assert (plain - mirrored).abs().max() > 1e-3  # so averaging over the mirror changes the answer
    assert torch.allclose(flip, (plain + mirrored) / 2, atol=1e-6)
    assert torch.allclose(crops, (plain + mirrored + sum(shifted)) / 10, atol=1e-6)
    assert (flip - plain).abs().max() > 1e-4 and (crops - flip).abs().max() > 1e-4
    with pytest.raises(ValueError, match="--tta must be one of"):
        TTAModel(net, "rotate")


def _views(batch: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views TTA averages, built by hand on uint8 images (flips and shifts commute with normalisation)."""
    views = [batch, batch.flip(dims=[3])]
    if mode == "flip-crop":
        views += [torch.roll(base, shifts=shift, dims=(2, 3)) for base in (batch, batch.flip(dims=[3]))
                  for shift in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    return views


def test_evaluate_and_predict_with_tta_give_the_averaged_probabilities(trained_run: TrainedRun, tmp_path: Path):
    checkpoint = trained_run.checkpoint
    plain = resnetlab.load(checkpoint, device="cpu")
    files = sorted((trained_run.data / "Val").rglob("*.png"))
    targets = torch.tensor([plain.classes.index(f.parent.name) for f in files])
    batch = torch.stack([plain.decode(f) for f in files])
    expected = {"none": plain.logits(batch).softmax(dim=1)}
    for mode in ("flip", "flip-crop"):
        expected[mode] = torch.stack([plain.logits(view).softmax(dim=1) for view in _views(batch, mode)]).mean(dim=0)
    loss = {mode: float(-p[torch.arange(len(files)), targets].log().mean()) for mode, p in expected.items()}
    assert abs(loss["flip-crop"] - loss["none"]) > 1e-3 and abs(loss["flip"] - loss["none"]) > 1e-3

    for mode in ("none", "flip-crop"):
        out = tmp_path / f"eval-{mode}"
        assert main(["evaluate", str(checkpoint), str(trained_run.data), "--tta", mode, "--out", str(out),
                     "--no-progress", "--workers", "1"]) == 0
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["tta"] == mode and metrics["images"] == len(files)
        assert metrics["loss"] == pytest.approx(loss[mode], abs=1e-5), mode
        accuracy = float((expected[mode].argmax(dim=1) == targets).float().mean())
        assert metrics["accuracy"] == pytest.approx(accuracy), mode

    confidence = {}
    for mode in ("none", "flip"):
        out = tmp_path / f"{mode}.csv"
        assert main(["predict", str(checkpoint), str(trained_run.data / "Val"), "--tta", mode, "--out", str(out),
                     "--no-progress", "--workers", "1"]) == 0
        rows = {Path(r["path"]).resolve(): r for r in read_csv(out)}
        assert len(rows) == len(files)
        for i, file in enumerate(files):
            row = rows[file.resolve()]
            assert row["label"] == plain.classes[int(expected[mode][i].argmax())]
            assert float(row["confidence"]) == pytest.approx(float(expected[mode][i].max()), abs=2e-6)
        confidence[mode] = np.asarray([float(rows[f.resolve()]["confidence"]) for f in files])
    assert np.abs(confidence["flip"] - confidence["none"]).max() > 1e-3  # --tta flip was not ignored


def test_steepest_descent_finds_the_fastest_fall_before_the_minimum():
    lrs = np.logspace(-6, 1, 71).tolist()  # ten points per decade: lrs[30] == 1e-3
    log_lr = np.log10(lrs)
    # falls from 3 to 1 around 1e-3 (steepest exactly there), bottoms out at 1e-1, then blows up through a
    # steeper (but higher) second fall that must not count: it lies after the minimum
    losses = 2 - np.tanh(2 * (log_lr + 3))
    losses[log_lr > -1] = 1.0 + 40 * (log_lr[log_lr > -1] + 1) ** 2
    losses[-3:] = [30.0, 10.0, 20.0]  # a fall of 20 per tenth of a decade after the minimum
    assert _steepest_descent(lrs, losses.tolist()) == pytest.approx(1e-3)
    shifted = 2 - np.tanh(3 * (log_lr + 4.5))  # the fall moves, the answer moves with it
    shifted[log_lr > -2] = 10.0
    assert _steepest_descent(lrs, shifted.tolist()) == pytest.approx(10 ** -4.5)
    assert _steepest_descent(lrs[:4], [3.0, 2.0, 1.0, 0.5]) == 1e-3  # too short to tell: the default
    rising = (np.arange(71) + 1.0).tolist()  # minimum at the first point: a tenth of it
    assert _steepest_descent(lrs, rising) == pytest.approx(lrs[0] / 10)


@pytest.mark.real_figures  # lr_find.png as drawn
def test_lr_find_suggests_its_curves_steepest_fall_and_lr_auto_trains_with_it(split_folders: Path, tmp_path: Path,
                                                                              capsys, monkeypatch, no_figures):
    steps = 24  # a shorter sweep than the verb's 200: the same code, an eighth of the time
    short = functools.partial(resnetlab.training.lr_find.lr_range_test, steps=steps)
    monkeypatch.setattr(resnetlab.training.lr_find, "lr_range_test", short)
    monkeypatch.setattr(resnetlab.training.run, "lr_range_test", short)
    out = tmp_path / "finder"
    assert main(["lr-find", str(split_folders), "--out", str(out), *CLI_TINY]) == 0
    assert (out / "lr_find.png").stat().st_size > 1000
    rows = read_csv(out / "lr_find.csv")
    lrs, losses = [float(r["lr"]) for r in rows], [float(r["smoothed_loss"]) for r in rows]
    assert 12 <= len(rows) <= steps and lrs[0] == pytest.approx(1e-6)
    growth = (10 / 1e-6) ** (1 / (steps - 1))  # exponential from 1e-6 to 10 over the sweep
    assert np.allclose(np.diff(np.log(lrs)), np.log(growth))
    printed = capsys.readouterr().err
    suggested = float(printed.split("suggested learning rate for adamw: ")[1].split()[0])  # auto's optimizer
    assert suggested == pytest.approx(_steepest_descent(lrs, losses), rel=5e-3)  # printed with 3 digits
    assert _steepest_descent(lrs, losses) in lrs[:int(np.argmin(losses)) + 1]  # a swept LR before the minimum

    run = tmp_path / "auto"
    assert main(["train", str(split_folders), "--lr", "auto", "--epochs", "1", "--out", str(run), *CLI_TINY]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    rows = read_csv(run / "lr_find.csv")
    assert saved["lr"] == _steepest_descent([float(r["lr"]) for r in rows], [float(r["smoothed_loss"]) for r in rows])
    assert f"--lr auto: the range test suggests {saved['lr']:.3g}" in capsys.readouterr().err
    last = torch.load(run / "last.pt", weights_only=True)
    assert {group["initial_lr"] for group in last["optimizer"]["param_groups"]} == {saved["lr"]}  # the peak LR


def test_fill_time_needs_a_time_limit():
    with pytest.raises(ConfigError, match="fill_time needs a time limit"):
        TrainConfig(data="x", fill_time=True).validate()
