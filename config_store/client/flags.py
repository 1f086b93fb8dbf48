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


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    for flag in flags:
        raw = os.environ.get(flag.env)
        default = flag.default
        if raw is not None:
            try:
                default = flag.type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"${flag.env}={raw!r}: {exc}")
        parser.add_argument(
            f"--{flag.name}",
            dest=flag.dest,
            default=default,
            type=flag.type,
            choices=flag.choices,
            metavar=flag.dest.upper() if flag.choices is None else None,
            help=f"{flag.help} [env {flag.env}; default {flag.shown_default()}]",
        )
