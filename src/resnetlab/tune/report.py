"""The study's report.html: one self-contained page (figures embedded as base64, inline CSS, no script, nothing
fetched) with the best trial's settings, every trial and the study's figures.

    write_study_report(plan, study, figures)   # -> runs/tune/NAME/report.html
"""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..fileio import write_text
from ..report import CSS
from .outputs import best_trial, trial_rows
from .plan import Plan
from .space import space_specs


def write_study_report(plan: Plan, study: optuna.Study, figures: list[tuple[str, str]]) -> Path:
    out = Path(plan.out)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    best = best_trial(study)
    kpis = [("trials", len(trials))] + [(name.lower(), n) for name, n in counts.items() if n] + (
        [(f"best {plan.metric}", f"{best.value:.4f}"), ("best trial", best.number)] if best else [])
    sections = [
        "<p>" + " ".join(f'<span class="kpi"><b>{escape(str(v))}</b>{escape(k)}</span>' for k, v in kpis) + "</p>",
        _best_section(out, best),
        _section("Search space", _table(["setting", "searched over"],
                                        [[k, _spec(v)] for k, v in space_specs(plan.space).items()])),
        _trials_section(plan, study),
        _section("Figures", "\n".join(_figure(out / name, caption) for name, caption in figures)
                 or _note("no figure yet (too few finished trials)")),
        _section("Study", _table(["", ""], [["storage", plan.storage], ["metric", f"{plan.metric} ("
                 f"{'maximised' if plan.maximize else 'minimised'})"], ["pruner", f"{plan.pruner}, after epoch "
                 f"{plan.prune_after}"], ["seed of every trial", plan.seed], ["folder", str(out.resolve())]])),
    ]
    title = f"resnetlab tune: {plan.name}"
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f'<p class="muted">generated {datetime.now():%Y-%m-%d %H:%M}</p>\n' + "\n".join(sections)
            + "\n</body>\n</html>\n")
    path = out / "report.html"
    write_text(path, page)
    return path


def _best_section(out: Path, best: optuna.trial.FrozenTrial | None) -> str:
    if best is None:
        return _section("Best trial", _note("no trial has finished yet"))
    rows = [[k, v] for k, v in best.params.items()]
    yaml_file = out / "best.yaml"
    settings = (f"<details><summary>best.yaml (every setting: <code>resnetlab train --config best.yaml</code>)"
                f"</summary><pre>{escape(yaml_file.read_text(encoding='utf-8'))}</pre></details>"
                if yaml_file.is_file() else "")
    return _section(f"Best trial: {best.number}", _table(["setting", "value"], rows) + settings)


def _trials_section(plan: Plan, study: optuna.Study) -> str:
    columns, rows = trial_rows(plan, study)
    shown = [c for c in columns if c not in ("started", "worker")]
    order = sorted(rows, key=lambda r: (r[plan.metric] == "", -(r[plan.metric] or 0) if plan.maximize
                                        else (r[plan.metric] or 0), r["number"]))
    return _section("Trials (best first)", _table(shown, [[row[c] for c in shown] for row in order]))


def _spec(spec: dict) -> str:
    if "choices" in spec:
        return "one of " + ", ".join(map(str, spec["choices"]))
    kind = "log-uniform" if spec.get("log") else "uniform"
    return f"{kind} {spec['low']:g} - {spec['high']:g}" + (f", step {spec['step']:g}" if spec.get("step") else "")


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{escape(title)}</h2>\n{body}\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(_text(v))}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(path.name)}">'
            f"<figcaption>{escape(path.name)}: {escape(caption)}</figcaption></figure>")
