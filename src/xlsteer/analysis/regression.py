"""Does a method's gain come from alignment with the anchor? Regress gain on change in similarity.

Why: the residual-stream paper's story predicts a positive slope (languages pulled closer to
English gain more); the CLAS paper reports the opposite (gains come with *lower* cosine
similarity to English, i.e. more separation). One point per language:
``x = similarity after - before`` (cosine to the anchor, paired over parallel items, at one
layer), ``y = score(method) - score(unsteered)`` on the same items. The fit is ordinary least
squares via :func:`xlsteer.evaluation.significance.regression` (``scipy.stats.linregress``):
slope, intercept, Pearson r and the two-sided p of slope = 0. With a handful of languages the
test has little power: the interpretation says so rather than over-reading a slope.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError


def gain_vs_similarity(
    gains: Mapping[str, float],
    delta_similarity: Mapping[str, float],
    *,
    method: str | None = None,
    anchor: str = "en",
    alpha: float = 0.05,
    layer: int | None = None,
) -> dict[str, Any]:
    """Regress per-language ``gains`` on ``delta_similarity`` (languages present in both).

    Returns ``{"method", "anchor", "layer", "points": {lang: {"x", "y"}}, "fit": {slope,
    intercept, r, p, n} or None, "interpretation": str, "missing": [langs in one input only]}``.
    """
    from ..evaluation.significance import regression

    langs = [lang for lang in gains if lang in delta_similarity and lang != anchor]
    missing = sorted((set(gains) ^ set(delta_similarity)) - {anchor})
    points = {lang: {"x": float(delta_similarity[lang]), "y": float(gains[lang])} for lang in langs}
    out: dict[str, Any] = {
        "method": method,
        "anchor": anchor,
        "layer": layer,
        "alpha": alpha,
        "points": points,
        "fit": None,
        "missing": missing,
        "x_label": f"change in cosine similarity to {anchor}" + (f" (layer {layer})" if layer is not None else ""),
        "y_label": "score gain over the unsteered model",
    }
    xs = np.array([p["x"] for p in points.values()])
    if len(points) < 3:
        out["interpretation"] = (
            f"Too few languages for a regression ({len(points)}; need at least 3 with both a gain and a "
            "change in similarity)."
        )
        return out
    if np.all(xs == xs[0]):
        out["interpretation"] = "The change in similarity is the same for every language; no slope can be fitted."
        return out
    try:
        fit = regression(xs, [p["y"] for p in points.values()])
    except DataError as e:
        out["interpretation"] = f"No regression: {e}"
        return out
    out["fit"] = fit
    out["interpretation"] = interpret(fit, anchor, alpha)
    return out


def interpret(fit: Mapping[str, Any], anchor: str = "en", alpha: float = 0.05) -> str:
    """One plain sentence about a gain-vs-similarity fit."""
    s, r, p, n = fit["slope"], fit["r"], fit["p"], fit["n"]
    stats = f"slope {s:.3g}, r = {r:.2f}, p = {p:.3g}, n = {n}"
    if p < alpha and s < 0:
        return (
            f"Significant negative slope ({stats}): languages that gained more moved away from {anchor} — "
            "the gains come with more separation, not alignment (as the CLAS paper reports)."
        )
    if p < alpha and s > 0:
        return f"Significant positive slope ({stats}): larger gains came with more alignment to {anchor}."
    return (
        f"No significant linear relation between gain and change in similarity ({stats}); "
        f"with {n} languages only a strong relation would be detectable."
    )


def delta_similarity(
    similarity_result: Mapping[str, Any], layer: int | None = None, key: str = "paired"
) -> tuple[dict[str, float], int | None]:
    """Per-language change in similarity at ``layer`` (default: the last analysed layer).

    ``similarity_result`` is what :func:`xlsteer.analysis.similarity.layer_similarity` returns
    (or its JSON). Returns ``({lang: delta}, layer used)``; empty when nothing was steered.
    """
    delta = similarity_result.get("delta") or {}
    if not delta:
        return {}, layer
    layers = sorted({int(k) for per in delta.values() for k in per})
    use = layers[-1] if layer is None else int(layer)
    out = {}
    for lang, per_layer in delta.items():
        vals = {int(k): v for k, v in per_layer.items()}
        if use in vals:
            out[lang] = float(vals[use][key])
    return out, use


def gains_from_scores(rows: Sequence[Mapping[str, Any]], method: str, baseline: str | None = None) -> dict[str, float]:
    """Per-language gain of ``method`` from score rows (see :func:`xlsteer.report.html.score_rows`).

    Uses the row's paired ``diff`` when present, else ``mean(method) - mean(baseline)``.
    """
    gains: dict[str, float] = {}
    base_means = {r["lang"]: r["mean"] for r in rows if r.get("is_baseline") or (baseline and r["method"] == baseline)}
    for r in rows:
        if r["method"] != method or r.get("is_baseline"):
            continue
        if r.get("diff") is not None:
            gains[r["lang"]] = float(r["diff"])
        elif r.get("mean") is not None and base_means.get(r["lang"]) is not None:
            gains[r["lang"]] = float(r["mean"]) - float(base_means[r["lang"]])
    return gains


def plot(result: Mapping[str, Any]) -> Any:
    """Scatter with the fitted line (see :func:`xlsteer.analysis.plots.plot_regression`)."""
    from .plots import plot_regression

    return plot_regression(result)
