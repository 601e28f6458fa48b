"""The JSONL task format: the YAML spec (validated with pydantic) and the per-language records.

See :mod:`xlsteer.evaluation.tasks.jsonl` for the format; this module only reads and checks files,
every problem one line naming the file, the line and the fix (:class:`~xlsteer.errors.DataError`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...errors import DataError, UsageError

SPLIT_NAMES = ("dev", "test", "train")
_RANGE = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d+)?\s*)?$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
HINT = "see docs/tasks.md"


# ---------------------------------------------------------------------------------------------
# the YAML spec


def parse_ranges(rule: str) -> list[tuple[int, int | None]]:
    """``"0-49"`` -> [(0, 49)], ``"50-"`` -> [(50, None)], ``"3,7-9"`` -> [(3, 3), (7, 9)] (inclusive)."""
    out: list[tuple[int, int | None]] = []
    for part in str(rule).split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"cannot read the range {part.strip()!r}; write e.g. \"0-49\", \"50-\" or \"3,7-9\"")
        lo = int(m.group(1))
        hi = None if m.group(2) and m.group(3) is None else int(m.group(3) or m.group(1))
        if hi is not None and hi < lo:
            raise ValueError(f"the range {part.strip()!r} ends before it starts")
        out.append((lo, hi))
    return out


def describe_ranges(rule: str) -> str:
    """``"0-49"`` -> "records 0-49", ``"50-"`` -> "records 50 to the end" (0-based, inclusive)."""
    parts = [f"{lo}" if hi == lo else f"{lo}-{hi}" if hi is not None else f"{lo} to the end"
             for lo, hi in parse_ranges(rule)]
    return "records " + ", ".join(parts) + " (0-based)"


def _overlap(a: list[tuple[int, int | None]], b: list[tuple[int, int | None]]) -> bool:
    inf = float("inf")
    return any(lo1 <= (inf if hi2 is None else hi2) and lo2 <= (inf if hi1 is None else hi1)
               for lo1, hi1 in a for lo2, hi2 in b)


@functools.cache
def _spec_model() -> type:
    """The pydantic model of a spec (built on first use: pydantic stays out of ``import xlsteer``)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class JsonlSpec(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        name: str | None = Field(default=None, pattern=_NAME)
        description: str = ""
        kind: Literal["multiple_choice", "generation"]
        files: dict[str, str | dict[Literal["dev", "test", "train"], str]] = Field(min_length=1)
        parallel: bool | None = None
        splits: dict[Literal["dev", "test", "train"], str] | None = None
        split_field: str | None = Field(default=None, min_length=1)
        metric: Literal["numeric", "exact", "f1"] | None = None
        max_new_tokens: int = Field(default=32, ge=1, le=4096)
        stop: list[str] = Field(default_factory=lambda: ["\n"])
        target_delimiter: str = " "

        @field_validator("splits")
        @classmethod
        def _ranges_apart(cls, v: dict[str, str] | None) -> dict[str, str] | None:
            if v is None:
                return v
            if "test" not in v:
                raise ValueError("declare a test split, e.g. {dev: \"0-49\", test: \"50-\"}")
            parsed = {k: parse_ranges(r) for k, r in v.items()}
            names = sorted(parsed)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    if _overlap(parsed[a], parsed[b]):
                        raise ValueError(f"the {a} and {b} ranges overlap; give every record to one split")
            return v

        @model_validator(mode="after")
        def _consistent(self) -> "JsonlSpec":
            if self.splits is not None and self.split_field is not None:
                raise ValueError("give either splits (record ranges) or split_field (a field per record), not both")
            if self.kind == "generation" and self.metric is None:
                raise ValueError("a generation task needs metric: numeric, exact or f1")
            if self.kind == "multiple_choice" and self.metric is not None:
                raise ValueError("metric applies to generation tasks; multiple choice reports acc and acc_norm")
            if any(s == "" for s in self.stop):
                raise ValueError("stop sequences must not be empty strings")
            per_split = [lang for lang, f in self.files.items() if isinstance(f, dict)]
            if per_split and len(per_split) != len(self.files):
                raise ValueError("give every language one file, or every language one file per split, not a mix")
            if per_split and (self.splits is not None or self.split_field is not None):
                raise ValueError("with one file per split, leave out splits and split_field")
            for lang in per_split:
                if "test" not in self.files[lang]:
                    raise ValueError(f"language {lang} has no test file; give each language a test file")
            return self

    return JsonlSpec


def _key_lines(text: str) -> dict[str, int]:
    """Top-level key -> its line in the YAML text (for error messages); {} when not a mapping."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _validation_message(path: Path, err: Any, lines: dict[str, int]) -> str:
    e = err.errors()[0]
    loc = [str(x) for x in e.get("loc", ())]
    where = f"line {lines[loc[0]]}" if loc and loc[0] in lines else "line 1"
    field = ".".join(loc) or "(top level)"
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if e.get("type") == "extra_forbidden":
        msg = "unknown key; the keys are name, description, kind, files, parallel, splits, split_field, metric, " \
              "max_new_tokens, stop, target_delimiter"
    return f"task spec {path} {where}: {field}: {msg}; fix the spec ({HINT})"


def read_spec(path: str | os.PathLike) -> tuple[Any, bytes]:
    """The validated spec of ``path`` and the file's bytes (for its hash)."""
    import yaml
    from pydantic import ValidationError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"task spec {p} does not exist; give the path of a task spec .yaml ({HINT})")
    from ...bounded import read_bytes

    raw = read_bytes(p, "spec", "task spec")  # bounded before it is read: a spec is a few lines
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"task spec {p} is not UTF-8 (byte {e.start}); save it as UTF-8") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "somewhere"
        problem = str(getattr(e, "problem", None) or "malformed YAML").replace("\n", " ")
        raise DataError(f"task spec {p} {line}: {problem}; fix the YAML ({HINT})") from None
    except RecursionError:
        raise DataError(f"task spec {p} is nested too deeply; fix the YAML ({HINT})") from None
    except (ValueError, OverflowError) as e:  # a value YAML reads as a date that is none (2001-13-45)
        raise DataError(f"task spec {p}: {' '.join(str(e).split())}; quote the value or fix it ({HINT})") from None
    if not isinstance(doc, dict):
        raise DataError(f"task spec {p} line 1: expected a mapping (kind: ..., files: ...); fix the spec ({HINT})")
    try:
        return _spec_model().model_validate(doc), raw
    except ValidationError as e:
        raise DataError(_validation_message(p, e, _key_lines(text))) from None


# ---------------------------------------------------------------------------------------------
# the records


@dataclass(frozen=True)
class Record:
    """One checked line of a task file: its id, split (None: in no split) and item fields."""

    id: str
    split: str | None
    line: int
    fields: dict
    answer: Any
    named: bool = False  # the id is the record's own (else its index in the file)


def _bad(path: Path, line: int, what: str) -> DataError:
    return DataError(f"file {path} line {line}: {what}; fix the record ({HINT})")


def _text_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _check_fields(rec: dict, spec: Any, path: Path, line: int) -> tuple[dict, Any]:
    """The item fields and gold answer of one record of ``spec.kind``."""
    if spec.kind == "multiple_choice":
        return _choice_fields(rec, path, line)
    prompt, answer = rec.get("prompt"), rec.get("answer")
    if not isinstance(prompt, str) or not prompt:
        raise _bad(path, line, "'prompt' must be a non-empty string")
    if spec.metric == "numeric":
        from ..metrics_numeric import extract_number

        ok = (isinstance(answer, (int, float)) and not isinstance(answer, bool) and answer == answer
              and abs(answer) != float("inf")) or (isinstance(answer, str) and extract_number(answer) is not None)
        if not ok:
            raise _bad(path, line, "'answer' must be a number (or a string holding one) for metric numeric")
    elif not (isinstance(answer, str) or _text_list(answer)):
        raise _bad(path, line, f"'answer' must be a string or a list of strings for metric {spec.metric}")
    return {"prompt": prompt}, answer


def _choice_fields(rec: dict, path: Path, line: int) -> tuple[dict, Any]:
    """A choice record, scored in full (``context`` + ``choices``: each choice after one context) or
    partially (``contexts`` + ``continuation``: one shared continuation after each context)."""
    gold = rec.get("gold")
    if "contexts" in rec or "continuation" in rec:
        if "context" in rec or "choices" in rec:
            raise _bad(path, line, "give either context and choices (full scoring) or contexts and continuation "
                                   "(partial scoring), not both")
        contexts, cont = rec.get("contexts"), rec.get("continuation")
        if not _text_list(contexts) or len(contexts) < 2:
            raise _bad(path, line, "'contexts' must be a list of at least 2 strings (one per choice)")
        if not isinstance(cont, str) or not cont:
            raise _bad(path, line, "'continuation' must be a non-empty string (scored after each context)")
        options, fields = contexts, {"contexts": list(contexts), "continuation": cont}
    else:
        ctx, choices = rec.get("context"), rec.get("choices")
        if not isinstance(ctx, str):
            raise _bad(path, line, "'context' must be a string")
        if not _text_list(choices) or len(choices) < 2:
            raise _bad(path, line, "'choices' must be a list of at least 2 strings")
        options, fields = choices, {"context": ctx, "choices": list(choices)}
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
        raise _bad(path, line, f"'gold' must be the index of the right choice, 0..{len(options) - 1}")
    return fields, gold


def scoring_of(fields: dict) -> str:
    """``partial`` for a record scored by one continuation after each context, else ``full``."""
    return "partial" if "contexts" in fields else "full"


def _record_id(rec: dict, index: int, path: Path, line: int) -> str:
    if "id" not in rec:
        return str(index)
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid).strip() == "":
        raise _bad(path, line, "'id' must be a non-empty string or an integer")
    return str(rid).strip()


def _split_of(rec: dict, index: int, spec: Any, path: Path, line: int, split: str | None) -> str | None:
    if split is not None:  # one file per split
        return split
    if spec.split_field is not None:
        value = rec.get(spec.split_field)
        if value not in SPLIT_NAMES:
            raise _bad(path, line, f"'{spec.split_field}' must be one of {', '.join(SPLIT_NAMES)}, got {value!r}")
        return value
    if spec.splits is None:
        return "test"
    for name, rule in spec.splits.items():
        if any(lo <= index and (hi is None or index <= hi) for lo, hi in parse_ranges(rule)):
            return name
    return None


def read_records(path: Path, spec: Any, split: str | None = None) -> list[Record]:
    """Every record of one language's file, checked (one-line DataError on the first problem);
    ``split``: the split of every record (a file given for one split)."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist; fix its path under 'files' in the task spec "
                        "(paths are relative to the spec)")
    from ...bounded import iter_lines

    out: list[Record] = []
    seen: dict[str, int] = {}
    with_ids = False
    for n, line in iter_lines(path, "lines", "file"):  # streamed: one record in memory at a time
        try:
            raw = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"file {path} is not UTF-8 (line {n}, byte {e.start}); save it as UTF-8") from None
        raw = raw.removeprefix("\ufeff") if n == 1 else raw
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except RecursionError:
            raise _bad(path, n, "malformed JSON (nested too deeply)") from None
        except ValueError as e:  # JSONDecodeError, or an integer of thousands of digits
            why = getattr(e, "msg", None) or " ".join(str(e).split())[:120]
            raise _bad(path, n, f"malformed JSON ({why})") from None
        if not isinstance(rec, dict):
            raise _bad(path, n, "expected a JSON object per line")
        index = len(out)
        if out and ("id" in rec) != with_ids:
            raise _bad(path, n, "some records have an 'id' and some not; give every record an id or none")
        with_ids = "id" in rec
        rid = _record_id(rec, index, path, n)
        if rid in seen:
            raise _bad(path, n, f"id {rid!r} repeats line {seen[rid]}; give every record its own id")
        seen[rid] = n
        fields, answer = _check_fields(rec, spec, path, n)
        out.append(Record(rid, _split_of(rec, index, spec, path, n, split), n, fields, answer, with_ids))
    if not out:
        raise DataError(f"file {path} holds no records; write one JSON object per line ({HINT})")
    if spec.splits is not None and split is None:
        for name, rule in spec.splits.items():
            top = max(hi if hi is not None else lo for lo, hi in parse_ranges(rule))
            if top >= len(out):
                raise DataError(f"file {path} has {len(out)} records, but split {name} asks for record {top} "
                                f"({rule!r}); fix the splits in the task spec (records count from 0)")
    return out
