"""The docs site builds with `mkdocs build --strict` (no broken link, anchor or API reference), the README stays a
short front page, and every flag the docs name exists in a parser of `resnetlab.cli`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 150
# flags of other programs that the docs show: torchrun, SLURM's #SBATCH, tensorboard, the code-shape tool
FOREIGN_FLAGS = {"--standalone", "--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id",
                 "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--logdir", "--max-file",
                 "--max-func", "--max-restarts"}


def _mkdocs() -> list[str]:
    beside = Path(sys.executable).with_name("mkdocs")  # the venv's, even when its bin/ is not on PATH
    if beside.exists():
        return [str(beside)]
    if shutil.which("mkdocs"):
        return ["mkdocs"]
    pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")


@pytest.mark.slow
def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([*_mkdocs(), "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "resnetlab train" in cli and "--time-limit" in cli  # generated from the parsers
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="resnetlab.training.train"' in api and 'id="resnetlab.classifier.Classifier"' in api
    assert (site / "benchmarks" / "index.html").exists()


def test_readme_is_a_short_front_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= README_MAX_LINES, f"README.md has {len(readme)} lines; the manual belongs in docs/"
    assert any(re.match(r"\s*pip install ", line) for line in readme), "README.md needs a `pip install` line"
    assert any("make demo" in line for line in readme) and any("make test" in line for line in readme)
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", "\n".join(readme)):
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def _parser_flags() -> set[str]:
    from resnetlab.cli import build_parser

    flags: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return flags


def test_docs_name_only_real_flags() -> None:
    known = _parser_flags() | FOREIGN_FLAGS
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    unknown = {f"{page.name}: {flag}" for page in pages
               for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page.read_text(encoding="utf-8"))
               if flag not in known}
    assert not unknown, f"flags no parser defines: {sorted(unknown)}"
