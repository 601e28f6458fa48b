"""Per-language and average statistics of one evaluation, from its per-item records.

Why separate from the runner: the same statistics serve a fresh evaluation, a merge of
per-language selections (:mod:`.selection`) and the paired comparison (:mod:`.pairing`), for
any task; what a metric *is* (0/1, continuous, macro-F1 over labels) comes from the task's
:class:`~.tasks.spec.Metric`, never from its name.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from . import metrics as M
from . import significance as S
from .tasks.spec import Metric, TaskSpec, get_task


def metrics_of(source: Any) -> tuple[Metric, ...]:
    """The metrics of a task name, a TaskSpec, or a list of Metric."""
    if isinstance(source, (str, TaskSpec)):
        return tuple(get_task(source).metrics)
    return tuple(source)


def metrics_from_record(record: dict[str, Any]) -> tuple[Metric, ...]:
    """The metrics a result file declares (``metrics.kinds`` and, for macro F1, ``metrics.n_labels``),
    so that files of any task, registered in this process or not, can be compared."""
    n_labels = record.get("n_labels") or {}
    return tuple(Metric(name, kind, int(n_labels.get(name, 3 if kind == "macro_f1" else 0)))
                 for name, kind in record["kinds"].items())


def macro_f1_codes(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro F1 of rows of codes ``pred * L + gold`` (same rule as metrics.macro_f1 with all labels)."""
    c = np.atleast_2d(np.asarray(codes, dtype=np.int64))
    r, _ = c.shape
    flat = (c + (np.arange(r)[:, None] * n_labels * n_labels)).ravel()
    conf = np.bincount(flat, minlength=r * n_labels * n_labels).reshape(r, n_labels, n_labels)  # [pred, gold]
    tp = np.einsum("rii->ri", conf).astype(np.float64)
    fp = conf.sum(axis=2) - tp
    fn = conf.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
    return np.nanmean(f1, axis=1)


def macro_f1_stat(n_labels: int):
    """A bootstrap statistic: macro F1 of a vector (or of each row) of codes."""
    def stat(x: np.ndarray, axis: int | None = None) -> Any:
        if axis is None:
            return float(macro_f1_codes(np.asarray(x)[None, :], n_labels)[0])
        return macro_f1_codes(x, n_labels)

    return stat


def label_codes(items: list[dict], n_labels: int) -> np.ndarray:
    """pred * L + gold per item; predictions outside the labels become a never-gold code (an error)."""
    out = []
    for it in items:
        p = it["prediction"]
        p = p if isinstance(p, int) and 0 <= p < n_labels else None
        out.append((p if p is not None else (it["gold"] + 1) % n_labels) * n_labels + it["gold"])
    return np.asarray(out, dtype=np.float64)


def _summary(values: Sequence[float], seed: int, n_boot: int) -> dict[str, Any]:
    return S.summarize(np.asarray(values, dtype=np.float64), seed=seed, n_boot=n_boot)


def lang_summary(spec: TaskSpec, recs: list[dict], seed: int, n_boot: int) -> dict[str, Any]:
    """n, every metric and continuous score with its 95% bootstrap CI, and the degenerate flag."""
    out: dict[str, Any] = {"n": len(recs), "metrics": {}, "continuous": {}}
    for m in spec.metrics:
        if m.kind == "macro_f1":
            point = M.macro_f1([r["prediction"] for r in recs], [r["gold"] for r in recs],
                               labels=list(range(m.n_labels)))
            _, lo, hi = S.bootstrap_ci(label_codes(recs, m.n_labels), n_boot=n_boot, seed=seed,
                                       stat=macro_f1_stat(m.n_labels))
            out["metrics"][m.name] = {"mean": point, "ci_low": lo, "ci_high": hi, "n": len(recs)}
        else:
            out["metrics"][m.name] = _summary([r["scores"][m.name] for r in recs], seed, n_boot)
    for name in spec.continuous:
        out["continuous"][name] = _summary([r["scores"][name] for r in recs], seed, n_boot)
    out["degenerate"] = M.degenerate([json.dumps(r["prediction"], ensure_ascii=False) for r in recs])
    out["degenerate"]["majority_label"] = json.loads(out["degenerate"]["majority_label"])
    return out


def consistency(task: str | TaskSpec, recs: list[dict], anchor_recs: list[dict]) -> dict[str, Any] | None:
    """Agreement with the anchor language on the items both have (same ids); None when the task's
    items are not parallel (each language its own items: an id names nothing across languages)."""
    spec = get_task(task)
    if not spec.parallel:
        return None
    a_by = {r["id"]: r for r in anchor_recs}
    pairs = [(r, a_by[r["id"]]) for r in recs if r["id"] in a_by]
    if not pairs:
        return None
    out: dict[str, Any] = {
        "n": len(pairs),
        "correct_agreement": M.agreement([p[0]["correct"] for p in pairs], [p[1]["correct"] for p in pairs]),
    }
    if spec.comparable_predictions:
        out["agreement"] = M.agreement([p[0]["prediction"] for p in pairs], [p[1]["prediction"] for p in pairs])
    if pairs[0][0].get("probs") is not None:
        out["mean_js"] = M.mean_js_divergence([p[0]["probs"] for p in pairs], [p[1]["probs"] for p in pairs])
    return out


def metric_groups(metrics: Any, name: str, runs: Sequence[dict[str, list[dict]]], langs: Sequence[str]):
    """Per run, one array of per-item values per language, and the statistic that scores a group.

    ``metrics``: a task or its metrics (see :func:`metrics_of`)."""
    m = {x.name: x for x in metrics_of(metrics)}.get(name)
    if m is not None and m.kind == "macro_f1":
        return ([[label_codes(by_lang[lang], m.n_labels) for lang in langs] for by_lang in runs],
                macro_f1_stat(m.n_labels))
    return [[np.asarray([r["scores"][name] for r in by_lang[lang]], dtype=np.float64) for lang in langs]
            for by_lang in runs], np.mean


def average(per_lang: dict[str, dict], langs: Sequence[str], by_lang: dict[str, list[dict]] | None = None,
            task: Any = None, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Unweighted mean over ``langs`` of each per-language score (and of the consistency scores).

    With the per-item records (``by_lang``, and ``task``: a task or its metrics), ``ci`` holds a 95% bootstrap interval of
    each average, items resampled within their language.
    """
    langs = [lang for lang in langs if lang in per_lang]
    out: dict[str, Any] = {"langs": list(langs), "metrics": {}, "continuous": {}, "consistency": {}}
    if not langs:
        return out
    first = per_lang[langs[0]]
    for group in ("metrics", "continuous"):
        for name in first[group]:
            out[group][name] = float(np.mean([per_lang[lang][group][name]["mean"] for lang in langs]))
    if by_lang is not None and task is not None:
        out["ci"] = {}
        for name in [*first["metrics"], *first["continuous"]]:
            (groups,), stat = metric_groups(task, name, [by_lang], langs)
            _, lo, hi = S.stratified_bootstrap_ci(groups, n_boot=n_boot, seed=seed, stat=stat)
            out["ci"][name] = {"ci_low": lo, "ci_high": hi}
    cons = [per_lang[lang].get("consistency") for lang in langs]
    if all(c is not None for c in cons):
        for key in cons[0]:  # type: ignore[union-attr]
            if key != "n":
                out["consistency"][key] = float(np.mean([c[key] for c in cons]))  # type: ignore[index]
    return out


def summarize_records(spec: TaskSpec, records: list[dict], langs: Sequence[str], anchor: str | None,
                      seed: int, n_boot: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per_lang, average) of an evaluation's records; consistency against the anchor's records."""
    by_lang = {lang: [r for r in records if r["lang"] == lang] for lang in langs}
    per_lang = {lang: lang_summary(spec, by_lang[lang], seed, n_boot) for lang in langs}
    for lang in langs:
        per_lang[lang]["consistency"] = (
            consistency(spec, by_lang[lang], by_lang[anchor]) if anchor in by_lang and lang != anchor else None
        )
    avg = average(per_lang, [lang for lang in langs if lang != anchor], by_lang, spec, seed, n_boot)
    return per_lang, avg
