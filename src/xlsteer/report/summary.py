"""The answer first: what was compared, on which model and items, and whether anything changed.

Why: a reader opening the report wants the verdict before the fingerprints. For each main-metric
table the summary holds the methods x languages scores with ▲/▼ where a change against the
reference is significant (per language: p Holm-adjusted over the non-anchor languages, as the
result files carry it; the average: the paired bootstrap stratified by language), the minimum
detectable effect of the average, the positive control where the run has one, and one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..formats import p_value
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
class Summary:
    tables: list[ScoreTable]
    control: ControlView | None
    sentences: list[str] = field(default_factory=list)
    problems: int = 0


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
           if not ln.reference and ln.average is not None and ln.average.significant(t.alpha, True)]
    return per, avg


def sentence(t: ScoreTable) -> str:
    """One plain sentence: did any method change the score against the reference?"""
    ref = t.reference.name if t.reference else "the reference"
    tested = t.tested()
    avg_tested = [ln for ln in t.lines if not ln.reference and ln.average is not None and ln.average.p is not None]
    if not tested and not avg_tested:
        return f"No paired test against {ref} in these files, so no change of {t.metric} can be called significant."
    per, avg = changed(t)
    n_items = min(t.n_items.values()) if t.n_items else 0
    mde = _mdes(t)
    mde_part = (" Changes of the average smaller than its MDE (" + ", ".join(f"{name} {v:.2f}" for name, v in mde)
                + f") could not be detected with {n_items} items per language." if mde else "")
    if not per and not avg:
        return (f"No method changes {t.metric} significantly against {ref}: none of the {len(tested)} method × "
                f"language tests survives Holm's correction, and no average over the non-{t.anchor} languages "
                f"changes (p ≥ {t.alpha:g})." + mde_part)
    parts = []
    if per:
        parts.append(f"{len(per)} of {len(tested)} method × language changes are significant after Holm "
                     f"({', '.join(per)})")
    if avg:
        parts.append(f"the average over the non-{t.anchor} languages changes for {', '.join(avg)}")
    else:
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


def summarize(tables: Sequence[ScoreTable], control_doc: Any = None, problems: int = 0) -> Summary:
    mains = [t for t in tables if t.main]
    task_changes = None
    if mains:
        task_changes = any(any(changed(t)) for t in mains)
    control = control_view(control_doc, task_changes) if control_doc is not None else None
    return Summary(mains, control, [sentence(t) for t in mains], problems)
