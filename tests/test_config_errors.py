"""config_store's exceptions (config_store/errors.py) and the one place their HTTP statuses
are decided (config_store/api/errors.py): every exception class the service raises maps
to a status on purpose, the domain classes carry none, and the middleware answers each
with its status, a JSON error and, for a 503, Retry-After."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import AppServer
from prometheus_client import CollectorRegistry

from config_store import errors
from config_store.api import METRICS_KEY, STATUSES, ApiMetrics, errors_middleware, status_for
from config_store.errors import ConfigStoreError, PodCallError

ROOT = Path(__file__).resolve().parent.parent / "config_store"
# command-line tools that live in config_store for now; their errors carry exit codes for
# a terminal, never reach the HTTP edge, and leave with the CLI package
CLI_TOOLS = {"cli", "sim_cli", "cutover_cli", "devstack", "backup", "monolith", "s3"}


def _subclasses(root: type[Exception]) -> set[type[Exception]]:
    found = {root}
    for cls in root.__subclasses__():
        found |= _subclasses(cls)
    return found


ALL = sorted(
    _subclasses(ConfigStoreError) | _subclasses(PodCallError), key=lambda c: c.__qualname__
)
EXPECTED = {
    "ConfigStoreError": 500,
    "StoreError": 500,
    "Invalid": 400,
    "NotFound": 404,
    "Conflict": 409,
    "StoreUnavailable": 503,
    "DatabaseUnavailable": 503,
    "PodCallError": 502,
    "PodUnavailable": 502,
    "PodRefused": 502,
    "PodAnswerInvalid": 502,
}


def test_every_exception_class_has_its_own_status() -> None:
    """A new exception class fails here until it is given a status at the edge."""
    unmapped = [cls.__qualname__ for cls in ALL if cls not in STATUSES]
    assert not unmapped, f"map these in config_store/api/errors.py STATUSES: {unmapped}"
    assert {cls.__name__: STATUSES[cls] for cls in ALL} == EXPECTED


def test_every_class_module_exports_is_in_the_hierarchy() -> None:
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported == set(ALL)


def test_domain_exceptions_carry_no_http_status() -> None:
    for cls in _subclasses(ConfigStoreError):
        assert not hasattr(cls, "status"), cls
        assert not hasattr(cls("x"), "status"), cls


def test_status_for_takes_the_nearest_mapped_class() -> None:
    class Odd(errors.Conflict):
        pass

    assert status_for(Odd("x")) == 409
    assert status_for(ValueError("x")) == 500


def test_the_service_modules_define_no_exceptions_of_their_own() -> None:
    """One hierarchy in one module: the service's code raises what errors.py declares."""
    stray = []
    for path in sorted(ROOT.rglob("*.py")):
        module = path.relative_to(ROOT).with_suffix("").as_posix()
        if module == "errors" or module in CLI_TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                "Error" in ast.unparse(b) or "Exception" in ast.unparse(b) for b in node.bases
            ):
                stray.append(f"{module}:{node.lineno} {node.name}")
    assert not stray, stray


@contextlib.asynccontextmanager
async def raising(exc: Exception) -> AsyncIterator[tuple[str, CollectorRegistry]]:
    async def handler(_: web.Request) -> web.StreamResponse:
        raise exc

    app = web.Application(middlewares=[errors_middleware])
    registry = CollectorRegistry()
    app[METRICS_KEY] = ApiMetrics(registry, redis=False)
    app.router.add_get("/v1/boom", handler)
    async with AppServer(app) as url:
        yield f"{url}/v1/boom", registry


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
async def test_the_edge_answers_each_exception_with_its_status(cls: type[Exception]) -> None:
    exc = (
        cls("gateway-1", "GET /internal/guilds", "it said no")
        if issubclass(cls, PodCallError)
        else cls("what went wrong")
    )
    async with raising(exc) as (url, registry), aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            status, body, retry = r.status, await r.json(), r.headers.get("Retry-After")
        conflicts = registry.get_sample_value("modbot_config_conflicts_total")
    assert status == EXPECTED[cls.__name__]
    assert body == {"error": str(exc)}
    assert retry == ("1" if status == 503 else None)
    assert conflicts == (1 if status == 409 else 0)
