"""Rules of the house that the source itself must keep, checked by reading it (ast), not by running it.

* Each name lives where it is defined: a module imports a name only to use it. A name imported
  and not used is a re-export shim (``from .engine_cache import intervention_hash  # noqa: F401``
  left behind by a module split), which gives one fact two addresses; package ``__init__.py``
  files, whose job is a package's public surface, are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import xlsteer

ROOT = Path(xlsteer.__file__).parent


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(ROOT.rglob("*.py"))]


def _annotation_names(tree: ast.AST) -> set[str]:
    """Names inside string annotations (``"Item"``, ``"list[Template]"``)."""
    out: set[str] = set()
    annotations: list[ast.AST | None] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                   *(x for x in (args.vararg, args.kwarg) if x)]]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    for ann in annotations:
        for sub in ast.walk(ann) if ann is not None else ():
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                try:
                    parsed = ast.parse(sub.value, mode="eval")
                except SyntaxError:
                    continue
                out |= {n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)}
    return out


def _used_names(tree: ast.AST) -> set[str]:
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return used | _annotation_names(tree)


def unused_from_imports(tree: ast.Module) -> list[str]:
    """Names a module binds with ``from X import ...`` (at any depth) and never uses."""
    used = _used_names(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            out += [f"line {node.lineno}: {a.asname or a.name}" for a in node.names
                    if a.name != "*" and (a.asname or a.name) not in used]
    return out


def test_the_rule_sees_a_re_export_and_a_use():
    shim = ast.parse("from .engine_cache import intervention_hash, _Store  # noqa: F401\nx = _Store()\n")
    assert unused_from_imports(shim) == ["line 1: intervention_hash"]
    typed = ast.parse("from .base import Item\ndef f(items: 'list[Item]') -> None: ...\n")
    assert unused_from_imports(typed) == []


def test_no_module_re_exports_what_it_imports():
    offenders = [f"{rel} {what}" for rel, tree in _modules() if not rel.endswith("__init__.py")
                 for what in unused_from_imports(tree)]
    assert not offenders, ("names imported and never used (import them from where they are defined):\n"
                           + "\n".join(offenders))
