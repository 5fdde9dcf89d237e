"""The package structure the design promises (the core: packages in layers, model code free of
parallelism, one train step):

- no import cycle between scaletrain's packages, counting imports inside functions too (a hidden
  cycle is still a cycle: it only moves the failure from import time to call time);
- library code never prints or exits: only `scaletrain.cli` (and `__main__`) do.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "scaletrain"


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        yield rel, package, ast.parse(path.read_text(encoding="utf-8"))


def package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], list[str]] = {}
    for rel, package, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if node.module == "scaletrain" else node.module
                         for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "scaletrain" and len(parts) > 1 and parts[1] != package:
                    edges.setdefault(package, set()).add(parts[1])
                    where.setdefault((package, parts[1]), []).append(f"{rel}:{node.lineno}")
    return edges, where


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages():
    edges, where = package_graph()
    found = cycles(edges)
    detail = [f"{a} -> {b}: {where[(a, b)][:3]}" for c in found for a in c for b in c if (a, b) in where]
    assert not found, "\n".join(detail)


def test_library_code_never_prints_or_exits():
    offenders = []
    for rel, package, tree in _modules():
        if package in ("cli", "__main__"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}: print()")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("exit", "_exit") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("sys", "os"):
                offenders.append(f"{rel}:{node.lineno}: {node.func.value.id}.{node.func.attr}()")
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                offenders.append(f"{rel}:{node.lineno}: SystemExit")
    assert not offenders, offenders
