"""Small plumbing every process shares: flags, observability, one server runner, auth.

``flags`` (``--flag`` beats ``$ENV`` beats the default), ``observability`` (JSON logs,
``/metrics``, ``/healthz``, ``/readyz``, request ids), ``runner`` (run a server until
SIGINT/SIGTERM), ``auth`` (bearer tokens compared in constant time) and ``atomic`` (state
files that survive a crash mid-write).

May import: the standard library, ``modbot_ring`` and third-party packages of the ``server``
extra. Never ``modbot_client``, a service (``config_store``, ``router_proxy``,
``gateway_app``), ``discord_sim`` or the CLI (tests/test_layering.py).
"""
