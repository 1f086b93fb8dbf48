"""The control plane: the config service, its store and migrator, the publisher.

May import: the standard library, ``modbot_ring``, the shared packages ``modbot_client`` and
``modbot_runtime``, its own modules and third-party packages of the ``server`` extra. Never
another service (``router_proxy``, ``gateway_app``), ``discord_sim`` or the CLI
(tests/test_layering.py).
"""
