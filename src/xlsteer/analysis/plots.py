"""Every figure of the analysis and the report: functions that take result dicts, return a Figure.

Why this shape: figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never
through ``pyplot``, so no global figure registry or backend is touched (tests and servers can
draw in parallel, and nothing leaks). The caller saves: :func:`save_png` writes atomically,
:func:`png_bytes` gives the bytes (the report embeds them).

Inputs are the dicts the analysis functions return *or* the same dicts read back from JSON
(layer keys then are strings): every function here accepts both.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..formats import p_inline
from .neuron_map import CATEGORIES

# colour-blind-safe cycle (Okabe-Ito), then tab20 for many languages
_OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
CATEGORY_COLORS = {
    "dead": "#BBBBBB",
    "language_specific": "#D55E00",
    "partial_shared": "#E69F00",
    "all_shared": "#0072B2",
}
DPI = 100


def new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A Figure with an Agg canvas attached (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colors(n: int) -> list[str]:
    if n <= len(_OKABE_ITO):
        return _OKABE_ITO[:n]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically (temp file + rename)."""
    from ..io import atomic_write_bytes

    return atomic_write_bytes(path, png_bytes(fig))


def layer_items(per_layer: Mapping[Any, Any]) -> list[tuple[int, Any]]:
    """``{layer: value}`` with int or str keys -> sorted [(int layer, value)]."""
    return sorted(((int(k), v) for k, v in per_layer.items()), key=lambda kv: kv[0])


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def _layer_axis(ax: Any, label: str = "layer") -> None:
    """Integer ticks on a layer axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


# --------------------------------------------------------------------------------------------
# Similarity and separation (analysis.similarity)
# --------------------------------------------------------------------------------------------


def plot_similarity(result: Mapping[str, Any], key: str = "paired", title: str | None = None) -> Figure:
    """Cosine similarity to the anchor per layer and language; before solid, after dashed."""
    fig = new_figure(7.5, 4.2)
    before = (result.get("before") or {}).get("similarity") or {}
    after = (result.get("after") or {}).get("similarity") or {}
    if not before:
        return _empty(fig, "no similarity data")
    ax = fig.subplots()
    langs = list(before)
    for lang, col in zip(langs, colors(len(langs))):
        pts = layer_items(before[lang])
        ax.plot([p[0] for p in pts], [_num(p[1][key]) for p in pts], "-o", color=col, ms=3, label=f"{lang}")
        if lang in after and lang in (result.get("steered_langs") or after):
            pts = layer_items(after[lang])
            ax.plot([p[0] for p in pts], [_num(p[1][key]) for p in pts], "--s", color=col, ms=3,
                    label=f"{lang} steered")
    anchor = result.get("anchor", "en")
    what = "per item (parallel pairs)" if key == "paired" else "of language means"
    _layer_axis(ax, "layer (resid_post)")
    ax.set_ylabel(f"cosine similarity to {anchor}")
    ax.set_title(title or f"Similarity to {anchor} {what}" + (" — before (solid) / after (dashed)" if after else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return fig


def plot_separation(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Silhouette (cosine) and between/within variance ratio per layer, before and after."""
    fig = new_figure(9.0, 3.6)
    before = (result.get("before") or {}).get("separation") or {}
    after = (result.get("after") or {}).get("separation") or {}
    if not before:
        return _empty(fig, "no separation data")
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("silhouette", "variance_ratio"), ("silhouette (cosine)", "between / within variance")):
        values: list[float] = []
        for data, style, name in ((before, "-o", "before"), (after, "--s", "after")):
            if not data:
                continue
            pts = layer_items(data)
            ys = [_num(p[1].get(key)) for p in pts]
            values += ys
            ax.plot([p[0] for p in pts], ys, style, ms=3, label=name)
        finite = [v for v in values if math.isfinite(v)]
        if key == "variance_ratio" and finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")  # steering can change the ratio by orders of magnitude
        _layer_axis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "How separated the languages are per layer")
    return fig


# --------------------------------------------------------------------------------------------
# Logit lens
# --------------------------------------------------------------------------------------------


def plot_logit_lens(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Share of anchor-language (and input-language) tokens in the lens top-k, per layer."""
    fig = new_figure(9.0, 3.8)
    before = result.get("before") or {}
    after = result.get("after") or {}
    if not before:
        return _empty(fig, "no logit-lens data")
    axes = fig.subplots(1, 2, sharey=True)
    langs = list(before)
    anchor = result.get("anchor", "en")
    for ax, cat, label in zip(axes, ("anchor", "input"), (f"share of {anchor} tokens", "share of input-language tokens")):
        for lang, col in zip(langs, colors(len(langs))):
            pts = layer_items(before[lang])
            ax.plot([p[0] for p in pts], [p[1][cat] for p in pts], "-o", color=col, ms=3, label=lang)
            if lang in after:
                pts = layer_items(after[lang])
                ax.plot([p[0] for p in pts], [p[1][cat] for p in pts], "--s", color=col, ms=3, label=f"{lang} steered")
        _layer_axis(ax)
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncols=2)
    k, pos = result.get("k", "?"), result.get("positions", "last")
    fig.suptitle(title or f"Logit lens: top-{k} tokens at the {'last' if pos == 'last' else 'every'} token"
                 + (" — before (solid) / after (dashed)" if after else ""))
    return fig


# --------------------------------------------------------------------------------------------
# Neuron categories (CLAS) and LAPE counts
# --------------------------------------------------------------------------------------------


def plot_neuron_categories(
    percentages: Mapping[Any, Mapping[str, float]], bridge_layers: Sequence[int] = (), title: str | None = None
) -> Figure:
    """Stacked bars of CLAS categories (% of neurons) per layer; bridge layers marked."""
    fig = new_figure(8.0, 4.0)
    pts = layer_items(percentages)
    if not pts:
        return _empty(fig, "no neuron categories")
    ax = fig.subplots()
    layers = [p[0] for p in pts]
    bottom = np.zeros(len(pts))
    for cat in CATEGORIES:
        vals = np.array([float(p[1].get(cat, 0.0)) for p in pts])
        ax.bar(layers, vals, bottom=bottom, color=CATEGORY_COLORS[cat], label=cat.replace("_", "-"), width=0.8)
        bottom += vals
    bridges = sorted(int(b) for b in bridge_layers)
    for b in bridges:
        ax.axvspan(b - 0.45, b + 0.45, ymin=0.965, ymax=1.0, color="black")
    ax.set_ylim(0, 104)
    ax.set_xlabel("layer")
    ax.set_ylabel("% of MLP neurons")
    ax.set_xticks(layers)
    ax.tick_params(axis="x", labelsize=7 if len(layers) > 24 else 9)
    handles, labels = ax.get_legend_handles_labels()
    if bridges:
        from matplotlib.patches import Patch

        handles.append(Patch(color="black"))
        labels.append("bridge layer (bar on top)")
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels))
    ax.set_title(title or "CLAS neuron categories per layer")
    return fig


def plot_lape_heatmap(counts: Mapping[str, Mapping[Any, float]], title: str | None = None) -> Figure:
    """Heatmap of language-specific (LAPE) neuron counts: languages x layers."""
    fig = new_figure(8.0, 1.2 + 0.35 * max(1, len(counts)))
    if not counts:
        return _empty(fig, "no LAPE counts")
    langs = list(counts)
    layers = sorted({int(k) for per in counts.values() for k in per})
    grid = np.array([[float(dict((int(k), v) for k, v in counts[lang].items()).get(layer, 0)) for layer in layers]
                     for lang in langs])
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xticks(range(len(layers)), [str(x) for x in layers])
    ax.tick_params(axis="x", labelsize=7 if len(layers) > 24 else 9)
    ax.set_xlabel("layer")
    if grid.size <= 200:
        top = grid.max() if grid.size else 0
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * top else "black")
    fig.colorbar(im, ax=ax, label="neurons")
    ax.set_title(title or "Language-specific neurons (LAPE) per language and layer")
    return fig


# --------------------------------------------------------------------------------------------
# Projections
# --------------------------------------------------------------------------------------------


def plot_projection(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Scatter of 2-D item coordinates coloured by language, centroids as large markers.

    ``result`` has ``before`` (and optionally ``after``) panels, each
    ``{"coords": {lang: [[x, y], ...]}, "centroids": {lang: [x, y]}}``; side by side.
    """
    panels = [(name, result[name]) for name in ("before", "after") if result.get(name)]
    fig = new_figure(5.0 * max(1, len(panels)) + 0.8, 4.6)
    if not panels:
        return _empty(fig, "no projection data")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    langs = list(panels[0][1]["coords"])
    cols = dict(zip(langs, colors(len(langs))))
    for ax, (name, panel) in zip(axes, panels):
        for lang in langs:
            xy = np.asarray(panel["coords"].get(lang, []), dtype=float).reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.55, color=cols[lang], label=lang)
            c = panel.get("centroids", {}).get(lang)
            if c is not None:
                ax.scatter([c[0]], [c[1]], s=160, marker="X", color=cols[lang], edgecolors="black", linewidths=1.0)
                ax.annotate(lang, (c[0], c[1]), xytext=(6, 6), textcoords="offset points", fontsize=9, weight="bold")
        ax.set_title(f"{name}" + (" steering" if name == "after" else ""))
        ax.grid(alpha=0.2)
    axes[0].legend(fontsize=8, markerscale=1.5)
    method = str(result.get("method", "")).upper().replace("TSNE", "t-SNE")
    layer = result.get("layer")
    fig.suptitle(title or f"{method} of pooled representations" + (f" at layer {layer}" if layer is not None else "")
                 + " (X = language centroid)")
    return fig


# --------------------------------------------------------------------------------------------
# Regression of gain on change in similarity
# --------------------------------------------------------------------------------------------


def plot_regression(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Scatter of per-language (change in similarity, score gain) with the least-squares line."""
    fig = new_figure(6.0, 4.4)
    points = result.get("points") or {}
    if not points:
        return _empty(fig, "no points to regress")
    ax = fig.subplots()
    xs = np.array([float(p["x"]) for p in points.values()])
    ys = np.array([float(p["y"]) for p in points.values()])
    ax.scatter(xs, ys, color=_OKABE_ITO[0], zorder=3)
    for lang, p in points.items():
        ax.annotate(lang, (p["x"], p["y"]), xytext=(4, 4), textcoords="offset points", fontsize=9)
    fit = result.get("fit")
    if fit:
        lo, hi = float(xs.min()), float(xs.max())
        pad = 0.05 * (hi - lo or 1.0)
        gx = np.linspace(lo - pad, hi + pad, 50)
        ax.plot(gx, fit["slope"] * gx + fit["intercept"], color=_OKABE_ITO[3],
                label=f"slope {fit['slope']:.3g}, r = {fit['r']:.2f}, {p_inline(fit['p'])}, n = {fit['n']}")
        ax.legend(fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(result.get("x_label", "change in cosine similarity to the anchor"))
    ax.set_ylabel(result.get("y_label", "score gain over the unsteered model"))
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Gain vs. change in similarity ({result.get('method', 'method')})")
    return fig


# --------------------------------------------------------------------------------------------
# Base vs instruction-tuned
# --------------------------------------------------------------------------------------------


def plot_compare_models(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Per-layer similarity to the anchor in two models (left) and their difference (right)."""
    fig = new_figure(10.0, 4.0)
    sims = result.get("similarity") or {}
    labels = result.get("labels") or list(sims)
    if len(labels) != 2 or not all(sims.get(lab) for lab in labels):
        return _empty(fig, "no model comparison data")
    a, b = labels
    axes = fig.subplots(1, 2)
    langs = list(sims[a])
    for lang, col in zip(langs, colors(len(langs))):
        for lab, style in ((a, "-o"), (b, "--s")):
            pts = layer_items(sims[lab][lang])
            axes[0].plot([p[0] for p in pts], [_num(p[1]) for p in pts], style, color=col, ms=3, label=f"{lang} {lab}")
        pts = layer_items(result["difference"][lang])
        axes[1].plot([p[0] for p in pts], [_num(p[1]) for p in pts], "-o", color=col, ms=3, label=lang)
    anchor = result.get("anchor", "en")
    axes[0].set_ylabel(f"cosine similarity to {anchor}")
    axes[0].set_title(f"{a} (solid) vs {b} (dashed)")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_ylabel(f"{b} - {a}")
    axes[1].set_title("difference")
    for ax in axes:
        _layer_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    fig.suptitle(title or f"Similarity of non-{anchor} to {anchor} representations: {a} vs {b}")
    return fig


# --------------------------------------------------------------------------------------------
# Scores and sweeps (report)
# --------------------------------------------------------------------------------------------


def plot_scores(rows: Sequence[Mapping[str, Any]], title: str | None = None, metric: str = "score") -> Figure:
    """Grouped bars: score per language (groups) and method (bars) with CI whiskers.

    ``rows``: dicts with method, lang, mean and optionally ci_low/ci_high/p.
    A star marks p < 0.05 against the baseline.
    """
    fig = new_figure(8.5, 4.0)
    rows = [r for r in rows if r.get("mean") is not None]
    if not rows:
        return _empty(fig, "no scores")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for m_i, (method, col) in enumerate(zip(methods, colors(len(methods)))):
        xs, ys, err_lo, err_hi = [], [], [], []
        for l_i, lang in enumerate(langs):
            r = next((r for r in rows if r["method"] == method and r["lang"] == lang), None)
            if r is None:
                continue
            x = l_i - 0.4 + width * (m_i + 0.5)
            y = float(r["mean"])
            xs.append(x)
            ys.append(y)
            lo, hi = r.get("ci_low"), r.get("ci_high")
            err_lo.append(max(0.0, y - float(lo)) if lo is not None else 0.0)
            err_hi.append(max(0.0, float(hi) - y) if hi is not None else 0.0)
            p = r.get("p")
            if p is not None and p < 0.05:
                ax.text(x, (float(hi) if hi is not None else y) + 0.01, "*", ha="center", fontsize=12)
        ax.bar(xs, ys, width=width * 0.95, color=col, label=method, yerr=[err_lo, err_hi], capsize=2,
               error_kw={"lw": 0.8})
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, len(methods)))
    ax.set_title(title or f"{metric} per language (95% CI; * p < 0.05 vs baseline)")
    return fig


def plot_sweep(points: Sequence[Mapping[str, Any]], title: str | None = None, metric: str = "score") -> Figure:
    """Heatmap of a layer x alpha sweep (dev scores); the best cell is boxed."""
    fig = new_figure(7.5, 4.2)
    pts = [p for p in points if p.get("layer") is not None and p.get("alpha") is not None and p.get("score") is not None]
    if not pts:
        return _empty(fig, "no layer x alpha sweep points")
    layers = sorted({int(p["layer"]) for p in pts})
    alphas = sorted({float(p["alpha"]) for p in pts})
    grid = np.full((len(layers), len(alphas)), np.nan)
    for p in pts:
        grid[layers.index(int(p["layer"])), alphas.index(float(p["alpha"]))] = float(p["score"])
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="magma", origin="lower")
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=45 if len(alphas) > 8 else 0)
    ax.set_ylabel("layer")
    ax.set_xlabel("alpha")
    if np.isfinite(grid).any():
        i, j = np.unravel_index(np.nanargmax(grid), grid.shape)
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="cyan", lw=2))
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(title or "Sweep (dev split): best cell boxed")
    return fig


def neuron_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: Figure}`` for the parts present in a :func:`~xlsteer.analysis.neuron_map.neuron_map`
    summary (or its JSON)."""
    figs: dict[str, Any] = {}
    cats = summary.get("categories")
    if cats:
        figs["neuron_categories"] = plot_neuron_categories(cats["percentages"], cats.get("bridge_layers") or [])
    lape = summary.get("lape")
    if lape:
        figs["lape_neurons"] = plot_lape_heatmap(lape["counts"])
    return figs
