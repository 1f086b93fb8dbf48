"""The control plane: the config service, its store and migrator, the publisher.

May import: the standard library, ``modbot_ring``, its own modules and third-party packages
of the ``server`` extra. Never ``router_proxy`` or ``gateway_app``, and none of its modules but
the CLI (``cli``, ``sim_cli``, ``cutover_cli``, ``devstack``) imports the CLI; the CLI, which
still lives here and loads every server, is the listed exception (tests/test_layering.py).
Its subpackage ``client`` is the shared client package the other services may import.
"""
