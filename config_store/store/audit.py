"""The audit log: every attempted change, ok or refused, newest first (written by
:meth:`StoreCore._change`, read here)."""

from __future__ import annotations

import json
from typing import Any

from .core import StoreCore
from .records import AuditEntry

__all__ = ["AuditMixin"]


class AuditMixin(StoreCore):
    """Reading the audit log."""

    async def audit(self, limit: int = 50, before: int | None = None) -> list[AuditEntry]:
        sql = "SELECT id, at, actor, action, outcome, version, detail FROM audit_log"
        params: tuple[Any, ...] = ()
        if before is not None:
            sql += " WHERE id < %s"
            params = (before,)
        rows = await self._read_all(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        return [
            AuditEntry(int(i), at, actor, action, outcome, version, json.loads(detail))
            for i, at, actor, action, outcome, version, detail in rows
        ]
