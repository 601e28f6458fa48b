"""The parameters a method accepts from the command line, declared once with types and ranges.

Why: ``xlsteer fit -p KEY=VALUE`` and ``xlsteer compare -O METHOD.KEY=VALUE`` took any key and
any value; an unknown key was dropped, a wrong type or an out-of-range value failed after the
model had loaded, or was saved (a zero ``ref_norm`` erased the vector). A method now declares
its settable parameters where it is registered (``register_method(..., params={...})``, and
``MethodSpec(params=...)`` for the other ``compare`` rows); :func:`check_values` checks a whole
set of given values against them when the command line is parsed, before any model time:
unknown keys, wrong types and values out of range are one line (exit 2).

Only the standard library is imported here (the GPU-path constraint of ``xlsteer.interventions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UsageError

MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class Param:
    """One settable parameter: its ``kind`` and allowed values.

    Kinds: ``number`` (finite, within ``lo``/``hi``; ``open_lo``/``open_hi`` exclude the bound),
    ``integer`` (within ``lo``/``hi``), ``flag`` (true/false), ``choice`` (one of ``choices``),
    ``text``, ``numbers`` (a non-empty list of numbers in range), ``words`` (a list of strings
    or comma-separated text), ``layers`` (an integer, a list of them, ``"auto"`` or text such as
    ``"4-8"``), ``per_layer`` (a number in range, or an object of one per layer).
    ``optional``: ``null`` is accepted too.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    help: str = ""

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        what = {"number": "a number", "integer": "an integer", "flag": "true or false", "text": "text",
                "numbers": "a list of numbers", "words": "a list of names", "layers": "layers (6, [4, 8], 4-8)",
                "per_layer": "a number or {layer: number}"}[self.kind]
        return what + self._interval() + (" or null" if self.optional else "")

    def _interval(self) -> str:
        if self.lo is None and self.hi is None:
            return ""
        low = "(-inf" if self.lo is None else ("(" if self.open_lo else "[") + f"{self.lo:g}"
        high = "inf)" if self.hi is None else f"{self.hi:g}" + (")" if self.open_hi else "]")
        return f" in {low}, {high}"

    def _in_range(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return False
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if isinstance(x, int) and abs(x) > MAX_INT:
            return False
        if self.lo is not None and (x < self.lo or (self.open_lo and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.open_hi and x == self.hi)))

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (parsed JSON) is a value of this parameter."""
        if value is None:
            return self.optional
        k = self.kind
        if k == "number":
            return self._in_range(value)
        if k == "integer":
            return isinstance(value, int) and self._in_range(value)
        if k == "flag":
            return isinstance(value, bool)
        if k == "choice":
            return isinstance(value, (str, int, float)) and not isinstance(value, bool) and value in self.choices
        if k == "text":
            return isinstance(value, str) and 0 < len(value) <= 10000
        if k == "numbers":
            return isinstance(value, list) and 0 < len(value) <= 1000 and all(self._in_range(v) for v in value)
        if k == "words":
            return (isinstance(value, str) and bool(value.strip())) or (
                isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value))
        if k == "layers":
            return _layers_ok(value)
        if k == "per_layer":
            if isinstance(value, dict):
                return bool(value) and all(str(key).isdigit() and self._in_range(v) for key, v in value.items())
            return self._in_range(value)
        raise ValueError(f"unknown parameter kind {k!r}")


def _layers_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_INT
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT
                                   for v in value)
    return isinstance(value, str) and bool(value.strip()) and len(value) <= 1000


# ---- the constructors methods declare with ------------------------------------------------


def number(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False,
           optional: bool = False, help: str = "") -> Param:
    return Param("number", lo, hi, open_lo, open_hi, optional=optional, help=help)


def integer(lo: int | None = None, hi: int | None = None, *, optional: bool = False, help: str = "") -> Param:
    return Param("integer", lo, hi, optional=optional, help=help)


def choice(*values: Any, optional: bool = False, help: str = "") -> Param:
    return Param("choice", choices=tuple(values), optional=optional, help=help)


def flag(help: str = "") -> Param:
    return Param("flag", help=help)


def text(*, optional: bool = False, help: str = "") -> Param:
    return Param("text", optional=optional, help=help)


def numbers(lo: float | None = None, hi: float | None = None, help: str = "") -> Param:
    return Param("numbers", lo, hi, help=help)


def words(*, optional: bool = False, help: str = "") -> Param:
    return Param("words", optional=optional, help=help)


def layers(help: str = "") -> Param:
    return Param("layers", help=help)


def per_layer(lo: float | None = None, *, open_lo: bool = False, optional: bool = False, help: str = "") -> Param:
    return Param("per_layer", lo, open_lo=open_lo, optional=optional, help=help)


FRACTION = number(0, 1, open_lo=True)
QUANTILE = number(0, 1)
SEED = integer(0, 2**32 - 1)


def check_value(owner: str, key: str, value: Any, declared: Mapping[str, Param], shown: str | None = None) -> Any:
    """``value`` when ``key`` is declared and accepts it; else one line (UsageError) saying why."""
    if key not in declared:
        names = ", ".join(sorted(declared)) or "none"
        raise UsageError(f"{owner} has no parameter '{key}'; its parameters: {names}")
    param = declared[key]
    if not param.accepts(value):
        text_ = (shown if shown is not None else repr(value))[:60]
        raise UsageError(f"{owner} parameter {key}={text_} {_why(value)}; it must be {param.describe()}")
    return value


def _numbers_in(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [x for v in value for x in _numbers_in(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers_in(v)]
    return []


def _why(value: Any) -> str:
    """The kind of refusal, in the words a user searches for: not finite, out of range, wrong type."""
    nums = _numbers_in(value)
    if any(isinstance(x, float) and not math.isfinite(x) for x in nums):
        return "is not a finite number"
    if any(isinstance(x, int) and abs(x) > MAX_INT for x in nums):
        return f"is out of range (integers must lie within ±{MAX_INT})"
    if nums:
        return "is out of range or of the wrong type"
    return "has the wrong type"


def check_values(owner: str, given: Mapping[str, Any], declared: Mapping[str, Param]) -> dict[str, Any]:
    """Every given value checked (see :func:`check_value`)."""
    return {k: check_value(owner, k, v, declared) for k, v in given.items()}
