"""Gateway pods: registration, heartbeats, drain / activate, removal."""

from __future__ import annotations

import time

from aiohttp import web

from modbot_ring.hashring import InvalidWeight, check_weight

from ..errors import Invalid
from ..models import Heartbeat, PodRegistration
from ..schema import UNSET
from .auth import Handler, role
from .context import MIGRATOR_KEY, PUBLISHER_KEY, STORE_KEY
from .parsing import actor, body, expected_version, snapshot, version_reply


@role("read")
async def list_pods(request: web.Request) -> web.Response:
    now = time.time()
    pods = await request.app[STORE_KEY].pods()
    return web.json_response({"pods": [p.to_json(now) for p in pods]})


@role("admin")
async def register_pod(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    pod = await body(request, PodRegistration)  # the url passed check_pod_url
    url = None if pod.url is None else pod.url.rstrip("/")
    weight = None if pod.weight is UNSET else pod.weight
    if weight is not None:
        # the library's bound, not the store's: a weight the table refuses would be stored
        # and then break every table build (every read and write a 500)
        try:
            check_weight(name, weight, (await snapshot(request)).table.algorithm)
        except InvalidWeight as exc:
            raise Invalid(str(exc)) from None
    await request.app[MIGRATOR_KEY].hold_before_join(name, actor(request))
    version = await request.app[STORE_KEY].register_pod(name, url, weight, actor(request))
    # no data anywhere yet: the new pod gets its share of shards now (nothing to migrate)
    if await request.app[MIGRATOR_KEY].spread_if_empty(actor(request)):
        version = await request.app[STORE_KEY].version()
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version, pod=name)


@role("admin")
async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    beat = await body(request, Heartbeat)
    load = None if beat.load is UNSET else beat.load
    state, version = await request.app[STORE_KEY].heartbeat(name, load)
    return version_reply(version, pod=name, state=state)


def _pod_state_handler(state: str) -> Handler:
    @role("admin")
    async def set_state(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        store = request.app[STORE_KEY]
        version = await store.set_pod_state(name, state, actor(request), expected_version(request))
        if state == "active" and await request.app[MIGRATOR_KEY].spread_if_empty(actor(request)):
            version = await store.version()
        await request.app[PUBLISHER_KEY].refresh()
        return version_reply(version, pod=name, state=state)

    return set_state


@role("admin")
async def drain_pod(request: web.Request) -> web.Response:
    """Draining holds the pod's placement (shards pinned in place) until a plan moves its
    data: re-routing at once would strand its rows (config_store/placement.py, drain)."""
    name = request.match_info["name"]
    version = await request.app[MIGRATOR_KEY].drain(name, actor(request), expected_version(request))
    return version_reply(version, pod=name, state="draining")


activate_pod = _pod_state_handler("active")


@role("admin")
async def remove_pod(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    version = await request.app[STORE_KEY].remove_pod(
        name, actor(request), expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version, pod=name)
