"""What the model wrote: unsteered and steered outputs of a generation task side by side.

Why: a pass rate that moves says nothing about what the text became; language fidelity (LCB) can
be bought with degenerate text, which the quality guard measures and an example shows at once.
For every steered eval file of a generation task whose unsteered eval (same task and split) is
in the run, with per-item records on the same items, the view holds per language the quality
guard of both runs (fluency: mean log-likelihood per token under the unsteered model;
degeneration: share of repeated 4-grams) and the first ``n`` items' outputs with each item's
main score. The page autoescapes every output (model text is never markup).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

GUARD = ("fluency", "degeneration")


@dataclass
class OutputExample:
    item: str
    unsteered: str
    steered: str
    unsteered_score: float | None
    steered_score: float | None


@dataclass
class OutputsView:
    task: str
    split: str
    main: str
    steered_name: str
    #: per language: {"guard": {metric: (unsteered, steered)}, "examples": [OutputExample, ...]}
    langs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _label(doc: Any) -> str:
    return str(getattr(doc, "method", None) or "steered")


def _mean(doc: Any, lang: str, metric: str) -> float | None:
    """A typed eval file's per-language mean of ``metric`` (None: not measured)."""
    cell = doc.per_lang.get(lang)
    score = None if cell is None else cell.metrics.get(metric) or cell.continuous.get(metric)
    return None if score is None else score.mean


def paired_items(base: Iterable[dict], steered: Iterable[dict],
                 n: int) -> Iterator[tuple[str, dict, dict]]:
    """``(lang, base item, steered item)`` for the first ``n`` items per language of ``base`` that
    ``steered`` has too, matched on (language, id): cross-lingual ids repeat across languages."""
    by_key = {(it["lang"], it["id"]): it for it in steered}
    taken: dict[str, int] = {}
    for it in base:
        other = by_key.get((it["lang"], it["id"]))
        if other is None or taken.get(it["lang"], 0) >= n:
            continue
        taken[it["lang"]] = taken.get(it["lang"], 0) + 1
        yield it["lang"], it, other


def outputs_views(loaded: Iterable[Any], n: int = 3) -> list[OutputsView]:
    """One view per steered generation eval with its unsteered eval in the run (eval files only)."""
    from ..results import EVAL

    evals = [f.doc for f in loaded if f.format == EVAL and any("generated" in it for it in (f.doc.items or []))]
    refs = {(d.task, d.split): d for d in evals if d.intervention is None}
    views = []
    for doc in evals:
        ref = refs.get((doc.task, doc.split))
        if doc.intervention is None or ref is None:
            continue
        main = doc.metrics.main
        view = OutputsView(doc.task, doc.split, str(main), _label(doc))
        for lang, it, other in paired_items(ref.items, doc.items, n):
            entry = view.langs.setdefault(lang, {"guard": {g: (_mean(ref, lang, g), _mean(doc, lang, g))
                                                           for g in GUARD}, "examples": []})
            entry["examples"].append(OutputExample(str(it["id"]), str(it.get("generated", "")),
                                                   str(other.get("generated", "")),
                                                   (it.get("scores") or {}).get(main),
                                                   (other.get("scores") or {}).get(main)))
        if view.langs:
            views.append(view)
    return views
