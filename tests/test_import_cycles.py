"""No import circle in src/xlsteer: the import graph, built from the source, has no cycle.

The graph is read with ``ast``. A module gets an edge to every module that importing it runs:

* module-level imports, also those inside module-level ``if``/``else``, ``try``/``except``/
  ``finally``, ``with`` and ``for`` blocks;
* ``from . import x`` and ``from .pkg import x`` point at the submodule ``pkg.x`` when there is
  one, else at ``pkg`` (``x`` is then a name defined in ``pkg``);
* importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so it also points at those
  packages, except at the importing module's own packages, which Python has already started.

Not counted: imports under ``if TYPE_CHECKING:`` (never run), and imports inside functions and
methods: those are lazy, they run when the function is called, after every module has finished
importing, so they cannot close a circle at import time.

The issue that asked for this test counted 8 circles on commit bfe1248 (2026-12-06). That count
is reproduced by ``python tests/test_import_cycles.py --all``: every import statement anywhere
(inside functions and under ``TYPE_CHECKING`` too), no implied package edges, and one circle per
strongly connected component with more than one module (the largest, 10 modules, was
``interventions/__init__`` <-> ``registry._load_builtins``). Counted that way there were 8 before
the registries became lazy tables; by the rule of this test (module level only) there were none,
because every circle went through a lazy or a ``TYPE_CHECKING`` import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every .py file under ``src/package``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, lazy: bool, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
            return
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]


def import_graph(src: Path = SRC, package: str = "xlsteer", *, lazy: bool = False, type_checking: bool = False,
                 packages: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring for the rules)."""
    mods = _modules(src, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree, lazy, type_checking):
            for target in _targets(node, module, is_pkg, set(mods)):
                parts = target.split(".")
                implied = [".".join(parts[:i]) for i in range(1, len(parts))] if packages else []
                for t in [target, *implied]:
                    own_package = (module + ".").startswith(t + ".") and packages
                    if t in mods and t != module and not own_package:
                        graph[module].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 100 and "xlsteer.interventions.registry" in graph["xlsteer.interventions.vector"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_follows_the_rules_of_its_docstring(tmp_path):
    files = {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "A = 1\ntry:\n    from . import b\nexcept ImportError:\n    b = None\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n"
                    "def f():\n    from . import a\n",
        "pkg/c.py": "import pkg.sub.d\n",
        "pkg/sub/__init__.py": "from ..c import *\n",
        "pkg/sub/d.py": "from .. import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set(), "pkg.c": {"pkg.sub.d", "pkg.sub"},
                     "pkg.sub": {"pkg.c"}, "pkg.sub.d": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.c", "pkg.sub", "pkg.c"]  # c imports pkg.sub.d, which runs pkg/sub/__init__
    lazy = import_graph(tmp_path, "pkg", lazy=True, type_checking=True, packages=False)
    assert lazy["pkg.b"] == {"pkg.a", "pkg.c"} and lazy["pkg.c"] == {"pkg.sub.d"}
    assert circles(lazy) == [["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d"]]


if __name__ == "__main__":  # python tests/test_import_cycles.py [--all]: the circles, by this test's rule or all
    every = "--all" in sys.argv
    found = circles(import_graph(lazy=every, type_checking=every, packages=not every))
    for comp in found:
        print(f"{len(comp):3d} modules: {' '.join(comp)}")
    print(f"{len(found)} import circle(s) ({'every import' if every else 'module-level imports'})")
