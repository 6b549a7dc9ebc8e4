"""The tree is formatted by `ruff format` and clean of pyflakes' findings (pyproject's [tool.ruff]); CI checks both
here, so a change that skips the formatter fails its run. `ruff` comes with the [test] extra."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args: str) -> subprocess.CompletedProcess:
    beside_python = os.path.join(os.path.dirname(sys.executable), "ruff")
    ruff = beside_python if os.path.exists(beside_python) else shutil.which("ruff")
    assert ruff, "ruff is missing: it is in the [test] extra (pip install -e '.[test]')"
    return subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_tree_is_formatted_by_ruff_format():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, f"run `ruff format .`:\n{result.stdout}{result.stderr}"


def test_pyflakes_finds_nothing():
    result = _ruff("check", "--select", "F", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr
