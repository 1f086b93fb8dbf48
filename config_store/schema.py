"""Typed request/response models, declared once as stdlib dataclasses: ``load`` validates
a decoded JSON body into one, ``json_schema`` states the same model in the OpenAPI
document. Why no pydantic/msgspec: the API has a dozen flat bodies, and a hundred lines
here keep the ``[server]`` extra free of a compiled dependency and its import time.

A model's field annotation is its wire type: ``X | None`` accepts ``null``; a field with a
default is optional; ``Unset`` marks an optional field whose absence the handler must tell
apart from every value (``null`` included). Constraints (``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``, ``maxLength``, ``pattern``, ``description``)
go in ``field(metadata=c(...))``; ``keys`` is the pattern every key of a ``dict`` field
must match; ``check`` a function (value -> None, raises Invalid) that runs first on a
string or object, for what a pattern says only roughly (with a clearer message). ``load`` enforces what
``json_schema`` states.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import Invalid

T = TypeVar("T")

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_KEYWORDS = frozenset({*_BOUNDS, "maxLength", "pattern", "description", "keys", "check"})
_NOT_SCHEMA = ("keys", "check")


class _UnsetType(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _UnsetType.UNSET
Unset = Literal[_UnsetType.UNSET]
"""An optional field's value when the body did not carry it."""


def c(**keywords: Any) -> Mapping[str, Any]:
    """A field's constraints, for ``dataclasses.field(metadata=...)``."""
    unknown = set(keywords) - _KEYWORDS
    if unknown:
        raise TypeError(f"unknown constraint(s): {', '.join(sorted(unknown))}")
    return keywords


_FIELDS: dict[type[Any], tuple[tuple[dataclasses.Field[Any], Any, bool], ...]] = {}


def _fields(model: type[Any]) -> tuple[tuple[dataclasses.Field[Any], Any, bool], ...]:
    """(field, resolved annotation, required) for each field of the dataclass ``model``."""
    if model in _FIELDS:
        return _FIELDS[model]
    hints = get_type_hints(model)
    _FIELDS[model] = tuple(
        (
            f,
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(model)
    )
    return _FIELDS[model]


_MEMBERS: dict[Any, tuple[Any, ...] | None] = {}


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The members of a union annotation (``None`` if ``tp`` is not a union); cached, as
    ``get_origin`` is most of the cost of loading a bulk body."""
    if tp not in _MEMBERS:
        is_union = get_origin(tp) in (Union, types.UnionType)
        _MEMBERS[tp] = get_args(tp) if is_union else None
    return _MEMBERS[tp]


def _is_unset(tp: Any) -> bool:
    return get_origin(tp) is Literal and get_args(tp) == (UNSET,)


# -- validation ------------------------------------------------------------------------


def load(model: type[T], data: Any, where: str = "") -> T:
    """``data`` (decoded JSON) as a ``model``: exactly its required fields, maybe its
    optional ones, each of its type and within its constraints; else Invalid (400)."""
    if not isinstance(data, dict):
        raise Invalid(f"{where or 'request body'} must be a JSON object")
    fields = _fields(model)
    prefix = f"{where}: " if where else ""
    unknown = set(data) - {f.name for f, _, _ in fields}
    if unknown:
        raise Invalid(f"{prefix}unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    missing = {f.name for f, _, required in fields if required} - set(data)
    if missing:
        raise Invalid(f"{prefix}missing field(s): {', '.join(sorted(missing))}")
    values: dict[str, Any] = {}
    for f, tp, _ in fields:
        if f.name in data:
            path = f"{where}.{f.name}" if where else f.name
            values[f.name] = _value(tp, data[f.name], path, f.metadata)
    return model(**values)


def _wrong(path: str) -> Invalid:
    return Invalid(f"field {path!r} has the wrong type")


def _value(tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    if tp is str and type(value) is str and not meta:  # the common case, first
        return value
    members = _members(tp)
    if members is not None:
        if value is None and type(None) in members:
            return None
        rest = [m for m in members if m is not type(None) and not _is_unset(m)]
        if len(rest) != 1:
            raise TypeError(f"{path}: only X | None | Unset unions are supported")
        return _value(rest[0], value, path, meta)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if type(value) is not bool:
            raise _wrong(path)
    elif tp is int or tp is float:
        number_types = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            raise _wrong(path)
        _check_bounds(value, path, meta)
    elif tp is str:
        if not isinstance(value, str):
            raise _wrong(path)
        _check_string(value, path, meta)
    elif origin is Literal:
        choices = get_args(tp)
        if not isinstance(value, str):
            raise _wrong(path)
        if value not in choices:
            raise Invalid(f"{path} must be one of {', '.join(choices)}, got {value[:40]!r}")
    elif origin is list:
        if not isinstance(value, list):
            raise _wrong(path)
        (item,) = get_args(tp)
        return [_value(item, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _wrong(path)
        args = get_args(tp)
        item = args[1] if args else Any
        if "check" in meta:
            meta["check"](value)
        keys = meta.get("keys")
        out = {}
        for k, v in value.items():
            if keys is not None and not re.fullmatch(keys, k):
                raise Invalid(f"{path} key {k[:40]!r} must match {keys}")
            out[k] = _value(item, v, f"{path}[{k[:40]!r}]", {})
        return out
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return load(tp, value, path)
    else:
        raise TypeError(f"{path}: unsupported annotation {tp!r}")
    return value


def _check_bounds(value: float, path: str, meta: Mapping[str, Any]) -> None:
    """The declared interval; NaN and infinities are outside every bounded one."""
    low = meta.get("minimum", meta.get("exclusiveMinimum"))
    high = meta.get("maximum", meta.get("exclusiveMaximum"))
    if low is None and high is None:
        return
    ok = math.isfinite(value)
    if "minimum" in meta:
        ok = ok and value >= meta["minimum"]
    if "exclusiveMinimum" in meta:
        ok = ok and value > meta["exclusiveMinimum"]
    if "maximum" in meta:
        ok = ok and value <= meta["maximum"]
    if "exclusiveMaximum" in meta:
        ok = ok and value < meta["exclusiveMaximum"]
    if not ok:
        interval = (
            ("[" if "minimum" in meta else "(")
            + ("-inf" if low is None else f"{low:g}")
            + ", "
            + ("inf" if high is None else f"{high:g}")
            + ("]" if "maximum" in meta else ")")
        )
        raise Invalid(f"{path} must be in {interval}, got {str(value)[:40]}")


def _check_string(value: str, path: str, meta: Mapping[str, Any]) -> None:
    if "check" in meta:
        meta["check"](value)
    if "maxLength" in meta and len(value) > meta["maxLength"]:
        raise Invalid(f"{path} is longer than {meta['maxLength']} characters")
    if "pattern" in meta and not re.search(meta["pattern"], value):
        raise Invalid(f"{path} {value[:80]!r} does not match {meta['pattern']}")


# -- the document ----------------------------------------------------------------------


def json_schema(model: type[Any], *, closed: bool = True) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1) of the dataclass ``model``: what ``load`` accepts.
    ``closed=False`` for answers that may carry more than the model (writes add what
    they changed to ``Version``)."""
    properties = {}
    for f, tp, _ in _fields(model):
        prop = _schema(tp)
        prop.update({k: v for k, v in f.metadata.items() if k not in _NOT_SCHEMA})
        if "keys" in f.metadata:
            prop["propertyNames"] = {"pattern": f.metadata["keys"]}
        properties[f.name] = prop
    return {
        "type": "object",
        **({"additionalProperties": False} if closed else {}),
        "properties": properties,
        "required": [f.name for f, _, required in _fields(model) if required],
    }


def _schema(tp: Any) -> dict[str, Any]:
    members = _members(tp)
    if members is not None:
        rest = [m for m in members if m is not type(None) and not _is_unset(m)]
        (inner,) = rest
        schema = _schema(inner)
        if type(None) in members:
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
            else:
                schema["type"] = [schema["type"], "null"]
        return schema
    origin = get_origin(tp)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp is Any:
        return {}
    if tp in simple:
        return {"type": simple[tp]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _schema(get_args(tp)[0])}
    if origin is dict or tp is dict:
        args = get_args(tp)
        if not args or args[1] is Any:
            return {"type": "object"}
        return {"type": "object", "additionalProperties": _schema(args[1])}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return json_schema(tp)
    raise TypeError(f"unsupported annotation {tp!r}")
