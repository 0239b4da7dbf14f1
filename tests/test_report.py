"""Figures a run writes by itself and report.html: files, values, escaping, and a real browser opening it."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from conftest import make_image
from resnetlab.cli import main
from resnetlab.data.loaders import Batches
from resnetlab.data.transforms import denormalize
from resnetlab.device import Compute
from resnetlab.report import write_report

pytestmark = pytest.mark.real_figures  # these tests look at the grids matplotlib draws

# One class name needs escaping in HTML; one has an accent, one a space.
CLASSES = {"blue sky": (40, 60, 230), "green léaf": (40, 200, 60), "red <b>&": (230, 40, 40)}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _write_toy(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for split, count in (("Train", 24), ("Val", 8)):
        for name, colour in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                make_image(rng, colour).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny finished run (3 classes, 16 px, width 0.25, 2 epochs) plus an evaluation inside its folder."""
    base = tmp_path_factory.mktemp("report")
    data = _write_toy(base / "toy")
    result = resnetlab.train(data=str(data), out=str(base / "run"), epochs=2, img_size=16, width=0.25,
                             batch_size=16, lr=0.05, progress=False, workers=1, cache_dir=str(base / "cache"))
    assert main(["evaluate", str(result.best_checkpoint), str(data), "--out", str(result.run_dir / "eval-val"),
                 "--no-progress", "--workers", "1"]) == 0
    return {"dir": result.run_dir, "data": data, "result": result, "base": base}


def test_a_run_writes_its_figures_and_report(run):
    run_dir = run["dir"]
    for name in ("curves.png", "samples.png", "predictions.png", "confusion_matrix.png", "confusion_matrix.csv",
                 "misclassified.csv", "metrics.json", "report.html"):
        assert (run_dir / name).is_file(), name
        if name.endswith(".png"):
            assert Image.open(run_dir / name).size[0] > 100, name
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    # train's metrics.json is best.pt on the validation split: the same accuracy training recorded for it
    assert metrics["split"] == "val" and metrics["images"] == 24
    assert metrics["accuracy"] == pytest.approx(run["result"].best_val_acc, abs=1e-6)
    assert metrics["checkpoint"].endswith("best.pt") and set(metrics["per_class"]) == set(CLASSES)
    assert (run_dir / "eval-val" / "predictions.png").is_file()


def test_report_embeds_every_figure_and_the_values(run):
    run_dir = run["dir"]
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', page)
    embedded = {}
    for data, alt in images:
        embedded.setdefault(alt, []).append(data)
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert {"curves.png", "samples.png", "predictions.png", "confusion_matrix.png"} <= set(pngs)
    for name in pngs:  # each figure embedded byte for byte
        import base64

        assert base64.b64encode((run_dir / name).read_bytes()).decode() in embedded.get(name, []), name
    assert len(embedded["predictions.png"]) == 2  # the run's own evaluation and eval-val/
    assert page.count("<img") == len(images)  # no image comes from anywhere but a data URI
    for name in CLASSES:
        assert name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert "red <b>&" not in page and "&lt;b&gt;" in page
    with open(run_dir / "metrics.csv", newline="") as handle:
        best = max(float(r["val_acc"]) for r in csv.DictReader(handle))
    assert f"{best:.4f}" in page
    assert f"<td>{torch.__version__}</td>" in page
    assert "resnet18" in page and "MACs per image" in page and "layer4.1" in page
    assert "Evaluation: val split (eval-val/)" in page and "Per class" in page
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page)  # nothing fetched from the network
    assert "<script" not in page and "<link" not in page


def test_samples_are_denormalised_images(run):
    sample = np.asarray(Image.open(run["dir"] / "samples.png").convert("RGB"))
    assert sample.std() > 20  # a gallery of pictures, not a blank or saturated canvas
    # denormalize is the exact inverse of what Batches does to a uint8 image (without augmentation)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x, _, _ = next(iter(Batches(images, torch.zeros(6, dtype=torch.int64), batch_size=6, device=torch.device("cpu"),
                                mean=mean, std=std).epoch(0)))
    back = denormalize(x, mean, std)
    assert back.dtype == torch.uint8 and (back.int() - images.int()).abs().max() <= 1


def test_evaluation_never_keeps_an_earlier_runs_gallery(tmp_path: Path, run):
    out = tmp_path / "again"
    out.mkdir()
    stale = Image.new("RGB", (8, 8), (255, 0, 255))
    for name in ("predictions.png", "misclassified.png"):
        stale.save(out / name)
    old = (out / "misclassified.png").read_bytes()
    assert main(["evaluate", str(run["dir"] / "best.pt"), str(run["data"]), "--out", str(out), "--no-progress",
                 "--workers", "1"]) == 0
    assert Image.open(out / "predictions.png").size[0] > 100  # redrawn
    # no mistakes -> no misclassified.png at all; mistakes -> a new one: never the old bytes
    assert not (out / "misclassified.png").is_file() or (out / "misclassified.png").read_bytes() != old


def test_a_gallery_that_fails_costs_neither_the_metrics_nor_the_other_gallery(tmp_path: Path, capsys):
    from resnetlab.checkpoint import ModelMeta
    from resnetlab.data.cache import DecodedSplit
    from resnetlab.data.sources import SplitData
    from resnetlab.evaluation import _print_summary, write_evaluation
    from resnetlab.models import ModelSpec

    torch.manual_seed(0)
    # no convolution anywhere: Grad-CAM has no layer to look at, so misclassified.png fails for real
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    classes = ["a", "b", "c"]
    meta = ModelMeta(ModelSpec("resnet18", 3), classes, 8, [0.5] * 3, [0.25] * 3)
    split = SplitData("val", labels.numpy(), images=images.permute(0, 2, 3, 1).numpy())
    metrics = write_evaluation(model, meta, DecodedSplit(images, labels, np.arange(12)), split, tmp_path,
                               Compute.of("cpu", progress=False))
    assert metrics["accuracy"] < 1.0  # there are mistakes to draw
    printed = capsys.readouterr().err
    assert f"could not draw {tmp_path / 'misclassified.png'}" in printed and "Conv2d" in printed
    assert (tmp_path / "predictions.png").is_file() and (tmp_path / "metrics.json").is_file()
    assert not (tmp_path / "misclassified.png").exists()
    _print_summary(metrics, classes, tmp_path)
    wrote = capsys.readouterr().err.strip().splitlines()[-1]
    assert wrote.startswith("wrote ") and "predictions.png" in wrote and "misclassified.png" not in wrote


def test_hostile_folder_names_and_odd_files_still_give_a_valid_report(tmp_path: Path, run):
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    hostile = copy / 'x" onmouseover="alert(1)'
    hostile.mkdir()
    metrics = json.loads((copy / "metrics.json").read_text(encoding="utf-8"))
    (hostile / "metrics.json").write_text(json.dumps({**metrics, "images": "<i>24</i>"}), encoding="utf-8")
    with open(copy / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[-1]["val_acc"] = ""  # an interrupted write, a hand edit
    with open(copy / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (copy / "eval-val" / "metrics.json").write_text(json.dumps({**metrics, "accuracy": "high"}), encoding="utf-8")

    page = write_report(copy).read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>") and "onmouseover=\"" not in page and "<i>24</i>" not in page
    assert 'id="evaluation-x--onmouseover--alert-1-"' in page  # slugified anchor
    assert "x&quot; onmouseover=&quot;alert(1)/" in page and "&lt;i&gt;24&lt;/i&gt;" in page  # escaped text
    assert "final val accuracy<b>n/a</b>" in page  # the empty cell, shown as such
    # the broken evaluation (a string accuracy) becomes a note in its own section; the others are intact
    assert "this section could not be built: ValueError" in page and "Evaluation: val split (this folder)" in page
    assert "MACs per image" in page and page.count("<section") == page.count("</section>")


def test_report_shows_explain_grids_and_lr_find_where_the_verbs_write_them(tmp_path: Path, run):
    import base64

    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    figures = {copy / "lr_find.png": (200, 30, 30), copy / "explain" / "explain_grid.png": (30, 200, 30),
               copy / "explain-misclassified-val" / "explain_grid.png": (30, 30, 200)}
    for path, colour in figures.items():  # what train --lr auto and resnetlab explain leave in a run folder
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 20), colour).save(path)
    page = write_report(copy).read_text(encoding="utf-8")
    for path in figures:
        assert base64.b64encode(path.read_bytes()).decode() in page, path
    assert 'alt="explain/explain_grid.png"' in page and 'alt="explain-misclassified-val/explain_grid.png"' in page
    assert "lr_find.png: Learning-rate range test" in page


def test_gallery_titles_with_dollar_signs_are_drawn_as_written(tmp_path: Path):
    from resnetlab.plots import image_grid

    # between two '$' matplotlib would parse mathtext, and an unknown command there fails the whole figure
    titles = [r"cost $5 \notacommand and $10", "$a$ / b"]
    image_grid([np.zeros((8, 8, 3), dtype=np.uint8)] * 2, titles, tmp_path / "grid.png", suptitle=titles[0])
    assert Image.open(tmp_path / "grid.png").size[0] > 100


def test_report_of_a_partial_folder_leaves_pieces_out(tmp_path: Path, run, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run["dir"] / "config.yaml", partial)
    page = write_report(partial).read_text(encoding="utf-8")
    assert "no metrics.json yet" in page and "no data_report.json" in page and "no checkpoint found" in page
    assert main(["report", str(tmp_path / "missing")]) == 1  # bad input, not a usage error
    assert f"{tmp_path / 'missing'} is not a folder" in capsys.readouterr().err


def test_evaluate_outside_the_run_writes_its_own_report_and_cli_report(tmp_path: Path, run, capsys):
    out = tmp_path / "elsewhere"
    assert main(["evaluate", str(run["dir"] / "best.pt"), str(run["data"]), "--out", str(out), "--no-progress",
                 "--workers", "1"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "evaluation folder" in page and "predictions.png" in page and "MACs per image" in page
    target = tmp_path / "copy.html"
    assert main(["report", str(run["dir"]), "--out", str(target)]) == 0
    assert str(target) in capsys.readouterr().err and target.stat().st_size > 10_000
    assert main(["summary", str(run["dir"] / "best.pt")]) == 0  # the checkpoint's own model and image size
    printed = capsys.readouterr().out
    assert "resnet18 at 16x16 px" in printed and "32x16x16" not in printed


@pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                    reason="Debian's chromium is not installed and could not be (`make browser` installs it with "
                           "apt-get when root or passwordless sudo is available)")
def test_report_opens_in_a_real_browser(run, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    report = run["dir"] / "report.html"
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "images => images.map(i => [i.alt, i.complete, i.naturalWidth])")
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert len(widths) >= 5
    assert all(complete and width > 0 for _, complete, width in widths), widths
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # works offline
    assert screenshot.stat().st_size > 10_000  # kept in tmp_path for a human to look at
