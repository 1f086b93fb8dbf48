"""The clients of the control plane and of the pods, shared by every service and the CLI.

The routing-table client (``table_client``, with the Redis key names of ``redis_keys``), the
HTTP client of the config service's API (``config_api``) and the wire schema both ends of a
mod-bot import agree on (``monolith_schema``: the importer in ``config_store`` and the pod).

May import: the standard library, ``modbot_ring``, ``modbot_runtime`` and third-party packages
of the ``server`` extra. Never a service (``config_store``, ``router_proxy``, ``gateway_app``),
``discord_sim`` or the CLI (tests/test_layering.py).
"""
