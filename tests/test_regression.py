"""Gain vs change in similarity: planted slopes are recovered, and said plainly."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from xlsteer.analysis.regression import delta_similarity, gain_vs_similarity, gains_from_scores, plot

LANGS = ["ar", "de", "es", "fr", "hi", "ja", "ru", "sw", "th", "tr", "vi", "zh"]


def _planted(slope: float, noise: float, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.2, 0.1, size=len(LANGS))
    y = 0.01 + slope * x + noise * rng.normal(size=len(LANGS))
    return dict(zip(LANGS, y)), dict(zip(LANGS, x))


def test_planted_negative_slope_is_recovered():
    """The CLAS finding: more gain where similarity to English went down."""
    gains, delta = _planted(-0.5, 0.005)
    out = gain_vs_similarity(gains, delta, method="clas", layer=16)
    fit = out["fit"]
    assert fit["slope"] == pytest.approx(-0.5, abs=0.05)
    assert fit["r"] < -0.95 and fit["p"] < 1e-4 and fit["n"] == len(LANGS)
    assert "negative slope" in out["interpretation"] and "separation" in out["interpretation"]
    assert out["x_label"].endswith("(layer 16)")


def test_planted_positive_slope_is_recovered():
    gains, delta = _planted(0.3, 0.005, seed=1)
    out = gain_vs_similarity(gains, delta)
    assert out["fit"]["slope"] == pytest.approx(0.3, abs=0.05)
    assert "positive slope" in out["interpretation"]


def test_no_relation_is_not_called_significant():
    rng = np.random.default_rng(2)
    gains = dict(zip(LANGS, rng.normal(size=len(LANGS))))
    delta = dict(zip(LANGS, rng.normal(size=len(LANGS))))
    out = gain_vs_similarity(gains, delta)
    assert out["fit"]["p"] > 0.05
    assert out["interpretation"].startswith("No significant linear relation")


def test_too_few_languages_gives_no_fit():
    out = gain_vs_similarity({"de": 0.1, "sw": 0.2, "en": 0.0}, {"de": -0.1, "sw": 0.1, "en": 0.0})
    assert out["fit"] is None and "Too few languages" in out["interpretation"]
    assert set(out["points"]) == {"de", "sw"}  # the anchor is never a point


def test_languages_in_one_input_only_are_reported():
    out = gain_vs_similarity({"de": 0.1, "sw": 0.2, "fr": 0.0, "zh": 0.3}, {"de": -0.1, "sw": 0.1, "fr": 0.0, "ja": 0.2})
    assert out["missing"] == ["ja", "zh"] and out["fit"] is not None


def test_gains_and_deltas_from_result_files():
    rows = [  # the rows xlsteer.results.rows.score_rows gives for an unsteered and a CLAS run
        {"method": "none", "lang": "de", "mean": 0.50, "is_baseline": True},
        {"method": "none", "lang": "sw", "mean": 0.40, "is_baseline": True},
        {"method": "clas", "lang": "de", "mean": 0.53, "diff": 0.03, "p": 0.2, "is_baseline": False},
        {"method": "clas", "lang": "sw", "mean": 0.41, "diff": None, "is_baseline": False},
    ]
    gains = gains_from_scores(rows, "clas")
    assert gains == pytest.approx({"de": 0.03, "sw": 0.01})  # paired diff if given, else mean difference
    sim = {"delta": {"de": {"3": {"paired": -0.1, "means": 0.0}, "5": {"paired": -0.2, "means": 0.0}}}}
    assert delta_similarity(sim) == ({"de": -0.2}, 5)  # default: the last analysed layer
    assert delta_similarity(sim, layer=3) == ({"de": -0.1}, 3)


def test_plot_has_points_and_fitted_line():
    gains, delta = _planted(-0.5, 0.01)
    fig = plot(gain_vs_similarity(gains, delta, method="clas"))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == len(LANGS)
    assert len(ax.get_lines()) >= 1 and "slope" in ax.get_legend().get_texts()[0].get_text()
