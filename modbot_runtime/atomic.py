"""Files that are either the old version or the new one, never half of each.

WHY: local state (the Discord simulator's world, ``dev up``'s tokens) is rewritten while
processes run; a ``kill -9`` or a full disk in the middle of a write must leave a file
that still loads. So: write a temporary file next to the target, fsync it, keep the
previous version as ``<name>.bak`` (a hard link: the old inode is never written again),
rename over the target, and fsync the directory so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["StateFileError", "backup_path", "read_json", "write_atomic"]


class StateFileError(Exception):
    """A state file that exists but cannot be used; the message names the file (and a
    backup to fall back on, when there is a readable one)."""


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, backup: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename).

    ``mode`` applies to the new file (0600: these files hold tokens). With ``backup``,
    the version being replaced stays readable as ``<path>.bak``. On any error (disk
    full...) the old file is untouched and the temporary one removed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            os.fsync(fd)
        finally:
            os.close(fd)
        if backup and path.exists():
            link = path.with_name(f".{path.name}.bak.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            with contextlib.suppress(OSError):  # no hard links here: no backup, still atomic
                os.link(path, link)
                os.replace(link, backup_path(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``, or None if there is no such file; a file that is there but
    unreadable is a ``StateFileError`` naming it (never a silent fresh start)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError(corrupt_message(path, what, str(exc))) from None


def corrupt_message(path: Path, what: str, reason: str) -> str:
    """One line: which file is broken, why, and what to do about it."""
    hint = "remove it to start from scratch"
    bak = backup_path(path)
    if bak.exists():
        try:
            json.loads(bak.read_bytes())
            hint = f"the previous version is in {bak}: `mv {bak} {path}` to use it, or {hint}"
        except (OSError, ValueError, UnicodeDecodeError):
            hint = f"{bak} is unreadable too; {hint}"
    reason = " ".join(reason.split())[:160]
    return f"{what} {path} is corrupt ({reason}); {hint}"
