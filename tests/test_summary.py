"""Model summary: parameter counts and MACs match the published figures; shapes and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.summary import format_summary, summary_for_spec


@pytest.fixture(scope="module")
def resnet18_224():
    return summary_for_spec("resnet18", num_classes=1000, img_size=224)


def test_resnet50_matches_the_published_numbers():
    summary = summary_for_spec("resnet50", num_classes=1000, img_size=224, depth=1)
    assert summary.total_params == pytest.approx(25.56e6, abs=0.05e6)  # 25.6 M (torchvision/timm tables)
    assert summary.macs == pytest.approx(4.1e9, abs=0.1e9)  # 4.1 GMACs
    assert summary.flops == 2 * summary.macs  # torch counts a multiply-add as 2 FLOPs
    assert summary.trainable_params == summary.total_params


def test_resnet18_numbers_and_output_shapes(resnet18_224):
    assert resnet18_224.total_params == pytest.approx(11.69e6, abs=0.01e6)
    assert resnet18_224.macs == pytest.approx(1.82e9, abs=0.02e9)
    shapes = {name: shape for name, shape, _ in resnet18_224.rows}
    assert shapes["conv1"] == (64, 112, 112) and shapes["maxpool"] == (64, 56, 56)
    assert shapes["layer1"] == (64, 56, 56) and shapes["layer4"] == (512, 7, 7)
    assert shapes["layer4.1"] == (512, 7, 7) and shapes["fc"] == (1000,)
    params = {name: count for name, _, count in resnet18_224.rows}
    assert params["fc"] == 512 * 1000 + 1000
    top_level = sum(count for name, _, count in resnet18_224.rows if "." not in name)
    assert top_level == resnet18_224.total_params  # the stage rows add up to the whole network
    text = format_summary(resnet18_224)
    assert "layer4.1" in text and "512x7x7" in text and "11.69 M" in text and "MACs: 1.81 G" in text


def test_num_classes_changes_only_the_head(resnet18_224):
    five = summary_for_spec("resnet18", num_classes=5, img_size=224)
    assert resnet18_224.total_params - five.total_params == (1000 - 5) * 513
    body = {n: p for n, _, p in resnet18_224.rows if n != "fc"}
    assert body == {n: p for n, _, p in five.rows if n != "fc"}


def test_small_stem_and_width_follow_the_train_options():
    summary = summary_for_spec("resnet18", num_classes=3, img_size=32, width=0.25)  # auto stem: small at 32 px
    shapes = {name: shape for name, shape, _ in summary.rows}
    assert shapes["conv1"] == (64, 32, 32) and shapes["layer4"] == (128, 4, 4)  # timm keeps a 64-wide plain stem


def test_cli_summary_flags_json_and_errors(tmp_path: Path, capsys):
    out = tmp_path / "summary.json"
    assert main(["summary", "--model", "resnet18", "--img-size", "64", "--num-classes", "10", "--depth", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer4" in printed and "layer4.0" not in printed and "parameters:" in printed
    saved = json.loads(out.read_text())
    assert saved["rows"][-1]["name"] == "fc" and saved["rows"][-1]["params"] == 512 * 10 + 10
    assert main(["summary"]) == 2  # neither --model nor a checkpoint
    assert "either --model" in capsys.readouterr().err
    assert main(["summary", "--model", "resnet1800"]) == 2
    assert "unknown model" in capsys.readouterr().err
    for flags, expected in ((["--depth", "0"], "--depth must be at least 1, got 0"),
                            (["--img-size", "0"], "--img-size must be at least 1, got 0")):
        assert main(["summary", "--model", "resnet18", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("resnetlab summary: error:") and expected in err and "Traceback" not in err
