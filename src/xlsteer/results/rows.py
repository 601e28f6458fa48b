"""Methods x languages score tables from typed result files: what the report and the analysis read.

Why: an eval file (plain, or steered with its baseline and paired test inside), paired files
(``compare_runs``, as the demo writes them beside its eval files) and a methods comparison
(``xlsteer compare``) all answer one question — which method scores what, per language, and did
it change anything against the reference on the same items. :func:`score_tables` puts them into
one :class:`ScoreTable` per (task, split, metric); significance marks use the p-values the files
carry (per language Holm-adjusted over the non-anchor languages; the average's stratified test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import COMPARE, EVAL, LM_EVAL, PAIRED

UNSTEERED = "unsteered"
NOT_PARALLEL = ("not parallel: each language has its own items, so agreement with the anchor language is not "
                "computed")


@dataclass
class Cell:
    """One method on one language (or on the average): score, and the paired test when there is one."""

    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    p: float | None = None
    p_holm: float | None = None
    test: str | None = None
    verdict: str | None = None
    mde: float | None = None
    prediction_changed: float | None = None
    degenerate: bool = False
    majority_share: float | None = None
    majority_label: Any = None
    agreement: float | None = None
    status: str | None = None  # "n/a" / "failed" for a language a method did not run

    def significant(self, alpha: float, average: bool = False) -> str:
        """"up" / "down" when the change is significant (after Holm per language), else ""."""
        p = self.p if average else self.p_holm
        if p is None or self.diff is None or p >= alpha:
            return ""
        return "up" if self.diff > 0 else "down"

    def take_test(self, t: Any) -> None:
        for k in ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "test", "verdict", "mde"):
            if getattr(t, k, None) is not None:
                setattr(self, k, getattr(t, k))


@dataclass
class Line:
    """One method's row."""

    name: str
    reference: bool = False
    cells: dict[str, Cell] = field(default_factory=dict)
    key: str | None = None  # the method's key in its file (a compare row), when the name says more
    average: Cell | None = None
    error: str | None = None
    intervention_hash: str | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class ScoreTable:
    task: str
    split: str
    metric: str
    main: bool
    model: str
    anchor: str | None
    langs: list[str]
    n_items: dict[str, int]
    lines: list[Line] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    alpha: float = 0.05
    methods_record: Any = None  # the MethodsComparison, for compare directories' full table
    notes: list[str] = field(default_factory=list)

    def line(self, name: str) -> Line:
        found = next((x for x in self.lines if x.name == name), None)
        if found is None:
            found = Line(name)
            self.lines.append(found)
        return found

    @property
    def with_average(self) -> bool:
        """Whether an average column means anything: more than one non-anchor language."""
        return len([lang for lang in self.langs if lang != self.anchor]) > 1

    @property
    def reference(self) -> Line | None:
        return next((x for x in self.lines if x.reference), None)

    def tested(self) -> list[tuple[Line, str, Cell]]:
        """Every (method, non-anchor language) cell with a paired test."""
        return [(ln, lang, c) for ln in self.lines if not ln.reference for lang, c in ln.cells.items()
                if lang != self.anchor and c.p is not None]


def _layers_text(layers: Sequence[int]) -> str:
    xs = sorted({int(x) for x in layers})
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}-{xs[-1]}"
    return ",".join(map(str, xs))


def setting_text(info: dict[str, Any] | None) -> str:
    """Where and how strongly an intervention acts: ``L6 α1`` (``L0-17`` for a range, ``α`` always)."""
    if not info:
        return UNSTEERED
    parts = []
    if info.get("layers"):
        parts.append(f"L{_layers_text(info['layers'])}")
    strength = info.get("strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        parts.append(f"α{strength:g}")
    return " ".join(parts)


def method_label(info: dict[str, Any] | None, name: str | None = None) -> str:
    """A short name for an intervention record that carries its layer and strength: ``unsteered``,
    ``diffmean L6 α1``, or for a per-language selection ``diffmean per language (sw L4 α1; zh unsteered)``."""
    if not info:
        return name or UNSTEERED
    method = name or str(info.get("params", {}).get("fit") or info.get("method")
                         or "+".join(str(i.get("method")) for i in info.get("interventions") or []))
    if isinstance(info.get("per_lang"), dict):
        return f"{method} per language (" + "; ".join(f"{lang} {setting_text(i)}"
                                                      for lang, i in info["per_lang"].items()) + ")"
    setting = setting_text(info)
    return f"{method} {setting}".strip()


def selection_label(name: str, sel: Any) -> str:
    """A compare row's name with what its dev selection chose (layer and α, or no steering)."""
    if not isinstance(sel, dict) or "steer" not in sel:
        return name
    if not sel["steer"]:
        return f"{name} (no steering)"
    if sel.get("select") == "per-lang" or sel.get("mode") == "per-lang":
        return f"{name} per language"
    layers = sel.get("layers") or []
    alpha = sel.get("alpha")
    return f"{name} " + " ".join(([f"L{_layers_text(layers)}"] if layers else [])
                                  + ([f"α{alpha:g}"] if isinstance(alpha, (int, float)) else []))


def eval_label(doc: Any) -> str:
    if isinstance(doc.method, str):
        return method_label(doc.intervention, doc.method) if doc.intervention else doc.method
    if doc.method is not None:
        return selection_label(doc.method.name, doc.method.selection)
    return method_label(doc.intervention)


def _score_cell(res: Any, lang: str, metric: str) -> Cell:
    d = res.per_lang[lang]
    s = d.metrics.get(metric) or d.continuous.get(metric)
    cell = Cell(s.mean, s.ci_low, s.ci_high, s.n)
    if d.degenerate is not None:
        cell.degenerate, cell.majority_share = d.degenerate.degenerate, d.degenerate.majority_share
        cell.majority_label = d.degenerate.majority_label
    if d.consistency is not None:
        c = d.consistency
        cell.agreement = c.agreement if c.agreement is not None else c.correct_agreement
    return cell


def _average_cell(res: Any, metric: str) -> Cell | None:
    avg = res.average
    value = avg.metrics.get(metric, avg.continuous.get(metric))
    if value is None:
        return None
    ci = avg.ci.get(metric)
    return Cell(value, ci.ci_low if ci else None, ci.ci_high if ci else None,
                sum(res.per_lang[x].n for x in avg.langs if x in res.per_lang))


def _metrics(res: Any) -> list[str]:
    return list(res.metrics.names) + list(res.metrics.continuous)


class _Tables:
    """Accumulates lines into tables keyed by (task, split, metric)."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.by_key: dict[tuple, ScoreTable] = {}

    def table(self, res: Any, metric: str, source: str) -> ScoreTable:
        key = (res.task, res.split, metric)
        t = self.by_key.get(key)
        if t is None:
            t = ScoreTable(res.task, res.split, metric, metric == res.metrics.main, res.model.name, res.anchor,
                           list(res.langs), dict(res.item_ids.per_lang), alpha=self.alpha)
            self.by_key[key] = t
        if source not in t.sources:
            t.sources.append(source)
        return t

    def of(self, task: str, split: str) -> list[ScoreTable]:
        """The eval tables (not methods comparisons) of one task and split."""
        return [t for t in self.by_key.values() if (t.task, t.split) == (task, split) and t.methods_record is None]

    def add_eval(self, res: Any, source: str, name: str | None = None, reference: bool = False) -> None:
        name = name or eval_label(res)
        reference = reference or res.intervention is None and res.comparison is None
        if res.baseline is not None and res.comparison is not None:
            self.add_eval(res.baseline, source, eval_label(res.baseline), reference=True)
        from ..evaluation.tables import parallel

        for metric in _metrics(res):
            t = self.table(res, metric, source)
            if not parallel(res) and NOT_PARALLEL not in t.notes:
                t.notes.append(NOT_PARALLEL)
            line = t.line(name)
            line.reference = line.reference or reference
            line.intervention_hash = (res.intervention or {}).get("hash")
            for lang in res.langs:
                line.cells[lang] = _score_cell(res, lang, metric)
            line.average = _average_cell(res, metric)
            if res.comparison is not None:
                self.attach(t, line, res.comparison, metric)

    def attach(self, t: ScoreTable, line: Line, cmp: Any, metric: str) -> None:
        for lang, c in cmp.per_lang.items():
            test = c.metrics.get(metric) or c.continuous.get(metric)
            if test is None:
                continue
            cell = line.cells.setdefault(lang, Cell(test.method_mean, n=test.n))
            cell.take_test(test)
            cell.prediction_changed = c.prediction_changed
        avg = cmp.average.tests.get(metric)
        if avg is not None:
            line.average = line.average or Cell(avg.method_mean, n=avg.n)
            line.average.take_test(avg)

    def add_paired(self, cmp: Any, source: str) -> None:
        name = method_label(cmp.other.get("intervention"), cmp.method) if cmp.other.get("intervention") \
            else (cmp.method or method_label(None))
        ihash = (cmp.other.get("intervention") or {}).get("hash")
        for t in self.of(cmp.task, cmp.split):
            line = next((x for x in t.lines if ihash and x.intervention_hash == ihash), None) or t.line(name)
            self.attach(t, line, cmp, t.metric)
            if source not in t.sources:
                t.sources.append(source)

    def add_methods(self, rec: Any, source: str) -> None:
        t = ScoreTable(rec.task, rec.split, rec.main, True, rec.model.name, rec.anchor, list(rec.langs),
                       dict(rec.item_ids.per_lang), sources=[source], alpha=rec.alpha_level, methods_record=rec)
        for name in rec.methods:
            row = rec.rows[name]
            line = Line(selection_label(name, row.selection), reference=name == rec.reference, error=row.error,
                        cost=dict(row.cost), skipped=dict(row.skipped), key=name)
            for lang, c in row.per_lang.items():
                if getattr(c, "status", None):
                    line.cells[lang] = Cell(status=c.status)
                    continue
                cell = Cell(c.score, c.ci_low, c.ci_high, c.n, prediction_changed=c.prediction_changed)
                cell.take_test(c)
                line.cells[lang] = cell
            a = row.average
            if a.score is not None:
                line.average = Cell(a.score, a.ci_low, a.ci_high, a.n)
                line.average.take_test(a)
            t.lines.append(line)
        self.by_key[(rec.task, rec.split, rec.main, source)] = t


    def add_lm_eval(self, doc: Any, source: str) -> None:
        """lm-evaluation-harness scores: one column per task, no paired test (lm-eval runs one model)."""
        metrics: dict[str, dict[str, float]] = {}
        for task, values in doc.results.items():
            for key, value in values.items():
                name = key.split(",")[0]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("_stderr"):
                    metrics.setdefault(name, {})[task] = float(value)
        extra = doc.model_extra or {}
        n = {task: int(v.get("effective", 0)) for task, v in (extra.get("n-samples") or {}).items()}
        model = extra.get("model_name") or (extra.get("config") or {}).get("model_name") or "—"
        for i, (metric, per_task) in enumerate(metrics.items()):
            t = ScoreTable("lm-eval", "tasks", metric, i == 0, str(model),
                           None, list(per_task), n, sources=[source], alpha=self.alpha,
                           notes=["lm-evaluation-harness scores as the file holds them (its standard errors are in "
                                  "the file); lm-eval runs one configuration, so there is no paired test here"])
            t.lines.append(Line(Path(source).stem, cells={task: Cell(v) for task, v in per_task.items()}))
            self.by_key[("lm-eval", source, metric)] = t


def score_tables(loaded: Iterable[Any], alpha: float = 0.05) -> list[ScoreTable]:
    """Tables of every eval, paired and methods file among ``loaded`` (``xlsteer.results.read.Loaded``).

    Steered eval files without a paired test get one from their per-item records against the
    unsteered eval of the same task and split in the same set (noted in the table).
    """
    acc = _Tables(alpha)
    files = list(loaded)
    evals = [f for f in files if f.format == EVAL]
    for f in evals:
        acc.add_eval(f.doc, f.path.name)
    for f in files:
        if f.format == PAIRED:
            acc.add_paired(f.doc, f.path.name)
    _pair_missing(acc, evals, alpha)
    for f in files:
        if f.format == COMPARE:
            acc.add_methods(f.doc, f.path.name)
        elif f.format == LM_EVAL:
            acc.add_lm_eval(f.doc, f.path.name)
    tables = list(acc.by_key.values())
    for t in tables:
        t.lines.sort(key=lambda ln: not ln.reference)  # stable: the reference first
    return sorted(tables, key=lambda t: (t.task, t.split, not t.main, t.metric))


def _pair_missing(acc: _Tables, evals: Sequence[Any], alpha: float) -> None:
    from ..errors import XlsteerError
    from ..evaluation.pairing import compare_runs
    from .schema import PairedResult

    refs = {(f.doc.task, f.doc.split): f for f in evals if f.doc.intervention is None and f.doc.items}
    for f in evals:
        doc, key = f.doc, (f.doc.task, f.doc.split)
        if doc.intervention is None or doc.comparison is not None or key not in refs or not doc.items:
            continue
        tables = acc.of(*key)
        line_has_test = any(c.p is not None for t in tables for ln in t.lines if ln.name == eval_label(doc)
                            for c in ln.cells.values())
        if line_has_test:
            continue
        ref = refs[key]
        try:
            cmp = compare_runs(ref.doc.model_dump(), doc.model_dump(), alpha=alpha)
        except XlsteerError as e:
            for t in tables:
                t.notes.append(f"no paired test for {eval_label(doc)} ({f.path.name}): {e}")
            continue
        typed = PairedResult.model_validate(cmp)
        for t in tables:
            acc.attach(t, t.line(eval_label(doc)), typed, t.metric)
            t.notes.append(f"paired tests for {eval_label(doc)} computed from the per-item results in {f.path.name} "
                           f"and {ref.path.name} (xlsteer.evaluation.pairing.compare_runs)")


def score_rows(docs: Iterable[Any]) -> list[dict[str, Any]]:
    """Flat rows (task, metric, method, lang, mean, diff, p, is_baseline, intervention_hash) of eval,
    paired and methods documents (dicts, as read from JSON): what the gain regression reads."""
    from .read import Loaded, typed

    loaded = []
    for i, raw in enumerate(docs):
        doc, old, notes = typed(raw, f"evaluation result {i + 1}")
        loaded.append(Loaded(Path(f"result-{i + 1}.json"), doc, old, notes))
    rows = []
    for t in score_tables(loaded):
        for ln in t.lines:
            for lang, c in ln.cells.items():
                if c.mean is not None:
                    rows.append({"task": t.task, "split": t.split, "metric": t.metric, "method": ln.name, "lang": lang,
                                 "mean": c.mean, "diff": c.diff, "p": c.p, "is_baseline": ln.reference,
                                 "intervention_hash": ln.intervention_hash})
    return rows
