"""The routing table: one immutable, versioned answer to "which pod owns guild G?".

Placement, in order of precedence:

1. a **guild pin** (operator or planner) sends one guild to a named pod;
2. in shard-keyed mode (``shard_count`` set), a **shard pin** sends a whole Discord
   shard to a named pod (this is how rebalancing moves load without touching the ring);
3. otherwise the **ring** decides: by shard (``(guild_id >> 22) % shard_count``) when
   ``shard_count`` is set, so that the pod owning a shard is the pod whose gateway
   session receives that shard's events; by guild id when it is ``None`` (bots that
   only take HTTP interactions).

Only ``active`` pods are placed on the ring. ``draining`` pods keep what is pinned to
them but receive no ring placement. ``offline`` pods stay on the ring: offline is a
liveness fact, not a change of ownership, because the guild's rows live on that pod's
volume; callers (the proxy) answer 503 rather than send the guild somewhere empty.

How a pinned guild's events reach its pod: Discord delivers a guild's events only to
sessions of its shard, and allows several sessions per shard. So a pod connects to the
shards it owns *and* to the shards of guilds pinned to it (:meth:`RoutingTable.shards_for`),
and every pod processes an event only when ``table.owner(guild_id)`` names itself. Each
event is then processed by exactly one pod, whichever sessions saw it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import repeat
from operator import mod, rshift
from types import MappingProxyType
from typing import Any

from .hashring import (
    Algorithm,
    EmptyRingError,
    HashRing,
    check_node_name,
    check_weight,
    override_filter,
)
from .snowflake import MAX_GUILD_ID, MAX_SNOWFLAKE, InvalidGuildId, parse_guild_id, shard_for

__all__ = [
    "FORMAT_VERSION",
    "MAX_SHARD_COUNT",
    "NoRouteError",
    "Pod",
    "PodState",
    "Route",
    "RouteReason",
    "RoutingTable",
    "TableFormatError",
    "ring_nodes",
]

FORMAT_VERSION = 1
MAX_SHARD_COUNT = 1 << 16


class PodState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    OFFLINE = "offline"


class RouteReason(StrEnum):
    PIN = "pin"
    SHARD = "shard"
    RING = "ring"


class NoRouteError(LookupError):
    """No pod can own the guild: the ring is empty and nothing pins it."""


class TableFormatError(ValueError):
    """A serialized routing table that cannot be loaded; the message says where."""


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    state: PodState = PodState.ACTIVE
    weight: float = 1.0
    url: str | None = None

    def __post_init__(self) -> None:
        check_node_name(self.name)
        object.__setattr__(self, "state", PodState(self.state))
        object.__setattr__(
            self, "weight", float(check_weight(self.name, self.weight, Algorithm.SLOTS))
        )
        if self.url is not None and not isinstance(self.url, str):
            raise ValueError(f"url of pod {self.name!r} must be a string or None")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a guild goes and why: what ``X-Modbot-*`` headers and ``route`` show."""

    guild_id: int
    pod: str
    reason: RouteReason
    shard: int | None
    migrating: bool
    epoch: int
    pod_state: PodState
    version: int


# RoutingTable.route fills Routes through the slots directly (a frozen dataclass's
# __init__ costs 1.1 µs; this, 0.5 µs): same object, same equality and hash
_new_route = object.__new__
(
    _set_gid,
    _set_pod,
    _set_reason,
    _set_shard,
    _set_migrating,
    _set_epoch,
    _set_state,
    _set_version,
) = (getattr(Route, name).__set__ for name in Route.__slots__)


class RoutingTable:
    """An immutable snapshot. Derive changed tables with :meth:`evolve` and friends;
    the control plane, not the library, assigns versions."""

    __slots__ = (
        "_algorithm",
        "_epochs",
        "_migrating",
        "_migrating_shards",
        "_pins",
        "_pods",
        "_ring",
        "_shard_count",
        "_shard_owners",
        "_shard_pins",
        "_shards_by_pod",
        "_version",
        "owner",
    )

    _ring: HashRing
    owner: Callable[[int], str]
    """The routing hot path: ``owner(guild_id) -> pod name`` for an already parsed
    ``int`` id. No validation, no allocation; raises :class:`NoRouteError` only when
    the ring is empty and the guild is unpinned. Use :meth:`route` for the reason."""

    def __init__(
        self,
        pods: Iterable[Pod] = (),
        *,
        version: int = 0,
        shard_count: int | None = None,
        algorithm: Algorithm | str = Algorithm.SLOTS,
        pins: Mapping[int, str] | Mapping[str, str] | Mapping[int | str, str] = {},
        shard_pins: Mapping[int, str] = {},
        migrating: Mapping[int, str] | Mapping[str, str] | Mapping[int | str, str] = {},
        migrating_shards: Iterable[int] = (),
        epochs: Mapping[int, int] = {},
        previous: RoutingTable | None = None,
        assignment: str | None = None,
    ) -> None:
        """``previous`` and ``assignment`` matter to ``quota`` tables only, whose ring
        depends on history: ``previous`` (the table this one replaces) makes a change
        of pods or weights move the fewest keys; ``assignment`` reloads a snapshot's
        placement (:meth:`to_dict`). Other algorithms are functions of the pods alone."""
        if type(version) is not int or version < 0:
            raise ValueError(f"version must be a non-negative int, got {version!r}")
        if shard_count is not None and (
            type(shard_count) is not int or not 1 <= shard_count <= MAX_SHARD_COUNT
        ):
            raise ValueError(
                f"shard_count must be 1..{MAX_SHARD_COUNT} or None, got {shard_count!r}"
            )
        pod_map: dict[str, Pod] = {}
        for pod in pods:
            if not isinstance(pod, Pod):
                raise TypeError(f"pods must be Pod instances, got {type(pod).__name__}")
            if pod.name in pod_map:
                raise ValueError(f"pod {pod.name!r} listed twice")
            pod_map[pod.name] = pod
        self._version = version
        self._shard_count = shard_count
        self._pods = MappingProxyType(dict(sorted(pod_map.items())))
        self._ring = _ring(
            ring_nodes(pod_map.values()),
            algorithm,
            None if previous is None else previous._ring,
            assignment,
        )
        self._algorithm = self._ring.algorithm
        names = {name: name for name in pod_map}  # interned: 1M pins share 10 strings

        def known(pod: object, what: str) -> str:
            if not isinstance(pod, str) or pod not in names:
                raise ValueError(f"{what} names unknown pod {pod!r}")
            return names[pod]

        fast = _fast_pins(pins, names)
        if fast is None:  # something is off: redo it item by item, for the error
            fast = {_pin_key(g): known(p, f"pin of guild {g}") for g, p in pins.items()}
        self._pins: dict[int, str] = fast
        self._shard_pins = {
            self._check_shard(s): known(p, f"pin of shard {s}") for s, p in shard_pins.items()
        }
        if not isinstance(migrating, Mapping):
            raise TypeError("migrating maps guild ids to their target pods")
        self._migrating: dict[int, str] = {
            parse_guild_id(g): known(t, f"migration target of guild {g}")
            for g, t in migrating.items()
        }
        self._migrating_shards = frozenset(self._check_shard(s) for s in migrating_shards)
        self._epochs: dict[int, int] = {}
        for g, epoch in epochs.items():
            if type(epoch) is not int or epoch < 0:
                raise ValueError(f"epoch of guild {g} must be a non-negative int, got {epoch!r}")
            if epoch:
                self._epochs[parse_guild_id(g)] = epoch
        self._shards_by_pod: dict[str, tuple[int, ...]] | None = None
        self._shard_owners: list[str | None] = []
        if shard_count is None and len(self._ring):
            self.owner = self._ring.getter(self._pins, frozen=True)
        elif shard_count is None:
            self.owner = _pins_only_owner(self._pins)
        else:
            self._shard_owners = [
                self._shard_pins.get(s) or self._ring_owner(s) for s in range(shard_count)
            ]
            self.owner = _shard_keyed_owner(self._pins, self._shard_owners, shard_count)
            # eagerly, here: tables are built in worker threads, shards_for() is read on
            # event loops (the gateway's session manager), and 1M pins take a moment
            self._shards_by_pod = self._group_shards(shard_count)

    def _group_shards(self, shard_count: int) -> dict[str, tuple[int, ...]]:
        by_pod: dict[str, set[int]] = {name: set() for name in self._pods}
        for shard, owner in enumerate(self._shard_owners):
            if owner is not None:
                by_pod[owner].add(shard)
        # (pod, shard) pairs of every pin, deduplicated at C speed: few distinct pairs
        shards = map(mod, map(rshift, self._pins, repeat(22)), repeat(shard_count))
        for owner, shard in set(zip(self._pins.values(), shards)):
            by_pod[owner].add(shard)
        for gid, target in self._migrating.items():  # the target listens before the flip
            by_pod[target].add(shard_for(gid, shard_count))
        return {name: tuple(sorted(s)) for name, s in by_pod.items()}

    def _check_shard(self, shard: object) -> int:
        if self._shard_count is None:
            raise ValueError("shard pins and migrating shards need a shard_count")
        if type(shard) is not int or not 0 <= shard < self._shard_count:
            raise ValueError(f"shard {shard!r} is not in 0..{self._shard_count - 1}")
        return shard

    def _ring_owner(self, key: int) -> str | None:
        try:
            return self._ring.get(key)
        except EmptyRingError:
            return None

    # -- reading ------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def shard_count(self) -> int | None:
        return self._shard_count

    @property
    def ring(self) -> HashRing:
        return self._ring

    @property
    def pods(self) -> Mapping[str, Pod]:
        return self._pods

    @property
    def pins(self) -> Mapping[int, str]:
        return MappingProxyType(self._pins)

    @property
    def shard_pins(self) -> Mapping[int, str]:
        return MappingProxyType(self._shard_pins)

    @property
    def migrating(self) -> Mapping[int, str]:
        """Guilds being migrated, with the pod each is moving to."""
        return MappingProxyType(self._migrating)

    @property
    def migrating_shards(self) -> frozenset[int]:
        return self._migrating_shards

    @property
    def epochs(self) -> Mapping[int, int]:
        return MappingProxyType(self._epochs)

    def route(self, guild_id: int | str) -> Route:
        """The owner of ``guild_id`` with the reason; parses and validates the id.

        On the proxy's request path: the owner comes from :attr:`owner` (pins, shard
        pins and the ring in one call) and the Route is filled in without the frozen
        dataclass's ``__init__`` (8 ``object.__setattr__`` calls): 2.5 -> 1.0 µs a
        call, measured with ``benchmarks/proxy_bench.py``'s in-process twin."""
        if type(guild_id) is int and 0 < guild_id <= MAX_GUILD_ID:
            gid = guild_id
        else:
            gid = parse_guild_id(guild_id)
        try:
            pod = self.owner(gid)
        except EmptyRingError:
            raise NoRouteError(f"guild {gid} has no owner: no active pods and no pin") from None
        shard_count = self._shard_count
        if shard_count is None:
            shard = None
            migrating = gid in self._migrating
        else:
            shard = (gid >> 22) % shard_count
            migrating = gid in self._migrating or shard in self._migrating_shards
        if gid in self._pins:
            reason = RouteReason.PIN
        elif shard is not None and shard in self._shard_pins:
            reason = RouteReason.SHARD
        else:
            reason = RouteReason.RING
        route = _new_route(Route)
        _set_gid(route, gid)
        _set_pod(route, pod)
        _set_reason(route, reason)
        _set_shard(route, shard)
        _set_migrating(route, migrating)
        _set_epoch(route, self._epochs.get(gid, 0) if self._epochs else 0)
        _set_state(route, self._pods[pod].state)
        _set_version(route, self._version)
        return route

    def shard_owner(self, shard: int) -> str | None:
        """The pod that owns ``shard`` (by shard pin or ring), in shard-keyed mode."""
        if self._shard_count is None:
            raise ValueError("this table keys by guild id: it has no shards")
        return self._shard_owners[self._check_shard(shard)]

    def shards_for(self, pod: str) -> tuple[int, ...]:
        """Shard ids ``pod`` must open a gateway session for: the shards it owns, the shards
        of guilds pinned to it (see the module docstring) and the shards of guilds being
        migrated to it. Empty when the table keys by guild id."""
        if self._shards_by_pod is None:
            return ()
        return self._shards_by_pod.get(pod, ())

    def pinned_to(self, pod: str) -> list[int]:
        """Guild ids pinned to ``pod``, ascending."""
        return sorted(g for g, p in self._pins.items() if p == pod)

    # -- deriving -----------------------------------------------------------------------

    def evolve(self, **changes: Any) -> RoutingTable:
        """A copy with the named constructor arguments replaced."""
        current: dict[str, Any] = {
            "pods": self._pods.values(),
            "version": self._version,
            "shard_count": self._shard_count,
            "algorithm": self._algorithm,
            "pins": self._pins,
            "shard_pins": self._shard_pins,
            "migrating": self._migrating,
            "migrating_shards": self._migrating_shards,
            "epochs": self._epochs,
        }
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"unknown table fields: {', '.join(sorted(unknown))}")
        current.update(changes)
        return RoutingTable(**current, previous=self)

    def with_pin(self, guild_id: int | str, pod: str) -> RoutingTable:
        return self.evolve(pins={**self._pins, parse_guild_id(guild_id): pod})

    def without_pin(self, guild_id: int | str) -> RoutingTable:
        gid = parse_guild_id(guild_id)
        if gid not in self._pins:
            raise KeyError(f"guild {gid} is not pinned")
        return self.evolve(pins={g: p for g, p in self._pins.items() if g != gid})

    def with_pod(self, pod: Pod) -> RoutingTable:
        """Adds ``pod``, or replaces the pod of that name (state, weight, url)."""
        return self.evolve(pods=[*(p for p in self._pods.values() if p.name != pod.name), pod])

    def without_pod(self, name: str) -> RoutingTable:
        if name not in self._pods:
            raise KeyError(f"pod {name!r} is not in the table")
        if name in self._pins.values() or name in self._shard_pins.values():
            raise ValueError(f"pod {name!r} still has pins; move them first")
        return self.evolve(pods=[p for p in self._pods.values() if p.name != name])

    # -- serialization ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form. Guild ids are strings: JSON numbers lose bits past 2**53.
        A ``quota`` table also carries its ring's ``assignment``."""
        data = {
            "format": FORMAT_VERSION,
            "version": self._version,
            "algorithm": self._algorithm.value,
            "shard_count": self._shard_count,
            "pods": {
                p.name: {"state": p.state.value, "weight": p.weight, "url": p.url}
                for p in self._pods.values()
            },
            "pins": {str(g): p for g, p in self._pins.items()},
            "shard_pins": {str(s): p for s, p in self._shard_pins.items()},
            "migrating": {str(g): t for g, t in self._migrating.items()},
            "migrating_shards": sorted(self._migrating_shards),
            "epochs": {str(g): e for g, e in self._epochs.items()},
        }
        assignment = self._ring.assignment
        if assignment is not None:
            data["assignment"] = assignment
        return data

    def to_json(self) -> str:
        """Canonical JSON: equal tables give byte-equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingTable:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TableFormatError(f"routing table is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> RoutingTable:
        return _load(data)

    # -- protocol -----------------------------------------------------------------------

    def _key(self) -> tuple[object, ...]:
        return (
            self._version,
            self._algorithm,
            self._shard_count,
            tuple(self._pods.values()),
            self._pins,
            self._shard_pins,
            self._migrating,
            self._migrating_shards,
            self._epochs,
            self._ring,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        mode = "guild-keyed" if self._shard_count is None else f"{self._shard_count} shards"
        return (
            f"<RoutingTable v{self._version} {self._algorithm.value} {mode}: "
            f"{len(self._pods)} pods, {len(self._pins)} pins, {len(self._shard_pins)} shard pins>"
        )


def ring_nodes(pods: Iterable[Pod]) -> dict[str, float]:
    """The ring's members and weights: every pod but the draining ones."""
    return {p.name: p.weight for p in pods if p.state is not PodState.DRAINING}


def _ring(
    nodes: dict[str, float],
    algorithm: Algorithm | str,
    previous: HashRing | None,
    assignment: str | None,
) -> HashRing:
    """The table's ring; the previous table's when the ring's nodes did not change."""
    if (
        previous is not None
        and assignment is None
        and previous.algorithm == algorithm
        and dict(previous.nodes) == nodes
    ):
        return previous
    if algorithm == Algorithm.QUOTA:
        if previous is not None and previous.algorithm is not Algorithm.QUOTA:
            previous = None  # a change of algorithm: dealt afresh
        return HashRing(nodes, algorithm=algorithm, previous=previous, assignment=assignment)
    return HashRing(nodes, algorithm=algorithm, assignment=assignment)


def _pin_key(value: object) -> int:
    try:
        return parse_guild_id(value)
    except InvalidGuildId as exc:
        raise InvalidGuildId(value, f"in pins: {exc.reason}") from None


def _fast_pins(pins: Mapping[Any, str], names: dict[str, str]) -> dict[int, str] | None:
    """Validate and intern a large pin map with C-level passes (1M pins in ~0.3 s).

    Returns ``None`` when any key or pod is off, and the caller redoes the work item by
    item to name the culprit."""
    if not pins:
        return {}
    if not set(pins.values()) <= names.keys():
        return None
    kinds = set(map(type, pins))
    if kinds == {int}:
        keys: list[int] = list(pins)
    elif kinds == {str}:
        texts = list(pins)
        try:
            keys = list(map(int, texts))
        except ValueError:
            return None
        if list(map(str, keys)) != texts:  # signs, spaces, "_", leading zeros, non-ASCII
            return None
    else:
        return None
    if min(keys) < 1 or max(keys) > MAX_SNOWFLAKE:
        return None
    return dict(zip(keys, map(names.__getitem__, pins.values())))


def _pins_only_owner(pins: dict[int, str]) -> Callable[[int], str]:
    def owner(guild_id: int) -> str:
        pod = pins.get(guild_id)
        if pod is None:
            raise NoRouteError(f"guild {guild_id} has no owner: no active pods and no pin")
        return pod

    return owner


def _shard_keyed_owner(
    pins: dict[int, str], shard_owners: list[str | None], shard_count: int
) -> Callable[[int], str]:
    get = pins.get
    if None not in shard_owners:
        owners: list[str] = shard_owners  # type: ignore[assignment]
        flags = override_filter(pins)
        if flags is not None:

            def filtered(
                guild_id: int,
                flags: bytearray = flags,
                get: Callable[[int], str | None] = get,
                owners: list[str] = owners,
            ) -> str:
                if flags[guild_id % 8_388_593]:
                    return get(guild_id) or owners[(guild_id >> 22) % shard_count]
                return owners[(guild_id >> 22) % shard_count]

            return filtered

        def owner(
            guild_id: int,
            pins: dict[int, str] = pins,
            owners: list[str] = owners,
            n: int = shard_count,
        ) -> str:  # "in" then "[]": no method call on the common miss
            return pins[guild_id] if guild_id in pins else owners[(guild_id >> 22) % n]

        return owner

    def owner_or_raise(guild_id: int) -> str:
        pod = get(guild_id) or shard_owners[(guild_id >> 22) % shard_count]
        if pod is None:
            raise NoRouteError(f"guild {guild_id} has no owner: no active pods and no pin")
        return pod

    return owner_or_raise


# -- loading with precise errors -------------------------------------------------------------

_FIELDS = {
    "format",
    "version",
    "algorithm",
    "shard_count",
    "pods",
    "pins",
    "shard_pins",
    "migrating",
    "migrating_shards",
    "epochs",
}


def _load(data: object) -> RoutingTable:
    if not isinstance(data, dict):
        raise TableFormatError("routing table must be a JSON object")
    if data.get("format") != FORMAT_VERSION:
        raise TableFormatError(
            f"format: unsupported routing table format {data.get('format')!r} "
            f"(this library reads {FORMAT_VERSION})"
        )
    missing = _FIELDS - set(data)
    if missing:
        raise TableFormatError(f"missing fields: {', '.join(sorted(missing))}")
    extra = set(data) - _FIELDS - {"assignment"}
    if extra:
        raise TableFormatError(f"unknown fields: {', '.join(sorted(extra))}")
    version = _int(data["version"], "version")
    shard_count = None if data["shard_count"] is None else _int(data["shard_count"], "shard_count")
    pods = []
    for name, spec in _obj(data["pods"], "pods").items():
        where = f"pods[{name!r}]"
        spec = _obj(spec, where)
        if set(spec) != {"state", "weight", "url"}:
            raise TableFormatError(f"{where}: expected exactly state, weight, url")
        try:
            state = PodState(spec["state"])
        except ValueError:
            raise TableFormatError(f"{where}.state: unknown state {spec['state']!r}") from None
        weight = spec["weight"]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise TableFormatError(f"{where}.weight: not a number: {weight!r}")
        url = spec["url"]
        if url is not None and not isinstance(url, str):
            raise TableFormatError(f"{where}.url: must be a string or null")
        try:
            pods.append(Pod(name, state, weight, url))
        except ValueError as exc:  # InvalidWeight, a bad name: the reader gets one kind
            raise TableFormatError(f"{where}: {exc}") from None
    pins = _obj(data["pins"], "pins")  # validated (fast) by the constructor
    if not all(isinstance(p, str) for p in pins.values()):
        raise TableFormatError("pins: pod names must be strings")
    shard_pins = {
        _int(_decimal(s, "shard_pins"), "shard_pins key"): p
        for s, p in _obj(data["shard_pins"], "shard_pins").items()
    }
    migrating = {_gid(g, "migrating"): t for g, t in _obj(data["migrating"], "migrating").items()}
    migrating_shards = [
        _int(s, "migrating_shards") for s in _list(data["migrating_shards"], "migrating_shards")
    ]
    epochs = {
        _gid(g, "epochs"): _int(e, f"epochs[{g!r}]")
        for g, e in _obj(data["epochs"], "epochs").items()
    }
    try:
        return RoutingTable(
            pods,
            version=version,
            shard_count=shard_count,
            algorithm=_str(data["algorithm"], "algorithm"),
            pins=pins,
            shard_pins=shard_pins,
            migrating=migrating,
            migrating_shards=migrating_shards,
            epochs=epochs,
            assignment=_assignment(data),
        )
    except (ValueError, TypeError) as exc:
        raise TableFormatError(str(exc)) from None


def _assignment(data: dict[str, Any]) -> str | None:
    """A quota table must carry its placement, and only a quota table may."""
    quota = data["algorithm"] == Algorithm.QUOTA.value
    if quota and not data["pods"]:
        if "assignment" in data:
            raise TableFormatError("assignment: a table without pods has no placement")
        return None
    if quota != ("assignment" in data) and any(
        spec.get("state") != PodState.DRAINING.value
        for spec in data["pods"].values()
        if isinstance(spec, dict)
    ):
        raise TableFormatError(
            "assignment: required for quota tables with pods on the ring, refused otherwise"
        )
    value = data.get("assignment")
    if value is not None and not isinstance(value, str):
        raise TableFormatError("assignment: expected a string")
    return value


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TableFormatError(f"{where}: expected an object")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TableFormatError(f"{where}: expected an array")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise TableFormatError(f"{where}: expected a string")
    return value


def _int(value: object, where: str) -> int:
    if type(value) is not int:
        raise TableFormatError(f"{where}: expected an integer, got {value!r}")
    return value


def _decimal(value: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise TableFormatError(f"{where}: key {value!r} is not a decimal number")
    return int(value)


def _gid(value: object, where: str) -> int:
    if not isinstance(value, str):
        raise TableFormatError(f"{where}: guild ids are decimal strings, got {value!r}")
    try:
        return parse_guild_id(value)
    except InvalidGuildId as exc:
        raise TableFormatError(f"{where}: {exc}") from None
