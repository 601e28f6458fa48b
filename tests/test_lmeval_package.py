"""The lm-eval bridge is one package, ``xlsteer.lmeval``: only its ``harness`` module touches
lm-eval (the adapter subclasses lm-eval's public ``LM`` class, nothing more), and its modules
import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import xlsteer

ROOT = Path(xlsteer.__file__).parent
PACKAGE = ROOT / "lmeval"
#: The one use of lm-eval outside the harness: the public base class every lm-eval model subclasses.
ALLOWED = {("lmeval/model.py", "lm_eval.api.model")}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, level) of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            out.append((base, node.level))
            if node.level and not base:  # from . import harness
                out += [(a.name, node.level) for a in node.names]
    return out


def test_only_the_harness_imports_lm_eval():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "lmeval/harness.py":
            continue
        for name, level in _imports(path):
            if level == 0 and (name == "lm_eval" or name.startswith("lm_eval.")) and (rel, name) not in ALLOWED:
                offenders.append(f"{rel}: import {name}")
    assert not offenders, "lm-eval used outside xlsteer/lmeval/harness.py:\n" + "\n".join(offenders)


def _package_graph() -> dict[str, set[str]]:
    mods = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for path in PACKAGE.glob("*.py"):
        for name, level in _imports(path):
            if level == 1 and name.split(".")[0] in mods:
                graph[path.stem].add(name.split(".")[0])
            elif level == 0 and name.startswith("xlsteer.lmeval."):
                graph[path.stem].add(name.split(".")[2])
    return graph


def test_the_bridge_modules_import_each_other_without_a_cycle():
    graph = _package_graph()
    assert graph["docs"] >= {"harness", "config"} and "docs" not in graph["config"]  # the graph is read

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = cycle_from(nxt, path + [nxt])
            if found:
                return found
        return None

    for start in sorted(graph):
        cycle = cycle_from(start, [start])
        assert cycle is None, " -> ".join(cycle)

