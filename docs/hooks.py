"""MkDocs hook: the pages made from the code and the repository, so they cannot drift from them.

    cli.md               every verb's --help, from resnetlab.cli.build_parser() (the parsers the CLI runs)
    benchmarks/index.md  benchmarks/README.md and its figures, as they are in the repository

mkdocs.yml names this file under `hooks:`; `python docs/hooks.py` prints the CLI page.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP_COLUMNS = 100  # argparse wraps help at the terminal width; fixed so the page does not depend on the terminal


def cli_markdown() -> str:
    """The CLI reference page: a table of verbs, then each verb's --help exactly as `resnetlab VERB --help`."""
    from resnetlab.cli import build_parser  # no torch import: the CLI parses without it

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        parser = build_parser()
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        summaries = {choice.dest: choice.help for choice in verbs._choices_actions}
        lines = ["# CLI reference", "",
                 "Generated from the parsers in `resnetlab.cli` when the site is built, so it is the `--help` of the "
                 "installed version. `python -m resnetlab ...` works the same as `resnetlab ...`.", "",
                 "| command | what it does |", "|---|---|"]
        lines += [f"| [`{name}`](#resnetlab-{name}) | {summaries.get(name, '')} |" for name in verbs.choices]
        lines += ["", "## resnetlab", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, verb in verbs.choices.items():
            lines += [f"## resnetlab {name}", "", "```text", verb.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs' hook signature)
    from mkdocs.structure.files import File

    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    benchmarks = ROOT / "benchmarks"
    files.append(File.generated(config, "benchmarks/index.md", abs_src_path=str(benchmarks / "README.md")))
    for figure in sorted(benchmarks.glob("*.png")):  # the README's relative image links resolve beside it
        files.append(File.generated(config, f"benchmarks/{figure.name}", abs_src_path=str(figure)))
    return files


if __name__ == "__main__":
    print(cli_markdown())
