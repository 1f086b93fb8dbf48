"""The "never" arrows of the package layout (issue 16), checked on the source by an AST walk:

- the library (``modbot_ring``) imports nothing of ours;
- a service (``config_store``, ``router_proxy``, ``gateway_app``) never imports another one,
  except the shared client package ``config_store.client`` (which itself imports no service);
- nothing but the CLI modules imports the CLI.

An import is any ``import x``, ``from x import y`` (relative ones resolved), a call of
``importlib.import_module``/``__import__`` with a literal name, and any string literal that
names one of our modules (``"router_proxy.server"``, ``"pkg.mod:attr"``): the CLI's SERVERS
table loads the services that way, and static tools would not see it. Imports under
``TYPE_CHECKING`` and inside functions count too: the arrow exists either way.

Today's violations are listed in KNOWN_DEBT with a reason each. The test fails on any new
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
SERVICES = ("config_store", "router_proxy", "gateway_app")
PACKAGES = (LIBRARY, *SERVICES)
# the shared client package (issue 16: "config_store/client is the shared client package")
CLIENT = "config_store.client"
# the CLI: every server's entry point and the operator commands (they still live inside
# config_store; issue 16 moves them into one CLI package on top)
CLI = (
    "config_store.cli",
    "config_store.sim_cli",
    "config_store.cutover_cli",
    "config_store.devstack",
)
IMPORT_CALLS = {"import_module", "__import__", "find_spec"}
MODULE_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")

_CLI_DEBT = "the CLI still lives in config_store (issue 16 moves it to its own package on top)"
_RUNNER_DEBT = "run_forever is shared plumbing still in config_store.runtime (issue 16: plumbing)"
# (importing module, imported module) -> why it is still allowed. Only ever remove entries.
KNOWN_DEBT: dict[tuple[str, str], str] = {
    ("config_store.cli", "router_proxy.settings"): _CLI_DEBT,
    ("config_store.cli", "router_proxy.server"): _CLI_DEBT,
    ("config_store.cli", "gateway_app.settings"): _CLI_DEBT,
    ("config_store.cli", "gateway_app.server"): _CLI_DEBT,
    ("config_store.cli", "gateway_app.discord_sim.settings"): _CLI_DEBT,
    ("config_store.cli", "gateway_app.discord_sim.server"): _CLI_DEBT,
    ("config_store.cutover_cli", "gateway_app.commands_sync"): _CLI_DEBT,
    ("router_proxy.server", "config_store.runtime"): _RUNNER_DEBT,
    ("gateway_app.server", "config_store.runtime"): _RUNNER_DEBT,
    ("gateway_app.discord_sim.server", "config_store.runtime"): _RUNNER_DEBT,
}


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    line: int
    how: str  # import | from | call | string


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


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
    src, dst = edge.source, edge.target
    src_top, dst_top = src.partition(".")[0], dst.partition(".")[0]
    if src_top == LIBRARY and dst_top != LIBRARY:
        return "the library imports nothing of ours"
    if any(_within(dst, c) for c in CLI) and not any(_within(src, c) for c in CLI):
        return "only the CLI imports the CLI"
    if _within(src, CLIENT) and dst_top in SERVICES and not _within(dst, CLIENT):
        return "the shared client package imports no service"
    if (
        src_top in SERVICES
        and dst_top in SERVICES
        and src_top != dst_top
        and not _within(dst, CLIENT)
    ):
        return "a service never imports another service"
    return None


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


def test_the_scan_sees_the_cli_loading_servers_by_import_string(repo_edges: list[Edge]) -> None:
    edges = [e for e in repo_edges if e.source == "config_store.cli"]
    assert {e.target for e in edges if e.how == "string"} >= {
        "router_proxy.server",
        "gateway_app.server",
    }


def test_every_top_level_package_says_what_it_may_import() -> None:
    for package in (*PACKAGES, CLIENT):
        init = ROOT.joinpath(*package.split("."), "__init__.py")
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), f"{init}: say what the package may import"


# -- the walk itself, on made-up sources --------------------------------------------------------

SAMPLE_MODULES = {
    "modbot_ring",
    "modbot_ring.table",
    "config_store",
    "config_store.cli",
    "config_store.runtime",
    "config_store.client",
    "config_store.client.flags",
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
from config_store import runtime
from config_store.client.flags import Flag
from .settings import X
from . import settings
from .. import modbot_ring  # beyond the top package: nothing of ours
import importlib
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from gateway_app.server import Pod

def later():
    importlib.import_module("gateway_app.server")
    __import__("config_store.runtime")
    mod = importlib.import_module(name)  # not a literal: the literal is caught where it is

SERVERS = {"proxy": ("router_proxy.settings", "router_proxy.server:run")}
NOT_MODULES = ["router_proxy.nothing", "gateway_app", "config_store.runtime is slow", "a.b"]
"""
    assert _edges("router_proxy.proxy", text) == {
        ("router_proxy.server", "import"),
        ("gateway_app", "import"),
        ("config_store.runtime", "from"),
        ("config_store.client.flags", "from"),
        ("router_proxy.settings", "from"),
        ("gateway_app.server", "from"),
        ("gateway_app.server", "call"),
        ("config_store.runtime", "call"),
        ("router_proxy.settings", "string"),
        ("router_proxy.server", "string"),
    }


def test_relative_imports_resolve_from_packages_and_modules() -> None:
    assert _resolve("config_store.client", True, 1, "flags") == "config_store.client.flags"
    assert _resolve("config_store.client.flags", False, 1, None) == "config_store.client"
    assert _resolve("config_store.client.flags", False, 2, "runtime") == "config_store.runtime"
    assert _resolve("config_store.cli", False, 3, "x") == ""


@pytest.mark.parametrize(
    ("source", "target", "rule"),
    [
        ("modbot_ring.table", "config_store.client", "the library imports nothing of ours"),
        ("router_proxy.proxy", "gateway_app.server", "a service never imports another service"),
        ("gateway_app.server", "config_store.runtime", "a service never imports another service"),
        ("gateway_app.server", "config_store.cli", "only the CLI imports the CLI"),
        ("config_store.api", "config_store.devstack", "only the CLI imports the CLI"),
        ("config_store.client.flags", "config_store.store", "the shared client package imports no service"),
        ("config_store.client.flags", "router_proxy.auth", "the shared client package imports no service"),
        ("router_proxy.proxy", "config_store.client.table_client", None),
        ("config_store.cli", "config_store.devstack", None),
        ("config_store.api", "modbot_ring", None),
        ("modbot_ring.planner", "modbot_ring.table", None),
        ("gateway_app.discord_sim.app", "gateway_app.storage", None),
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
