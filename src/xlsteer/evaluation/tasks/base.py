"""Evaluation items and the file readers the task modules share.

Every built-in task module (mgsm, xcopa, xnli, xquad) declares its :class:`~.spec.TaskSpec`,
whose ``load_items(data_dir, lang, split, limit=None) -> list[Item]`` and
``data_files(lang, split) -> list[str]`` (paths relative to the data dir, for
:func:`xlsteer.data.paths.data_hash`) read the data. Splits follow METHODS.md section 5 and are
fixed by position or id, so an item's ``id`` is identical in every language: scores can be
paired across languages and methods item by item.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...data.langs import normalize_lang
from ...data.paths import data_dir as _resolve_data_dir
from ...errors import DataError, LanguageError, UsageError


@dataclass(frozen=True)
class Item:
    """One evaluation item in one language. ``answer`` is the gold answer (task-specific type)."""

    id: str
    lang: str
    split: str
    fields: dict
    answer: Any


# ---------------------------------------------------------------------------------------------
# helpers shared by the task modules


def resolve_lang(task: str, lang: str, langs: Sequence[str]) -> str:
    """Normalise ``lang`` and check the task has it (LanguageError listing what it has)."""
    code = normalize_lang(lang)
    if code not in langs:
        raise LanguageError(f"{task} has no language {code!r}; available: {' '.join(langs)}")
    return code


def check_split(task: str, split: str, splits: Sequence[str]) -> str:
    if split not in splits:
        raise UsageError(f"{task} has no split {split!r}; available: {' '.join(splits)}")
    return split


def root_dir(data_dir: str | os.PathLike | None) -> Path:
    return _resolve_data_dir(data_dir)


def read_text(path: Path) -> str:
    """A whole UTF-8 file; DataError when missing or not UTF-8."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the data dir (--data-dir / XLSTEER_DATA_DIR) "
                        "or restore it with `xlsteer data fetch`")
    from ...bounded import read_bytes

    raw = read_bytes(path, "lines", "data file")  # bounded: a file of the data dir is user input too
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"file {path} is not UTF-8 (offset {e.start}); restore it from the shared data") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_lines(path: Path) -> list[str]:
    """Lines split on \\n with \\r stripped (the files have CRLF endings); no final empty line.
    Streamed with a bound on each line (:func:`xlsteer.bounded.iter_lines`), like every
    line-oriented file: a TSV or JSONL file of the data dir is never read whole."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the data dir (--data-dir / XLSTEER_DATA_DIR) "
                        "or restore it with `xlsteer data fetch`")
    from ...bounded import iter_lines

    lines = []
    for n, raw in iter_lines(path, "lines", "data file"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"file {path} is not UTF-8 (line {n}, offset {e.start}); restore it from the shared "
                            "data") from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"file {path} is malformed JSON (line {e.lineno}: {e.msg}); restore it from the shared data") from None


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"file {path} line {n} is malformed JSON ({e.msg}); restore it from the shared data") from None
        if not isinstance(rec, dict):
            raise DataError(f"file {path} line {n} is not a JSON object; restore it from the shared data")
        out.append(rec)
    return out


def take(items: list[Item], limit: int | None) -> list[Item]:
    return items if limit is None else items[:limit]
