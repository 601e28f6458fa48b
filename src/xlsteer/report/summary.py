"""The answer first: what was compared, on which model and items, and whether anything changed.

Why: a reader opening the report wants the verdict before the fingerprints. A directory may hold
results of several tasks, so the summary opens with one headline over all of them (every method
and task with the languages where it changed the main metric significantly after Holm, and its
average change), then for each main-metric table the summary holds the methods x languages scores with ▲/▼ where a change against the
reference is significant (per language: p Holm-adjusted over the non-anchor languages, as the
result files carry it; the average: the paired permutation test stratified by language), the minimum
detectable effect of the average, the positive control where the run has one, and one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..formats import MISSING, p_value
from ..results.rows import ScoreTable


@dataclass
class ControlView:
    """The positive control (``control.json``): does the intervention change the output language?"""

    title: str
    headers: list[str]
    rows: list[list[str]]
    changes: bool
    sentence: str


@dataclass
class Headline:
    """Every task of the run at once: one sentence, and a row per (task, method)."""

    sentence: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Summary:
    tables: list[ScoreTable]
    control: ControlView | None
    sentences: list[str] = field(default_factory=list)
    problems: int = 0
    headline: Headline | None = None


def _mdes(t: ScoreTable) -> list[tuple[str, float]]:
    return [(ln.name, ln.average.mde) for ln in t.lines
            if not ln.reference and ln.average is not None and ln.average.mde is not None]


def mde_text(t: ScoreTable) -> str:
    """The smallest change of the average each method's test could detect (power 0.8)."""
    items = _mdes(t)
    if not items:
        return ""
    return ", ".join(f"{name} {value:.3f}" for name, value in items)


def changed(t: ScoreTable) -> tuple[list[str], list[str]]:
    """(significant per-language changes after Holm, significant changes of the average)."""
    per = [f"{ln.name} {'▲' if c.significant(t.alpha) == 'up' else '▼'} {lang}" for ln, lang, c in t.tested()
           if c.significant(t.alpha)]
    avg = [f"{ln.name} {'▲' if ln.average.significant(t.alpha, True) == 'up' else '▼'}" for ln in t.lines
           if t.with_average and not ln.reference and ln.average is not None and ln.average.significant(t.alpha, True)]
    return per, avg


def sentence(t: ScoreTable) -> str:
    """One plain sentence: did any method change the score against the reference?"""
    ref = t.reference.name if t.reference else "the reference"
    tested = t.tested()
    avg_tested = [ln for ln in t.lines if t.with_average and not ln.reference and ln.average is not None
                  and ln.average.p is not None]
    if not tested and not avg_tested:
        return f"No paired test against {ref} in these files, so no change of {t.metric} can be called significant."
    per, avg = changed(t)
    n_items = min(t.n_items.values()) if t.n_items else 0
    mde = _mdes(t) if t.with_average else []
    mde_part = (" Changes of the average smaller than its MDE (" + ", ".join(f"{name} {v:.2f}" for name, v in mde)
                + f") could not be detected with {n_items} items per language." if mde else "")
    if not per and not avg:
        return (f"No method changes {t.metric} significantly against {ref}: none of the {len(tested)} method × "
                f"language tests survives Holm's correction"
                + (f", and no average over the non-{t.anchor} languages changes (p ≥ {t.alpha:g})." if t.with_average
                   else f" (α = {t.alpha:g}).") + mde_part)
    parts = []
    if per:
        parts.append(f"{len(per)} of {len(tested)} method × language changes are significant after Holm "
                     f"({', '.join(per)})")
    if avg:
        parts.append(f"the average over the non-{t.anchor} languages changes for {', '.join(avg)}")
    elif t.with_average:
        parts.append(f"no average over the non-{t.anchor} languages changes significantly")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + f" (against {ref}, α = {t.alpha:g})." + (mde_part if not avg else "")


def control_view(doc: Any, task_changes: bool | None, alpha: float = 0.05) -> ControlView:
    from ..evaluation.significance import holm

    adjusted = holm([r.p for r in doc.rows]) if doc.rows else []
    rows = []
    for r, p_adj in zip(doc.rows, adjusted):
        rows.append([f"{r.prompt_lang} → {r.target_lang}", str(r.n),
                     f"{r.unsteered_share:.2f} [{r.unsteered_ci[0]:.2f}, {r.unsteered_ci[1]:.2f}]",
                     f"{r.steered_share:.2f} [{r.steered_ci[0]:.2f}, {r.steered_ci[1]:.2f}]",
                     f"{r.diff:+.2f} [{r.diff_ci[0]:+.2f}, {r.diff_ci[1]:+.2f}]",
                     p_value(r.p) + f" ({r.test})", p_value(p_adj)])
    changes = any(p < alpha for p in adjusted)
    behaviour = ("the intervention changes behaviour (positive control)" if changes else
                 "the positive control shows no change in behaviour, so the intervention may not act at all")
    task = ("" if task_changes is None else
            "; the task score changes" if task_changes else "; the task score does not change")
    title = (f"Positive control: {doc.method} at layer {doc.layer}, α = {doc.alpha:g}, share of outputs in the "
             f"target language in the first {doc.n_new_tokens} generated tokens ({doc.model})")
    return ControlView(title, ["prompt → target", "n", "unsteered share [95% CI]", "steered share [95% CI]",
                               "diff [95% CI]", "p (test)", "p Holm"], rows, changes,
                       behaviour[0].upper() + behaviour[1:] + task + ".")


def _arrows(t: ScoreTable, ln: Any, direction: str) -> str:
    langs = [lang for lang, c in ln.cells.items() if lang != t.anchor and c.p is not None
             and c.significant(t.alpha) == direction]
    return ", ".join(langs) or MISSING


def _avg_change(t: ScoreTable, ln: Any) -> str:
    a = ln.average
    if not t.with_average or a is None or a.diff is None:
        return MISSING
    ci = f" [{a.diff_ci_low:+.3f}, {a.diff_ci_high:+.3f}]" if a.diff_ci_low is not None else ""
    mark = {"up": " ▲", "down": " ▼"}.get(a.significant(t.alpha, True), "")
    return f"{a.diff:+.3f}{ci}{mark}"


def headline(mains: Sequence[ScoreTable]) -> Headline | None:
    """One sentence and one table over every task of the run (the first thing the page shows)."""
    if not mains:
        return None
    rows, per_all, tested_all = [], [], 0
    for t in mains:
        ref = t.reference.name if t.reference else MISSING
        tested_all += len(t.tested())
        per_all += [f"{'▲' if c.significant(t.alpha) == 'up' else '▼'} {ln.name} on {t.task}/{lang}"
                    for ln, lang, c in t.tested() if c.significant(t.alpha)]
        for ln in (x for x in t.lines if not x.reference):
            rows.append([f"{t.task} ({t.split})", t.metric, ln.name, ref, _arrows(t, ln, "up"),
                         _arrows(t, ln, "down"), _avg_change(t, ln)])
    tasks = sorted({t.task for t in mains})
    what = f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(tasks)})"
    if not tested_all:
        text = f"Across {what}: no paired test against a reference, so no change can be called significant."
    elif per_all:
        text = (f"Across {what}: {len(per_all)} of {tested_all} method × language changes of the main metric are "
                f"significant after Holm: {'; '.join(per_all)}.")
    else:
        text = (f"Across {what}: none of the {tested_all} method × language changes of the main metric is "
                "significant after Holm.")
    heads = ["task (split)", "metric", "method", "against", "▲ languages (Holm)", "▼ languages (Holm)",
             "average Δ [95% CI]"]
    return Headline(text, heads, rows)


def summarize(tables: Sequence[ScoreTable], control_doc: Any = None, problems: int = 0) -> Summary:
    mains = [t for t in tables if t.main]
    task_changes = None
    if mains:
        task_changes = any(any(changed(t)) for t in mains)
    control = control_view(control_doc, task_changes) if control_doc is not None else None
    return Summary(mains, control, [sentence(t) for t in mains], problems, headline(mains))
