"""--recipe auto: choices that follow the data and the budget (with a scripted speed: no timing in tests), flags
that always win, the choices recorded in config.yaml, and balanced accuracy beside accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import resnetlab
from conftest import write_class_folders
from resnetlab.cli import build_parser
from resnetlab.cli.data import train_config
from resnetlab.data.sources import open_data
from resnetlab.metrics import classification_metrics
from resnetlab.training.auto import (
    SCRATCH_FIT_EPOCHS,
    DataStats,
    apply_auto,
    choose,
    data_stats,
    measured_batch,
    target_epochs,
)


def scripted(per_pixel: float = 2e-6, small_stem_factor: float = 16.0):
    """Images per second from a cost model: seconds per image ~ pixels x width^2 (x16 for the small stem)."""
    calls = []

    def speed(size: int, stem: str, width: float, batch: int) -> float:
        calls.append((size, stem, width))
        cost = per_pixel * size * size * max(width, 0.25) ** 2 * (small_stem_factor if stem == "small" else 1.0)
        return 1.0 / cost

    speed.calls = calls
    return speed


def test_a_grey_imbalanced_set_of_large_images_gets_what_it_needs():
    stats = DataStats(images=2000, counts=[1200, 500, 200, 100], side=380, grey=True)
    speed = scripted()  # 224 px: ~10 img/s, 160 px: ~20 img/s, 160 px at half width: ~78 img/s
    chosen = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=speed, pretrained=False).items()}
    # from scratch: full width at <= 160 px while 8 epochs fit, the rest of the budget as more epochs
    assert (chosen["img_size"], chosen["width"]) == (160, 1.0) and chosen["epochs"] >= SCRATCH_FIT_EPOCHS - 2
    # photo-sized: the plain unweighted loss (the race tries class weights), best.pt by macro F1
    assert (chosen["balance"], chosen["best_metric"], chosen["norm"]) == ("none", "macro_f1", "dataset")
    assert chosen["opt"] == "adamw" and chosen["stem"] == "standard" and chosen["fill_time"] is True
    assert speed.calls[0] == (128, "standard", 0.5) and len(speed.calls) <= 4  # the cheapest first, then scaled
    # the whole picture, flips only (no random-resized crops or erasing), average pooling: the plain script's view;
    # shifts and max pooling are the race's "marks" candidate
    assert (chosen["crop_mode"], chosen["crop_pct"], chosen["aug"], chosen["erase"]) == ("squash", 1.0, "flip", 0.0)
    assert chosen["vflip"] is True  # horizontal and vertical, as the plain script
    assert "pool" not in chosen and chosen["warmup_epochs"] == round(0.3 * chosen["epochs"], 2)
    colour = DataStats(images=2000, counts=[1200, 500, 200, 100], side=380, grey=False)
    photo = {k: v for k, (v, _) in choose(colour, budget_s=900, speed=scripted(), pretrained=False).items()}
    # colour photos from scratch too (session 21: a centre crop lost 22 points to the plain script's whole picture)
    assert (photo["crop_mode"], photo["crop_pct"], photo["aug"], photo["erase"]) == ("squash", 1.0, "flip", 0.0)
    assert photo["norm"] == "imagenet" and "pool" not in photo
    cropped = {k: v for k, (v, _) in choose(colour, budget_s=900, speed=scripted(), pretrained=False,
                                            fixed={"crop_mode": "center"}).items()}
    assert cropped["aug"] in ("standard", "light")  # the user's centre crop: crops and colour as before
    tuned = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=scripted(), pretrained=True).items()}
    assert "crop_mode" not in tuned  # pretrained weights keep their own evaluation crop
    tiny = {k: v for k, (v, _) in choose(stats, budget_s=60, speed=scripted(), pretrained=False).items()}
    assert tiny["img_size"] == 128  # a short budget costs epochs, not the pixels a small mark needs
    centre = {k: v for k, (v, _) in choose(stats, budget_s=60, speed=scripted(), pretrained=False,
                                           fixed={"crop_mode": "center"}).items()}
    assert not {"crop_mode", "crop_pct", "pool"} & set(centre) and centre["img_size"] < 128  # the user's view
    pct = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=scripted(), pretrained=False,
                                        fixed={"crop_pct": 0.9}).items()}
    assert "crop_mode" not in pct  # a crop fraction alone is a centre-crop setting
    squash = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=scripted(), pretrained=False,
                                           fixed={"crop_mode": "squash", "crop_pct": 0.95}).items()}
    assert "crop_pct" not in squash and squash["aug"] == "flip"


def test_a_pessimistic_estimate_is_corrected_by_measuring_the_rungs_it_picks():
    stats = DataStats(images=2000, counts=[500] * 4, side=300, grey=False)
    pixels = scripted(1e-6)
    calls = []

    def with_overhead(size, stem, width, batch):  # a fixed 5 ms per image: small rungs look slow per pixel
        calls.append((size, stem, width))
        return 1.0 / (0.005 + 1.0 / pixels(size, stem, width, batch))

    chosen = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=with_overhead, pretrained=False).items()}
    naive = {k: v for k, (v, _) in choose(stats, budget_s=900, speed=scripted(1e-6 + 0.005 / 64 ** 2 / 0.5 ** 2),
                                          pretrained=False).items()}
    assert (chosen["img_size"], chosen["width"]) > (naive["img_size"], naive["width"])  # measuring moved it up
    assert len(calls) <= 4


def test_small_pictures_are_timed_at_the_real_batch_and_photos_at_sixteen():
    assert measured_batch(64, 28) == 64 and measured_batch(128, 32) == 64 and measured_batch(32, 16) == 32
    assert measured_batch(64, 160) == 16 and measured_batch(64, 64) == 16 and measured_batch(8, 160) == 8


def test_a_generous_budget_keeps_full_resolution_and_a_balanced_colour_set_keeps_accuracy():
    stats = DataStats(images=2000, counts=[500] * 4, side=300, grey=False)
    chosen = {k: v for k, (v, _) in choose(stats, budget_s=36_000, speed=scripted(), pretrained=False).items()}
    assert (chosen["img_size"], chosen["width"]) == (160, 1.0)  # from scratch: at most 160 px (SCRATCH_SIZES)
    assert (chosen["balance"], chosen["best_metric"], chosen["norm"]) == ("none", "val_acc", "imagenet")
    assert chosen["aug"] == "flip" and chosen["epochs"] <= 3 * target_epochs(2000)  # the whole picture, flips
    cropped = {k: v for k, (v, _) in choose(stats, budget_s=36_000, speed=scripted(), pretrained=False,
                                            fixed={"crop_mode": "center"}).items()}
    assert cropped["aug"] == "standard"  # 15+ epochs of a centre-crop view: random-resized crops and colour


def test_small_images_get_the_small_stem_adamw_and_padded_crops_and_a_short_budget_a_cheaper_network():
    stats = DataStats(images=60_000, counts=[6000] * 10, side=28, grey=True)
    roomy = {k: v for k, (v, _) in choose(stats, budget_s=3600, speed=scripted(2e-6), pretrained=False).items()}
    assert (roomy["img_size"], roomy["stem"], roomy["opt"], roomy["aug"]) == (28, "small", "adamw", "crop")
    assert (roomy["lr"], roomy["weight_decay"]) == (2e-3, 0.05)  # the small-picture races' winner, not SGD 0.1
    assert roomy["batch_size"] == 128 and roomy["ema"] == 0.999
    tight = {k: v for k, (v, _) in choose(stats, budget_s=180, speed=scripted(2e-6), pretrained=False).items()}
    assert (tight["stem"], tight["width"]) != ("small", 1.0)  # the 3-minute case: not the full small stem
    assert tight["epochs"] >= 1


def test_pretrained_weights_fix_the_network_and_no_budget_means_the_wanted_epochs():
    stats = DataStats(images=800, counts=[400, 400], side=500, grey=False)
    chosen = {k: v for k, (v, _) in choose(stats, budget_s=None, speed=scripted(), pretrained=True).items()}
    assert (chosen["width"], chosen["stem"], chosen["norm"], chosen["lr"]) == (1.0, "standard", "imagenet", 5e-4)
    assert chosen["epochs"] == target_epochs(800) and "fill_time" not in chosen


def test_data_stats_read_counts_sides_and_modes(tmp_path):
    for name, count in (("big", 12), ("small", 3)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (300 + i, 200), 120).save(tmp_path / "data" / name / f"{i}.png")
    stats = data_stats(open_data(str(tmp_path / "data"), val_split=0.2, seed=0))
    assert stats.grey and 200 == stats.side and sum(stats.counts) == stats.images and stats.imbalance >= 3


def test_flags_win_over_auto_and_the_choices_are_recorded(tmp_path, no_figures):
    data = write_class_folders(tmp_path / "toy", 8)
    settings = {"data": str(data), "recipe": "auto", "epochs": 1, "img_size": 16, "aug": "none", "workers": 1,
                "progress": False, "out": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}
    result = resnetlab.train(**settings)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["img_size"], saved["aug"], saved["epochs"], saved["recipe"]) == (16, "none", 1, "auto")
    assert {"img_size", "aug", "epochs"}.isdisjoint(saved["chosen"]) and "opt" in saved["chosen"]
    assert saved["chosen"]["norm"]["why"] and saved["time_limit"] is None  # --epochs given: no budget imposed
    direct = apply_auto(resnetlab.TrainConfig(data=str(data), recipe="auto", given=["lr"], lr=0.3, time_limit="60s"),
                        open_data(str(data), val_split=0.1, seed=0), torch.device("cpu"), speed=scripted(1e-6),
                        clock=iter(range(0, 100, 5)).__next__)
    assert direct.lr == 0.3 and direct.time_limit == "55s" and direct.chosen["time_limit"]["value"] == "55s"


def test_the_cli_defaults_to_auto_and_remembers_what_was_given(tmp_path):
    (tmp_path / "s.yaml").write_text("lr: 0.01\n", encoding="utf-8")
    args = build_parser().parse_args(["train", "photos/", "--epochs", "3", "--config", str(tmp_path / "s.yaml")])
    cfg = train_config(args)
    assert cfg.recipe == "auto" and cfg.given == ["epochs", "lr"]
    plain = train_config(build_parser().parse_args(["train", "photos/", "--recipe", "plain"]))
    assert plain.recipe == "plain" and plain.given is None and plain.epochs == 10
    with pytest.raises(resnetlab.ResnetlabError, match="shipped recipes: auto, "):
        train_config(build_parser().parse_args(["train", "photos/", "--recipe", "nope"]))


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    targets = torch.tensor([0, 0, 0, 0, 1, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0, 0, 2]), 3).float()
    metrics = classification_metrics(logits, targets, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean([1.0, 0.0]))  # class c is absent: not averaged


def test_given_settings_steer_the_rest_of_the_choices():
    small = DataStats(images=5000, counts=[500] * 10, side=28, grey=True)
    photos = DataStats(images=2000, counts=[500] * 4, side=300, grey=False)

    def pick(stats, **fixed):
        return {k: v for k, (v, _) in choose(stats, budget_s=600, speed=scripted(), pretrained=False,
                                             fixed=fixed).items()}

    assert (pick(small, opt="adamw")["lr"], pick(small, opt="adamw")["weight_decay"]) == (2e-3, 0.05)
    assert (pick(photos, opt="sgd")["lr"], pick(photos, opt="sgd")["weight_decay"]) == (0.1, 5e-4)
    assert pick(photos, lr=0.05)["opt"] == "sgd"  # a given --lr keeps the optimizer it was meant for
    assert pick(photos, img_size=128)["img_size"] == 128 and pick(photos, width=1.0)["width"] == 1.0
    assert pick(small, img_size=128)["stem"] == "standard"  # not the small stem of 28 px at 128 px
    with_epochs = pick(photos, epochs=5)
    assert "fill_time" not in with_epochs  # --epochs 5 --time-limit: never lengthened past 5


def test_the_api_treats_a_configs_own_values_and_named_presets_as_given(tmp_path):
    from resnetlab.settings import resolve

    cfg, _ = resolve(config=resnetlab.TrainConfig(data="x", recipe="auto", epochs=5, lr=0.01))
    assert cfg.given == ["epochs", "lr"]
    fast, _ = resolve({"data": "x", "recipe": "fast", "epochs": 2})
    assert (fast.width, fast.aug, fast.epochs) == (0.5, "crop", 2)  # the preset under the keywords


def test_heat_maps_cover_the_part_of_the_picture_the_evaluation_crop_shows():
    from resnetlab.cam.overlay import model_view_box
    from resnetlab.data.images import Crop

    assert model_view_box(200, 100) == (50, 0, 150, 100)
    assert model_view_box(200, 100, Crop(0.875), 224) == (56, 6, 144, 94)  # 224 of 256
    assert model_view_box(200, 100, Crop(mode="squash"), 224) == (0, 0, 200, 100)  # the whole picture, stretched
    assert model_view_box(200, 100, Crop(0.5, mode="squash"), 224) == (50, 25, 150, 75)
