"""The control plane's source of truth: pods, pins, ring settings, migrations and plans,
versioned, in PostgreSQL (or SQLite for one process).

One module per resource, all changing through the core's versioned transaction:

- ``core``: the schema, ``_change`` (lock the version, apply, settle the quota ring's
  placement, bump, audit), ``table()`` (a consistent snapshot), listeners;
- ``records``: the frozen records the store returns;
- ``pods``, ``pins``, ``ring``, ``audit``: the operations ``Store`` has;
- ``migrations``, ``plans`` (and the migrator's pin changes in ``pins``): the operations
  ``MigrationStore`` has, the rebalancing state machine's durable half.
"""

from __future__ import annotations

from ..db import DatabaseUnavailable, open_database
from ..errors import Conflict, Invalid, NotFound, StoreError, StoreUnavailable
from .audit import AuditMixin
from .core import MIGRATIONS, StoreCore
from .migrations import OPEN_MIGRATION, MigrationStore
from .pins import MAX_REASON, PinsMixin, PlacementPins
from .plans import APPLICABLE_PLAN_STATES, NEW_PLAN_STATES, Plans
from .pods import POD_NAME, PodsMixin
from .records import (
    AuditEntry,
    MigrationRecord,
    PinRecord,
    PlanRecord,
    PodRecord,
    StartedMigration,
    TableChange,
)
from .ring import RingMixin

__all__ = [
    "APPLICABLE_PLAN_STATES",
    "MAX_REASON",
    "MIGRATIONS",
    "NEW_PLAN_STATES",
    "OPEN_MIGRATION",
    "POD_NAME",
    "AuditEntry",
    "Conflict",
    "Invalid",
    "MigrationRecord",
    "MigrationStore",
    "NotFound",
    "PinRecord",
    "PlacementPins",
    "PlanRecord",
    "Plans",
    "PodRecord",
    "StartedMigration",
    "Store",
    "StoreCore",
    "StoreError",
    "StoreUnavailable",
    "TableChange",
    "open_store",
]


class Store(PodsMixin, PinsMixin, RingMixin, AuditMixin):
    """The store: the core (versions, the table, the audit trail) with the operations on
    pods, pins, ring settings and the audit log."""


async def open_store(url: str, *, schema: str = "", migrate: bool = True) -> Store:
    try:
        db = await open_database(url, schema=schema)
    except DatabaseUnavailable as exc:
        raise StoreUnavailable(f"database unavailable: {exc}") from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    store = Store(db, channel=f"modbot_table_{schema}" if schema else "modbot_table")
    if migrate:
        try:
            await store.migrate()
        except StoreError:
            await store.close()  # no reconnect probe left running behind the error
            raise
    return store
