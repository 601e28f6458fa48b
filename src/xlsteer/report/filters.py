"""Number formats of the report (Jinja2 filters): text only, the templates escape it."""

from __future__ import annotations

from typing import Any


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def signed(x: Any, digits: int = 3) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def pval(p: Any) -> str:
    return "—" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def pct(x: Any, digits: int = 0) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def verdict_short(text: Any) -> str:
    return "" if not text else str(text).split(" (MDE")[0]


FILTERS = {"num": num, "signed": signed, "pval": pval, "pct": pct, "verdict_short": verdict_short}
