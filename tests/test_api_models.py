"""Request bodies are declared once (config_store/models.py, issue 16): the handlers load
them through the models and the OpenAPI document states the same models. These tests
fail when the two drift: a handler that accepts a field its model/document does not
declare, a documented field a handler refuses, a constraint stated but not enforced."""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import fields
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from conftest import ADMIN
from openapi_spec_validator import validate

from config_store.api import add_routes, new_app
from config_store.errors import Invalid
from config_store.models import (
    BODIES,
    BulkPins,
    Heartbeat,
    PinChange,
    PlanApply,
    PlanRequest,
    PodRegistration,
    RingChange,
)
from config_store.openapi import OPENAPI
from config_store.schema import UNSET, json_schema, load

A = {"Authorization": f"Bearer {ADMIN}"}
GID = 81384788765712384
PATH_VALUES = {"name": "gateway-0", "guild_id": str(GID), "id": "1"}
WRONG: list[Any] = [[[]]]  # the wrong type for every declared field (lists hold objects or strings)


def _documented_bodies() -> dict[tuple[str, str], Any]:
    return {
        (method, path): op["requestBody"]["content"]["application/json"]["schema"]
        for path, ops in OPENAPI["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }


def test_the_generated_document_is_valid_openapi() -> None:
    validate(OPENAPI)
    ring = OPENAPI["paths"]["/v1/ring"]["put"]["requestBody"]["content"]["application/json"]
    assert ring["schema"]["properties"]["algorithm"]["enum"] == ["quota", "slots", "ketama"]
    assert ring["schema"]["required"] == ["shard_count"]


def test_the_document_states_exactly_the_models() -> None:
    documented = _documented_bodies()
    assert set(documented) == set(BODIES)
    for route, model in BODIES.items():
        assert documented[route] == json_schema(model), route
        assert set(documented[route]["properties"]) == {f.name for f in fields(model)}


def _handlers() -> dict[tuple[str, str], Any]:
    app = new_app()
    add_routes(app)
    return {
        (r.method.lower(), r.resource.canonical): r.handler
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }


def test_each_handler_loads_its_routes_model_and_no_other() -> None:
    """A handler that read ``await request.json()`` itself, or loaded another route's model,
    would accept what the document does not declare."""
    for route, handler in _handlers().items():
        source = inspect.getsource(handler)
        loaded = re.findall(r"await body\(request, (\w+)\)", source)
        assert "request.json(" not in source and "request.read(" not in source, route
        if route in BODIES:
            assert loaded == [BODIES[route].__name__], route
        else:
            assert loaded == [], route


@pytest.mark.parametrize("route", sorted(BODIES), ids=lambda r: f"{r[0]} {r[1]}")
async def test_a_live_handler_refuses_undeclared_and_knows_every_declared_field(
    svc: Any, route: tuple[str, str]
) -> None:
    method, template = route
    path = template.format(**PATH_VALUES)
    url = svc.url + path
    async with svc.http.request(method, url, headers=A, json={"zz_undeclared": 1}) as r:
        data = await r.json()
        assert r.status == 400 and "unknown field(s): zz_undeclared" in data["error"], data
    model = BODIES[route]
    required = json_schema(model)["required"]
    for f in fields(model):
        body = {name: WRONG for name in required} | {f.name: WRONG}
        async with svc.http.request(method, url, headers=A, json=body) as r:
            data = await r.json()
        assert r.status == 400, (f.name, data)
        error = data["error"]
        assert "unknown field" not in error, (f.name, data)
        assert "wrong type" in error or "JSON object" in error, (f.name, data)
    if required:
        async with svc.http.request(method, url, headers=A, json={}) as r:
            data = await r.json()
        assert r.status == 400 and "missing field(s)" in data["error"], data


# -- load enforces what json_schema states ----------------------------------------------

CASES: list[tuple[type[Any], Any]] = [
    (RingChange, {"shard_count": None}),
    (RingChange, {"shard_count": 16, "algorithm": "ketama"}),
    (RingChange, {"shard_count": 0}),
    (RingChange, {"shard_count": True}),
    (RingChange, {"shard_count": 1.5}),
    (RingChange, {"shard_count": 10**30}),
    (RingChange, {"shard_count": 4, "algorithm": ""}),
    (RingChange, {"shard_count": 4, "algorithm": None}),
    (RingChange, {}),
    (RingChange, []),
    (PodRegistration, {}),
    (PodRegistration, {"url": None, "weight": 2}),
    (PodRegistration, {"weight": None}),
    (PodRegistration, {"weight": 0}),
    (PodRegistration, {"weight": 100}),
    (PodRegistration, {"weight": 100.5}),
    (PodRegistration, {"weight": "2"}),
    (PodRegistration, {"url": "http://x:1/p"}),
    (PodRegistration, {"url": "ftp://x"}),
    (PodRegistration, {"url": "http://x/" + "a" * 2048}),
    (Heartbeat, {"load": {"events_per_s": 1.5}}),
    (Heartbeat, {"load": None}),
    (Heartbeat, {"load": []}),
    (PinChange, {"pod": "p", "reason": "x" * 500}),
    (PinChange, {"pod": "p", "reason": "x" * 501}),
    (PinChange, {"pod": 7}),
    (BulkPins, {"set": [{"guild_id": "1", "pod": "p"}], "delete": ["2"]}),
    (BulkPins, {"set": [{"guild_id": "1"}]}),
    (BulkPins, {"set": [{"guild_id": "1", "pod": "p", "x": 1}]}),
    (BulkPins, {"set": ["1"]}),
    (BulkPins, {"delete": [1]}),
    (PlanRequest, {"epsilon": 0, "max_moves": None, "repair": True}),
    (PlanRequest, {"epsilon": 10.5}),
    (PlanRequest, {"max_moves": 0}),
    (PlanRequest, {"repair": 1}),
    (PlanRequest, {"drain": None}),
    (PlanRequest, {"restore": {"shards": {"3": None, "4": "p"}, "pins": {"5": "p"}}}),
    (PlanRequest, {"restore": {"shards": None, "pins": None}}),
    (PlanRequest, {"restore": {"shards": {"x": "p"}}}),
    (PlanRequest, {"restore": {"pins": {"0": "p"}}}),
    (PlanRequest, {"restore": {"pins": {"5": None}}}),
    (PlanRequest, {"restore": {"colour": {}}}),
    (PlanApply, {"concurrency": 64}),
    (PlanApply, {"concurrency": 65}),
    (PlanApply, {"concurrency": 0.5}),
]


def _accepted(model: type[Any], data: Any) -> bool:
    try:
        load(model, data)
    except Invalid:
        return False
    return True


@pytest.mark.parametrize("model, data", CASES, ids=lambda v: getattr(v, "__name__", None))
def test_load_accepts_exactly_what_the_document_states(model: type[Any], data: Any) -> None:
    validator = jsonschema.Draft202012Validator(json_schema(model))
    assert _accepted(model, data) == validator.is_valid(data), json.dumps(data)[:200]


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_bounded_numbers_refuse_nan_and_infinity(weight: float) -> None:
    with pytest.raises(Invalid, match=r"weight must be in \(0, 100\]"):
        load(PodRegistration, {"weight": weight})


def test_absent_and_null_are_told_apart() -> None:
    assert load(PodRegistration, {}).weight is UNSET
    assert load(PodRegistration, {"url": None}).url is None
    assert load(Heartbeat, {}).load is UNSET
    assert load(PlanRequest, {}).restore is UNSET
    assert load(PlanRequest, {}) == PlanRequest(epsilon=0.05, max_moves=None, repair=False)


def test_hostile_bodies_get_bounded_messages() -> None:
    with pytest.raises(Invalid) as caught:
        load(PinChange, {"pod": "p", **{"x" * 10_000: 1}})
    assert len(str(caught.value)) < 300
    with pytest.raises(Invalid, match="2\\*\\*63-1"):
        load(PlanRequest, {"restore": {"pins": {"9" * 19: "p"}}})
    with pytest.raises(Invalid, match="2\\*\\*63-1"):
        load(PlanRequest, {"restore": {"shards": {"9" * 19: "p"}}})
    with pytest.raises(Invalid, match="credentials"):
        load(PodRegistration, {"url": "http://user:pw@10.0.0.5:8701"})
