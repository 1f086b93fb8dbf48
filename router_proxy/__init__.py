"""The router proxy: routes each request to the pod that owns its guild.

May import: the standard library, ``modbot_ring``, the shared packages ``modbot_client`` and
``modbot_runtime`` and third-party packages of the ``server`` extra. Never another service
(``config_store``, ``gateway_app``), ``discord_sim`` or the CLI (tests/test_layering.py).
"""
