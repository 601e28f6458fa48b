"""Read result files into their types: one call for every reader (table, report, analysis).

Files of older formats are converted by name (:mod:`xlsteer.results.legacy`) and say so in the
returned notes; anything else is one error line naming what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .legacy import describe, is_current, upgrade


@dataclass
class Loaded:
    """A result file read and typed; ``converted_from`` names its older format, if any."""

    path: Path
    doc: Any  # a model of xlsteer.results.schema
    converted_from: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def format(self) -> str:
        return self.doc.format


def typed(raw: Any, name: str = "file") -> tuple[Any, str | None, list[str]]:
    """``(typed document, old format or None, notes)`` of a parsed JSON document."""
    from pydantic import ValidationError

    from .schema import validate

    old = None if is_current(raw) or not isinstance(raw, dict) else describe(raw)
    doc, notes = upgrade(raw, name)
    try:
        return validate(doc), old, notes
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"][1:]) or "top level"
        raise DataError(f"{name} does not match the {doc.get('format')} schema ({where}: {first['msg']}); "
                        "re-create it with the xlsteer command that writes it") from None


def check_readable(path: str | os.PathLike) -> None:
    """Raise one line unless ``path`` reads as a result file (what writers check before the rename,
    so no command writes a file that ``table`` and ``report`` refuse)."""
    load_result(path)


def load_result(path: str | os.PathLike) -> Loaded:
    """One result file, typed (raises DataError / UsageError with one line)."""
    from ..io import read_json

    p = Path(path)
    doc, old, notes = typed(read_json(p, "result file"), p.name)
    return Loaded(p, doc, old, notes)
