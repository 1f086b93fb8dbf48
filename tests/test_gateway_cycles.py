"""No import cycles among gateway_app's modules (issue 16).

An import is any ``import``/``from ... import`` of a gateway_app module, at the top or
inside a function (a lazy import hides a cycle from the interpreter, not from the reader);
imports under ``if TYPE_CHECKING:`` are left out: they never run. ``from . import x``
counts as an import of the submodule ``x`` when there is one, else of the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateway_app"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """dotted name -> (file, is a package) for every module of the package under root."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                yield from _imports_in(child)
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the gateway_app modules it imports (at run time)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(name, is_package, node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_gateway_app_has_no_import_cycle() -> None:
    graph = import_graph()
    assert graph.get("gateway_app.server"), "the walk found nothing"
    assert cycles(graph) == [], "modules that import each other (directly or around a loop)"


def test_the_http_handlers_do_not_import_the_pod() -> None:
    """They see the pod through ``podview.PodView``; ``server`` builds it and adds them."""
    graph = import_graph()
    for handler in ("api", "migration_api", "monolith_api"):
        assert "gateway_app.server" not in graph[f"gateway_app.{handler}"], handler


def test_the_walk_sees_cycles_and_skips_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def later():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import X\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n"
        "else:\n    import gateway_app.a\n"
    )
    (pkg / "d.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from .a import x\nimport json\n"
    )
    graph = import_graph(tmp_path)
    assert graph["gateway_app.a"] == {"gateway_app.b"}
    assert graph["gateway_app.b"] == {"gateway_app.sub.c"}  # inside a function: counted
    assert graph["gateway_app.sub"] == {"gateway_app.sub.c"}
    assert graph["gateway_app.sub.c"] == {"gateway_app.a"}  # the else branch runs
    assert graph["gateway_app.d"] == set()
    assert cycles(graph) == [["gateway_app.a", "gateway_app.b", "gateway_app.sub.c"]]
    (pkg / "b.py").write_text("")
    assert cycles(import_graph(tmp_path)) == []
