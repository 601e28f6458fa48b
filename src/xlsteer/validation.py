"""Structure and type checks of the JSON that xlsteer reads back from files, and of the item
limits users give (standard library only).

Why: a file's metadata is user input. A list where an object belongs, a site given as a number,
a string where a number belongs or JSON nested a thousand levels deep must end in one line that
names the file and the field, not in an AttributeError deep inside a method. The checks are
plain functions (no pydantic) because interventions and statistics load on machines that have
only torch and the standard library.

A *kind* is a function ``value -> str | None`` returning what was expected when the value does
not fit (``None`` when it does); :func:`check_fields` applies a mapping ``field -> kind``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from .errors import ArtifactError, UsageError

Kind = Callable[[Any], "str | None"]
MAX_DEPTH = 64  # deeper JSON is refused before any recursive code walks it
MAX_INT = 2**53  # larger integers do not survive a float round trip and overflow tensor sizes


def json_depth_exceeds(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``obj`` (parsed JSON) nests lists/objects deeper than ``limit`` (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def non_finite_field(obj: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinite number inside ``obj`` (iterative), else None."""
    stack = [(obj, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path or "(top level)"
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def finite(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) <= 1e300
    return None if ok else "a finite number"


def integer(lo: int = -MAX_INT, hi: int = MAX_INT) -> Kind:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return None if ok else f"an integer in {lo}..{hi}"
    return check


def one_of(*choices: Any) -> Kind:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (str, int, float, bool, type(None))) and value in choices
        return None if ok else "one of " + ", ".join(map(repr, choices))
    return check


def obj(value: Any) -> str | None:
    return None if isinstance(value, dict) else "an object"


def list_of(kind: Kind, *, min_len: int = 0, max_len: int | None = None, unique: bool = False) -> Kind:
    def check(value: Any) -> str | None:
        inner = kind(None) or "items"
        want = f"a list of {inner}" + (f" (at least {min_len})" if min_len else "") + \
            (f" (exactly {max_len})" if max_len is not None and max_len == min_len else "")
        if not isinstance(value, list) or len(value) < min_len or (max_len is not None and len(value) > max_len):
            return want
        if any(kind(v) is not None for v in value):
            return want
        if unique and len({repr(v) for v in value}) != len(value):
            return want + " without repeats"
        return None
    return check


def dict_of(kind: Kind) -> Kind:
    def check(value: Any) -> str | None:
        want = f"an object of {kind(None) or 'values'}"
        if not isinstance(value, dict) or any(kind(v) is not None for v in value.values()):
            return want
        return None
    return check


def optional(kind: Kind) -> Kind:
    def check(value: Any) -> str | None:
        return None if value is None else kind(value)
    return check


def check_fields(doc: Any, fields: Mapping[str, Kind], *, what: str, fix: str,
                 required: Iterable[str] | None = None) -> dict[str, Any]:
    """Check ``doc`` is an object whose ``fields`` have the right kinds; raise one line otherwise.

    ``required`` (default: every field) must be present; the others are checked when present.
    ``what`` names the file ("intervention file x.safetensors"), ``fix`` says how to repair it.
    """
    if not isinstance(doc, dict):
        raise ArtifactError(f"{what}: the metadata is {_type_name(doc)}, not an object; {fix}")
    needed = set(fields) if required is None else set(required)
    missing = sorted(k for k in needed if k not in doc)
    if missing:
        raise ArtifactError(f"{what} lacks field(s) {', '.join(missing)}; {fix}")
    for name, kind in fields.items():
        if name in doc:
            expected = kind(doc[name])
            if expected is not None:
                raise ArtifactError(f"{what}: field '{name}' must be {expected}, got {_type_name(doc[name])}; {fix}")
    return doc


def check_limit(limit: int | None) -> None:
    """``limit`` (the first N items, texts or rows) is None or a positive integer; UsageError otherwise.

    One check for every reader that takes a limit (tasks, parallel corpora, fits, settings records).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"limit must be a positive integer, got {limit!r}")
