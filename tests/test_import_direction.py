"""Imports between fcn_label's packages go one way: no package imports one that imports it back (issue 21).

Each package, and each top-level module, is a node; an edge is any import of another node, at module level
or inside a function (a lazy import is still a dependency). The graph must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fcn_label"


def _node(parts: tuple[str, ...]) -> str:
    return parts[0].removesuffix(".py")


def _graph() -> dict[str, dict[str, str]]:
    nodes = {_node((p.name,)) for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    nodes -= {"__init__", "__main__"}
    edges: dict[str, dict[str, str]] = {n: {} for n in nodes}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT).parts
        src = _node(rel)
        if src not in nodes:
            continue
        package = rel[:-1]  # the file's own package path inside fcn_label
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    mod = (*base, *(node.module.split(".") if node.module else ()))
                    targets = [mod] if node.module else [(*base, a.name) for a in node.names]
                elif node.module and node.module.startswith("fcn_label."):
                    targets = [tuple(node.module.split(".")[1:])]
            elif isinstance(node, ast.Import):
                targets = [tuple(a.name.split(".")[1:]) for a in node.names if a.name.startswith("fcn_label.")]
            for t in targets:
                if t and _node(t) in nodes and _node(t) != src:
                    edges[src].setdefault(_node(t), str(f.relative_to(ROOT.parent)))
    return edges


def _cycle(edges: dict[str, dict[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in edges[n]:
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    edges = _graph()
    cycle = _cycle(edges)
    where = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, "imports go both ways: " + "; ".join(where)


def test_the_graph_sees_the_imports_it_checks():
    """The checker is not vacuous: it finds known one-way edges, and a made-up back edge is a cycle."""
    edges = _graph()
    assert "datasets" in edges["train"] and "devices" in edges["predict"] and "markers" in edges["datasets"]
    assert _cycle({**edges, "datasets": {**edges["datasets"], "train": "made up"}}) is not None
