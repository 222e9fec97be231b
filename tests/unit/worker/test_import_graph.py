"""The import graph of appliance: no cycles at module level, none at all through the broker,
the records and the worker, and a consumer-process state that any of them may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import appliance

ROOT = Path(appliance.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _graph(with_functions: bool) -> dict[str, set[str]]:
    """module -> the appliance modules it imports (at module level, or anywhere)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

    def walk(node: ast.AST, found: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never executed
            if not with_functions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.update(
                    m
                    for name in imported(child)
                    if (m := resolve(name)) and name.startswith("appliance")
                )
            walk(child, found)

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        walk(ast.parse(path.read_text()), found)
        found.discard(name)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_module_imports_itself_back_at_import_time() -> None:
    assert _cycles(_graph(with_functions=False)) == []


def test_the_broker_records_and_worker_modules_import_no_cycle_even_inside_functions() -> None:
    layers = ("appliance.broker", "appliance.records", "appliance.worker")
    graph = {
        name: {m for m in deps if m.startswith(layers)}
        for name, deps in _graph(with_functions=True).items()
        if name.startswith(layers)
    }
    assert _cycles(graph) == []


def test_the_consumer_process_state_and_protocol_import_no_celery() -> None:
    code = (
        "import sys; import appliance.worker.consumers.process, "
        "appliance.worker.consumers.protocol; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'billiard'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
