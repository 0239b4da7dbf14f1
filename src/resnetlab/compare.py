"""Runs side by side: the settings that differ, the metrics on the same split, and for two runs McNemar's exact test
of their per-image correctness (is B really better than A, or is the gap chance?).

Each folder is a training run (RUN_DIR: config.yaml, and metrics.json/predictions.csv of its final validation) or
an ``evaluate --out`` folder (metrics.json, predictions.csv; the settings come from the run folder above it or the
checkpoint's).

    comparison = compare(["runs/a", "runs/b"])
    print(format_table(comparison))
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .fileio import atomic_open

METRICS = ("images", "accuracy", "balanced_accuracy", "top5_accuracy", "macro_f1", "loss", "ece", "adaptive_ece",
           "nll", "brier", "temperature", "map_macro", "map_micro")
IGNORED = {"out", "name", "exist_ok", "resume", "progress", "given", "chosen", "workers", "cache_dir", "tensorboard",
           "mlflow", "wandb", "wandb_group"}  # where and how a run was written, not what it learned


@dataclass
class RunView:
    """One folder as compare reads it: a label, its settings, its metrics and (from predictions.csv) which images it
    got right (path -> correct), None without a predictions.csv."""

    path: Path
    label: str
    settings: dict[str, Any]
    metrics: dict[str, Any]
    correct: dict[str, bool] | None


@dataclass
class Comparison:
    runs: list[RunView]
    settings: list[str]  # the settings that differ
    notes: list[str] = field(default_factory=list)  # why the metrics or the test may not be comparable
    test: dict[str, Any] | None = None  # McNemar's exact test of two runs


def paired_test(first: dict[str, bool], second: dict[str, bool]) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same images (path -> correct): the images only one of them
    got right, and the two-sided p of that split being chance (a binomial test of the discordant pairs at 1/2)."""
    from scipy.stats import binomtest

    only_first = sum(first[k] and not second[k] for k in first)
    only_second = sum(second[k] and not first[k] for k in first)
    discordant = only_first + only_second
    p = binomtest(only_second, discordant, 0.5).pvalue if discordant else 1.0
    return {"images": len(first), "only_first_right": only_first, "only_second_right": only_second, "p": float(p)}


def read_run(path: str | Path) -> RunView:
    """A run folder or an evaluate folder; a folder without metrics.json is a ConfigError naming it."""
    path = Path(path)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        raise ConfigError(f"{path} holds no metrics.json: give a run folder (after training) or an evaluate --out "
                          "folder")
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    if isinstance(metrics.get("macro_avg"), dict):
        metrics["macro_f1"] = metrics["macro_avg"].get("f1")
    return RunView(path, path.name or str(path), _settings(path, metrics), metrics,
                   _correct(path / "predictions.csv"))


def _settings(path: Path, metrics: dict) -> dict[str, Any]:
    """config.yaml of the folder, of the run folder above it, or beside the evaluated checkpoint; else the
    checkpoint's own settings (read with weights_only); {} when none is found."""
    checkpoint = Path(metrics["checkpoint"]) if metrics.get("checkpoint") else None
    candidates = [path, path.parent] + ([checkpoint.parent] if checkpoint else [])
    for folder in candidates:
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    if checkpoint is not None and checkpoint.suffix == ".pt" and checkpoint.is_file():
        from .checkpoint import read_checkpoint

        return dict(read_checkpoint(checkpoint).get("config") or {})
    return {}


def _correct(path: Path) -> dict[str, bool] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "true", "predicted"} <= set(reader.fieldnames or []):
            return None  # `resnetlab predict`'s predictions.csv: no true labels, nothing to pair
        return {row["path"]: row["true"] == row["predicted"] for row in reader}


def compare(paths: list[str | Path], out: str | Path | None = None) -> Comparison:
    """Read the folders, find the differing settings, check the metrics are on the same images, and for two runs
    test the difference; with ``out`` also write OUT/compare.html and OUT/compare.json."""
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run folders")
    runs = [read_run(p) for p in paths]
    for depth in (2, 3):  # runs/a/test and runs/b/test: label them a/test and b/test
        if len({run.label for run in runs}) == len(runs):
            break
        for run in runs:
            run.label = "/".join(run.path.resolve().parts[-depth:])
    names = sorted({key for run in runs for key in run.settings} - IGNORED)
    differ = [k for k in names if len({json.dumps(run.settings.get(k), sort_keys=True) for run in runs}) > 1]
    comparison = Comparison(runs, differ)
    for key in ("data", "split"):
        values = {str(run.metrics.get(key)) for run in runs}
        if len(values) > 1:
            comparison.notes.append(f"the runs were scored on different {key}s ({', '.join(sorted(values))}): their "
                                    "metrics are not on the same images")
    _test_pair(comparison)
    if out is not None:
        write_html(comparison, Path(out) / "compare.html")
        Path(out, "compare.json").write_text(json.dumps(_as_dict(comparison), indent=2), encoding="utf-8")
    return comparison


def _test_pair(comparison: Comparison) -> None:
    runs = comparison.runs
    if len(runs) != 2:
        comparison.notes.append("McNemar's test compares two runs: give exactly two for it")
        return
    first, second = (run.correct for run in runs)
    if first is None or second is None:
        missing = [run.label for run in runs if run.correct is None]
        multilabel = any(run.settings.get("task") == "multilabel" for run in runs)
        comparison.notes.append(f"no per-image predictions (predictions.csv with path, true, predicted) in "
                                f"{', '.join(missing)}: " + ("McNemar's test is for single-label runs" if multilabel
                                                             else "evaluate the runs with `resnetlab evaluate` (this "
                                                             "version) for McNemar's test"))
    elif set(first) != set(second):
        shared = len(set(first) & set(second))
        comparison.notes.append(f"the runs were scored on different images ({len(first)} and {len(second)}, "
                                f"{shared} shared): McNemar's test needs the same images; evaluate both on the same "
                                "split")
    else:
        comparison.test = paired_test(first, second)


def _cell(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "-" if value is None else str(value)


def table_rows(comparison: Comparison) -> list[list[str]]:
    """The table: a header of run labels, the differing settings, then the metrics that any run has."""
    runs = comparison.runs
    rows = [["", *(run.label for run in runs)]]
    rows += [[key, *(_cell(run.settings.get(key)) for run in runs)] for key in comparison.settings]
    rows += [[key, *(_cell(run.metrics.get(key)) for run in runs)] for key in ("split", *METRICS)
             if any(run.metrics.get(key) is not None for run in runs)]
    return rows


def test_line(comparison: Comparison) -> str | None:
    test = comparison.test
    if test is None:
        return None
    a, b = (run.label for run in comparison.runs)
    verdict = "a real difference" if test["p"] < 0.05 else "not a significant difference"
    return (f"McNemar's exact test on {test['images']} images: {test['only_first_right']} right only in {a}, "
            f"{test['only_second_right']} right only in {b}; p = {test['p']:.4g} ({verdict} at 0.05)")


def format_table(comparison: Comparison) -> str:
    rows = table_rows(comparison)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if not comparison.settings:
        lines.append("(the runs' settings are the same)")
    return "\n".join(lines + [line for line in [test_line(comparison)] if line])


def write_html(comparison: Comparison, path: Path) -> Path:
    """compare.html: the table, the test and the notes in one self-contained page."""
    rows = table_rows(comparison)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(cell)}</{'th' if i == 0 else 'td'}>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows[1:])
    extra = [line for line in [test_line(comparison)] if line] + comparison.notes
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in extra)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>resnetlab compare</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:left}</style></head><body><h1>resnetlab compare</h1>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


def _as_dict(comparison: Comparison) -> dict[str, Any]:
    return {"runs": [str(run.path) for run in comparison.runs], "settings": comparison.settings,
            "table": table_rows(comparison), "test": comparison.test, "notes": comparison.notes}
