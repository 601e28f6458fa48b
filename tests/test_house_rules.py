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


# ---- no public function with more than 8 parameters ------------------------------------------------

MAX_PARAMETERS = 8


def counted_parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[str]:
    """The parameters the rule counts: every named one, positional or keyword-only; not ``self``
    or ``cls`` of a method, not ``*args`` or ``**kwargs`` (settings passed as keywords to a
    function that takes a settings record are checked against the record's fields)."""
    args = fn.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    if in_class and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def public_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(qualified name, node, is a method) of every public function, method and constructor: names
    not starting with ``_`` (``__init__`` is a constructor and counts), in public classes; functions
    nested in functions are private to them and not listed. A dataclass's generated constructor is
    a record's, not a keyword list, and is not listed."""
    out = []

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, child.name if owner is None else f"{owner}.{child.name}")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_") or child.name == "__init__":
                    out.append((f"{owner}.{child.name}" if owner else child.name, child, owner is not None))

    visit(tree, None)
    return out


def test_the_parameter_rule_counts_what_it_says():
    tree = ast.parse("class A:\n    def __init__(self, a, b, *, c, **kw): ...\n    def _p(self, *a): ...\n"
                     "def f(a, b=1, *args, c=2): ...\ndef _g(a): ...\nclass _H:\n    def m(self, a): ...\n")
    found = {name: counted_parameters(node, method) for name, node, method in public_functions(tree)}
    assert found == {"A.__init__": ["a", "b", "c"], "f": ["a", "b", "c"]}


def test_no_public_function_takes_more_than_8_parameters():
    offenders = []
    for rel, tree in _modules():
        if any(part.startswith("_") and part not in ("__init__.py", "__main__.py") for part in rel.split("/")):
            continue  # a private module
        for name, node, method in public_functions(tree):
            n = len(counted_parameters(node, method))
            if n > MAX_PARAMETERS:
                offenders.append(f"{rel}:{node.lineno} {name}: {n} parameters")
    assert not offenders, (f"public functions with more than {MAX_PARAMETERS} parameters (pass a settings record, "
                           "see xlsteer.settings):\n" + "\n".join(offenders))
