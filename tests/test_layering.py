"""The "never" arrows of the package layout (issue 16), checked on the source by an AST walk.

Each top-level package is one role, and the arrows only point down (MAY_IMPORT):

- the library (``modbot_ring``) imports nothing of ours;
- the plumbing (``modbot_runtime``) imports only the library;
- the clients (``modbot_client``) import only the library and the plumbing;
- a service (``config_store``, ``router_proxy``, ``gateway_app``) imports those three, never
  another service, the simulator or the CLI;
- the simulator (``discord_sim``) is its own role: the services never import it, nor it them;
- the CLI (``modbot_cli``) imports everything, and nothing but the CLI imports the CLI.

An import is any ``import x``, ``from x import y`` (relative ones resolved), a call of
``importlib.import_module``/``__import__`` with a literal name, and any string literal that
names one of our modules (``"router_proxy.server"``, ``"pkg.mod:attr"``): static tools would
not see an arrow drawn that way, so none may be (the CLI imports the servers with plain
``import`` statements). Imports under ``TYPE_CHECKING`` and inside functions count too: the
arrow exists either way.

Any violation still tolerated is listed in KNOWN_DEBT with a reason. The test fails on any new
violation and on any entry that no longer occurs, so that the list can only shrink.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "modbot_ring"
RUNTIME = "modbot_runtime"  # shared plumbing: flags, observability, the server runner, auth
CLIENT = "modbot_client"  # the clients of the control plane and of the pods
SERVICES = ("config_store", "router_proxy", "gateway_app")
SIMULATOR = "discord_sim"  # the Discord simulator: a role of its own
CLI = "modbot_cli"  # the one command on top: every server's entry point, the operator commands
# every top-level package of ours, each one role (the roots the scan walks)
PACKAGES = (LIBRARY, RUNTIME, CLIENT, *SERVICES, SIMULATOR, CLI)
# role -> the roles it may import (its own included)
_SHARED = {LIBRARY, RUNTIME, CLIENT}
MAY_IMPORT: dict[str, set[str]] = {
    LIBRARY: {LIBRARY},
    RUNTIME: {LIBRARY, RUNTIME},
    CLIENT: {LIBRARY, RUNTIME, CLIENT},
    **{service: {*_SHARED, service} for service in SERVICES},
    SIMULATOR: {*_SHARED, SIMULATOR},
    CLI: set(PACKAGES),
}
IMPORT_CALLS = {"import_module", "__import__", "find_spec"}
MODULE_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")

# (importing module, imported module) -> why it is still allowed. Only ever remove entries.
KNOWN_DEBT: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    line: int
    how: str  # import | from | call | string


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def role(module: str) -> str:
    """The role of a module: its top-level package."""
    return module.partition(".")[0]


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a relative ``from`` import (level dots) in module ``source``."""
    if level == 0:
        return module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    if not base:  # beyond the top-level package: points at nothing of ours
        return ""
    return ".".join([*base, module] if module else base)


def _is_ours(name: str, roots: Iterable[str]) -> bool:
    return any(_within(name, r) for r in roots)


def imports_of(
    source: str, is_package: bool, text: str, modules: set[str], roots: Iterable[str] = PACKAGES
) -> Iterator[Edge]:
    """Every import of one of our modules that module ``source`` makes, by any of the ways
    the module docstring lists. ``modules`` are the dotted names that exist (for ``from x
    import y``: y may be a submodule, and for string literals: only real module paths)."""
    roots = tuple(roots)
    called: set[int] = set()  # literal arguments of import calls: seen as calls, not strings
    for node in ast.walk(ast.parse(text)):  # breadth first: a call before its arguments
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_ours(alias.name, roots):
                    yield Edge(source, alias.name, node.lineno, "import")
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, is_package, node.level, node.module)
            if not base or not _is_ours(base, roots):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Edge(source, sub if sub in modules else base, node.lineno, "from")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in IMPORT_CALLS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    called.add(id(arg))
                    target = arg.value.partition(":")[0]
                    if _is_ours(target, roots):
                        yield Edge(source, target, node.lineno, "call")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in called
            and MODULE_PATH.fullmatch(node.value)
        ):
            target = node.value.partition(":")[0]
            if target in modules:
                yield Edge(source, target, node.lineno, "string")


def violation(edge: Edge) -> str | None:
    """Which "never" arrow ``edge`` is, or None when it is allowed."""
    src, dst = role(edge.source), role(edge.target)
    if dst in MAY_IMPORT.get(src, set()):
        return None
    if src == LIBRARY:
        return "the library imports nothing of ours"
    if dst == CLI:
        return "only the CLI imports the CLI"
    if src == RUNTIME:
        return "the plumbing imports only the library"
    if src == CLIENT:
        return "the clients import only the library and the plumbing"
    if src in SERVICES and dst in SERVICES:
        return "a service never imports another service"
    if SIMULATOR in (src, dst):
        return "the simulator and the services never import each other"
    return f"{src} may not import {dst}"  # a role the table does not know


def scan(root: Path, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    """Every edge between our modules in the source tree under ``root``."""
    packages = tuple(packages)
    files = sorted(f for p in packages for f in (root / p).rglob("*.py"))
    names = {f: module_name(f, root) for f in files}
    modules = {name for name, _ in names.values()}
    edges: list[Edge] = []
    for path, (name, is_package) in names.items():
        edges.extend(imports_of(name, is_package, path.read_text(), modules, packages))
    return edges


def violations(edges: Iterable[Edge]) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for edge in edges:
        rule = violation(edge)
        if rule is not None:
            where = f"{edge.source}:{edge.line} ({edge.how}): {rule}"
            found.setdefault((edge.source, edge.target), []).append(where)
    return found


# -- the repository ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_edges() -> list[Edge]:
    return scan(ROOT)


def test_no_new_violation_of_the_never_arrows(repo_edges: list[Edge]) -> None:
    found = violations(repo_edges)
    new = {k: v for k, v in found.items() if k not in KNOWN_DEBT}
    assert new == {}, "new layering violations (fix them; KNOWN_DEBT only shrinks):\n" + "\n".join(
        line for lines in new.values() for line in lines
    )


def test_known_debt_lists_only_what_still_occurs(repo_edges: list[Edge]) -> None:
    found = violations(repo_edges)
    paid = sorted(k for k in KNOWN_DEBT if k not in found)
    assert paid == [], f"these no longer occur: remove them from KNOWN_DEBT: {paid}"


def test_every_known_debt_entry_says_why() -> None:
    for key, reason in KNOWN_DEBT.items():
        assert reason.strip() and "\n" not in reason, key


def test_the_cli_imports_every_server_with_plain_imports(repo_edges: list[Edge]) -> None:
    plain = {e.target for e in repo_edges if role(e.source) == CLI and e.how in ("import", "from")}
    assert plain >= {
        "config_store.service",
        "router_proxy.server",
        "gateway_app.server",
        "discord_sim.server",
    }


def test_no_module_loads_ours_by_a_name_in_a_string(repo_edges: list[Edge]) -> None:
    """An arrow drawn with importlib or a "pkg.module" string is one type checkers, linters and
    readers do not see: every arrow is a plain import."""
    hidden = [e for e in repo_edges if e.how in ("call", "string")]
    assert hidden == []


def test_every_top_level_package_has_a_role() -> None:
    """A new top-level package must be given a role here, or it would escape every rule."""
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert found == set(PACKAGES) == set(MAY_IMPORT)


def test_every_top_level_package_says_what_it_may_import() -> None:
    for package in PACKAGES:
        init = ROOT.joinpath(*package.split("."), "__init__.py")
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), f"{init}: say what the package may import"


# -- the walk itself, on made-up sources --------------------------------------------------------

SAMPLE_MODULES = {
    "modbot_ring",
    "modbot_ring.table",
    "modbot_runtime",
    "modbot_runtime.runner",
    "modbot_runtime.flags",
    "config_store",
    "modbot_cli.main",
    "router_proxy",
    "router_proxy.server",
    "router_proxy.settings",
    "gateway_app",
    "gateway_app.server",
}


def _edges(source: str, text: str, is_package: bool = False) -> set[tuple[str, str]]:
    return {(e.target, e.how) for e in imports_of(source, is_package, text, SAMPLE_MODULES)}


def test_the_walk_sees_every_form_of_import() -> None:
    text = """
import router_proxy.server
import json, gateway_app as g
from modbot_runtime import runner
from modbot_runtime.flags import Flag
from .settings import X
from . import settings
from .. import modbot_ring  # beyond the top package: nothing of ours
import importlib
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from gateway_app.server import Pod

def later():
    importlib.import_module("gateway_app.server")
    __import__("modbot_runtime.runner")
    mod = importlib.import_module(name)  # not a literal: the literal is caught where it is

SERVERS = {"proxy": ("router_proxy.settings", "router_proxy.server:run")}
NOT_MODULES = ["router_proxy.nothing", "gateway_app", "modbot_runtime.runner is slow", "a.b"]
"""
    assert _edges("router_proxy.proxy", text) == {
        ("router_proxy.server", "import"),
        ("gateway_app", "import"),
        ("modbot_runtime.runner", "from"),
        ("modbot_runtime.flags", "from"),
        ("router_proxy.settings", "from"),
        ("gateway_app.server", "from"),
        ("gateway_app.server", "call"),
        ("modbot_runtime.runner", "call"),
        ("router_proxy.settings", "string"),
        ("router_proxy.server", "string"),
    }


def test_relative_imports_resolve_from_packages_and_modules() -> None:
    assert _resolve("modbot_client", True, 1, "config_api") == "modbot_client.config_api"
    assert _resolve("gateway_app.features.track", False, 1, None) == "gateway_app.features"
    assert _resolve("gateway_app.features.track", False, 2, "storage") == "gateway_app.storage"
    assert _resolve("modbot_cli.main", False, 3, "x") == ""


@pytest.mark.parametrize(
    ("source", "target", "rule"),
    [
        ("modbot_ring.table", "modbot_client", "the library imports nothing of ours"),
        ("modbot_ring.table", "modbot_runtime.flags", "the library imports nothing of ours"),
        ("router_proxy.proxy", "gateway_app.server", "a service never imports another service"),
        ("gateway_app.server", "config_store.store", "a service never imports another service"),
        ("gateway_app.server", "modbot_cli.main", "only the CLI imports the CLI"),
        ("config_store.api", "modbot_cli.devstack", "only the CLI imports the CLI"),
        ("modbot_client.table_client", "modbot_cli", "only the CLI imports the CLI"),
        ("discord_sim.server", "modbot_cli.main", "only the CLI imports the CLI"),
        ("modbot_runtime.runner", "modbot_cli.main", "only the CLI imports the CLI"),
        ("modbot_runtime.flags", "modbot_client.config_api", "the plumbing imports only the library"),
        ("modbot_runtime.runner", "gateway_app.server", "the plumbing imports only the library"),
        ("modbot_client.config_api", "config_store.store", "the clients import only the library and the plumbing"),
        ("modbot_client.table_client", "router_proxy.auth", "the clients import only the library and the plumbing"),
        ("discord_sim.app", "gateway_app.storage", "the simulator and the services never import each other"),
        ("gateway_app.storage", "discord_sim.world", "the simulator and the services never import each other"),
        ("discord_sim.app", "modbot_runtime.atomic", None),
        ("router_proxy.proxy", "modbot_client.table_client", None),
        ("gateway_app.server", "modbot_runtime.runner", None),
        ("modbot_client.table_client", "modbot_runtime.observability", None),
        ("modbot_runtime.observability", "modbot_ring", None),
        ("modbot_cli.main", "modbot_cli.devstack", None),
        ("modbot_cli.main", "router_proxy.server", None),
        ("modbot_cli.cutover", "gateway_app.commands_sync", None),
        ("modbot_cli.main", "discord_sim.server", None),
        ("modbot_cli.devstack", "modbot_ring", None),
        ("config_store.api", "modbot_ring", None),
        ("modbot_ring.planner", "modbot_ring.table", None),
        ("discord_sim.app", "discord_sim.world", None),
    ],
)  # fmt: skip
def test_each_never_arrow(source: str, target: str, rule: str | None) -> None:
    assert violation(Edge(source, target, 1, "import")) == rule


def test_a_new_violation_in_a_tree_is_reported_with_its_line(tmp_path: Path) -> None:
    """A confused contributor: the proxy reaches into the pod, by a plain and a string import."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('"""May import: nothing."""\n')
    (tmp_path / "gateway_app" / "server.py").write_text("")
    (tmp_path / "router_proxy" / "proxy.py").write_text(
        "import os\nfrom gateway_app import server\nTARGET = 'gateway_app.server:run'\n"
    )
    (tmp_path / "modbot_ring" / "table.py").write_text("from ..config_store import x\n")
    found = violations(scan(tmp_path))
    assert list(found) == [("router_proxy.proxy", "gateway_app.server")]
    assert found[("router_proxy.proxy", "gateway_app.server")] == [
        "router_proxy.proxy:2 (from): a service never imports another service",
        "router_proxy.proxy:3 (string): a service never imports another service",
    ]


def test_a_file_that_does_not_parse_fails_the_scan(tmp_path: Path) -> None:
    (tmp_path / "modbot_ring").mkdir()
    (tmp_path / "modbot_ring" / "broken.py").write_text("from . import (\n")
    with pytest.raises(SyntaxError):
        scan(tmp_path, ["modbot_ring"])
