"""The method registry: a steering method declared once, on its fit function, is known to ``fit``,
``xlsteer fit --help`` and ``xlsteer compare``; a method defined in this file alone runs through
both. Also: registry errors, and ``Intervention.at_layers`` (the one "act only at these layers")."""

from __future__ import annotations

import re

import pytest
import torch

from xlsteer.baselines.compare import compare_methods
from xlsteer.baselines.methods import DEFAULT_ALPHAS, METHODS, parse_methods
from xlsteer.cli import main
from xlsteer.errors import UsageError
from xlsteer.evaluation.sweep import ALL_LAYERS, for_layer, restrict_layers
from xlsteer.interventions import fit, get_method, method_names, register_method, registered
from xlsteer.interventions.registry import LayerPolicy, StatisticsNeed, method_table
from xlsteer.interventions.vector import fit_diffmean
from xlsteer.testing import tiny_model

from test_vector import parallel_texts

BUILTINS = ["diffmean", "learned", "incline", "clas", "lape", "intmu"]


def fit_toy(stats, layers, targets, anchor="en", site="resid_post", meta=None, scale: float = 2.0):
    """A toy method: the DiffMean vector times ``scale`` (named "toy" in params["fit"], so the
    registry knows which method an intervention came from)."""
    iv = fit_diffmean(stats, layers, targets, anchor=anchor, site=site, meta=meta)
    iv.tensors = {k: t * scale for k, t in iv.tensors.items()}
    iv.params.update(fit="toy", scale=scale)
    return iv


TOY = dict(site="resid_post", statistics=StatisticsNeed("item-level pooled means"),
           layer_policy=LayerPolicy(compare=lambda n_layers: [0, n_layers - 1]), alpha_grid=(1.0,),
           description="twice the DiffMean vector (a test method)", compare="toy: scaled DiffMean, layer on dev")


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture
def toy():
    with registered("toy", fit_toy, **TOY) as spec:
        yield spec


def test_builtin_methods_are_registered_in_order():
    assert method_names()[:6] == BUILTINS
    assert get_method("incline").site == "mlp_out" and get_method("clas").site == "mlp_act"
    assert dict(DEFAULT_ALPHAS) == {m: get_method(m).alpha_grid for m in BUILTINS if m != "lape"}
    assert [m for m in METHODS if METHODS[m].family == "steering"] == ["diffmean", "learned", "incline", "clas",
                                                                        "intmu"]


def test_toy_method_fits_through_fit(lm, toy):
    texts = parallel_texts(8)
    iv = fit("toy", lm, texts, ["sw"], layers=[1], scale=3.0)
    ref = fit("diffmean", lm, texts, ["sw"], layers=[1])
    assert torch.allclose(iv.tensors["vectors@1"], 3.0 * ref.tensors["vectors@1"])
    assert iv.params["fit"] == "toy" and iv.meta["statistics_source"] == "collected"
    assert method_names()[-1] == "toy" and not iv.sweeps_together


def test_toy_method_is_a_compare_row_with_its_dev_selection(lm, toy):
    assert "toy" in parse_methods("all") and METHODS["toy"].family == "steering"
    rec = compare_methods(lm, "xcopa", ["en", "sw"], ["toy"], limit=2, dev_limit=2, fit_limit=8, n_boot=20,
                          max_length=512, translation_cache=False)
    row = rec["rows"]["toy"]
    assert rec["methods"] == ["zero-shot", "toy"] and row["error"] is None, row["error"]
    assert row["family"] == "steering" and row["description"] == TOY["compare"]
    sel = row["selection"]
    n = lm.num_layers
    assert sel["source"] == "evaluation.sweep on dev" and sel["grid"] == {"layers": [0, n - 1], "alphas": [1.0]}
    assert set(sel["dev_scores"]) == {"unsteered", "L0@1", f"L{n - 1}@1"}
    assert row["params"]["method"] == "toy" and "score" in row["per_lang"]["sw"]


def test_registration_is_undone_after_the_block():
    with registered("toy", fit_toy, **TOY):
        assert "toy" in method_names() and "toy" in METHODS
    assert "toy" not in method_names() and "toy" not in METHODS and "toy" not in DEFAULT_ALPHAS
    with pytest.raises(UsageError):
        parse_methods("toy")


def test_unknown_method_is_one_line_listing_the_registered_ones(lm):
    with pytest.raises(UsageError) as e:
        get_method("nope")
    msg = str(e.value)
    assert "\n" not in msg and "unknown method 'nope'" in msg and all(m in msg for m in BUILTINS)
    with pytest.raises(UsageError, match="unknown method 'nope'"):
        fit("nope", lm, parallel_texts(4), ["sw"])


def test_duplicate_registration_is_rejected():
    with pytest.raises(UsageError, match="already registered"):
        register_method("diffmean", **TOY)(fit_toy)
    assert get_method("diffmean").fit is fit_diffmean
    with registered("toy", fit_toy, **TOY):
        with pytest.raises(UsageError, match="already registered"):
            register_method("toy", **TOY)(fit_toy)


def test_layer_policies_of_the_builtins():
    assert get_method("incline").sweeps_together() and get_method("clas").sweeps_together()
    assert not get_method("diffmean").sweeps_together() and not get_method("learned").sweeps_together()
    assert get_method("diffmean").layer_policy.compare_layers(8) == [2, 4, 6]
    assert get_method("learned").layer_policy.fit_layers(8) == [4]
    assert get_method("incline").layer_policy.fit_layers(3) == [0, 1, 2]
    assert get_method("clas").layer_policy.fit_layers(8) is None  # bridge layers: the fit chooses
    with pytest.raises(UsageError, match="clas acts at site mlp_act, not resid_post"):
        get_method("clas").check_site("resid_post")


def test_at_layers_shares_tensors_and_refuses_unknown_layers(lm):
    iv = fit("diffmean", lm, parallel_texts(8), ["sw"], layers=[0, 1])
    one = iv.at_layers([1])
    assert one.layers == [1] and iv.layers == [0, 1]
    assert one.tensors is iv.tensors and one.tensors["vectors@1"].data_ptr() == iv.tensors["vectors@1"].data_ptr()
    one.params["x"] = 1
    assert "x" not in iv.params
    assert [s for s in restrict_layers(iv, [1]).sites] == one.sites  # the sweep's wrappers call it
    assert for_layer(iv, ALL_LAYERS).sites == iv.sites and for_layer(iv, 0).layers == [0]
    with pytest.raises(UsageError, match=re.escape("no sites at layer(s) [3] (it has layers [0, 1])")):
        iv.at_layers([3])
    assert iv.at_layers([1, 3]).layers == [1]  # layers it lacks are ignored when one is present


def test_fit_help_lists_every_registered_method(capsys, toy):
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for name in method_names():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(get_method(name).description[:20])}", text, re.M), name
    assert "toy" in text


def test_fit_docstring_table_matches_the_registry():
    import importlib

    fit_module = importlib.import_module("xlsteer.interventions.fit")  # the package's attribute ``fit`` is the function

    assert method_table(BUILTINS) in fit_module.__doc__


def test_refitting_the_same_intervention_gives_the_same_cache_hash(lm):
    """Timings and where the statistics came from differ between identical fits; the per-item
    cache key must not, or every refit would recompute every item."""
    from xlsteer.evaluation.engine_cache import intervention_hash

    texts = parallel_texts(8)
    a = fit("diffmean", lm, texts, ["sw"], layers=[1])
    b = fit("diffmean", lm, texts, ["sw"], layers=[1])
    b.meta["collect_seconds"] = a.meta["collect_seconds"] + 1.0
    b.meta["statistics_source"] = "cache stats.safetensors"
    assert intervention_hash(a) == intervention_hash(b)
    c = fit("diffmean", lm, texts, ["sw"], layers=[0])
    assert intervention_hash(a) != intervention_hash(c)
