"""User benchmarks as JSONL files: a small YAML spec names one file per language.

Why: "does steering help on *my* benchmark?" should need no Python and no lm-eval. A spec::

    name: capitals                 # optional (default: the file's stem); no spaces
    kind: multiple_choice          # or: generation
    files: {en: capitals.en.jsonl, sw: capitals.sw.jsonl}   # relative to the YAML file
    splits: {dev: "0-49", test: "50-"}   # record ranges (0-based, inclusive), or
    # split_field: split                 # ... the split named in each record

Records: ``{"context", "choices": [...], "gold": index}`` (multiple choice, scored by the
summed log-likelihood of ``target_delimiter + choice`` after the context, as lm-eval does) or
``{"prompt", "answer"}`` (generation, greedy, ``max_new_tokens``, ``stop``), scored by
``metric``: ``numeric`` (the final number, :func:`~xlsteer.evaluation.metrics_numeric.mgsm_exact_match`),
``exact`` (normalised exact match, :func:`~xlsteer.evaluation.metrics_text.squad_em`) or ``f1``
(SQuAD token F1 and exact match); ``answer`` may be a list of accepted answers (exact, f1).
An optional ``id`` names a record; without ids the n-th record of every file is the same item.
Item ids are ``<name>/<id or record index>`` and identical in every language (scores pair item
by item); every language must hold the same ids per split, in any order (items follow the
first language's order). Without a ``dev`` split the task cannot be swept.

Every problem is one line naming the file, the line and the fix (:class:`~xlsteer.errors.DataError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

from ...errors import DataError, LanguageError, UsageError
from .jsonl_format import HINT, SPLIT_NAMES, Record, describe_ranges, read_records, read_spec
from .spec import BUILTIN, BaselineHints, Metric, Scored, TaskSource, TaskSpec


# ---------------------------------------------------------------------------------------------
# the task


class _Data:
    """The records of every language, read once (when the spec is built: the template version
    digests these very bytes) and checked to align."""

    def __init__(self, name: str, spec: Any, files: dict[str, Path]):
        self.name, self.spec, self.files = name, spec, files
        self._records: dict[str, dict[str, list[Record]]] | None = None

    def by_split(self) -> dict[str, dict[str, list[Record]]]:
        """lang -> split -> records, in the first language's order; DataError when misaligned."""
        if self._records is None:
            self._records = self._read()
        return self._records

    def _read(self) -> dict[str, dict[str, list[Record]]]:
        langs = list(self.files)
        recs = {lang: read_records(self.files[lang], self.spec) for lang in langs}
        first = langs[0]
        out: dict[str, dict[str, list[Record]]] = {lang: {} for lang in langs}
        for split in SPLIT_NAMES:
            ref = [r for r in recs[first] if r.split == split]
            for lang in langs:
                mine = {r.id: r for r in recs[lang] if r.split == split}
                if set(mine) != {r.id for r in ref}:
                    missing = sorted({r.id for r in ref} - set(mine)) or sorted(set(mine) - {r.id for r in ref})
                    raise DataError(f"misaligned task files: {self.files[lang]} and {self.files[first]} hold other "
                                    f"{split} items (e.g. id {missing[0]!r}); give every language the same items")
                if self.spec.kind == "multiple_choice":
                    for r in ref:
                        if mine[r.id].answer != r.answer:
                            raise DataError(f"misaligned task files: {self.files[lang]} line {mine[r.id].line} "
                                            f"has gold {mine[r.id].answer}, {self.files[first]} line {r.line} has "
                                            f"{r.answer}; the same item must have the same gold in every language")
                out[lang][split] = [mine[r.id] for r in ref]
        return out


def _load_items(data: _Data, name: str, splits: tuple[str, ...], data_dir: Any, lang: str, split: str,
                limit: int | None = None) -> list[Any]:
    """The items of one language and split (``data_dir`` is unused: the spec names its files)."""
    from ...validation import check_limit
    from .base import Item

    check_limit(limit)
    if lang not in data.files:
        raise LanguageError(f"{name} has no language {lang!r}; available: {' '.join(data.files)}")
    if split not in splits:
        raise UsageError(f"{name} has no split {split!r}; available: {' '.join(splits)}")
    recs = data.by_split()[lang][split]
    items = [Item(id=f"{name}/{r.id}", lang=lang, split=split, fields=dict(r.fields), answer=r.answer)
             for r in recs]
    return items if limit is None else items[:limit]


def _render_choice(t: Any, item: Any, exemplars: Any = ()) -> Any:
    from ..templates import Request

    delim = t.options["target_delimiter"]
    return Request(kind="choice", context=item.fields["context"],
                   choices=tuple(delim + c for c in item.fields["choices"]))


def _render_generation(t: Any, item: Any, exemplars: Any = ()) -> Any:
    from ..templates import Request

    return Request(kind="generate", prompt=item.fields["prompt"], max_new_tokens=int(t.options["max_new_tokens"]),
                   stop=tuple(t.options["stop"]))


def score_generation(metric: str, item: Any, text: str) -> Scored:
    """Score a generated text against the item's answer with the spec's ``metric``."""
    from ..metrics_numeric import extract_number, mgsm_exact_match
    from ..metrics_text import squad_em, squad_f1

    golds = item.answer if isinstance(item.answer, list) else [item.answer]
    if metric == "numeric":
        em = float(mgsm_exact_match(text, item.answer, item.lang))
        return Scored(extract_number(text, item.lang), bool(em), {"em": em})
    pred = text.strip()
    em = float(squad_em(pred, golds, item.lang))
    if metric == "exact":
        return Scored(pred, bool(em), {"em": em})
    return Scored(pred, bool(em), {"f1": float(squad_f1(pred, golds, item.lang)), "em": em})


def _answer_text(item: Any, template: Any = None) -> str:
    if "choices" in item.fields:
        return item.fields["choices"][item.answer]
    return str(item.answer[0] if isinstance(item.answer, list) else item.answer)


def _metrics(spec: Any) -> tuple[tuple[Metric, ...], str, str | None]:
    if spec.kind == "multiple_choice":
        return (Metric("acc", "binary"), Metric("acc_norm", "binary")), "acc", "margin"
    if spec.metric == "f1":
        return (Metric("f1", "continuous"), Metric("em", "binary")), "f1", "em"
    return (Metric("em", "binary"),), "em", None


def _split_rules(spec: Any, present: set[str]) -> dict[str, str]:
    if spec.split_field is not None:
        return {s: f"records whose '{spec.split_field}' is {s!r}" for s in SPLIT_NAMES if s in present}
    if spec.splits is None:
        return {"test": "all records"}
    return {s: describe_ranges(spec.splits[s]) for s in SPLIT_NAMES if s in spec.splits}


def _template(name: str, spec: Any, content: str) -> Any:
    """The task's one template; its version digests the settings and the files' bytes, because
    the per-item cache is keyed by item id and an edited record must not reuse old scores."""
    from ..templates import Template

    if spec.kind == "multiple_choice":
        opts: dict[str, Any] = {"target_delimiter": spec.target_delimiter}
        return Template("jsonl-choice", name, _digest([opts, content]), "choice",
                        "context, then target_delimiter + each choice, scored by summed log-likelihood",
                        opts, _render_choice)
    opts = {"max_new_tokens": spec.max_new_tokens, "stop": list(spec.stop)}
    return Template("jsonl-generate", name, _digest([opts, content]), "generate",
                    f"the record's prompt, greedy, <= max_new_tokens, stop at {spec.stop!r}", opts, _render_generation)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _content_digest(spec_bytes: bytes, files: dict[str, Path]) -> str:
    h = hashlib.sha256(spec_bytes)
    for lang, path in files.items():
        h.update(lang.encode() + b"\0")
        with open(path, "rb") as f:  # streamed: the files were checked and bounded when read
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _langs(spec: Any, path: Path) -> dict[str, Path]:
    from ...data.langs import normalize_lang

    out: dict[str, Path] = {}
    for code, rel in spec.files.items():
        try:
            lang = normalize_lang(code)
        except LanguageError as e:
            raise DataError(f"task spec {path}: files: {e}") from None
        if lang in out:
            raise DataError(f"task spec {path}: files: language {lang} is given twice (as {code!r}); "
                            "list each language once")
        out[lang] = _resolved(path.parent / rel, path)
    return out


def _resolved(file: Path, spec: Path) -> Path:
    """A data file's absolute path; a symlink loop is the spec's problem, said in one line."""
    try:
        return file.resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: "Symlink loop" (Python 3.11)
        why = " ".join(str(e).split())[:120]
        raise DataError(f"task spec {spec}: file {file} cannot be resolved ({why}); fix the symlink or the path "
                        "under 'files'") from None


def build_spec(path: str | os.PathLike) -> TaskSpec:
    """The TaskSpec of a YAML spec file (validated; the data files are read on first use)."""
    p = _resolved(Path(path).expanduser(), Path(path))
    spec, raw = read_spec(p)
    name = spec.name or re.sub(r"[^A-Za-z0-9_.:-]", "_", p.stem)
    if name.lower() in BUILTIN:
        raise UsageError(f"task spec {p}: the name {name!r} is a built-in task; give the spec another name")
    files = _langs(spec, p)
    data = _Data(name, spec, files)
    first = data.by_split()[next(iter(files))]  # reads and checks every file now: errors come early
    splits = _split_rules(spec, {s for s, recs in first.items() if recs})
    if "test" not in splits:
        raise DataError(f"task spec {p}: no record is in the test split; put some records in it ({HINT})")
    metrics, main, tie = _metrics(spec)
    has = set(splits)
    train = "train" if "train" in has else None
    generation = spec.kind == "generation"
    return TaskSpec(
        name=name,
        description=spec.description or f"user task from {p.name} ({spec.kind.replace('_', ' ')})",
        langs=tuple(files),
        splits=splits,
        load_items=partial(_load_items, data, name, tuple(splits)),
        data_files=lambda lang, split: [str(p), str(files[lang])],
        templates=(_template(name, spec, _content_digest(raw, files)),),
        metrics=metrics,
        main=main,
        tie_break=tie,
        score=partial(score_generation, spec.metric) if generation else None,
        comparable_predictions=spec.kind == "multiple_choice" or spec.metric == "numeric",
        dev_split="dev" if "dev" in has else None,
        baselines=BaselineHints(
            icl_split=train, train_split=train, answer_text=_answer_text,
            translate_fields=("prompt",) if generation else (),
            translate_unsupported="" if generation else
            "translate-test translates text fields; a JSONL multiple-choice task keeps its choices in a list"),
        source={"kind": "jsonl", "path": str(p), "sha256": hashlib.sha256(raw).hexdigest(),
                "files": {lang: str(f) for lang, f in files.items()}},
    )


def is_spec_reference(ref: str) -> bool:
    """A path to a .yaml/.yml spec (not an ``lmeval:`` reference)."""
    text = str(ref).strip()
    return not text.lower().startswith("lmeval:") and text.lower().endswith((".yaml", ".yml"))


def build(ref: str, **options: Any) -> list[TaskSpec]:
    """Resolver entry point: one spec file -> its one TaskSpec (options are ignored)."""
    return [build_spec(ref)]


#: Task references that are paths of a YAML task spec (a row of spec.TASK_SOURCES).
SOURCE = TaskSource(is_spec_reference, build)
