"""Run README shell blocks line by line, as an operator at a terminal would.

Shared by tests/test_readme_operations.py and tests/test_runbook_cutover.py, so a README
command that stops working fails a test instead of a newcomer.

Conventions (documented in README's Operations section):

- Only fenced ``sh`` blocks are run; inline code in prose is not.
- A line ending in ``\\`` continues on the next; comment-only lines are skipped.
- A command whose comment starts with ``[k8s]`` needs a Kubernetes cluster (or the
  production Discord): a test runs the local equivalent it names for it, or skips it.
- Each test substitutes the README's production values (``http://config:8700``,
  ``...`` tokens) with the local stack's, by plain text replacement.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
K8S_TAG = "[k8s]"


@dataclass(frozen=True)
class Command:
    text: str  # the command as written (continuations joined, comment removed)
    comment: str  # its trailing comment, without "#"
    line: int  # README line number, for failure messages

    @property
    def k8s(self) -> bool:
        return self.comment.startswith(K8S_TAG)


@dataclass(frozen=True)
class Block:
    line: int  # README line of the opening fence
    heading: str  # the nearest preceding numbered step ("1. ...") or list item, if any
    commands: list[Command] = field(default_factory=list)


def section(title: str, text: str | None = None) -> tuple[str, int]:
    """The body of ``## title`` (up to the next ``## ``) and its first line's number."""
    text = README.read_text() if text is None else text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]), start + 1


def _split_comment(line: str) -> tuple[str, str]:
    """(command, comment): the comment starts at a ``#`` outside quotes after a blank."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def blocks(title: str, text: str | None = None) -> list[Block]:
    """The ``sh`` blocks of a README section, in order, with their commands."""
    body, first = section(title, text)
    out: list[Block] = []
    lines = body.splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if re.match(r"^(\d+\.|-) ", stripped):
            heading = stripped
        elif lines[i][:1].strip() and not stripped.startswith("```"):
            heading = ""  # a paragraph at the margin ends the list item
        if stripped in ("```sh", "```bash"):
            block = Block(first + i, heading)
            i += 1
            pending = ""
            pending_line = 0
            while not lines[i].strip().startswith("```"):
                raw = lines[i].strip()
                if pending:
                    raw = pending + " " + raw
                else:
                    pending_line = first + i
                if raw.endswith("\\"):
                    pending = raw[:-1].rstrip()
                else:
                    pending = ""
                    text_, comment = _split_comment(raw)
                    if text_:
                        block.commands.append(Command(text_, comment, pending_line))
                i += 1
            out.append(block)
        i += 1
    return out


class Shell:
    """Runs README lines with bash in one directory and one environment; ``export`` lines
    change that environment, as they would in the operator's shell."""

    def __init__(self, cwd: Path, env: dict[str, str], subs: dict[str, str]) -> None:
        self.cwd = cwd
        bin_dir = str(Path(sys.executable).parent)  # `modbot-ring` as after activating .venv
        self.env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"}
        self.subs = subs

    def substitute(self, text: str) -> str:
        for old, new in self.subs.items():
            text = text.replace(old, new)
        return text

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """One line: ``export`` updates the environment, anything else runs in bash with
        a terminal on stdin that answers "y" (an operator confirming a prompt)."""
        text = self.substitute(command)
        if text.startswith("export "):
            for word in shlex.split(text)[1:]:
                key, _, value = word.partition("=")
                self.env[key] = value
            return subprocess.CompletedProcess(text, 0, "", "")
        master, slave = pty.openpty()
        try:
            os.write(master, b"y\n")
            return subprocess.run(
                ["bash", "-o", "pipefail", "-c", text],
                cwd=self.cwd,
                env=self.env,
                stdin=slave,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        finally:
            os.close(slave)
            os.close(master)
