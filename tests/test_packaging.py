import subprocess
import sys
from pathlib import Path

from config_store.cli import SERVERS, build_parser


def test_library_imports_without_any_service_dependency():
    code = (
        "import sys, modbot_ring;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'redis', 'psycopg', 'psycopg_pool', 'discord', 'aiosqlite', 'prometheus_client',"
        " 'config_store', 'router_proxy', 'gateway_app')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_serve_command_documents_each_flag_and_its_env_var(capsys):
    import importlib

    for name, (settings_module, _) in SERVERS.items():
        flags = importlib.import_module(settings_module).SERVE_FLAGS
        try:
            build_parser().parse_args(["serve", name, "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        out = " ".join(capsys.readouterr().out.split())
        for flag in flags:
            assert f"--{flag.name}" in out and f"env {flag.env}" in out, (name, flag.name)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "modbot-ring"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("status", "route", "pin", "unpin", "pods", "drain", "serve", "db"):
        assert command in out
