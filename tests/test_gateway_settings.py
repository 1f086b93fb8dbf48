"""A gateway pod's settings are declared once (gateway_app/settings.py): each field of
PodSettings carries its flag, and the CLI's flags are read off the fields."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from gateway_app.retention import RETENTION_FLAGS
from gateway_app.settings import SERVE_FLAGS, PodSettings
from modbot_runtime.flags import add_flags


def _parse(argv: list[str]) -> PodSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, SERVE_FLAGS)
    return PodSettings.from_args(parser.parse_args(argv))


def test_every_flag_is_a_field_and_every_field_a_flag() -> None:
    assert [f.dest for f in SERVE_FLAGS] == [f.name for f in fields(PodSettings)]
    assert {f.env for f in RETENTION_FLAGS} <= {f.env for f in SERVE_FLAGS}


def test_the_parser_s_defaults_are_the_dataclass_s(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in SERVE_FLAGS:
        monkeypatch.delenv(flag.env, raising=False)
    assert _parse(["--name", "gateway-3"]) == PodSettings(name="gateway-3")
    defaults = PodSettings(name="x")
    assert defaults.retention_message_stats_days == 90  # "90" as the parser converts it
    assert defaults.retention_mod_actions_days is None  # "forever"


def test_env_and_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODBOT_GATEWAY_PORT", "9911")
    monkeypatch.setenv("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "forever")
    settings = _parse(["--name", "gateway-1", "--feature-tick", "2.5"])
    assert settings.port == 9911 and settings.feature_tick == 2.5
    assert settings.retention_message_stats_days is None
    assert settings.public_url == "http://127.0.0.1:9911"


def test_a_bad_value_in_the_environment_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "0")
    with pytest.raises(SystemExit):
        _parse([])
    assert "MODBOT_RETENTION_MESSAGE_STATS_DAYS" in capsys.readouterr().err


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = PodSettings(name="g", discord_token="bot-secret", internal_token="fwd-secret")
    assert "secret" not in repr(settings) and "name='g'" in repr(settings)
