"""A gateway pod: one replica of the bot, serving the guilds the routing table gives it.

May import: the standard library, ``modbot_ring``, the shared packages ``modbot_client`` and
``modbot_runtime`` and third-party packages of the ``server`` extra. Never another service
(``config_store``, ``router_proxy``) or the CLI (tests/test_layering.py).
"""
