"""Number formats of the report (Jinja2 filters): the formats of :mod:`xlsteer.formats`, text
only (the templates escape it)."""

from __future__ import annotations

from typing import Any

from ..formats import number, p_value, percent, signed


def verdict_short(text: Any) -> str:
    return "" if not text else str(text).split(" (MDE")[0]


FILTERS = {"num": number, "signed": signed, "pval": p_value, "pct": percent, "verdict_short": verdict_short}
