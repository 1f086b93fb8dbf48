"""The shared client surface of the control plane.

The proxy and the gateway pods import this package and nothing else of
``config_store``: the routing-table client, the HTTP client for the config service,
flag handling and the observability helpers every service mounts.

May import: the standard library, ``modbot_ring``, its own modules and third-party packages
of the ``server`` extra; no service (not even the rest of ``config_store``) and not the CLI
(tests/test_layering.py).
"""
