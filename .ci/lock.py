"""Write requirements.lock: every package the dev install (`pip install -e '.[dev]'`, all extras) puts in a fresh
environment, pinned to the newest versions that pyproject.toml's ranges and constraints.txt allow today. pip
resolves them with --dry-run --ignore-installed: nothing is installed or changed in the environment running this.

    make lock            # .venv/bin/python .ci/lock.py; then `make test` installs and tests the new pins
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Every package of the dev install (`pip install -e '.[dev]'`: the package, every extra, the test tools), pinned.
# Written by `make lock` (.ci/lock.py: pip resolves pyproject.toml's ranges under constraints.txt, installing
# nothing) for Python {python} on {machine}. `make install`, `make test` and `make demo` install with it as
# constraints, so two fresh installs a month apart run the same code. To move to newer versions: `make lock`, then
# `make test`, and commit this file with the change.
"""


def resolve() -> dict[str, str]:
    """{name: version} of the fresh dev install, the project itself left out."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), "-c", "constraints.txt", "-e", ".[dev]"], cwd=ROOT, check=True)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    pins = {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}
    pins.pop("resnetlab", None)
    return pins


def main() -> int:
    pins = resolve()
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())]
    text = HEADER.format(python=platform.python_version(), machine=f"{platform.system()} {platform.machine()}")
    (ROOT / "requirements.lock").write_text(text + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"requirements.lock: {len(lines)} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
