"""``xlsteer fit --param KEY=VALUE``: parsed as JSON, checked against the parameters the method
declares (name, type, range; :mod:`xlsteer.interventions.params`) before any work."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import UsageError

# Arguments ``fit`` passes to the method's fit function itself: not settable with --param.
_RESERVED = {
    "stats": "--stats-cache", "source": "--stats-cache", "lm": "--model", "data": "--data",
    "layers": "--layers", "langs": "--langs", "target_langs": "--langs", "anchor": "--anchor",
    "site": "--site", "meta": None, "n_layers": None, "pooling": "--pooling", "batch_size": "--batch-size",
    "max_length": "--max-length", "limit": "--limit", "parallel": None, "neurons": None,
}


def _parse_value(text: str) -> Any:
    """JSON when it parses (0.01, true, "unit", [1,2], {"6": 5}); else the text itself."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a (string) annotation such as ``float | None``; unknown ones pass."""
    words = set(re.findall(r"[A-Za-z_]+", annotation))
    kinds: list[Any] = []
    if "bool" in words:
        kinds.append(lambda v: isinstance(v, bool))
    if "float" in words:
        kinds.append(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if "int" in words:
        kinds.append(lambda v: isinstance(v, int) and not isinstance(v, bool))
    if "str" in words:
        kinds.append(lambda v: isinstance(v, str))
    if "None" in words:
        kinds.append(lambda v: v is None)
    if "Mapping" in words or "dict" in words:
        kinds.append(lambda v: isinstance(v, dict))
    if "Sequence" in words or "list" in words:
        kinds.append(lambda v: isinstance(v, list))
    return not kinds or any(k(value) for k in kinds)


_MAX_INT = 2**31 - 1


def _numbers(value: Any) -> list[Any]:
    """Every number inside a parameter value (lists and objects included)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    return []


def _check_finite(key: str, value: Any, raw: str) -> None:
    """Finite numbers and integers within ±2**31 anywhere in a value (methods without declared parameters)."""
    for x in _numbers(value):
        if isinstance(x, float) and not math.isfinite(x):
            raise UsageError(f"--param {key} must be a finite number, got {raw!r}")
        if isinstance(x, int) and abs(x) > _MAX_INT:
            raise UsageError(f"--param {key}={raw} is out of range; integers must lie within ±{_MAX_INT}")


def parse_params(method: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``--param key=value`` pairs, checked against the parameters the method declares with types and
    ranges (:mod:`xlsteer.interventions.params`; a method that declares none: against its fit
    function's signature), then its registry entry's ``check_params``; all before any work."""
    from ..interventions.params import check_value
    from ..interventions.registry import get_method
    from ..settings import parameters_of

    spec = get_method(method)
    allowed = {name: annotation for name, annotation in parameters_of(spec.fit).items() if name not in _RESERVED}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"cannot parse --param '{item}'; write KEY=VALUE, e.g. --param ridge=0.01")
        if key in _RESERVED:
            flag = _RESERVED[key]
            raise UsageError(f"--param {key} is not a method parameter" + (f"; use {flag}" if flag else ""))
        if key in out:
            raise UsageError(f"--param {key} is given twice; give it once")
        value = _parse_value(raw.strip())
        if spec.params:
            out[key] = check_value(method, key, value, spec.params, shown=raw)
            continue
        if key not in allowed:
            raise UsageError(f"{method} has no parameter '{key}'; its parameters: {', '.join(sorted(allowed))}")
        _check_finite(key, value, raw)
        annotation = allowed[key]
        if not _type_ok(value, annotation):
            raise UsageError(f"--param {key}={raw} has the wrong type: {method} expects {annotation}")
        out[key] = value
    if spec.check_params is not None:
        spec.check_params(out)
    return out
