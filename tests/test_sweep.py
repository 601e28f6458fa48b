"""sweep(): layer x alpha selection on dev only."""

from __future__ import annotations

import json

import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import UsageError
from xlsteer.evaluation.runner import run_task
from xlsteer.evaluation.selection import evaluate_selection
from xlsteer.evaluation.sweep import NO_STEERING, UNSTEERED, _best, diffmean_from_statistics, restrict_layers, sweep
from xlsteer.evaluation.tasks import get_task
from xlsteer.testing import replaced_task
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.stats import collect
from xlsteer.testing import tiny_model

TEXTS = {
    "en": ["The cat sat on the mat.", "It is raining today.", "We went to the market."],
    "sw": ["Paka aliketi kwenye mkeka.", "Leo kunanyesha mvua.", "Tulienda sokoni."],
    "zh": ["猫坐在垫子上。", "今天下雨了。", "我们去了市场。"],
}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def stats(lm):
    return collect(lm, TEXTS, [Site(0, "resid_post"), Site(1, "resid_post")], meta={"model_fingerprint": lm.fingerprint})


@pytest.fixture
def splits_read(monkeypatch):
    """Instrument the XCOPA loader: record every split read and fail on test."""
    mod = get_task("xcopa")
    real = mod.load_items
    seen: list[str] = []

    def spy(data_dir, lang, split, limit=None):
        seen.append(split)
        assert split != "test", "the sweep read test items"
        return real(data_dir, lang, split, limit)

    with replaced_task("xcopa", load_items=spy):
        yield seen


def test_sweep_never_reads_test_items(lm, stats, splits_read):
    make, layers = diffmean_from_statistics(stats, ["en", "sw", "zh"])
    rec = sweep(lm, "xcopa", ["en", "sw", "zh"], make, layers=layers, alphas=[0.5, 4.0], limit=3, n_boot=100)
    assert splits_read and set(splits_read) == {"dev"}
    assert rec["selected_on_split"] == "dev" and rec["split"] == "dev"
    assert rec["grid"] == {"layers": [0, 1], "alphas": [0.5, 4.0]}
    assert [e["key"] for e in rec["results"]] == ["L0@0.5", "L0@4", "L1@0.5", "L1@4"]
    top = rec["best_steered"]
    assert top["layer"] in (0, 1) and top["alpha"] in (0.5, 4.0) and top["key"] in [e["key"] for e in rec["results"]]
    assert rec["best"]["evidence"]["rule"] == "test" and rec["best"]["tested_key"] == top["key"]
    assert set(rec["best_per_lang"]) == {"sw", "zh"}
    assert "dev" in rec["selection_rule"] and rec["baseline"] is not None
    for e in rec["results"]:
        assert e["intervention"]["layers"] == [e["layer"]] and e["intervention"]["strength"] == e["alpha"]


def test_sweep_refuses_the_test_split(lm, stats, splits_read):
    make, layers = diffmean_from_statistics(stats, ["en", "sw"])
    with pytest.raises(UsageError, match="test"):
        sweep(lm, "xcopa", ["en", "sw"], make, layers=layers, split="test")
    assert splits_read == []


def test_diffmean_layers_come_from_the_statistics(stats):
    make, layers = diffmean_from_statistics(stats, ["en", "sw", "zh"])
    assert layers == [0, 1]
    iv = make(1, 2.0)
    assert isinstance(iv, SteeringVector) and iv.layers == [1] and iv.strength == 2.0
    assert iv.languages == ["sw", "zh"]
    expected = stats.mean("en", Site(1, "resid_post")) - stats.mean("sw", Site(1, "resid_post"))
    assert torch.allclose(iv.tensors[vector_key(1)][0], expected, atol=1e-5)
    assert make(1, 0.5).tensors[vector_key(1)] is iv.tensors[vector_key(1)]  # fitted once per layer
    with pytest.raises(UsageError, match="layers"):
        make(5, 1.0)
    with pytest.raises(UsageError, match="lack"):
        diffmean_from_statistics(stats, ["en", "de"])


def test_selection_is_by_main_metric_then_margin_then_smaller_alpha():
    def entry(layer, alpha, acc, margin):
        return {"layer": layer, "alpha": alpha, "key": f"L{layer}@{alpha}",
                "per_lang": {"sw": {"metrics": {"acc": {"mean": acc}}, "continuous": {"margin": {"mean": margin}}}}}

    entries = [entry(1, 1.0, 0.6, 0.1), entry(2, 1.0, 0.7, 0.1), entry(3, 1.0, 0.7, 0.3), entry(4, 0.5, 0.7, 0.3)]
    best = _best(entries, ["sw"], "acc", "margin")
    assert (best["layer"], best["alpha"]) == (4, 0.5)
    best = _best(entries[:3], ["sw"], "acc", "margin")
    assert best["layer"] == 3


def test_restrict_layers_of_a_multi_layer_intervention(lm):
    d = lm.hidden_size
    iv = SteeringVector(sites=[Site(0, "resid_post"), Site(1, "resid_post")],
                        tensors={vector_key(0): torch.ones(1, d), vector_key(1): torch.ones(1, d)},
                        params={"normalize": "none"}, languages=["sw"])
    one = restrict_layers(iv, [1])
    assert one.layers == [1] and iv.layers == [0, 1]
    with pytest.raises(UsageError, match="no sites"):
        restrict_layers(iv, [3])


def test_cli_sweep_prints_selection_and_test_command(lm, stats, tmp_path, capsys, splits_read):
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    stats_path = stats.save(tmp_path / "stats.safetensors")
    out = tmp_path / "sweep.json"
    code = main(["-q", "sweep", "--model", str(folder), "--task", "xcopa", "--langs", "en,sw", "--stats",
                 str(stats_path), "--layers", "1", "--alphas", "1,2", "--limit", "2", "--no-cache", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert "xlsteer eval" in text and "--split test" in text
    if rec["best"]["steer"]:
        assert "selected (all languages): layer 1" in text and "--alpha" in text
        assert (tmp_path / "sweep.best.safetensors").is_file()
    else:
        assert "selected (all languages): no steering" in text and "--intervention" not in text
    assert rec["selected_on_split"] == "dev" and rec["source"]["kind"] == "statistics"
    assert set(splits_read) == {"dev"}


def _entry(key, layer, alpha, acc, margin=0.0):
    return {"layer": layer, "alpha": alpha, "key": key,
            "per_lang": {"sw": {"metrics": {"acc": {"mean": acc}}, "continuous": {"margin": {"mean": margin}}}}}


def test_the_unsteered_model_is_a_candidate_and_wins_ties():
    unsteered = _entry(UNSTEERED, None, 0.0, 0.7, 0.2)
    worse = [_entry("L1@1", 1, 1.0, 0.6, 0.9), _entry("L2@0.5", 2, 0.5, 0.7, 0.1)]
    best = _best([unsteered, *worse], ["sw"], "acc", "margin")
    assert best["steer"] is False and best["key"] == UNSTEERED and best["decision"] == NO_STEERING
    tie = _best([unsteered, _entry("L2@0.5", 2, 0.5, 0.7, 0.2)], ["sw"], "acc", "margin")
    assert tie["steer"] is False  # doing nothing wins an exact tie
    better = _best([unsteered, _entry("L2@0.5", 2, 0.5, 0.75, 0.0)], ["sw"], "acc", "margin")
    assert better["steer"] is True and better["layer"] == 2


def _zero_vector(lm, layer, alpha):
    return SteeringVector(sites=[Site(layer, "resid_post")], tensors={vector_key(layer): torch.zeros(2, lm.hidden_size)},
                          params={"normalize": "none"}, languages=["sw", "zh"], strength=alpha)


def test_a_sweep_where_unsteered_is_best_on_dev_selects_no_steering(lm, splits_read):
    """Steering that does nothing cannot beat doing nothing: the selection is "no steering", and the
    test evaluation of that selection is the unsteered model's and says so."""
    langs = ["en", "sw", "zh"]
    rec = sweep(lm, "xcopa", langs, lambda layer, a: _zero_vector(lm, layer, a), layers=[0, 1], alphas=[1.0, 2.0],
                limit=3, n_boot=50)
    assert rec["best"]["steer"] is False and rec["best"]["key"] == UNSTEERED
    assert rec["best"]["gain_over_baseline"] == 0.0 and rec["best_steered"]["steer"] is True
    assert all(b["steer"] is False for b in rec["best_per_lang"].values())
    res = evaluate_selection(lm, "xcopa", langs, lambda layer, a: _zero_vector(lm, layer, a), rec,
                             split="dev", limit=3, n_boot=50)
    plain = run_task(lm, "xcopa", langs, split="dev", limit=3, n_boot=50)
    assert res["selection"]["steer"] is False and res["selection"]["decision"] == NO_STEERING
    assert res["intervention"] is None
    assert [r["logprobs"] for r in res["items"]] == [r["logprobs"] for r in plain["items"]]


def test_per_language_selection_steers_each_language_with_its_own_choice_or_none(lm, stats):
    make, _ = diffmean_from_statistics(stats, ["en", "sw", "zh"])
    langs = ["en", "sw", "zh"]
    chosen = {"layer": 1, "alpha": 4.0, "key": "L1@4", "steer": True, "main": 0.0}
    record = {"best": chosen, "selection_rule": "r", "split": "dev",
              "best_per_lang": {"sw": chosen, "zh": {"layer": None, "alpha": 0.0, "key": UNSTEERED, "steer": False}}}
    res = evaluate_selection(lm, "xcopa", langs, make, record, "per-lang", split="dev", limit=3, n_boot=50)
    steered = run_task(lm, "xcopa", langs, interventions=make(1, 4.0), split="dev", limit=3, n_boot=50)
    plain = run_task(lm, "xcopa", langs, split="dev", limit=3, n_boot=50)

    def lps(r, lang):
        return [x["logprobs"] for x in r["items"] if x["lang"] == lang]

    assert lps(res, "sw") == lps(steered, "sw") and lps(res, "sw") != lps(plain, "sw")
    assert lps(res, "zh") == lps(plain, "zh") and lps(res, "en") == lps(plain, "en")
    assert res["selection"]["per_lang"]["zh"]["steer"] is False and res["selection"]["steer"] is True
    assert res["item_ids"]["per_lang"] == {"en": 3, "sw": 3, "zh": 3}
    assert res["average"]["langs"] == ["sw", "zh"]
    assert res["intervention"]["per_lang"]["zh"] is None and res["intervention"]["per_lang"]["sw"]["layers"] == [1]


def test_cli_sweep_applies_incline_at_every_fitted_layer_together(lm, tmp_path, capsys, splits_read):
    """As in the paper (and compare): one alpha for the maps of all layers, not one layer at a time."""
    from xlsteer.interventions import fit

    from test_vector import parallel_texts

    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    iv = fit("incline", lm, parallel_texts(8), ["en", "sw"], ridge=0.1)
    path = iv.save(tmp_path / "incline.safetensors")
    out = tmp_path / "sweep.json"
    code = main(["-q", "sweep", "--model", str(folder), "--task", "xcopa", "--langs", "en,sw", "--intervention",
                 str(path), "--alphas", "0.5", "--limit", "2", "--no-cache", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["grid"]["layers"] == [-1] and [e["key"] for e in rec["results"]] == ["all@0.5"]
    assert rec["results"][0]["intervention"]["layers"] == iv.layers == [0, 1]
    assert rec["positions"] == "last_prompt"
