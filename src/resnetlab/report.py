"""report.html: one self-contained page describing a run, built from the files the run folder holds.

Images are embedded as base64 data URIs and the CSS is inline, so the file opens offline and can be mailed;
nothing is fetched from the network. Whatever is missing (no evaluation yet, no figure) is left out with a
note, never an error. Every text from the run (class names, paths, settings) is HTML-escaped.

    write_report(Path("runs/my-run"))   # -> runs/my-run/report.html
"""

from __future__ import annotations

import base64
import csv
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from datetime import datetime
from html import escape
from pathlib import Path

import timm
import torch
import yaml

from ._version import __version__
from .checkpoint import read_checkpoint
from .data.crop import Crop
from .errors import ReportError
from .fileio import write_text
from .multilabel.report import evaluation_body as multilabel_body
from .summary import format_summary, human, summary_for_payload

# Figures in the order a reader wants them; anything else a folder holds is shown after these.
KNOWN_FIGURES = {
    "curves.png": "Training curves: loss and accuracy per epoch, train vs validation",
    "samples.png": "A training batch as the model sees it (after augmentation, de-normalised)",
    "confusion_matrix.png": "Confusion matrix: counts and row-normalised (recall)",
    "reliability.png": "Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration)",
    "predictions.png": "Validation images: predicted (probability) / true; mistakes in red",
    "misclassified.png": "The most confident mistakes, each beside its Grad-CAM heat map",
    "explain_grid.png": "Grad-CAM explanations",
    "lr_find.png": "Learning-rate range test",
    "pr_curves.png": "Precision-recall curve of each label (AP in the legend) and the micro average",
    "cooccurrence.png": "Label co-occurrence: true pairs, and true (row) vs predicted (column) labels",
    "false_positives.png": "The most confident false positives, each beside the Grad-CAM map of that label",
    "false_negatives.png": "The most confidently missed labels, each beside the Grad-CAM map of that label",
}
MAIN_SETTINGS = ("data", "model", "pretrained", "img_size", "width", "stem", "head", "epochs", "batch_size", "lr",
                 "opt", "sched", "aug", "crop_mode", "pool", "mixup", "cutmix", "ema", "label_smoothing", "balance",
                 "seed", "device", "amp")
EVALUATION_FIGURES = ("confusion_matrix.png", "reliability.png", "pr_curves.png", "cooccurrence.png", "predictions.png",
                      "misclassified.png", "false_positives.png", "false_negatives.png")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1rem 1.5rem 3rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 2px solid #dde3ee; padding-bottom: .2rem;
     margin-top: 2.2rem; } h3 { margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #d5dbe6; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f4f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ef; }
figcaption { font-size: .85rem; color: #556; } .note { color: #8a6d3b; font-style: italic; }
.muted { color: #667; font-size: .9rem; } pre { background: #f6f8fb; padding: .6rem; overflow-x: auto;
     font-size: .8rem; } details summary { cursor: pointer; } .kpi { display: inline-block; margin: 0 1.2rem .4rem 0; }
.kpi b { font-size: 1.3rem; display: block; } nav a { margin-right: .8rem; }
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Build ``report.html`` (default ``run_dir/report.html``) from a run folder or an evaluation folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"cannot write a report: {run_dir} is not a folder (expected a run folder such as "
                          "runs/NAME)")
    out = Path(out) if out else run_dir / "report.html"
    sections = [_guarded("run", "Run", _run_section, run_dir), _guarded("data", "Data", _data_section, run_dir),
                _guarded("training", "Training", _training_section, run_dir)]
    evaluations = _evaluation_folders(run_dir)
    if not evaluations:
        sections.append(_section("evaluation", "Evaluation", _note(
            "no metrics.json yet: train writes one at the end of a run; or run resnetlab evaluate")))
    for folder in evaluations:
        sections.append(_guarded(_evaluation_anchor(run_dir, folder), f"Evaluation ({folder.name}/)",
                                 _evaluation_section, run_dir, folder))
    sections += [_guarded("figures", "Other figures", _other_figures_section, run_dir),
                 _guarded("model", "Model", _model_section, run_dir, evaluations),
                 _guarded("environment", "Environment", _environment_section)]
    sections = [s for s in sections if s]
    title = f"resnetlab report: {run_dir.resolve().name}"
    nav = " ".join(f'<a href="#{anchor}">{escape(name)}</a>' for anchor, name in _NAV if
                   any(f'id="{anchor}"' in s for s in sections))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f'<p class="muted">{escape(str(run_dir.resolve()))} &middot; generated {datetime.now():%Y-%m-%d %H:%M}'
            f"</p>\n<nav>{nav}</nav>\n" + "\n".join(sections) + "\n</body>\n</html>\n")
    write_text(out, page)  # atomic: never a half-written report
    return out


_NAV = [("run", "Run"), ("data", "Data"), ("training", "Training"), ("evaluation", "Evaluation"),
        ("figures", "Other figures"), ("model", "Model"), ("environment", "Environment")]


# ---------------------------------------------------------------------- helpers
def _guarded(anchor: str, title: str, build: Callable[..., str], *args) -> str:
    """One section, or a note saying why it could not be built: a report never fails a run over one piece."""
    try:
        return build(*args)
    except Exception as err:  # noqa: BLE001 - odd files from older versions, hand edits, partial writes
        return _section(anchor, title, _note(f"this section could not be built: {type(err).__name__}: {err}"))


def _slug(name: str) -> str:
    """A folder name as an HTML id: letters, digits, '_' and '-' only (quotes and spaces would break out)."""
    return re.sub(r"[^\w-]", "-", name)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _table(header: list[str], rows: list[list], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{escape(_fmt(v))}</td>' if i in numeric else
                                    f"<td>{escape(_fmt(v))}</td>" for i, v in enumerate(row)) + "</tr>\n"
                   for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _fmt(value) -> str:  # noqa: ANN001 - any JSON value
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _number(value, spec: str = ".4f") -> str:  # noqa: ANN001 - a float, or None for an empty CSV cell
    return "n/a" if value is None else format(int(value) if spec == "d" else value, spec)


def _whole(value) -> int | None:  # noqa: ANN001 - epochs are read as floats; an empty cell is None
    return None if value is None else int(value)


def _figure(path: Path, caption: str, label: str | None = None) -> str:
    """``label``: how the file is named in the page (default: its file name)."""
    label = label or path.name
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(label)}">'
            f"<figcaption>{escape(label)}: {escape(caption)}</figcaption></figure>")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict | None:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else None


def _read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                    for row in csv.DictReader(handle)]
    except (OSError, ValueError):
        return []


# ---------------------------------------------------------------------- sections
def _run_section(run_dir: Path) -> str:
    config = _read_yaml(run_dir / "config.yaml")
    if config is None:
        metrics = _read_json(run_dir / "metrics.json") or {}
        rows = [[k, metrics[k]] for k in ("checkpoint", "data", "split", "tta") if k in metrics]
        body = _note("no config.yaml: this is an evaluation folder, not a training run")
        return _section("run", "Run", body + (_table(["setting", "value"], rows) if rows else ""))
    rows = [[key, value] for key, value in config.items()
            if value not in (None, "", [], {}) and key not in ("chosen", "given")]
    main = [[key, config[key]] for key in MAIN_SETTINGS if config.get(key) not in (None, "", [], {})]
    chosen = config.get("chosen") or {}
    auto = ("<h3>chosen by --recipe auto (any flag overrides a choice)</h3>" + _table(
        ["setting", "value", "why"], [[k, v.get("value"), v.get("why")] for k, v in chosen.items()
                                      if isinstance(v, dict)])) if chosen else ""
    race = (chosen.get("race") or {}).get("table") or []
    if race:  # the race of --recipe auto: each candidate's short run on the user's data (training/race.py)
        without = (chosen["race"].get("slices_without") or [])
        auto += ("<h3>the race (the winner trains for the rest of the budget)</h3>"
                 + (f"<p>off in each slice, as long-run regularisers (the winner's full run has the rules' "
                    f"choice of them): {escape(', '.join(without))}</p>"
                    if without else "") + _table(
            ["candidate", "settings", "epochs", "val acc", "macro F1", "score"],
            [[r["candidate"], r["settings"] or "the rule choice", r["epochs"], r["val_acc"], r["val_f1"], r["score"]]
             for r in race]))
    body = (_table(["setting", "value"], main) + auto
            + f"<details><summary>every setting ({len(rows)}, as saved in config.yaml)</summary>"
            + _table(["setting", "value"], rows) + "</details>")
    return _section("run", "Run configuration", body)


def _data_section(run_dir: Path) -> str:
    report = _read_json(run_dir / "data_report.json")
    if report is None:
        return _section("data", "Data", _note("no data_report.json in this folder"))
    classes = report.get("classes", [])
    counts = report.get("counts", {})
    splits = list(counts)
    rows = [[c, *[counts[s].get(c, 0) for s in splits]] for c in classes]
    images = report.get("images") if report.get("task") == "multilabel" else None  # label counts overlap there
    rows.append(["images", *[images.get(s) for s in splits]] if images else
                ["total", *[sum(counts[s].values()) for s in splits]])
    body = (f"<p>{escape(str(report.get('kind', '')))} at <code>{escape(str(report.get('location', '')))}</code>: "
            f"{len(classes)} classes, images decoded at {escape(str(report.get('image_size', '?')))} px.</p>"
            + _table(["class", *splits], rows, numeric=set(range(1, len(splits) + 1))))
    skipped = report.get("skipped") or []
    problems = [p for p in report.get("problems") or [] if p.get("severity") != "info"]
    if skipped:
        body += f"<p>{len(skipped)} unreadable image(s) skipped (first 20):</p>" + _table(
            ["path", "reason"], [[s.get("path"), s.get("reason")] for s in skipped[:20]])
    if problems:
        body += f"<p>{len(problems)} problem(s) (first 20):</p>" + _table(
            ["severity", "split", "path", "reason"],
            [[p.get("severity"), p.get("split"), p.get("path"), p.get("reason")] for p in problems[:20]])
    if not skipped and not problems:
        body += '<p class="muted">No unreadable images and no problems found.</p>'
    return _section("data", "Data", body)


def _training_section(run_dir: Path) -> str:
    history = _read_history(run_dir / "metrics.csv")
    body = ""
    if history:
        columns = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s")
                   if c in history[0]]
        final = history[-1]
        best = max(history, key=lambda r: r.get("val_acc") or -1.0)
        body += (f'<div class="kpi">best val accuracy<b>{_number(best.get("val_acc"))}</b></div>'
                 f'<div class="kpi">at epoch<b>{_number(best.get("epoch"), "d")}</b></div>'
                 f'<div class="kpi">final val accuracy<b>{_number(final.get("val_acc"))}</b></div>'
                 f'<div class="kpi">epochs<b>{len(history)}</b></div>')

        def row(label: str, values: dict) -> list:
            return [label, *[_whole(values[c]) if c == "epoch" else values[c] for c in columns]]

        body += _table(["", *columns], [row("final", final), row("best", best)],
                       numeric=set(range(1, len(columns) + 1)))
        body += (f"<details><summary>every epoch ({len(history)})</summary>"
                 + _table(columns, [[_whole(r["epoch"]), *[r[c] for c in columns[1:]]] for r in history],
                          numeric=set(range(len(columns)))) + "</details>")
    else:
        body += _note("no metrics.csv in this folder")
    for name in ("curves.png", "samples.png"):
        if (run_dir / name).is_file():
            body += _figure(run_dir / name, KNOWN_FIGURES[name])
    if not history and "<figure" not in body:
        return ""
    return _section("training", "Training", body)


def _evaluation_folders(run_dir: Path) -> list[Path]:
    """The run folder itself (train's evaluation of best.pt on val) and every subfolder with a metrics.json."""
    found = [run_dir] if (run_dir / "metrics.json").is_file() else []
    return found + sorted(p.parent for p in run_dir.glob("*/metrics.json"))


def _evaluation_anchor(run_dir: Path, folder: Path) -> str:
    return "evaluation" if folder == _evaluation_folders(run_dir)[0] else f"evaluation-{_slug(folder.name)}"


def _evaluation_section(run_dir: Path, folder: Path) -> str:
    metrics = _read_json(folder / "metrics.json") or {}
    split = metrics.get("split", "?")
    where = "this folder" if folder == run_dir else f"{folder.name}/"
    title = f"Evaluation: {split} split ({where})"
    anchor = _evaluation_anchor(run_dir, folder)
    if not metrics:
        return _section(anchor, title, _note(f"{folder / 'metrics.json'} could not be read"))
    source = metrics.get("checkpoint", "")
    body = f"<p class=\"muted\">{escape(str(source))} on {escape(str(metrics.get('data', '')))}"
    body += f", {escape(str(metrics.get('images', '?')))} images" + (f", TTA {escape(str(metrics['tta']))}"
                                                        if metrics.get("tta") not in (None, "none") else "") + "</p>"
    kpis = [("accuracy", metrics.get("accuracy")), ("top-5 accuracy", metrics.get("top5_accuracy")),
            ("loss", metrics.get("loss")), ("macro F1", (metrics.get("macro_avg") or {}).get("f1")),
            ("weighted F1", (metrics.get("weighted_avg") or {}).get("f1"))]
    body += "".join(f'<div class="kpi">{escape(k)}<b>{v:.4f}</b></div>' for k, v in kpis if v is not None)
    per_class = metrics.get("per_class") or {}
    multilabel = metrics.get("task") == "multilabel"
    if multilabel:  # mAP and the per-label table with AP and thresholds
        body += multilabel_body(metrics, _table)
        per_class = {}
    if per_class:
        rows = [[name, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                for name, m in per_class.items()]
        for average in ("macro_avg", "weighted_avg"):
            if average in metrics:
                m = metrics[average]
                rows.append([average.replace("_avg", " average"), m.get("precision"), m.get("recall"), m.get("f1"),
                             ""])
        body += "<h3>Per class</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows,
                                              numeric={1, 2, 3, 4})
    body += _calibration_table(metrics)
    skipped = metrics.get("skipped") or []
    if skipped:
        body += _note(f"{len(skipped)} unreadable image(s) were skipped (listed in metrics.json)")
    for name in EVALUATION_FIGURES:
        if (folder / name).is_file():
            body += _figure(folder / name, KNOWN_FIGURES[name])
        elif name == "misclassified.png" and (folder / "predictions.png").is_file() and not multilabel:
            body += _note("no misclassified.png: no mistakes, or Grad-CAM (resnetlab.explain) was not available")
    return _section(anchor, title, body)


def _calibration_table(metrics: dict) -> str:
    """ECE, adaptive ECE, Brier score and NLL; before and after temperature scaling for a calibrated checkpoint."""
    if "ece" not in metrics:
        return ""
    before = metrics.get("before_calibration")
    header = ["", "before (T = 1)", f"after (T = {metrics.get('temperature', 1.0):.3g})"] if before else ["", "value"]
    rows = [[label, *([before.get(key)] if before else []), metrics.get(key)] for key, label in (
        ("ece", "ECE (15 equal-width bins)"), ("adaptive_ece", "adaptive ECE (15 equal-mass bins)"),
        ("brier", "Brier score"), ("nll", "negative log-likelihood"))]
    hint = "" if before else '<p class="muted">Not calibrated: resnetlab calibrate fits a temperature.</p>'
    return "<h3>Calibration</h3>" + _table(header, rows, numeric={1, 2}) + hint


def _other_figures_section(run_dir: Path) -> str:
    """Every other PNG at the top of the run folder (lr_find.png from ``train --lr auto``, anything added later)
    and the grid of each ``explain*/`` subfolder (``resnetlab explain`` writes to CHECKPOINT_DIR/explain*/)."""
    placed = {"curves.png", "samples.png"} | (set(EVALUATION_FIGURES) if (run_dir / "metrics.json").is_file()
                                              else set())
    others = sorted((p for p in run_dir.glob("*.png") if p.name not in placed),
                    key=lambda p: (list(KNOWN_FIGURES).index(p.name) if p.name in KNOWN_FIGURES else 99, p.name))
    body = "".join(_figure(p, KNOWN_FIGURES.get(p.name, "")) for p in others)
    for grid in sorted(run_dir.glob("explain*/explain_grid.png")):
        body += _figure(grid, f"{KNOWN_FIGURES['explain_grid.png']} ({grid.parent.name}/explain.csv lists them)",
                        label=f"{grid.parent.name}/{grid.name}")
    if not body:
        return ""
    return _section("figures", "Other figures", body)


def _model_section(run_dir: Path, evaluations: list[Path]) -> str:
    candidates = [run_dir / "best.pt", run_dir / "last.pt"]
    for folder in evaluations:
        checkpoint = (_read_json(folder / "metrics.json") or {}).get("checkpoint")
        if checkpoint:
            candidates.append(Path(checkpoint))
    checkpoint = next((p for p in candidates if p.is_file() and p.suffix == ".pt"), None)
    if checkpoint is None:
        return _section("model", "Model", _note("no checkpoint found: the model summary is left out"))
    try:
        payload = read_checkpoint(checkpoint)  # once: for a ResNet-50 that is ~100 MB
        summary = summary_for_payload(payload, checkpoint)
    except Exception as err:  # noqa: BLE001 - a summary we cannot compute must not cost the whole report
        return _section("model", "Model", _note(f"could not summarise {checkpoint}: {type(err).__name__}: {err}"))
    spec = payload.get("model_spec", {})
    crop = Crop.from_dict(payload).describe()
    kpis = [("parameters", human(summary.total_params)), ("trainable", human(summary.trainable_params)),
            ("MACs per image", human(summary.macs)), ("FLOPs per image", human(summary.flops)),
            ("input", f"{summary.img_size}x{summary.img_size}"), ("evaluation view", crop)]
    body = (f"<p>{escape(str(spec.get('arch', '')))}, {escape(str(spec.get('stem', '')))} stem, "
            f"{escape(str(spec.get('head', '')))} head, width {escape(str(spec.get('width', '')))}, "
            f"{escape(str(spec.get('pool', 'avg')))} pooling "
            f"({escape(checkpoint.name)})</p>"
            + "".join(f'<div class="kpi">{escape(k)}<b>{escape(v)}</b></div>' for k, v in kpis)
            + f"<details><summary>layer table</summary><pre>{escape(format_summary(summary))}</pre></details>")
    return _section("model", "Model", body)


def _environment_section() -> str:
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        device = f"cpu ({platform.processor() or platform.machine()})"
    rows = [["python", sys.version.split()[0]], ["torch", torch.__version__], ["timm", timm.__version__],
            ["device", device], ["CPU cores", os.cpu_count()], ["platform", platform.platform()],
            ["generated", datetime.now().astimezone().isoformat(timespec="seconds")]]
    rows.insert(0, ["resnetlab", __version__])
    return _section("environment", "Environment (where this report was generated)", _table(["", ""], rows))
