"""2-D pictures of a layer's pooled item vectors, coloured by language, before and after steering.

Why: the CLAS paper shows t-SNE of the penultimate layer with language centroids; a picture
shows at a glance whether steering pulls a language's cloud onto the anchor's (alignment) or
pushes the clouds apart (separation).

Comparable panels:
* PCA is fitted on the *before* vectors only and both panels are projected on those axes, so
  a shift in the after panel is a shift in the model, not a new basis.
* t-SNE has no out-of-sample transform: before and after are embedded *jointly* (one fit on
  their union, ``init="pca"``, fixed ``random_state``) and split afterwards, so both panels
  share one map (exact gradients up to ``EXACT_TSNE_MAX`` points, Barnes-Hut above). t-SNE distances between far-apart clusters are not meaningful; read only
  which clouds overlap.
Centroids are the mean of each language's 2-D points.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import DataError, UsageError
from .similarity import _matrix

PROJECTIONS = ("pca", "tsne")
EXACT_TSNE_MAX = 500  # points; above this t-SNE uses Barnes-Hut


def _stack(items_by_lang: Mapping[str, Any]) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    xs, spans, start = [], [], 0
    for lang, x in items_by_lang.items():
        m = _matrix(x, f"items of {lang}")
        xs.append(m)
        spans.append((lang, start, start + m.shape[0]))
        start += m.shape[0]
    if len({m.shape[1] for m in xs}) > 1:
        raise DataError("projection: languages have vectors of different widths; use one layer and one site")
    return np.concatenate(xs), spans


def _panel(coords: np.ndarray, spans: list[tuple[str, int, int]]) -> dict[str, Any]:
    by_lang = {lang: coords[a:b] for lang, a, b in spans}
    return {
        "coords": {lang: xy.tolist() for lang, xy in by_lang.items()},
        "centroids": {lang: xy.mean(0).tolist() for lang, xy in by_lang.items()},
    }


def _tsne(x: np.ndarray, random_state: int, perplexity: float | None) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 4:
        raise DataError(f"t-SNE needs at least 4 points, got {n}; give more items")
    perp = float(perplexity) if perplexity is not None else min(30.0, (n - 1) / 3.0)
    if not 0 < perp < n:
        raise UsageError(f"perplexity must be in (0, {n}) for {n} points, got {perp}")
    # exact gradients for small sets: Barnes-Hut is no faster there and its threads thrash busy CPUs
    method = "exact" if n <= EXACT_TSNE_MAX else "barnes_hut"
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=random_state,
                method=method).fit_transform(x)


def project(
    before: Mapping[str, Any],
    after: Mapping[str, Any] | None = None,
    method: str = "pca",
    random_state: int = 0,
    perplexity: float | None = None,
    layer: int | None = None,
) -> dict[str, Any]:
    """2-D coordinates per language for ``before`` (and ``after``), as JSON-ready lists.

    ``before``/``after``: language -> (n_items, d). Result: ``{"method", "layer",
    "random_state", "before": {"coords", "centroids"}, "after": same or None, ...}`` plus
    ``explained_variance`` (PCA, of the before fit) or ``perplexity`` (t-SNE).
    """
    if method not in PROJECTIONS:
        raise UsageError(f"unknown projection '{method}'; choose pca or tsne")
    xb, spans_b = _stack(before)
    out: dict[str, Any] = {"method": method, "layer": layer, "random_state": random_state, "after": None}
    xa = spans_a = None
    if after is not None:
        xa, spans_a = _stack(after)
        if xa.shape[1] != xb.shape[1]:
            raise DataError("projection: before and after vectors have different widths")
    if method == "pca":
        from sklearn.decomposition import PCA

        if xb.shape[0] < 2:
            raise DataError("PCA needs at least 2 points; give more items")
        pca = PCA(n_components=2, random_state=random_state).fit(xb)
        out["before"] = _panel(pca.transform(xb), spans_b)
        if xa is not None:
            out["after"] = _panel(pca.transform(xa), spans_a)
        out["explained_variance"] = [float(v) for v in pca.explained_variance_ratio_]
    else:
        x = xb if xa is None else np.concatenate([xb, xa])
        n_before = xb.shape[0]
        perp = float(perplexity) if perplexity is not None else min(30.0, (x.shape[0] - 1) / 3.0)
        coords = _tsne(x, random_state, perp)
        out["before"] = _panel(coords[:n_before], spans_b)
        if xa is not None:
            out["after"] = _panel(coords[n_before:], spans_a)
        out["perplexity"] = perp
    return out


def plot(result: Mapping[str, Any]) -> Any:
    """The side-by-side figure (see :func:`xlsteer.analysis.plots.plot_projection`)."""
    from .plots import plot_projection

    return plot_projection(result)
