"""Packaging: the library installs alone (no dependency, a fast import), the services come
with the `server` extra, and the CLI says which extra is missing instead of a traceback."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modbot_cli.main import (
    EXIT_ERROR,
    SERVER_EXTRA_MODULES,
    SERVERS,
    _needs_extra,
    build_parser,
    main,
)


def test_library_imports_without_any_service_dependency() -> None:
    code = (
        "import sys, modbot_ring;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'redis', 'psycopg', 'psycopg_pool', 'discord', 'aiosqlite', 'prometheus_client',"
        " 'modbot_runtime', 'modbot_client', 'config_store', 'router_proxy', 'gateway_app')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_serve_command_documents_each_flag_and_its_env_var(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, server in SERVERS.items():
        flags = server.flags()
        try:
            build_parser().parse_args(["serve", name, "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        out = " ".join(capsys.readouterr().out.split())
        for flag in flags:
            assert f"--{flag.name}" in out and f"env {flag.env}" in out, (name, flag.name)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "modbot-ring"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("status", "route", "pin", "unpin", "pods", "drain", "serve", "db"):
        assert command in out


# -- the library as its own install: `pip install modbot-ring` vs `modbot-ring[server]` ---------
# One wheel is built from a copy of the sources (the shared work tree gets no build/ folder),
# installed into fresh venvs made without pip (the project's pip installs into them with
# --python), and checked there: no dependency, a fast import, and a CLI that names the extra.

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# our top-level packages, as the wheel is told to find them ("config_store*" -> config_store)
PACKAGES = tuple(
    p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
)
BUILD_TIMEOUT = 180  # building isolates setuptools: pip fetches it if no cache holds it
EXTRA_HINT = "pip install 'modbot-ring[server]'"
# building the wheel and two venvs takes ~10 s on a busy 2-core machine (the first test pays)
SLOW = pytest.mark.slow


def _pip(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


@dataclass(frozen=True)
class LibraryVenv:
    root: Path
    python: Path
    script: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MODBOT_"))}
        return subprocess.run(
            [str(self.script), *args], capture_output=True, text=True, timeout=60, env=env
        )

    def installed(self) -> list[str]:
        out = _pip("--python", str(self.python), "list", "--format=json").stdout
        return sorted(p["name"] for p in json.loads(out))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "-q", "--no-deps", "-w", str(out), str(src), timeout=BUILD_TIMEOUT)
    (built,) = out.glob("modbot_ring-*.whl")
    return built


def _venv(root: Path, wheel: Path, *pip_flags: str) -> LibraryVenv:
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60
    )
    python = root / "bin" / "python"
    _pip("--python", str(python), "install", "-q", *pip_flags, str(wheel))
    return LibraryVenv(root, python, root / "bin" / "modbot-ring")


@pytest.fixture(scope="module")
def library_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[LibraryVenv]:
    """`pip install modbot-ring` as a user types it: dependencies resolved (there are none)."""
    venv = _venv(tmp_path_factory.mktemp("venv"), wheel)
    yield venv
    shutil.rmtree(venv.root, ignore_errors=True)


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name).decode().splitlines()


def _requires(wheel: Path) -> list[tuple[str, str]]:
    """(requirement, marker) for each Requires-Dist line of the wheel."""
    out = []
    for line in _metadata(wheel):
        if line.startswith("Requires-Dist:"):
            req, _, marker = line.removeprefix("Requires-Dist:").strip().partition(";")
            out.append((req.strip(), marker.strip()))
    return out


def _name(req: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", req)
    assert match, req
    return re.sub(r"[-_.]+", "-", match.group()).lower()


@SLOW
def test_the_wheel_requires_nothing_unless_an_extra_is_asked_for(wheel: Path) -> None:
    requires = _requires(wheel)
    assert requires, "the extras' requirements are missing from the wheel"
    unconditional = [req for req, marker in requires if "extra ==" not in marker]
    assert unconditional == [], f"`pip install modbot-ring` would pull {unconditional}"
    server = {_name(r) for r, m in requires if re.search(r'extra == "server"', m)}
    declared = {_name(r) for r in PROJECT["optional-dependencies"]["server"]}
    assert server == declared and {"aiohttp", "discord-py", "psycopg", "redis"} <= server
    # `.[dev]` (make, .ci/run) brings the server extra with it
    dev = [r for r, m in requires if 'extra == "dev"' in m]
    assert "modbot-ring[server]" in dev
    assert "Provides-Extra: server" in _metadata(wheel)


@SLOW
def test_library_install_pulls_no_dependency(
    tmp_path: Path, wheel: Path, library_venv: LibraryVenv
) -> None:
    assert library_venv.installed() == ["modbot-ring"]
    no_deps = _venv(tmp_path / "no-deps", wheel, "--no-deps")
    assert no_deps.installed() == ["modbot-ring"]  # the same thing: there is nothing to skip


def _import_us(python: Path) -> int:
    """modbot_ring's cumulative import time in µs, as `python -X importtime` reports it."""
    proc = subprocess.run(
        [str(python), "-X", "importtime", "-c", "import modbot_ring"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == "modbot_ring":
            return int(parts[1])
    raise AssertionError(f"no import line for modbot_ring in:\n{proc.stderr[-2000:]}")


@SLOW
def test_library_imports_only_the_standard_library_in_a_fresh_venv(
    library_venv: LibraryVenv,
) -> None:
    # the time goal (< 100 ms) is a benchmark figure (benchmarks/cli_startup_bench.py,
    # RESULTS.md), not a timed test; here: what makes it cheap, that it imports only the
    # standard library and itself
    print(f"modbot_ring import in a fresh venv: {_import_us(library_venv.python) / 1000:.1f} ms")
    stdlib = (
        "import sys; before = set(sys.modules); import modbot_ring; "
        "extra = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(extra - set(sys.stdlib_module_names) - {'modbot_ring'}))"
    )
    proc = subprocess.run(
        [str(library_venv.python), "-c", stdlib], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)
    code = (
        "import sys, modbot_ring; print(sorted({m.split('.')[0] for m in sys.modules} "
        f"& {set(PACKAGES) - {'modbot_ring'}}))"
    )
    proc = subprocess.run(
        [str(library_venv.python), "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


@SLOW
def test_cli_version_and_help_work_without_the_server_extra(library_venv: LibraryVenv) -> None:
    version = library_venv.run("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"modbot-ring {PROJECT['version']}")
    for argv in (["--help"], ["serve", "proxy", "--help"], ["status", "--help"]):
        helped = library_venv.run(*argv)
        assert helped.returncode == 0 and "usage: modbot-ring" in helped.stdout, helped.stderr


@SLOW
@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["serve", "proxy"], "modbot-ring serve proxy"),
        (["dev", "up", "--help"], "modbot-ring dev up"),  # its flags' module needs aiohttp
        (["db", "upgrade"], "modbot-ring db upgrade"),
        (["status", "--config-url", "http://127.0.0.1:9"], "modbot-ring status"),
        (["dev", "up"], "modbot-ring dev up"),
        (["pin", "81384788765712384", "gateway-0"], "modbot-ring pin"),
    ],
)
def test_cli_names_the_server_extra_in_one_line_without_it(
    library_venv: LibraryVenv, argv: list[str], command: str
) -> None:
    proc = library_venv.run(*argv)
    assert proc.returncode == EXIT_ERROR, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{command} needs the server extra") and EXTRA_HINT in lines[0]


@SLOW
def test_cli_usage_errors_stay_usage_errors_without_the_extra(library_venv: LibraryVenv) -> None:
    # a confused operator: an unknown command is still exit 2, not "install the extra"
    proc = library_venv.run("frobnicate")
    assert proc.returncode == 2 and "needs the server extra" not in proc.stderr


def test_only_a_module_of_the_server_extra_is_blamed_on_it() -> None:
    missing = ModuleNotFoundError("No module named 'aiohttp.web'", name="aiohttp.web")
    line = _needs_extra(missing, ["serve", "config", "--port", "1"])
    assert line is not None and line.startswith("modbot-ring serve config needs the server extra")
    # anything else is a real fault and keeps its own message
    assert _needs_extra(ModuleNotFoundError("x", name="gateway_app.gone"), ["serve"]) is None
    assert _needs_extra(ModuleNotFoundError("x", name=None), []) is None
    assert _needs_extra(ImportError("x", name="aiohttp"), []) is None


def test_a_missing_extra_module_during_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this (full) venv: a server module that cannot be imported while a handler runs."""
    monkeypatch.delenv("MODBOT_DEBUG", raising=False)

    def broken(args: object) -> int:
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr("modbot_cli.main._dev_up", broken)
    assert main(["dev", "up"]) == EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "modbot-ring dev up needs the server extra (no module named 'psycopg'): " + EXTRA_HINT
    ]
    monkeypatch.setenv("MODBOT_DEBUG", "1")  # the operator asked for the traceback
    with pytest.raises(ModuleNotFoundError):
        main(["dev", "up"])


def _third_party_imports() -> dict[str, set[str]]:
    ours = set(PACKAGES)
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in ours:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_server_extra_module_and_none_in_the_library() -> None:
    found = _third_party_imports()
    unknown = {m: sorted(p) for m, p in found.items() if m not in SERVER_EXTRA_MODULES}
    assert unknown == {}, "add the package to the server extra and to SERVER_EXTRA_MODULES"
    in_library = {m: p for m, p in found.items() if any(x.startswith("modbot_ring") for x in p)}
    assert in_library == {}
