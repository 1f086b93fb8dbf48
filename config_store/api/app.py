"""The application: its middlewares and the route table of ``/v1`` (and ``/ops``)."""

from __future__ import annotations

from aiohttp import web

from . import audit, ops, pins, plans, pods, table
from .auth import auth_middleware
from .errors import errors_middleware
from .parsing import MAX_BODY


def new_app() -> web.Application:
    """An empty application with the API's middlewares; the caller sets the app keys
    (``context``) and adds the routes."""
    return web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/openapi.json", ops.openapi)
    r.add_get("/v1/status", table.get_status)
    r.add_get("/v1/table", table.get_table)
    r.add_get("/v1/table/version", table.get_table_version)
    r.add_get("/v1/ring", table.get_ring)
    r.add_put("/v1/ring", table.put_ring)
    r.add_get("/v1/pods", pods.list_pods)
    r.add_put("/v1/pods/{name}", pods.register_pod)
    r.add_delete("/v1/pods/{name}", pods.remove_pod)
    r.add_post("/v1/pods/{name}/heartbeat", pods.heartbeat)
    r.add_post("/v1/pods/{name}/drain", pods.drain_pod)
    r.add_post("/v1/pods/{name}/activate", pods.activate_pod)
    r.add_get("/v1/pins", pins.list_pins)
    r.add_post("/v1/pins/bulk", pins.bulk_pins)
    r.add_get("/v1/pins/{guild_id}", pins.get_pin)
    r.add_put("/v1/pins/{guild_id}", pins.put_pin)
    r.add_delete("/v1/pins/{guild_id}", pins.delete_pin)
    r.add_get("/v1/guilds/{guild_id}/route", table.get_route)
    r.add_get("/v1/audit", audit.get_audit)
    r.add_get("/v1/migrations", plans.list_migrations)
    r.add_post("/v1/migrations", plans.start_migration)
    r.add_get("/v1/migrations/{id}", plans.get_migration)
    r.add_post("/v1/migrations/{id}/cancel", plans.cancel_migration)
    r.add_get("/v1/plans", plans.list_plans)
    r.add_post("/v1/plans", plans.create_plan)
    r.add_get("/v1/plans/{id}", plans.get_plan)
    r.add_post("/v1/plans/{id}/apply", plans.apply_plan)
    r.add_post("/v1/plans/{id}/cancel", plans.cancel_plan)
    r.add_get("/v1/verify", plans.verify)
    r.add_get("/v1/balance", ops.get_balance)
    r.add_get("/ops", ops.ops_page)
