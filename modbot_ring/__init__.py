"""modbot-ring: route Discord guilds to gateway pods.

Pure and dependency-free: no I/O, no imports beyond the standard library, so that
proxies, pods, operators' tools and other projects compute the same answer locally.
May import: the standard library and its own modules, nothing else (``pip install
modbot-ring`` brings no dependency; tests/test_layering.py, tests/test_packaging.py).

    >>> from modbot_ring import Pod, RoutingTable
    >>> table = RoutingTable([Pod("gateway-0"), Pod("gateway-1")], shard_count=4)
    >>> table.route(81384788765712384).pod in {"gateway-0", "gateway-1"}
    True
"""

from .balance import BalancePolicy, HotGuild, LoadView, SkewDetector, SkewState, measure
from .diff import Handoff, OwnerChange, TableDiff, diff, route_during
from .hashring import (
    MAX_WEIGHT,
    Algorithm,
    EmptyRingError,
    HashRing,
    InvalidWeight,
    check_weight,
    key_position,
)
from .planner import Move, Plan, PlanLimits, plan_rebalance
from .snowflake import MAX_GUILD_ID, MAX_SNOWFLAKE, InvalidGuildId, parse_guild_id, shard_for
from .table import (
    FORMAT_VERSION,
    NoRouteError,
    Pod,
    PodState,
    Route,
    RouteReason,
    RoutingTable,
    TableFormatError,
    ring_nodes,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_GUILD_ID",
    "MAX_SNOWFLAKE",
    "MAX_WEIGHT",
    "Algorithm",
    "BalancePolicy",
    "HotGuild",
    "LoadView",
    "SkewDetector",
    "SkewState",
    "measure",
    "EmptyRingError",
    "Handoff",
    "HashRing",
    "InvalidGuildId",
    "InvalidWeight",
    "check_weight",
    "Move",
    "Plan",
    "PlanLimits",
    "NoRouteError",
    "OwnerChange",
    "Pod",
    "PodState",
    "Route",
    "RouteReason",
    "RoutingTable",
    "TableDiff",
    "TableFormatError",
    "diff",
    "key_position",
    "parse_guild_id",
    "route_during",
    "plan_rebalance",
    "ring_nodes",
    "shard_for",
]

__version__ = "0.1.0"
