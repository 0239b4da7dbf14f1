"""The race of --recipe auto: candidates proposed from the rule choice, a candidate that cannot learn loses, a race
that cannot separate keeps the rules and says so, --race off skips it, and the small-validation best.pt rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

import resnetlab
from conftest import write_class_folders
from resnetlab.config import TrainConfig
from resnetlab.data.sources import open_data
from resnetlab.training import race as race_module
from resnetlab.training import settle as settle_module
from resnetlab.training.race import Candidate, candidates, race, standard_error

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1}


def _ruled(**values) -> TrainConfig:
    """A config as auto leaves it: recipe auto, its choices recorded, a budget."""
    base = {"data": "x", "recipe": "auto", "given": [], "time_limit": "600s", "epochs": 20, "width": 0.5,
            "aug": "light", "balance": "sqrt", "pool": "avgmax", "opt": "adamw", "lr": 2e-3,
            "chosen": {"aug": {"value": "light", "why": "rules"}}}
    return TrainConfig.from_dict({**base, **values})


def test_candidates_are_the_rules_the_plain_recipe_and_one_variant_less_what_was_given():
    names = {c.name: c.settings for c in candidates(_ruled())}
    assert list(names) == ["rules", "plain", "unweighted"] and names["rules"] == {}
    assert names["plain"]["aug"] == "flip" and names["plain"]["width"] == 1.0 and names["plain"]["balance"] == "none"
    assert names["unweighted"] == {"balance": "none"}
    balanced = {c.name: c.settings for c in candidates(_ruled(balance="none"))}
    assert balanced["stronger-aug"] == {"aug": "standard"}  # the next least-sure axis
    given = {c.name: c.settings for c in candidates(_ruled(given=["width", "aug", "balance"]))}
    assert not {"width", "aug", "balance"} & set(given["plain"]) and "unweighted" not in given


def _scripted(scores: dict[str, float]):
    """A train_candidate whose runs end at the given validation accuracy, by the candidate's folder name."""
    calls, configs = [], []

    def train_candidate(cfg: TrainConfig, source) -> list[dict]:  # noqa: ANN001
        name = cfg.out.rsplit("/", 1)[-1]
        calls.append((name, cfg.time_limit, len(source.splits["train"])))
        configs.append(cfg)
        return [{"epoch": 1, "val_acc": scores[name] / 2, "val_f1": scores[name] / 2, "img_per_s": 10.0},
                {"epoch": 2, "val_acc": scores[name], "val_f1": scores[name], "img_per_s": 10.0}]

    train_candidate.calls, train_candidate.configs = calls, configs
    return train_candidate


@pytest.fixture
def toy_source(tmp_path):
    return open_data(str(write_class_folders(tmp_path / "toy", 60)), val_split=0.2, seed=0)


def test_the_best_candidate_wins_by_more_than_the_noise_and_a_tie_keeps_the_rules(tmp_path, toy_source):
    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0, "aug": "flip"}, "p")]
    cfg = _ruled(balance="none", epochs=40)
    clock = iter(range(0, 1000, 10)).__next__
    won = race(cfg, toy_source, tmp_path, _scripted({"rules": 0.5, "plain": 0.9}), clock=clock, proposed=proposed)
    assert (won.width, won.aug) == (1.0, "flip") and won.chosen["race"]["value"] == "plain"
    assert won.chosen["width"]["why"] == "race: plain" and len(won.chosen["race"]["table"]) == 2
    assert won.time_limit == "570s"  # the race's own time (3 clock reads after its start: 30 s) is spent
    assert won.epochs == int(0.8 * 570 * 10 / 144)  # planned from the winner's own speed in the race
    tie = race(cfg, toy_source, tmp_path, _scripted({"rules": 0.80, "plain": 0.82}), proposed=proposed)
    assert (tie.width, tie.aug) == (0.5, "light") and tie.chosen["race"]["value"] == "rules"
    assert "cannot separate" in tie.chosen["race"]["why"]  # 36 validation images: 2 points is noise
    assert standard_error(0.8, 36) > 0.02 > standard_error(0.8, 100_000)


def test_a_winner_at_chance_level_is_noise_and_keeps_the_rules(tmp_path, toy_source):
    from resnetlab.task import task_of

    chance_score = task_of("multiclass").chance_score
    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0, "aug": "flip"}, "p")]
    share = chance_score(toy_source.splits["val"].labels, False)
    assert share == pytest.approx(max(__import__("numpy").bincount(toy_source.splits["val"].labels)) /
                                  len(toy_source.splits["val"]))
    # both far below chance, the plain one "better" by many standard errors: still a pick among non-learners
    kept = race(_ruled(balance="none", epochs=40), toy_source, tmp_path,
                _scripted({"rules": 0.0, "plain": share}), proposed=proposed)
    assert kept.chosen["race"]["value"] == "rules" and "most common class" in kept.chosen["race"]["why"]
    assert chance_score([0] * 9 + [1], True) == pytest.approx(0.5 * (0.9 + 2 * 0.9 / 1.9 / 2))


def test_two_slices_that_learnt_nothing_stop_the_race_and_its_time_goes_to_the_winner(tmp_path, toy_source):
    from resnetlab.task import task_of

    share = task_of("multiclass").chance_score(toy_source.splits["val"].labels, False)
    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0}, "p"),
                Candidate("marks", {"aug": "light", "pool": "avgmax"}, "m")]
    cfg = _ruled(balance="none", epochs=40, aug="flip", pool="avg")
    clock = iter(range(0, 1000, 10)).__next__
    at_chance = _scripted({"rules": share, "plain": share, "marks": 1.0})
    kept = race(cfg, toy_source, tmp_path, at_chance, clock=clock, proposed=proposed)
    assert [name for name, *_ in at_chance.calls] == ["rules", "plain"]  # marks never trained
    table = {e["candidate"]: e for e in kept.chosen["race"]["table"]}
    assert table["marks"]["epochs"] == 0 and "learnt nothing" in table["marks"]["note"]
    assert kept.chosen["race"]["value"] == "rules" and kept.time_limit == "560s"  # 4 clock reads after the start
    # one slice above chance is enough for the race to go on
    learnt = _scripted({"rules": min(1.0, share + 0.3), "plain": share, "marks": 1.0})
    won = race(cfg, toy_source, tmp_path, learnt, proposed=proposed)
    assert [name for name, *_ in learnt.calls] == ["rules", "plain", "marks"] and won.chosen["race"]["value"] == "marks"


def test_a_budget_too_short_to_compare_skips_the_race(tmp_path, toy_source):
    scripted = _scripted({"rules": 0.5, "plain": 0.9})
    kept = race(_ruled(time_limit="60s", epochs=1), toy_source, tmp_path, scripted)
    assert not scripted.calls and kept.chosen["race"]["value"] == "rules"
    assert "too few to compare" in kept.chosen["race"]["why"]


@pytest.mark.slow
def test_a_candidate_that_cannot_learn_loses_a_real_race(tmp_path, monkeypatch, no_figures):
    data = write_class_folders(tmp_path / "toy", 40)
    # the rule choice made unable to learn (a learning rate of 1e-9): the race must find the one that learns
    monkeypatch.setattr(race_module, "candidates", lambda cfg: [Candidate("rules", {"lr": 1e-9}, "stuck"),
                                                                Candidate("plain", {"lr": 0.05}, "learns")])
    monkeypatch.setattr(race_module, "RACE_SHARE", 0.7)  # ~5.6 s per candidate, then a short final run
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                             time_limit="16s", opt="sgd", **TINY)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    table = {row["candidate"]: row for row in saved["chosen"]["race"]["table"]}
    assert saved["chosen"]["race"]["value"] == "plain" and saved["lr"] == 0.05
    assert table["plain"]["val_acc"] > table["rules"]["val_acc"] + 0.3
    assert (result.run_dir / "race" / "plain" / "metrics.csv").is_file()
    assert not list((result.run_dir / "race").glob("*/*.pt"))  # the candidates' weights are not kept


def test_race_off_keeps_the_rule_choice(tmp_path, monkeypatch, no_figures):
    data = write_class_folders(tmp_path / "toy", 8)
    monkeypatch.setattr(settle_module, "race", lambda *a, **k: pytest.fail("--race off must not race"))
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                             time_limit="30s", race="off", epochs=1, **TINY)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert "race" not in saved["chosen"] and saved["race"] == "off"
    # 6 validation images: best.pt is the last epoch of the finished schedule, and the log says why
    assert saved["best_metric"] == "last" and "one image moves" in saved["chosen"]["best_metric"]["why"]


def test_auto_fine_tunes_imagenet_weights_found_offline_and_says_why(tmp_path, monkeypatch, no_figures):
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path / "weights"
    folder.mkdir()
    imagenet = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    save_file(imagenet.state_dict(), str(folder / "resnet18.safetensors"))  # a generated stand-in, timm's names
    monkeypatch.setenv("RESNETLAB_WEIGHTS", str(folder))
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (96 + i, 80), colour).save(tmp_path / "photos" / name / f"{i}.jpg")
    result = resnetlab.train(data=str(tmp_path / "photos"), out=str(tmp_path / "run"), epochs=1, img_size=72,
                             batch_size=4, workers=1, progress=False, cache_dir=str(tmp_path / "cache"))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["pretrained"] == str(folder / "resnet18.safetensors") and saved["norm"] == "imagenet"
    assert "RESNETLAB_WEIGHTS" in saved["chosen"]["pretrained"]["why"] and saved["width"] == 1.0
    monkeypatch.delenv("RESNETLAB_WEIGHTS")
    scratch = resnetlab.train(data=str(tmp_path / "photos"), out=str(tmp_path / "scratch"), epochs=1, img_size=72,
                              batch_size=4, workers=1, progress=False, cache_dir=str(tmp_path / "cache"))
    assert yaml.safe_load((scratch.run_dir / "config.yaml").read_text(encoding="utf-8"))["pretrained"] is None


def test_the_plain_candidate_runs_the_scripts_imagenet_stem_where_the_rules_narrowed_the_small_stem():
    """Small pictures: the rules may pick a quarter-width small-stem net (a full-width one is 16x the compute);
    the plain candidate then is the plain script's full-width torchvision ResNet-18, ImageNet stem and all."""
    chosen = {"aug": {"value": "crop", "why": "rules"}, "stem": {"value": "small", "why": "rules"}}
    narrow = {c.name: c.settings for c in candidates(_ruled(stem="small", width=0.25, aug="crop", balance="none",
                                                            chosen=chosen))}
    assert narrow["plain"]["stem"] == "standard" and narrow["plain"]["width"] == 1.0
    assert list(narrow) == ["rules", "plain"]  # no stronger augmentation after padded crops: it came last on all three
    full = {c.name: c.settings for c in candidates(_ruled(stem="small", width=1.0, aug="crop", chosen=chosen))}
    assert "stem" not in full["plain"]  # digits-like: the full small-stem net fits, plain keeps it
    given = {c.name: c.settings for c in candidates(_ruled(stem="small", width=0.25, given=["stem"], chosen={}))}
    assert "stem" not in given["plain"]


def test_slices_run_without_the_long_run_regularisers_and_the_winner_gets_them_back(tmp_path, toy_source):
    """A slice is a short run: random erasing, EMA and small pictures' padded crops (which lost every 75 s slice
    that the regularised rules won at full length) are off in every slice, on for the winner's full run, and a
    given one stays on in the slices too."""
    chosen = {"aug": {"value": "crop", "why": "rules"}}
    cfg = _ruled(balance="none", epochs=40, aug="crop", erase=0.25, ema=0.999, chosen=chosen)
    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0, "aug": "flip", "vflip": True,
                                                                 "erase": 0.0, "ema": 0.0}, "p")]
    scripted = _scripted({"rules": 0.9, "plain": 0.5})
    won = race(cfg, toy_source, tmp_path, scripted, proposed=proposed)
    assert [(c.aug, c.erase, c.ema) for c in scripted.configs] == [("flip", 0.0, 0.0)] * 2
    assert (won.aug, won.erase, won.ema) == ("crop", 0.25, 0.999) and won.chosen["race"]["value"] == "rules"
    assert won.chosen["race"]["slices_without"] == ["aug", "ema", "erase"]
    given = _scripted({"rules": 0.9, "plain": 0.5})
    race(replace(cfg, given=["erase", "aug"]), toy_source, tmp_path, given, proposed=proposed)
    assert [(c.aug, c.erase, c.ema) for c in given.configs] == [("crop", 0.25, 0.0), ("flip", 0.0, 0.0)]


def test_the_plain_candidate_keeps_a_given_optimizer_group_whole():
    plain = {c.name: c.settings for c in candidates(_ruled(given=["lr"], opt="sgd", lr=0.1))}["plain"]
    assert not {"opt", "lr", "weight_decay"} & set(plain) and plain["aug"] == "flip"


def test_a_failing_candidate_scores_nothing_and_given_epochs_skip_the_race(tmp_path, toy_source):
    from resnetlab.errors import NonFiniteLossError

    def train_candidate(cfg: TrainConfig, source) -> list[dict]:  # noqa: ANN001
        if cfg.out.endswith("plain"):
            raise NonFiniteLossError("loss is nan at epoch 1")
        return [{"epoch": 1, "val_acc": 0.5, "val_f1": 0.5, "img_per_s": 10.0}]

    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0}, "p")]
    kept = race(_ruled(balance="none", epochs=40), toy_source, tmp_path, train_candidate, proposed=proposed)
    table = {row["candidate"]: row for row in kept.chosen["race"]["table"]}
    assert kept.chosen["race"]["value"] == "rules" and "loss is nan" in table["plain"]["note"]
    fixed = race(_ruled(given=["epochs"]), toy_source, tmp_path, train_candidate, proposed=proposed)
    assert "--epochs was given" in fixed.chosen["race"]["why"] and fixed.epochs == 20


def test_without_a_val_split_the_race_validates_on_a_hold_out_of_train_never_on_test(tmp_path):
    data = tmp_path / "toy"
    write_class_folders(data / "train", 60, seed=1)
    write_class_folders(data / "test", 10, seed=2)
    source = open_data(str(data), val_split=0.1, seed=0)
    assert source.val_name == "test"
    seen = []

    def train_candidate(cfg: TrainConfig, part) -> list[dict]:  # noqa: ANN001
        seen.append(part)
        return [{"epoch": 1, "val_acc": 0.5, "val_f1": 0.5, "img_per_s": 10.0}]

    race(_ruled(balance="none", epochs=40), source, tmp_path, train_candidate,
         proposed=[Candidate("rules", {}, "r"), Candidate("plain", {"width": 1.0}, "p")])
    test_files = set(source.splits["test"].paths)
    for part in seen:
        assert set(part.splits) == {"train", "val"} and not test_files & set(part.splits["val"].paths)
        assert not set(part.splits["train"].paths) & set(part.splits["val"].paths)


def test_a_candidate_that_differs_from_the_rules_only_in_flips_is_not_raced(tmp_path, toy_source):
    """fmnist-1k and digits (session 20): rules and plain differed only in vertical flips once the slices dropped
    the long-run regularisers; a few epochs cannot measure that, so the rules get the whole budget."""
    chosen = {"aug": {"value": "crop", "why": "rules"}}
    cfg = _ruled(balance="none", width=1.0, pool="avg", aug="crop", erase=0.25, ema=0.999, chosen=chosen)
    proposed = [Candidate("rules", {}, "r"), Candidate("plain", {"aug": "flip", "vflip": True, "erase": 0.0,
                                                                 "ema": 0.0}, "p")]
    kept, dropped = race_module.measurable(cfg, proposed)
    assert [c.name for c in kept] == ["rules"] and dropped == ["plain"]
    scripted = _scripted({"rules": 0.5, "plain": 0.9})
    won = race(cfg, toy_source, tmp_path, scripted, proposed=proposed)
    assert scripted.calls == [] and won.time_limit == cfg.time_limit  # nothing raced: the whole budget
    assert won.chosen["race"]["value"] == "rules" and "only in flips" in won.chosen["race"]["why"]
    wider = [*proposed, Candidate("marks", {"aug": "light", "pool": "avgmax"}, "m")]
    assert [c.name for c in race_module.measurable(cfg, wider)[0]] == ["rules", "marks"]
    given, _ = race_module.measurable(replace(cfg, given=["aug"]), proposed)  # a given aug keeps its crops in the
    assert [c.name for c in given] == ["rules", "plain"]                     # rules' slice: plain's flips differ
