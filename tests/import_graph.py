"""The import graph of our packages, read from the source (module-level and function-local imports alike).

Used by ``tests/test_architecture.py``. An edge ``a -> b`` means module ``a`` imports module ``b`` somewhere; importing
``b`` also runs the ``__init__`` of every package above it, so those packages are edges too, except the packages
that already contain ``a`` (Python has started them before ``a`` runs).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module named in the statement (resolved from relative form)
    names: tuple[str, ...]  # what ``from target import ...`` takes; empty for ``import target``
    lineno: int
    local: bool  # inside a function body


@dataclass
class Graph:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            for t in self.resolved(imp):
                out[imp.importer].add(t)
        return out

    def resolved(self, imp: Import) -> set[str]:
        """Our modules an import statement runs: the target or the submodules it names, plus their packages."""
        hits = {f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in self.modules}
        if imp.target in self.modules:
            hits.add(imp.target)
        own = _ancestors(imp.importer) | {imp.importer}
        for h in list(hits):
            hits |= {a for a in _ancestors(h) if a in self.modules}
        return hits - own


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def build_graph(root: Path, packages: list[str]) -> Graph:
    """Every ``.py`` file under ``root/<package>`` for each package, and every import statement in them."""
    modules = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = Graph(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            local = id(node) in local_nodes
            if isinstance(node, ast.Import):
                for a in node.names:
                    graph.imports.append(Import(name, a.name, (), node.lineno, local))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                graph.imports.append(Import(name, target, tuple(a.name for a in node.names), node.lineno, local))
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def private_imports(graph: Graph) -> list[str]:
    """``from <our module> import _name`` where ``_name`` is not a submodule: a private name crossing modules."""
    out = []
    for imp in graph.imports:
        if imp.target not in graph.modules:
            continue
        for n in imp.names:
            if n.startswith("_") and not n.startswith("__") and f"{imp.target}.{n}" not in graph.modules:
                out.append(f"{graph.modules[imp.importer]}:{imp.lineno}: from {imp.target} import {n}")
    return out


def unexplained_local_imports(graph: Graph, marker: str = "# lazy:") -> list[str]:
    """Function-local imports without a reason: each run of consecutive import statements inside a function needs
    ``marker`` on one of its lines or on the line just above it."""
    out = []
    for name, path in graph.modules.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for body in _bodies(f):
                run: list[ast.stmt] = []
                for stmt in body + [None]:  # type: ignore[list-item]
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                        continue
                    if run:
                        first, last = run[0].lineno, run[-1].end_lineno or run[-1].lineno
                        text = lines[max(first - 2, 0): last]
                        if not any(marker in t for t in text):
                            out.append(f"{path}:{first}: {lines[first - 1].strip()}")
                        run = []
    return out


def _bodies(node: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list directly inside a function (its body and nested blocks, not nested functions)."""
    out = []
    for field_name in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(node, field_name, None)
        if isinstance(block, list) and block:
            if isinstance(block[0], ast.stmt):
                out.append(block)
            for child in block:
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    out += _bodies(child)
    return out
