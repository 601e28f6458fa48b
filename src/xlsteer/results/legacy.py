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
from . import ANALYSIS, COMPARE, CONTROL, CONTROL_VERSION, CONVERTER, EVAL, FORMATS, PAIRED, SETUP, SWEEP, VERSION, stamp

_RENAMED = {"xlsteer.results": EVAL, "xlsteer.comparison": PAIRED, "xlsteer.sweep": SWEEP, "xlsteer.compare": COMPARE}
_KINDS = {"analysis": ANALYSIS, "setup": SETUP}
_POOLED_KEYS = ("p", "test", "verdict", "pooled_diff", "ci_low", "ci_high", "n")


def is_current(doc: Any) -> bool:
    if not isinstance(doc, dict) or doc.get("format") not in FORMATS or "format_version" in doc:
        return False
    return doc.get("version") == (CONTROL_VERSION if doc["format"] == CONTROL else VERSION)


def describe(doc: Any) -> str:
    """The old format's name, for notes ("xlsteer.results v1")."""
    if doc.get("format"):
        return f"{str(doc['format'])[:60]} v{str(doc.get('format_version', 1))[:20]}"
    return f'kind "{str(doc.get("kind"))[:60]}"'


def upgrade(doc: Any, name: str = "file") -> tuple[dict[str, Any], list[str]]:
    """``(current document, notes)`` for a file of an older format; current files pass unchanged."""
    if not isinstance(doc, dict):
        raise DataError(f"{name} is not a JSON object; give a result file written by xlsteer")
    if is_current(doc):
        return doc, []
    fmt = doc.get("format")
    if not isinstance(fmt, (str, type(None))) or not isinstance(doc.get("kind"), (str, type(None))):
        raise DataError(f"{name}: 'format' and 'kind' must be text; give a result file written by xlsteer")
    if fmt in FORMATS and "format_version" not in doc and ("version" in doc or fmt not in _RENAMED):
        _check_version(doc, fmt, name)
    if fmt in _RENAMED and doc.get("format_version", 1) == 1:
        return _renamed(doc, name)
    if fmt is None and doc.get("kind") in _KINDS:
        body = {k: v for k, v in doc.items() if k != "kind"}
        return stamp(_KINDS[doc["kind"]], body), []
    if fmt is None and "kind" in doc:
        raise DataError(f'{name} is a hand-made "kind": "{doc["kind"]}" file that no xlsteer command writes; '
                        "make it with xlsteer eval / compare / sweep -o FILE")
    if fmt in _RENAMED:
        raise DataError(f"{name} is {fmt} format_version {str(doc.get('format_version'))[:20]}, which no xlsteer "
                        "wrote; give a result file written by xlsteer")
    raise DataError(f"{name} is not an xlsteer result file (format {fmt!r}); give a file written by xlsteer, "
                    f"or convert an older one with: {CONVERTER}")


def _check_version(doc: dict[str, Any], fmt: str, name: str) -> None:
    """A file of a current format but another version: newer ones need a newer xlsteer."""
    current = CONTROL_VERSION if fmt == CONTROL else VERSION
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > current:
        raise DataError(f"{name} is {fmt} version {version}, newer than this xlsteer reads (version {current}); "
                        "read it with the newer xlsteer that wrote it (pip install -U xlsteer)")
    raise DataError(f"{name} is {fmt} with version {str(version)[:20]}, not one xlsteer wrote (this one reads "
                    f"version {current}); re-create it with the xlsteer command that writes it")


def _renamed(doc: dict[str, Any], name: str) -> tuple[dict[str, Any], list[str]]:
    new = _RENAMED[doc["format"]]
    notes: list[str] = []
    body = {k: v for k, v in doc.items() if k not in ("format_version", "kind")}
    if new == EVAL:
        for key in ("baseline", "comparison"):
            if isinstance(body.get(key), dict):
                body[key] = upgrade(body[key], f"{name} ({key})")[0]
    if new == COMPARE:
        rows = {}
        given = body.get("rows") or {}
        if not isinstance(given, dict) or not all(isinstance(r, dict) for r in given.values()):
            raise DataError(f"{name}: 'rows' must be an object of method rows; give a compare.json written by xlsteer")
        for name_, row in given.items():
            avg = row.get("average") or {}
            if not isinstance(avg, dict):
                raise DataError(f"{name}: the average of row {str(name_)[:40]!r} must be an object; give a compare.json "
                                "written by xlsteer")
            avg = dict(avg)
            if "pooled_diff" in avg or "p" in avg:
                avg = {k: v for k, v in avg.items() if k not in _POOLED_KEYS}
            rows[name_] = {**row, "average": avg}
        body["rows"] = rows
        notes.append("the average's test of this xlsteer.compare v1 file pooled all items and was dropped; "
                     "re-run xlsteer compare into the same folder for the test stratified by language")
    return stamp(new, body), notes
