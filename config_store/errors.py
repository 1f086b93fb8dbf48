"""Every exception the config service raises on purpose, in one hierarchy.

::

    ConfigStoreError              base: a refusal or failure the service means to report
    ├── StoreError                the store refused or failed a read or change (500)
    │   ├── Invalid               the request is malformed or out of range (400)
    │   ├── NotFound              it names a pod, pin, migration or plan that is not there (404)
    │   ├── Conflict              it conflicts with the current state: retry after re-reading (409)
    │   └── StoreUnavailable      the database cannot be reached now: retry later (503)
    └── DatabaseUnavailable       raised by ``db``; the store turns it into StoreUnavailable

Domain code raises these by meaning; the HTTP status of each is decided at the edge only
(``config_store/api/errors.py``, ``STATUSES``), never carried by the exception. A gateway
pod's migration API failing is the pod client's own ``PodCallError`` family (the shared
``modbot_client`` package cannot import a service), re-exported here so config_store code
takes every exception it handles from this one module; the edge maps those too.

``outcome`` is the word the audit log records for a refused change (``Store._change``).
"""

from __future__ import annotations

from modbot_client.pod_client import PodAnswerInvalid, PodCallError, PodRefused, PodUnavailable

__all__ = [
    "ConfigStoreError",
    "Conflict",
    "DatabaseUnavailable",
    "Invalid",
    "NotFound",
    "PodAnswerInvalid",
    "PodCallError",
    "PodRefused",
    "PodUnavailable",
    "StoreError",
    "StoreUnavailable",
]


class ConfigStoreError(Exception):
    """Base of the config service's own exceptions: what went wrong, in words an operator
    reads (``str(exc)`` is the message the API answers with). No HTTP status here."""

    outcome = "error"


class StoreError(ConfigStoreError):
    """The store (pods, pins, ring settings, migrations, plans) refused or failed."""


class Invalid(StoreError):
    """The request or value is malformed or out of range; retrying it cannot help."""

    outcome = "invalid"


class NotFound(StoreError):
    """The named pod, pin, migration or plan does not exist."""

    outcome = "not_found"


class Conflict(StoreError):
    """The change conflicts with the current state (a moved-on version, a running plan)."""

    outcome = "conflict"


class StoreUnavailable(StoreError):
    """The database cannot be reached now; the same request may succeed later."""

    outcome = "unavailable"


class DatabaseUnavailable(ConfigStoreError):
    """The database cannot be reached (or failed mid-transaction): try again later.

    Not a StoreError on purpose: the store catches its StoreErrors to audit refusals, and
    an outage is no refusal (it becomes a StoreUnavailable there)."""
