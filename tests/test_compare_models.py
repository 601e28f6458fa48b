"""Base vs instruct comparison, on two tiny random models of one config with different seeds."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from xlsteer.analysis.compare_models import compare_models, plot
from xlsteer.analysis.similarity import layer_similarity
from xlsteer.errors import UsageError
from xlsteer.testing import tiny_model

TEXTS = {
    "en": ["the red house", "a dog runs", "water is cold", "we eat bread"],
    "de": ["das rote Haus", "ein Hund läuft", "Wasser ist kalt", "wir essen Brot"],
    "sw": ["nyumba nyekundu", "mbwa anakimbia", "maji ni baridi", "tunakula mkate"],
}


@pytest.fixture(scope="module")
def models():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1)


@pytest.fixture(scope="module")
def result(models):
    return compare_models(*models, TEXTS, labels=("base", "instruct"))


def test_difference_is_second_minus_first(result):
    assert result["layers"] == [0, 1] and result["langs"] == ["de", "sw"]
    for lang in ("de", "sw"):
        for layer in (0, 1):
            d = result["similarity"]["instruct"][lang][layer] - result["similarity"]["base"][lang][layer]
            assert result["difference"][lang][layer] == pytest.approx(d, abs=1e-12)


def test_per_model_similarity_matches_layer_similarity(models, result):
    alone = layer_similarity(models[0], TEXTS, [0, 1])
    for lang in ("de", "sw"):
        for layer in (0, 1):
            assert result["similarity"]["base"][lang][layer] == pytest.approx(
                alone["before"]["similarity"][lang][layer]["paired"], abs=1e-6)


def test_different_seeds_differ_and_a_model_equals_itself(models, result):
    assert any(abs(v) > 1e-4 for per in result["difference"].values() for v in per.values())
    same = compare_models(models[0], models[0], TEXTS, layers=[1], labels=("a", "b"))
    assert all(v == pytest.approx(0.0, abs=1e-9) for per in same["difference"].values() for v in per.values())


def test_summary_points_at_the_largest_difference(result):
    for lang, s in result["summary"].items():
        per = result["difference"][lang]
        assert abs(s["max_abs_difference"]) == pytest.approx(max(abs(v) for v in per.values()))
        assert per[s["max_abs_layer"]] == s["max_abs_difference"]


def test_models_of_different_depth_are_refused(models):
    deeper = tiny_model("llama", layers=3)
    with pytest.raises(UsageError, match="same depth"):
        compare_models(models[0], deeper, TEXTS)


def test_plot_shows_both_models_and_the_difference(result):
    fig = plot(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) == 4 and len(fig.axes[1].get_lines()) >= 2
