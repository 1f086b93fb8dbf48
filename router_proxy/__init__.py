"""The router proxy: routes each request to the pod that owns its guild.

May import: the standard library, ``modbot_ring``, the shared client package
``config_store.client`` and third-party packages of the ``server`` extra. Never
``gateway_app``, the rest of ``config_store`` (``config_store.runtime`` is listed debt) or the
CLI (tests/test_layering.py).
"""
