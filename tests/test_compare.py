"""resnetlab compare: two runs evaluated on the same toy split, through the CLI; McNemar's exact test checked by
hand on the counts it reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from conftest import TrainedRun
from resnetlab.cli import main
from resnetlab.compare import paired_test

EVAL = ["--no-progress", "--workers", "1", "--device", "cpu", "--split", "val"]


def test_paired_test_counts_the_discordant_images():
    first = {"a": True, "b": True, "c": False, "d": True, "e": False}
    second = {"a": True, "b": False, "c": True, "d": False, "e": False}
    test = paired_test(first, second)
    assert (test["images"], test["only_first_right"], test["only_second_right"]) == (5, 2, 1)
    assert test["p"] == pytest.approx(binomtest(1, 3, 0.5).pvalue) == pytest.approx(1.0)
    assert paired_test({"a": True}, {"a": True})["p"] == 1.0


def _correct(folder: Path) -> dict[str, bool]:
    with open(folder / "predictions.csv", encoding="utf-8", newline="") as handle:
        return {row["path"]: row["true"] == row["predicted"] for row in csv.DictReader(handle)}


def test_two_runs_on_the_same_split(trained_run: TrainedRun, learned_run: TrainedRun, tmp_path: Path, capsys):
    a, b, out = tmp_path / "one-epoch", tmp_path / "three-epochs", tmp_path / "cmp"
    for run, folder in ((trained_run, a), (learned_run, b)):  # the same images for both: trained_run's toy set
        assert main(["evaluate", str(run.checkpoint), str(trained_run.data), "--out", str(folder), *EVAL]) == 0
    assert len(_correct(a)) == json.loads((a / "metrics.json").read_text())["images"] == 24
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in captured.out.splitlines() if line.strip()}
    assert rows["epochs"] == ["1", "3"]  # a differing setting, read from each checkpoint's run folder
    assert "lr" not in rows and "model" not in rows  # settings they share are left out
    accuracy = [json.loads((f / "metrics.json").read_text())["accuracy"] for f in (a, b)]
    assert rows["accuracy"] == [f"{v:.4f}" for v in accuracy]
    first, second = _correct(a), _correct(b)
    only_a = sum(first[k] and not second[k] for k in first)
    only_b = sum(second[k] and not first[k] for k in first)
    assert f"McNemar's exact test on 24 images: {only_a} right only in one-epoch, {only_b} right only in three-epochs"\
        in captured.out
    assert only_b > only_a  # the three-epoch model is the better one on these images
    saved = json.loads((out / "compare.json").read_text())
    assert saved["test"]["p"] == pytest.approx(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert "<td>3</td>" in page and "McNemar" in page

    # the run folders themselves were validated on two copies of the toy set: not the same images, and said so
    assert main(["compare", str(trained_run.run_dir), str(learned_run.run_dir)]) == 0
    captured = capsys.readouterr()
    assert "McNemar" not in captured.out
    assert "different images" in captured.err and "needs the same images" in captured.err


def test_a_folder_without_metrics_is_a_one_line_error(tmp_path: Path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err


def test_folders_of_the_same_name_and_different_splits_are_told_apart(tmp_path: Path):
    from resnetlab.compare import compare, format_table

    for run, split, epochs in (("a", "val", 1), ("b", "test", 2), ("c", "val", 1)):
        folder = tmp_path / run / "eval"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"split": split, "accuracy": 0.5, "images": 4}))
        (folder / "config.yaml").write_text(f"epochs: {epochs}\nmodel: resnet18\n")
    comparison = compare([tmp_path / r / "eval" for r in "abc"])
    assert [run.label for run in comparison.runs] == ["a/eval", "b/eval", "c/eval"]
    assert comparison.settings == ["epochs"] and comparison.test is None
    assert any("different splits (test, val)" in note for note in comparison.notes)
    assert any("compares two runs" in note for note in comparison.notes)
    assert format_table(comparison).splitlines()[1].split() == ["epochs", "1", "2", "1"]


def test_a_predict_csv_has_no_true_labels_to_pair(tmp_path):
    from resnetlab.compare import _correct

    (tmp_path / "predictions.csv").write_text("path,label,confidence\na.png,cat,0.9\n", encoding="utf-8")
    assert _correct(tmp_path / "predictions.csv") is None  # `resnetlab predict` output: no KeyError, no pairing
