"""The CLI package on top (issue 16): it loads each server with a plain, lazy import, and a
package or dependency left out of the install is one line naming what is missing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from modbot_cli.main import EXIT_ERROR, EXIT_USAGE, SERVERS, Server, main
from modbot_runtime.flags import Flag

EXTRA_HINT = "pip install 'modbot-ring[server]'"


class _NotInstalled:
    """A finder in front of the others: ``package`` cannot be found, exactly as when it is not
    installed (ModuleNotFoundError naming the top-level package)."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == self.package:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _leave_out(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """As if ``package`` were not installed; the modules already loaded come back afterwards."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(package), *sys.meta_path])


def test_every_server_has_flags_and_an_entry_point() -> None:
    assert set(SERVERS) == {"config", "proxy", "gateway", "discord-sim"}
    for name, server in SERVERS.items():
        flags = server.flags()
        assert flags and all(f.env.startswith(("MODBOT_", "DISCORD_")) for f in flags), name


def test_help_loads_no_server_module() -> None:
    """`--help` stays cheap: the services are imported inside the functions that run them
    (the database flags' module, standard library only, is the one piece of a service)."""
    code = (
        "import sys; from modbot_cli.main import main\n"
        "try: main(['--help'])\n"
        "except SystemExit: pass\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] in "
        "('config_store', 'router_proxy', 'gateway_app', 'discord_sim', 'aiohttp'))\n"
        "print(loaded, file=sys.stderr)\n"
        "sys.exit(0 if loaded == ['config_store', 'config_store.settings'] else 1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_is_the_console_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modbot_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("modbot-ring "), proc.stderr


def test_a_server_left_out_of_the_build_is_one_usage_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MODBOT_DEBUG", raising=False)
    _leave_out(monkeypatch, "discord_sim")
    assert main(["serve", "discord-sim"]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == ["modbot-ring: discord_sim is not available in this build"]
    # the other servers still parse their flags
    with pytest.raises(SystemExit) as exit:
        main(["serve", "proxy", "--help"])
    assert exit.value.code == 0


def test_commands_sync_without_the_pod_package_is_one_usage_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MODBOT_DEBUG", raising=False)
    _leave_out(monkeypatch, "gateway_app")
    assert main(["commands", "sync", "--discord-token", "x"]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        "modbot-ring: gateway_app is not available in this build"
    ]


def test_commands_sync_without_discord_py_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dependency missing is not "gateway_app is not available": the extra is named."""
    monkeypatch.delenv("MODBOT_DEBUG", raising=False)
    monkeypatch.delitem(sys.modules, "gateway_app.commands_sync", raising=False)
    if "gateway_app" in sys.modules:  # loaded by an earlier test: the attribute outlives
        monkeypatch.delattr(sys.modules["gateway_app"], "commands_sync", raising=False)
    _leave_out(monkeypatch, "discord")
    # never Discord itself, even if the import were to succeed: a closed loopback port
    argv = ["commands", "sync", "--discord-token", "x", "--discord-api-url", "http://127.0.0.1:9"]
    assert main(argv) == EXIT_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("modbot-ring commands sync needs the server extra") and EXTRA_HINT in line
    )


def test_a_missing_module_of_ours_is_a_bug_not_a_missing_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a whole package left out reads "not available"; a module missing inside one is
    reported as the internal error it is."""
    monkeypatch.delenv("MODBOT_DEBUG", raising=False)

    def broken() -> list[Flag]:
        raise ModuleNotFoundError("No module named 'discord_sim.gone'", name="discord_sim.gone")

    monkeypatch.setitem(SERVERS, "discord-sim", Server(broken, SERVERS["discord-sim"].run))
    with pytest.raises(ModuleNotFoundError):
        main(["serve", "discord-sim"])
