"""Every package is typed (mypy --strict over all of them, from pyproject's [tool.mypy]
files) and ruff-clean: the library's typed surface is part of its API, and the
services' types are how a newcomer reads their boundaries."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_mypy_strict_is_clean_on_every_package():
    result = run("mypy")
    assert "modbot_cli" in (ROOT / "pyproject.toml").read_text()  # all packages, not one
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
