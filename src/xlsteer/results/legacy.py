"""Files of the formats before the typed schema (version 1), converted by their format name.

Why: runs made before version 2 stay readable; each old format is named, so nothing is guessed
from the shape. The conversions:

===========================  ================================  ===============================
old ``format`` (or ``kind``)  new ``format``                    what changes
===========================  ================================  ===============================
xlsteer.results v1           xlsteer.eval                      the stamp (embedded baseline and
                                                               comparison too)
xlsteer.comparison v1        xlsteer.paired                    the stamp
xlsteer.sweep v1             xlsteer.sweep                     the stamp
xlsteer.compare v1           xlsteer.methods                   the average's test is dropped: it
                                                               pooled the items of all languages;
                                                               re-run ``xlsteer compare`` (finished
                                                               methods are reused) for the test
                                                               stratified by language
kind "analysis" / "setup"    xlsteer.analysis / xlsteer.setup  the stamp
===========================  ================================  ===============================

Anything else (a ``kind`` "eval"/"compare"/"sweep" file without a format, an unknown format)
is refused with one line saying how to make the file again.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from . import ANALYSIS, CONTROL, CONTROL_VERSION, CONVERTER, EVAL, FORMATS, METHODS, PAIRED, SETUP, SWEEP, VERSION, stamp

_RENAMED = {"xlsteer.results": EVAL, "xlsteer.comparison": PAIRED, "xlsteer.sweep": SWEEP, "xlsteer.compare": METHODS}
_KINDS = {"analysis": ANALYSIS, "setup": SETUP}
_POOLED_KEYS = ("p", "test", "verdict", "pooled_diff", "ci_low", "ci_high", "n")


def is_current(doc: Any) -> bool:
    if not isinstance(doc, dict) or doc.get("format") not in FORMATS or "format_version" in doc:
        return False
    return doc.get("version") == (CONTROL_VERSION if doc["format"] == CONTROL else VERSION)


def describe(doc: Any) -> str:
    """The old format's name, for notes ("xlsteer.results v1")."""
    if doc.get("format"):
        return f"{doc['format']} v{doc.get('format_version', 1)}"
    return f'kind "{doc.get("kind")}"'


def upgrade(doc: Any, name: str = "file") -> tuple[dict[str, Any], list[str]]:
    """``(current document, notes)`` for a file of an older format; current files pass unchanged."""
    if not isinstance(doc, dict):
        raise DataError(f"{name} is not a JSON object; give a result file written by xlsteer")
    if is_current(doc):
        return doc, []
    fmt = doc.get("format")
    if fmt in _RENAMED and doc.get("format_version", 1) == 1:
        return _renamed(doc)
    if fmt is None and doc.get("kind") in _KINDS:
        body = {k: v for k, v in doc.items() if k != "kind"}
        return stamp(_KINDS[doc["kind"]], body), []
    if fmt is None and "kind" in doc:
        raise DataError(f'{name} is a hand-made "kind": "{doc["kind"]}" file that no xlsteer command writes; '
                        "make it with xlsteer eval / compare / sweep -o FILE")
    if fmt in FORMATS:
        raise DataError(f"{name} is {fmt} version {doc.get('version', doc.get('format_version'))}, this xlsteer reads "
                        f"version {VERSION}; convert it with: {CONVERTER}")
    raise DataError(f"{name} is not an xlsteer result file (format {fmt!r}); give a file written by xlsteer, "
                    f"or convert an older one with: {CONVERTER}")


def _renamed(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    new = _RENAMED[doc["format"]]
    notes: list[str] = []
    body = {k: v for k, v in doc.items() if k not in ("format_version", "kind")}
    if new == EVAL:
        for key in ("baseline", "comparison"):
            if isinstance(body.get(key), dict):
                body[key] = upgrade(body[key], key)[0]
    if new == METHODS:
        rows = {}
        for name, row in (body.get("rows") or {}).items():
            avg = dict(row.get("average") or {})
            if "pooled_diff" in avg or "p" in avg:
                avg = {k: v for k, v in avg.items() if k not in _POOLED_KEYS}
            rows[name] = {**row, "average": avg}
        body["rows"] = rows
        notes.append("the average's test of this xlsteer.compare v1 file pooled all items and was dropped; "
                     "re-run xlsteer compare into the same folder for the test stratified by language")
    return stamp(new, body), notes
