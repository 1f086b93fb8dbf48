"""The one place HTTP statuses are decided: exceptions in, JSON errors out.

Domain code raises by meaning (``config_store/errors.py``); ``STATUSES`` says what each
meaning is on the wire. Every exception class config_store raises has an entry (a test
walks the hierarchy), so a new one is mapped on purpose, not by falling back to 500.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from modbot_runtime.observability import json_error

from ..errors import (
    ConfigStoreError,
    Conflict,
    DatabaseUnavailable,
    Invalid,
    NotFound,
    PodAnswerInvalid,
    PodCallError,
    PodRefused,
    PodUnavailable,
    StoreError,
    StoreUnavailable,
)
from .auth import Handler
from .context import METRICS_KEY
from .parsing import MAX_BODY

log = logging.getLogger("modbot.config.api")

STATUSES: dict[type[Exception], int] = {
    ConfigStoreError: 500,
    StoreError: 500,  # the store failed in a way it did not classify
    Invalid: 400,
    NotFound: 404,
    Conflict: 409,
    StoreUnavailable: 503,  # with Retry-After
    DatabaseUnavailable: 503,
    # a pod failing a call the request needed: the upstream's failure, not the caller's
    PodCallError: 502,
    PodUnavailable: 502,
    PodRefused: 502,
    PodAnswerInvalid: 502,
}


def status_for(exc: BaseException) -> int:
    """The HTTP status of ``exc``: its nearest class in ``STATUSES`` (500 if none)."""
    for cls in type(exc).__mro__:
        if cls in STATUSES:
            return STATUSES[cls]
    return 500


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except (ConfigStoreError, PodCallError) as exc:
        status = status_for(exc)
        if status == 409:
            metrics.conflicts.inc()
        return json_error(status, str(exc), **({"Retry-After": "1"} if status == 503 else {}))
    except web.HTTPRequestEntityTooLarge:
        status = 413
        return json_error(413, f"request body is larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        return json_error(
            exc.status,
            exc.reason or "error",
            **{k: v for k, v in exc.headers.items() if k == "Allow"},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error (see the config service log)")
    finally:
        metrics.requests.labels(route, request.method, str(status)).inc()
        elapsed = time.perf_counter() - started
        if route == "/v1/table" and "wait" in request.query:
            metrics.long_poll.observe(elapsed)
        else:
            metrics.latency.labels(route).observe(elapsed)
