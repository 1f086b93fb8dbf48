"""Schemathesis against the config service's own OpenAPI document (issue 12).

A real config service (on PostgreSQL and on embedded SQLite) runs in a thread
of its own, so schemathesis' synchronous client can call it from the test. Every
operation gets a bounded number of generated requests (valid and invalid); the whole
module is bounded in time (no shrinking; a hard per-operation timeout). No response may be a 5xx, and every response must conform
to the document: a status it declares, JSON where it says JSON, bodies matching their
schemas. So the document stays accurate, and a new 500 fails CI.

The gateway pods' internal API has no OpenAPI document (it is reached only by the proxy
and the config service); its hostile-input tests are in tests/test_internal_auth.py.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from conftest import ADMIN, PG_URL, free_port, running_config
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config_store.openapi import OPENAPI

EXAMPLES = 15  # per operation and dialect (30 operations x 2): the module stays well under 60 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CLOSED_PORT = free_port()  # nothing listens here: pod calls fail at once, not after a DNS wait

schema = schemathesis.openapi.from_dict(OPENAPI)


class LiveConfig:
    """running_config (tests/conftest.py) on its own event loop in a thread."""

    def __init__(self, db_url: str, schema_name: str) -> None:
        self.db_url = db_url
        self.schema_name = schema_name
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with running_config(self.db_url, self.schema_name) as svc:
                self.url = svc.url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"config service did not start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def live_config(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Both dialects: SQLite and PostgreSQL overflow and fail differently."""
    if request.param == "sqlite":
        live = LiveConfig(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/config.db", "")
    else:
        live = LiveConfig(PG_URL, f"t_{uuid.uuid4().hex[:12]}")
    live.start()
    try:
        yield live.url
    finally:
        live.stop()
        if live.schema_name:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{live.schema_name}" CASCADE')


@schemathesis.hook
def map_body(context, body):  # type: ignore[no-untyped-def]
    """Pod URLs that pass validation are pointed at a closed loopback port: the service
    calls registered pods (verify, joins), and a generated host name would wait on DNS."""
    if (
        context.operation is not None
        and context.operation.path == "/v1/pods/{name}"
        and isinstance(body, dict)
        and isinstance(body.get("url"), str)
    ):
        body = {
            **body,
            "url": re.sub(r"^(https?://)[^/?#]*", rf"\g<1>127.0.0.1:{CLOSED_PORT}", body["url"]),
        }
    return body


@pytest.mark.slow
@pytest.mark.timeout(40)  # per operation; the module takes ~15 s on 2 CPUs
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_the_document_holds(case, live_config):
    response = case.call(
        base_url=live_config, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    case.validate_response(response, checks=CHECKS)
