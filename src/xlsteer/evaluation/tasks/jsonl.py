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
from .jsonl_format import HINT, SPLIT_NAMES, Record, describe_ranges, read_records, read_spec, scoring_of
from .spec import BUILTIN, BaselineHints, Metric, Scored, TaskSource, TaskSpec


# ---------------------------------------------------------------------------------------------
# the task


class _Data:
    """The records of every language, read once (when the spec is built: the template version
    digests these very bytes), and how they pair across languages (:func:`pairing_of`)."""

    def __init__(self, name: str, spec: Any, files: dict[str, Path | dict[str, Path]]):
        self.name, self.spec, self.files = name, spec, files
        self._records: dict[str, dict[str, list[Record]]] | None = None
        self.pairing, self.pairing_note = "id", ""

    def by_split(self) -> dict[str, dict[str, list[Record]]]:
        """lang -> split -> records (a split a language lacks: no key); DataError when unreadable."""
        if self._records is None:
            self._records = self._read()
        return self._records

    def _read(self) -> dict[str, dict[str, list[Record]]]:
        out: dict[str, dict[str, list[Record]]] = {}
        for lang, where in self.files.items():
            recs = _language_records(where, self.spec)
            out[lang] = {s: [r for r in recs if r.split == s] for s in SPLIT_NAMES}
            out[lang] = {s: v for s, v in out[lang].items() if v}
        _check_scoring(out)
        self.pairing, self.pairing_note = pairing_of(out, self.spec)
        if self.pairing == "id":  # the first language's order, so that --limit N keeps the same items
            first = next(iter(out))
            for lang in out:
                for split, recs in out[lang].items():
                    rank = {r.id: i for i, r in enumerate(out[first].get(split, []))}
                    out[lang][split] = sorted(recs, key=lambda r: rank.get(r.id, len(rank)))
        return out


def _language_records(where: Path | dict[str, Path], spec: Any) -> list[Record]:
    """One language's records: of its one file, or of its file per split (ids unique across them;
    without ids a record is named ``<split>/<index>``)."""
    if isinstance(where, Path):
        return read_records(where, spec)
    out: list[Record] = []
    seen: dict[str, Path] = {}
    for split, path in where.items():
        for r in read_records(path, spec, split):
            rid = r.id if r.named else f"{split}/{r.id}"
            if rid in seen:
                raise DataError(f"file {path} line {r.line}: id {rid!r} is also in {seen[rid]}; give every record "
                                f"of a language its own id ({HINT})")
            seen[rid] = path
            out.append(Record(rid, r.split, r.line, r.fields, r.answer, r.named))
    return out


def _check_scoring(recs: dict[str, dict[str, list[Record]]]) -> None:
    """Every choice record of a task is scored one way: full (choices) or partial (contexts)."""
    seen: dict[str, tuple[str, Record]] = {}
    for lang, by_split in recs.items():
        for r in (r for v in by_split.values() for r in v if "continuation" in r.fields or "choices" in r.fields):
            seen.setdefault(scoring_of(r.fields), (lang, r))
    if len(seen) > 1:
        (la, a), (lb, b) = seen["full"], seen["partial"]
        raise DataError(f"the {la} record at line {a.line} has choices (full scoring) but the {lb} record at line "
                        f"{b.line} has contexts (partial scoring); write every record of a task one way ({HINT})")


def pairing_of(recs: dict[str, dict[str, list[Record]]], spec: Any) -> tuple[str, str]:
    """(pairing, why): ``id`` when the spec declares ``parallel: true`` or the records carry ids and
    every language holds the same ids (with the same gold) in each split it has; else ``none``."""
    if spec.parallel is False:
        return "none", "declared not parallel (parallel: false)"
    langs = list(recs)
    ids = {lang: {s: {r.id: r for r in v} for s, v in recs[lang].items()} for lang in langs}
    gold_clash = _gold_clash(ids, spec)
    if spec.parallel:
        if gold_clash:
            raise DataError(f"misaligned task files: {gold_clash}; the same item must have the same gold in every "
                            "language (or declare parallel: false)")
        return "id", "declared parallel (parallel: true): records with the same id are the same item"
    if not all(r.named for by_split in recs.values() for v in by_split.values() for r in v):
        return "none", "not parallel: the records carry no ids (declare parallel: true if the n-th records are " \
                       "translations)"
    for split in SPLIT_NAMES:
        sets = [set(ids[lang][split]) for lang in langs if split in ids[lang]]
        if any(x != sets[0] for x in sets):
            return "none", f"not parallel: the languages hold other {split} ids"
    if gold_clash:
        return "none", f"not parallel: {gold_clash}"
    return "id", "parallel: every language holds the same ids"


def _gold_clash(ids: dict[str, dict[str, dict[str, Record]]], spec: Any) -> str:
    """The first item whose gold differs between two languages (multiple choice), else ''."""
    if spec.kind != "multiple_choice":
        return ""
    first = next(iter(ids))
    for lang in ids:
        for split, mine in ids[lang].items():
            for rid, r in mine.items():
                ref = ids[first].get(split, {}).get(rid)
                if ref is not None and ref.answer != r.answer:
                    return f"id {rid!r} has gold {r.answer} in {lang} (line {r.line}) and {ref.answer} in {first}"
    return ""


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
    recs = data.by_split()[lang].get(split, [])
    items = [Item(id=f"{name}/{r.id}", lang=lang, split=split, fields=dict(r.fields), answer=r.answer)
             for r in recs]
    return items if limit is None else items[:limit]


def _render_choice(t: Any, item: Any, exemplars: Any = ()) -> Any:
    from ..templates import Request

    delim = t.options["target_delimiter"]
    return Request(kind="choice", context=item.fields["context"],
                   choices=tuple(delim + c for c in item.fields["choices"]))


def _render_partial(t: Any, item: Any, exemplars: Any = ()) -> Any:
    """Partial scoring: one shared continuation, scored after each choice's context (lm-eval's
    "multiple input" requests, as for Winograd-style tasks)."""
    from ..templates import Request

    delim = t.options["target_delimiter"]
    return Request(kind="choice", contexts=tuple(item.fields["contexts"]),
                   choices=(delim + item.fields["continuation"],))


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
    if "contexts" in item.fields:
        return item.fields["contexts"][item.answer] + " " + item.fields["continuation"]
    return str(item.answer[0] if isinstance(item.answer, list) else item.answer)


def _metrics(spec: Any, scoring: str) -> tuple[tuple[Metric, ...], str, str | None]:
    if scoring == "partial":  # one continuation: per-character normalisation changes nothing
        return (Metric("acc", "binary"),), "acc", "margin"
    if spec.kind == "multiple_choice":
        return (Metric("acc", "binary"), Metric("acc_norm", "binary")), "acc", "margin"
    if spec.metric == "f1":
        return (Metric("f1", "continuous"), Metric("em", "binary")), "f1", "em"
    return (Metric("em", "binary"),), "em", None


def _split_rules(spec: Any, counts: dict[str, dict[str, int]]) -> dict[str, str]:
    """Each split's item rule, with its record count per language (where a language lacks it: none)."""
    present = [s for s in SPLIT_NAMES if any(s in c for c in counts.values())]
    out = {}
    for s in present:
        if any(isinstance(f, dict) for f in spec.files.values()):
            rule = f"the {s} file of each language"
        elif spec.split_field is not None:
            rule = f"records whose '{spec.split_field}' is {s!r}"
        elif spec.splits is None:
            rule = "all records"
        else:
            rule = describe_ranges(spec.splits[s])
        per = {lang: c.get(s, 0) for lang, c in counts.items()}
        shown = ", ".join(f"{lang} {n}" if n else f"{lang} none" for lang, n in per.items())
        out[s] = rule + (f"; {shown}" if len(set(per.values())) > 1 else "")
    return out


def _template(name: str, spec: Any, content: str, scoring: str) -> Any:
    """The task's one template; its version digests the settings and the files' bytes, because
    the per-item cache is keyed by item id and an edited record must not reuse old scores."""
    from ..templates import Template

    if scoring == "partial":
        opts = {"target_delimiter": spec.target_delimiter}
        return Template("jsonl-partial", name, _digest([opts, content, "partial"]), "choice",
                        "each choice's context, then target_delimiter + the shared continuation, scored by its "
                        "summed log-likelihood (partial scoring)", opts, _render_partial)
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


def _content_digest(spec_bytes: bytes, files: dict[str, Path | dict[str, Path]]) -> str:
    """The bytes of the spec and of every data file (never their paths: the cache must not depend
    on how a path is spelled or where the files live)."""
    h = hashlib.sha256(spec_bytes)
    for lang, where in files.items():
        # one file: the language and its bytes; one file per split: the split's name too
        for split, path in ([("", where)] if isinstance(where, Path) else sorted(where.items())):
            h.update(lang.encode() + b"\0" + (split.encode() + b"\0" if split else b""))
            with open(path, "rb") as f:  # streamed: the files were checked and bounded when read
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def _files_of(where: Path | dict[str, Path], split: str) -> list[str]:
    if isinstance(where, Path):
        return [str(where)]
    return [str(where[split])] if split in where else []


def _langs(spec: Any, path: Path) -> dict[str, Path | dict[str, Path]]:
    from ...data.langs import normalize_lang

    out: dict[str, Path | dict[str, Path]] = {}
    for code, rel in spec.files.items():
        try:
            lang = normalize_lang(code)
        except LanguageError as e:
            raise DataError(f"task spec {path}: files: {e}") from None
        if lang in out:
            raise DataError(f"task spec {path}: files: language {lang} is given twice (as {code!r}); "
                            "list each language once")
        out[lang] = (_resolved(path.parent / rel, path) if isinstance(rel, str)
                     else {split: _resolved(path.parent / f, path) for split, f in rel.items()})
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
    """The TaskSpec of a YAML spec file (validated; every data file is read and checked now)."""
    p = _resolved(Path(path).expanduser(), Path(path))
    spec, raw = read_spec(p)
    name = spec.name or re.sub(r"[^A-Za-z0-9_.:-]", "_", p.stem)
    if name.lower() in BUILTIN:
        raise UsageError(f"task spec {p}: the name {name!r} is a built-in task; give the spec another name")
    files = _langs(spec, p)
    data = _Data(name, spec, files)
    recs = data.by_split()  # reads and checks every file now: errors come early
    counts = {lang: {s: len(v) for s, v in by.items()} for lang, by in recs.items()}
    splits = _split_rules(spec, counts)
    no_test = [lang for lang, c in counts.items() if "test" not in c]
    if no_test:
        raise DataError(f"task spec {p}: no record of {', '.join(no_test)} is in the test split; put some records "
                        f"in it ({HINT})")
    scoring = next((scoring_of(r.fields) for by in recs.values() for v in by.values() for r in v), "full")
    metrics, main, tie = _metrics(spec, scoring)
    lang_splits = {lang: tuple(s for s in splits if s in c) for lang, c in counts.items()}
    has = set(splits)
    train = "train" if "train" in has else None
    generation = spec.kind == "generation"
    return TaskSpec(
        name=name,
        description=spec.description or f"user task from {p.name} ({spec.kind.replace('_', ' ')})",
        langs=tuple(files),
        splits=splits,
        load_items=partial(_load_items, data, name, tuple(splits)),
        data_files=lambda lang, split: [str(p), *_files_of(files[lang], split)],
        templates=(_template(name, spec, _content_digest(raw, files), scoring),),
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
                "files": {lang: str(f) if isinstance(f, Path) else {s: str(x) for s, x in f.items()}
                          for lang, f in files.items()},
                "parallel": data.pairing_note},
        pairing=data.pairing,  # type: ignore[arg-type]
        lang_splits=None if all(v == tuple(splits) for v in lang_splits.values()) else lang_splits,
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
