"""Flags that fall back to environment variables, with the default shown in ``--help``.

Every service reads its configuration the same way: ``--flag`` beats ``$ENV`` beats
the documented default. One declaration feeds argparse, the help text and the README.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "add_flags", "env_bool"]


def env_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


@dataclass(frozen=True)
class Flag:
    name: str
    env: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    secret: bool = False
    choices: Sequence[str] | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def shown_default(self) -> str:
        if self.secret:
            return "unset" if not self.default else "(set)"
        return "unset" if self.default in (None, "") else str(self.default)


class _EnvText(str):
    """An environment variable's raw text used as an argparse default."""

    env = ""


def _typed(flag: Flag) -> Callable[[str], Any]:
    """The flag's type, naming the env var when its text is the one that is wrong."""

    def convert(text: str) -> Any:
        try:
            value = flag.type(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            if isinstance(text, _EnvText):
                raise argparse.ArgumentTypeError(f"${flag.env}={str(text)!r}: {exc}") from None
            raise
        if isinstance(text, _EnvText) and flag.choices is not None and value not in flag.choices:
            raise argparse.ArgumentTypeError(
                f"${flag.env}={str(text)!r}: choose from {', '.join(map(str, flag.choices))}"
            )
        return value

    convert.__name__ = getattr(flag.type, "__name__", "value")
    return convert


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    """Declare ``flags``; an env var's text becomes the default *unconverted*.

    WHY: argparse converts a string default with the flag's type only when the parser
    that owns it is the one that runs, so ``MODBOT_TABLE_POLL=abc`` (a proxy setting)
    fails ``serve proxy`` and nothing else. Converting here, at build time, made every
    command fail on every other command's bad variable.
    """
    for flag in flags:
        raw = os.environ.get(flag.env)
        default: Any = flag.default
        if raw is not None:
            default = _EnvText(raw)
            default.env = flag.env
        parser.add_argument(
            f"--{flag.name}",
            dest=flag.dest,
            default=default,
            type=_typed(flag),
            choices=flag.choices,
            metavar=flag.dest.upper() if flag.choices is None else None,
            help=f"{flag.help} [env {flag.env}; default {flag.shown_default()}]",
        )
