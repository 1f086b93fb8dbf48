"""A gateway pod (and, in ``discord_sim``, the local Discord simulator).

May import: the standard library, ``modbot_ring``, the shared client package
``config_store.client`` and third-party packages of the ``server`` extra. Never
``router_proxy``, the rest of ``config_store`` (``config_store.runtime`` is listed debt) or the
CLI (tests/test_layering.py).
"""
