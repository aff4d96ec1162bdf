"""The shape of the code: no import cycle, no private name crossing a module, the method never imports the server.

The graph is read from the source (``tests/import_graph.py``), function-local imports included, so a lazy import
cannot hide an edge. No allow-list: a new cycle or private import fails here with the file and line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import build_graph, cycles, private_imports, unexplained_local_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["safegene_runtime", "server"]


@pytest.fixture(scope="module")
def graph():
    return build_graph(REPO, PACKAGES)


def test_no_import_cycle(graph):
    found = cycles(graph.edges())
    assert not found, "import cycles (module-level and function-local imports):\n" + "\n".join(map(str, found))


def test_no_private_name_is_imported_from_another_module():
    # the study (experiments/) and the benchmarks use the packages like any user: public names only
    g = build_graph(REPO, PACKAGES + ["experiments", "bench"])
    found = [p for p in private_imports(g)]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_method_never_imports_the_server_or_vllm(graph):
    bad = [f"{graph.modules[i.importer]}:{i.lineno}: {i.target}" for i in graph.imports
           if i.importer.startswith("safegene_runtime")
           and (i.target.split(".")[0] in ("server", "vllm"))]
    assert not bad, "safegene_runtime must not depend on server/ or vLLM:\n" + "\n".join(bad)


def test_function_local_imports_say_why(graph):
    """A function-local import hides an edge from a reader; each one names its reason (``# lazy: ...``):
    a heavy or optional import (vLLM, transformers) that the code path around it does not always need."""
    found = unexplained_local_imports(graph)
    assert not found, "function-local imports without a '# lazy: <reason>' comment:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The checker itself: a two-module cycle through a package __init__, a private import, an unexplained lazy
    import, and the same package made clean."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import B\n")
    (pkg / "sub" / "b.py").write_text("from ..a import A\nB = 1\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n\nfrom .c import _hidden\nA = 1\n")
    (pkg / "c.py").write_text("_hidden = 1\n")
    g = build_graph(tmp_path, ["pkg"])
    assert cycles(g.edges()) == [["pkg.a", "pkg.sub", "pkg.sub.b"]]
    assert [p.split(": ", 1)[1] for p in private_imports(g)] == ["from pkg.c import _hidden"]
    assert len(unexplained_local_imports(g)) == 1
    # a submodule importing a sibling through its own package's __init__ is not a cycle (the package runs first)
    (pkg / "a.py").write_text("def f():\n    # lazy: only f needs it\n    from .sub import B\n    return B\n")
    (pkg / "sub" / "b.py").write_text("from . import c2\nB = 1\n")
    (pkg / "sub" / "c2.py").write_text("C = 2\n")
    g = build_graph(tmp_path, ["pkg"])
    assert cycles(g.edges()) == [] and private_imports(g) == [] and unexplained_local_imports(g) == []
