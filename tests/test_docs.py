"""The README documents every environment variable, with its default."""

from pathlib import Path

from modbot_cli.devstack import DEV_FLAGS
from modbot_cli.main import OPERATOR_FLAGS, SERVERS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_env_var_is_in_the_readme_configuration_table():
    flags = [*OPERATOR_FLAGS, *DEV_FLAGS]
    for server in SERVERS.values():
        flags += server.flags()
    missing = sorted({f.env for f in flags if f"`{f.env}`" not in README})
    assert not missing, f"undocumented: {missing}"


def test_readme_gives_the_two_commands():
    assert "make run" in README and "make test" in README
