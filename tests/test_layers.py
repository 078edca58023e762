"""No import cycles in torpor: a lower layer never imports an upper one, not even in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import torpor

ROOT = Path(torpor.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """torpor modules that ``path`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # ``from pkg import submodule`` imports the submodule; ``from mod import name``, mod
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("torpor") and name != "torpor":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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


def test_no_module_import_cycles() -> None:
    """Every torpor module can be imported without a cycle (so layers stay layers)."""
    assert cycles(import_graph()) == []


def test_lower_layers_do_not_import_upper_ones() -> None:
    """The seam's layering: backends, metering, gateway and autoscaling know nothing above them."""
    graph = import_graph()
    forbidden = {
        "torpor.backends": ("torpor.lifecycle", "torpor.platform", "torpor.api", "torpor.gateway"),
        "torpor.metering": ("torpor.lifecycle", "torpor.platform", "torpor.api"),
        "torpor.gateway": ("torpor.lifecycle", "torpor.platform", "torpor.api", "torpor.backends"),
        "torpor.autoscaling": ("torpor.lifecycle", "torpor.platform", "torpor.api",
                               "torpor.gateway"),
        "torpor.lifecycle": ("torpor.platform", "torpor.api"),
    }
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        for layer, uppers in forbidden.items() if module == layer or module.startswith(layer + ".")
        for imported in imported_set
        if any(imported == upper or imported.startswith(upper + ".") for upper in uppers)
    )
    assert wrong == []


def test_the_graph_sees_function_level_imports() -> None:
    """The scan is not blind: platform imports the local backend inside a function."""
    assert "torpor.backends.local" in import_graph()["torpor.platform"]
