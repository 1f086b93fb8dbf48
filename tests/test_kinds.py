"""Every test is exactly one of unit / integration / e2e (`pytest -m unit` etc.), and the kind
is given in one place: tests/conftest.py's kind_of, never by a mark on the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import KINDS

TESTS = Path(__file__).resolve().parent


def collect(where: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest --collect-only`` in a process of its own, writing each test's kinds to ``out``;
    none of this run's xdist plumbing leaks into it (it would write this worker's groups)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MODBOT_TEST_X"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=where,
        env={**env, "MODBOT_TEST_KINDS_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_collected_test_has_exactly_one_kind(tmp_path: Path) -> None:
    out = tmp_path / "kinds.json"
    done = collect(TESTS.parent, out, "-p", "no:xdist", str(TESTS))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kinds: dict[str, list[str]] = json.loads(out.read_text())
    collected = re.search(r"(\d+) tests? collected", done.stdout)
    assert collected is not None, done.stdout[-3000:]
    assert len(kinds) == int(collected.group(1))
    assert {node: k for node, k in kinds.items() if len(k) != 1} == {}
    assert {k[0] for k in kinds.values()} == set(KINDS)
    assert kinds[f"tests/test_kinds.py::{test_the_rule_reads_helpers_and_fixtures.__name__}"] == [
        "integration"
    ]


SAMPLE = '''
    import subprocess

    import pytest


    def helper():
        return subprocess.run(["true"], check=True)


    def indirect():
        return helper()


    def running_stack():
        """A stand-in: the name is what counts."""


    @pytest.fixture
    def made(tmp_path):
        indirect()
        return tmp_path


    def test_pure():
        assert sorted([2, 1]) == [1, 2]


    def test_files(tmp_path):
        (tmp_path / "x").write_text("x")


    def test_helper_of_a_helper():
        indirect()


    def test_a_fixture_of_ours(made):
        pass


    def test_a_database_fixture(pg_schema):
        pass


    async def test_in_a_nested_function():
        def inner():
            running_stack()

        inner()
'''


def test_the_rule_reads_helpers_and_fixtures(tmp_path: Path) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path)
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    out = tmp_path / "kinds.json"
    done = collect(tmp_path, out, "-p", "no:xdist")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kinds = {node.split("::")[1]: k for node, k in json.loads(out.read_text()).items()}
    assert kinds == {
        "test_pure": ["unit"],
        "test_files": ["unit"],
        "test_helper_of_a_helper": ["integration"],
        "test_a_fixture_of_ours": ["integration"],
        "test_a_database_fixture": ["integration"],
        "test_in_a_nested_function": ["e2e"],
    }


def test_a_kind_marked_by_hand_is_refused(tmp_path: Path) -> None:
    """A second place to decide kinds would drift from the first: collection fails, naming it."""
    shutil.copy(TESTS / "conftest.py", tmp_path)
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n\n\n@pytest.mark.e2e\ndef test_marked():\n    pass\n"
    )
    done = collect(tmp_path, tmp_path / "kinds.json", "-p", "no:xdist")
    assert done.returncode != 0
    assert "test_marked.py::test_marked is marked e2e by hand" in done.stdout + done.stderr
