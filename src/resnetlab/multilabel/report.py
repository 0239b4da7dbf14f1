"""The multi-label part of an evaluation in report.html: mAP and exact-match figures, and the per-label table with
AP and thresholds (report.py draws the figures: pr_curves.png, cooccurrence.png and the galleries).

    body += evaluation_body(metrics, table)   # table: report._table
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape


def evaluation_body(metrics: dict, table: Callable[..., str]) -> str:
    """KPIs (mAP macro/micro, F1 macro/micro, exact match) and the per-label table, as HTML."""
    micro = metrics.get("micro_avg") or {}
    kpis = [("mAP (macro)", metrics.get("map_macro")), ("mAP (micro)", metrics.get("map_micro")),
            ("F1 micro", micro.get("f1")), ("exact match", metrics.get("exact_match"))]
    body = "".join(f'<div class="kpi">{escape(k)}<b>{v:.4f}</b></div>' for k, v in kpis if v is not None)
    body += (f'<p class="muted">multi-label: a label is predicted at or above its threshold '
             f"({escape(str(metrics.get('threshold_rule', '')))}); accuracy is the exact-match ratio.</p>")
    rows = [[name, m.get("precision"), m.get("recall"), m.get("f1"), m.get("ap"), m.get("support"), m.get("threshold")]
            for name, m in (metrics.get("per_class") or {}).items()]
    for average in ("macro_avg", "micro_avg"):
        m = metrics.get(average) or {}
        rows.append([average.replace("_avg", " average"), m.get("precision"), m.get("recall"), m.get("f1"),
                     metrics.get("map_" + average.removesuffix("_avg")), "", ""])
    return body + "<h3>Per label</h3>" + table(["label", "precision", "recall", "F1", "AP", "support", "threshold"],
                                                rows, numeric={1, 2, 3, 4, 5, 6})
