"""The local Discord simulator: what the pods and the proxy talk to instead of Discord.

A role of its own (``modbot-ring serve discord-sim``, ``dev up``, the tests): it answers as
Discord does, so nothing of the pod's may leak into it, and no service depends on it.

May import: the standard library, ``modbot_ring``, the shared packages ``modbot_runtime`` and
``modbot_client`` and third-party packages of the ``server`` extra. Never a service
(``config_store``, ``router_proxy``, ``gateway_app``) or the CLI (tests/test_layering.py).
"""
