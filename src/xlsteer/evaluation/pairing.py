"""Pair two evaluations item by item: the paired tests of every metric, per language and on average.

:func:`compare_runs` pairs two results of the same task, split and template, per language: for
each metric the paired bootstrap of the difference (its CI), McNemar's exact test for 0/1
scores and the paired permutation test for the others (exact up to 12 items), the minimum detectable effect, a verdict, the share of changed predictions, and
consistency before/after; ``p_holm``, the p-value Holm-adjusted over every non-anchor language of
the run (per metric), from which the verdict of each of those languages is read (the unadjusted
``p`` is kept beside it); and for the average over the non-anchor languages a paired bootstrap stratified by
language for the CI and MDE, with p from the paired permutation test stratified alike
(``average["tests"]``: difference with CI, p, MDE, verdict).

It reads what a metric is from the result files themselves (``metrics.kinds``), so results of
any task compare, including user tasks not registered in this process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError, XlsteerError
from ..results import PAIRED, VERSION as FORMAT_VERSION
from . import significance as S
from .permutation import paired_permutation, paired_stratified_test
from .summary import label_codes, macro_f1_stat, metric_groups, metrics_from_record


def paired_macro_f1(a: np.ndarray, b: np.ndarray, n_labels: int, n_boot: int, seed: int,
                    alpha: float = 0.05) -> dict[str, Any]:
    """Paired bootstrap CI of the macro-F1 difference (``b`` minus ``a``, codes of the same items);
    p from the paired permutation test (exact up to 12 items; the bootstrap's p is kept as p_bootstrap)."""
    stat = macro_f1_stat(n_labels)
    fa, fb = stat(a), stat(b)
    diff = fb - fa
    n = a.size
    out: dict[str, Any] = {"n": int(n), "base_mean": fa, "method_mean": fb, "diff": diff, "test": "paired_bootstrap"}
    if n < 2:
        out.update(diff_ci_low=diff, diff_ci_high=diff, p=1.0)
    else:
        rng = np.random.default_rng(seed)
        boot = np.empty(n_boot)
        rows = max(1, 2_000_000 // n)
        for s in range(0, n_boot, rows):
            idx = rng.integers(0, n, size=(min(n_boot, s + rows) - s, n))
            boot[s:s + idx.shape[0]] = stat(b[idx], axis=1) - stat(a[idx], axis=1)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        tol = 1e-12 * max(1.0, abs(diff))
        p_boot = float(np.mean(np.abs(boot - diff) >= abs(diff) - tol))
        perm = paired_permutation([a], [b], n_perm=n_boot, seed=seed, stat=stat)
        out.update(diff_ci_low=float(lo), diff_ci_high=float(hi), p=perm["p"], p_bootstrap=p_boot,
                   test="paired_permutation")
    out["verdict"] = S.verdict(out["p"], diff, alpha)
    return out


def _check_comparable(base: dict[str, Any], other: dict[str, Any]) -> None:
    for key in ("task", "split"):
        if base.get(key) != other.get(key):
            raise UsageError(f"cannot compare runs with different {key} ({base.get(key)} vs {other.get(key)}); "
                             "evaluate both on the same task and split")
    if base["template"].get("version") != other["template"].get("version") or \
            base["template"].get("name") != other["template"].get("name"):
        raise UsageError("cannot compare runs made with different prompt templates; evaluate both with one template")


def _paired_records(base: dict[str, Any], other: dict[str, Any], lang: str) -> tuple[list[dict], list[dict]]:
    a = {r["id"]: r for r in base["items"] if r["lang"] == lang}
    b = {r["id"]: r for r in other["items"] if r["lang"] == lang}
    if set(a) != set(b):
        raise XlsteerError(f"runs have different items in {lang} ({len(a)} vs {len(b)}); "
                           "evaluate both with the same --split and --limit")
    ids = [r["id"] for r in base["items"] if r["lang"] == lang]
    return [a[i] for i in ids], [b[i] for i in ids]


def _lang_entry(base: dict, other: dict, lang: str, ra: list[dict], rb: list[dict], n_boot: int, seed: int,
                alpha: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"n": len(ra), "metrics": {}, "continuous": {}}
    for m in metrics_from_record(base["metrics"]):
        if m.kind == "macro_f1":
            entry["metrics"][m.name] = paired_macro_f1(label_codes(ra, m.n_labels), label_codes(rb, m.n_labels),
                                                       m.n_labels, n_boot, seed, alpha)
        else:
            va = [r["scores"][m.name] for r in ra]
            vb = [r["scores"][m.name] for r in rb]
            entry["metrics"][m.name] = S.compare(va, vb, kind="binary" if m.kind == "binary" else "continuous",
                                                 seed=seed, n_boot=n_boot, alpha=alpha)
    for name in base["metrics"].get("continuous", []):
        entry["continuous"][name] = S.compare([r["scores"][name] for r in ra], [r["scores"][name] for r in rb],
                                              kind="continuous", seed=seed, n_boot=n_boot, alpha=alpha)
    entry["prediction_changed"] = float(np.mean([x["prediction"] != y["prediction"] for x, y in zip(ra, rb)]))
    entry["consistency"] = {"base": base["per_lang"][lang].get("consistency"),
                            "other": other["per_lang"][lang].get("consistency")}
    return entry


def compare_runs(base: dict[str, Any], other: dict[str, Any], *, n_boot: int = 2000, seed: int | None = None,
                 alpha: float = 0.05) -> dict[str, Any]:
    """Per language, ``other`` against ``base`` on the same items (positive diff: ``other`` is higher)."""
    _check_comparable(base, other)
    seed = base.get("seed", 0) if seed is None else seed
    metrics = metrics_from_record(base["metrics"])
    cont = list(base["metrics"].get("continuous", []))
    per_lang: dict[str, Any] = {}
    paired: dict[str, tuple[list[dict], list[dict]]] = {}  # per language: both runs' records, same item order
    for lang in [x for x in base["langs"] if x in other["langs"]]:
        paired[lang] = _paired_records(base, other, lang)
        per_lang[lang] = _lang_entry(base, other, lang, *paired[lang], n_boot, seed, alpha)
    anchor = base.get("anchor")
    non_anchor = [lang for lang in per_lang if lang != anchor]
    avg: dict[str, Any] = {"langs": non_anchor, "diff": {}, "tests": {}}
    if non_anchor:
        runs = [{lang: paired[lang][k] for lang in non_anchor} for k in (0, 1)]
        for group, names in (("metrics", [m.name for m in metrics]), ("continuous", cont)):
            for name in names:
                tests = [per_lang[lang][group][name] for lang in non_anchor]
                # one test per language: Holm-adjusted p over the non-anchor languages; the verdict reads it
                for t, p_adj in zip(tests, S.holm([t["p"] for t in tests])):
                    t["p_holm"] = p_adj
                    t["verdict"] = S.verdict(p_adj, t["diff"], alpha, t.get("mde"))
                avg["diff"][name] = float(np.mean([t["diff"] for t in tests]))
                # the average's own test: p exact up to 12 items, where the bootstrap's reads
                # "p < 0.001" from a handful of items that all moved
                (ga, gb), stat = metric_groups(metrics, name, runs, non_anchor)
                avg["tests"][name] = paired_stratified_test(ga, gb, n_boot=n_boot, seed=seed, alpha=alpha, stat=stat)
    return {
        "format": PAIRED, "version": FORMAT_VERSION, "task": base["task"], "split": base["split"],
        "main": base["metrics"]["main"], "seed": seed, "n_boot": n_boot, "alpha": alpha,
        "same_model": base["model"]["fingerprint_sha256"] == other["model"]["fingerprint_sha256"],
        "base": {"intervention": base.get("intervention"), "model": base["model"]["name"]},
        "other": {"intervention": other.get("intervention"), "model": other["model"]["name"]},
        "per_lang": per_lang,
        "average": avg,
    }
