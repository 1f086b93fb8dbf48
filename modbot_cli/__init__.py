"""``modbot-ring``, the one command: every server's entry point and the operator commands.

The top of the layout and its only package that imports everything: ``main`` (the parser,
``serve``, the operator commands), ``sim`` (``modbot-ring sim``), ``cutover``
(``import-monolith``, ``commands sync``) and ``devstack`` (``dev up``). It imports the
services with plain ``import`` statements, inside the functions that need them, so that
``--help`` and the operator commands stay fast and work without the ``server`` extra.

May import: anything of ours (``modbot_ring``, ``modbot_runtime``, ``modbot_client``, the
services, ``discord_sim``) and third-party packages of the ``server`` extra, those lazily.
Nothing else of ours imports this package (tests/test_layering.py).
"""
