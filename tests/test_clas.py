"""CLAS: neuron categories, bridge layers, the steering rule, routing and files."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hook_session import rows_for
from xlsteer.hooks import record, steer
from xlsteer.interventions import fit
from xlsteer.interventions.clas import CLASIntervention, fit_clas, neuron_categories, select_bridge_layers
from xlsteer.interventions.clas import partial_key, spec_key
from xlsteer.models.sites import Site
from xlsteer.stats import Statistics
from xlsteer.testing import tiny_model

from test_vector import check_truncated_and_foreign, parallel_texts, roundtrip

HAND_MEANS = {  # token-level means of 6 neurons
    "en": [1.0, 1.0, 1.0, -1.0, -1.0, 1.0],
    "de": [1.0, 1.0, -1.0, -1.0, 1.0, -1.0],
    "sw": [1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
}


def stats_with_means(means: dict[str, list[float]], layers=(0,)) -> Statistics:
    d = len(next(iter(means.values())))
    sites = [Site(layer, "mlp_act") for layer in layers]
    stats = Statistics(list(means), sites, {"mlp_act": d})
    for lang, m in means.items():
        for site in sites:
            act = torch.tensor(m).reshape(1, 1, d).expand(2, 3, d)  # 6 tokens, all equal to the mean
            stats.update(lang, site, act, torch.ones(2, 3, dtype=torch.bool))
    return stats


@pytest.fixture(scope="module")
def gemma():
    return tiny_model("gemma3", layers=4)


def test_categories_match_hand_computed_example():
    stats = stats_with_means(HAND_MEANS)
    cats = neuron_categories(stats, [0], ["en", "de", "sw"])
    c = cats["layers"][0]
    assert c["all"].tolist() == [True, False, False, False, False, False]
    assert c["partial"].tolist() == [False, True, False, False, False, False]
    assert c["specific"].tolist() == [False, False, True, False, True, True]
    assert c["dead"].tolist() == [False, False, False, True, False, False]
    assert c["percent"] == pytest.approx({"dead": 100 / 6, "specific": 50.0, "partial": 100 / 6, "all": 100 / 6})
    assert c["threshold"] == 0.0 and "0.0" in cats["rule"]
    iv = fit_clas(stats, ["de", "sw"], anchor="en", layers=[0])
    assert iv.languages == ["de", "sw"] and iv.params["category_langs"] == ["en", "de", "sw"]
    assert iv.tensors[partial_key(0)].tolist() == [False, True, False, False, False, False]
    assert iv.tensors[spec_key(0)].tolist() == [
        [False, False, False, False, True, False],  # de's own neuron 4
        [False, False, False, False, False, False],  # sw has no specific neuron
    ]


def test_quantile_rule_is_the_per_layer_quantile_of_all_means():
    means = {"en": [0.0, 1, 2, 3, 4, 5], "de": [6.0, 7, 8, 9, 10, 11], "sw": [12.0, 13, 14, 15, 16, 17]}
    stats = stats_with_means(means)
    cats = neuron_categories(stats, [0], ["en", "de", "sw"], quantile=0.5)
    c = cats["layers"][0]
    assert c["threshold"] == pytest.approx(8.5)  # median of 0..17
    assert c["active"].tolist() == [[False] * 6, [False, False, False, True, True, True], [True] * 6]
    assert c["partial"].tolist() == [False, False, False, True, True, True]
    assert c["specific"].tolist() == [True, True, True, False, False, False]
    with pytest.raises(UsageError, match="not both"):
        neuron_categories(stats, [0], ["en", "de"], threshold=0.1, quantile=0.5)


def test_categories_partition_all_neurons():
    g = torch.Generator().manual_seed(0)
    langs = ["en", "de", "sw", "fr"]
    sites = [Site(i, "mlp_act") for i in range(3)]
    stats = Statistics(langs, sites, {"mlp_act": 50})
    for lang in langs:
        for s in sites:
            stats.update(lang, s, torch.randn(3, 5, 50, generator=g) + 0.2, torch.ones(3, 5, dtype=torch.bool))
    cats = neuron_categories(stats, [0, 1, 2], langs, threshold=0.1)
    for c in cats["layers"].values():
        stack = torch.stack([c[k] for k in ("dead", "specific", "partial", "all")]).int()
        assert torch.equal(stack.sum(0), torch.ones(50, dtype=torch.int32))
        assert sum(c["percent"].values()) == pytest.approx(100.0)


def test_fewer_than_two_languages_is_a_usage_error():
    stats = stats_with_means({"en": [1.0, 2.0]})
    with pytest.raises(UsageError, match="at least 2 languages"):
        neuron_categories(stats, [0], ["en"])
    with pytest.raises(UsageError, match="at least 2 languages"):
        fit_clas(stats, ["en"], anchor="en")


def _fake_categories(shared: list[float]) -> dict:
    return {"layers": {i: {"percent": {"dead": 0.0, "specific": 100 - s, "partial": s / 2, "all": s / 2}}
                       for i, s in enumerate(shared)}}


def test_bridge_rule_matches_hand_arithmetic():
    cats = _fake_categories([10, 20, 50, 48, 44, 30, 90, 95])  # layers 6, 7 are the last two
    margin = select_bridge_layers(cats, 8, rule="margin", margin=5.0)
    assert margin["layers"] == [2, 3]  # best candidate 50; >= 45
    assert "50.00" in margin["rule"] and margin["shared_percent"]["6"] == 90
    topk = select_bridge_layers(cats, 8, rule="topk", k=3)
    assert topk["layers"] == [2, 3, 4]  # window means 26.7, 39.3, 47.3, 40.7
    with pytest.raises(UsageError, match="no candidate"):
        select_bridge_layers(_fake_categories([50, 60]), 2)


def test_rule_matches_formula_on_a_small_tensor():
    stats = stats_with_means(HAND_MEANS)
    iv = fit_clas(stats, ["de", "sw"], anchor="en", layers=[0])
    site = Site(0, "mlp_act")
    h = torch.tensor([[[2.0, -3.0, 5.0, 7.0, 11.0, -13.0]]]).expand(3, 1, 6).contiguous()
    mp = torch.tensor([0, 1, 0, 0, 0, 0.0])
    ms_de = torch.tensor([0, 0, 0, 0, 1, 0.0])
    for alpha in (0.5, -1.0, 2.0):
        a = iv.with_strength(alpha)
        out = a.apply(site, h, rows_for(a, ["de", "sw", "en"]), a.prepare(site, h.device, h.dtype))
        for row, ms in ((0, ms_de), (1, torch.zeros(6))):
            h2 = h[row] * (1 + 0.4 * mp) * (1 - 0.2 * ms)
            torch.testing.assert_close(out[row], (1 - alpha) * h[row] + alpha * h2, rtol=0, atol=1e-6)
        assert torch.equal(out[2], h[2])  # anchor row: the engine would not even select it
    # hand numbers for de at alpha 0.5: neuron 1 (partial) -3 x 1.4 = -4.2, blended -3.6;
    # neuron 4 (de-specific) 11 x 0.8 = 8.8, blended 9.9; neuron 0 (all-shared) unchanged
    half = iv.with_strength(0.5)
    out = half.apply(site, h, rows_for(half, ["de", "sw", "en"]), half.prepare(site, h.device, h.dtype))
    assert out[0, 0, 1].item() == pytest.approx(-3.6) and out[0, 0, 4].item() == pytest.approx(9.9)
    assert out[0, 0, 0].item() == 2.0 and out[1, 0, 4].item() == 11.0


def _ids(lm, texts):
    return lm.tokenizer(texts, return_tensors="pt", padding=True)


def test_clas_on_a_model_identity_routing_negative_alpha(gemma, tmp_path):
    texts = parallel_texts(8)
    iv = fit("clas", gemma, texts, ["en", "de", "sw"], threshold=0.0)
    assert isinstance(iv, CLASIntervention)
    assert all(layer < 4 - 2 for layer in iv.layers)  # never the last two layers
    assert set(iv.params["category_percent"]) == {"0", "1", "2", "3"}
    # force visible effects: strengthen the rule (the fitted masks may be sparse on a random model)
    enc = _ids(gemma, texts["de"][:4])
    base = gemma.model(**enc).logits
    with steer(gemma.model, iv.with_strength(0.0), langs="de"):
        assert torch.equal(gemma.model(**enc).logits, base)
    strong = iv.with_strength(8.0)
    with steer(gemma.model, strong, langs=["en", "de", "en", "sw"]):
        mixed = gemma.model(**enc).logits
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[2], base[2])
    assert not torch.allclose(mixed[1], base[1])
    with steer(gemma.model, iv.with_strength(-8.0), langs="de"):
        neg = gemma.model(**enc).logits
    with steer(gemma.model, strong, langs="de"):
        pos = gemma.model(**enc).logits
    assert not torch.allclose(neg, base) and not torch.allclose(neg, pos)


def test_clas_applies_the_rule_at_mlp_act_through_the_engine(gemma):
    texts = parallel_texts(8)
    iv = fit("clas", gemma, texts, ["en", "de", "sw"], layers=[1])
    site = Site(1, "mlp_act")
    enc = _ids(gemma, texts["de"][:2])
    seen = []
    with record(gemma.model, [site], lambda s, a, c: seen.append(a.clone())):
        gemma.model(**enc)
    a = iv.with_strength(0.7)
    with steer(gemma.model, a, langs="de"), record(gemma.model, [site], lambda s, x, c: seen.append(x.clone())):
        gemma.model(**enc)
    h, out = seen
    f = a.factors(1)[0]
    want = torch.where(enc["attention_mask"].bool().unsqueeze(-1), (1 - 0.7) * h + 0.7 * h * f, h)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_clas_roundtrip_and_fingerprint(tmp_path):
    lm = tiny_model("llama")
    iv = fit("clas", lm, parallel_texts(8), ["en", "de", "sw"], layers=[0], quantile=0.5, beta=0.3)
    assert iv.params["beta"] == 0.3 and iv.params["quantile"] == 0.5
    roundtrip(iv, tmp_path)
    check_truncated_and_foreign(iv, tmp_path, lm)


def test_one_target_language_still_has_a_partial_category():
    """Categories over a fixed language set: steering only de, neuron 1 (active for en and de, not
    sw) is partial-shared. Over [anchor, target] alone (n = 2) that category is empty by construction."""
    stats = stats_with_means(HAND_MEANS)
    iv = fit_clas(stats, ["de"], anchor="en", layers=[0])
    assert iv.languages == ["de"] and iv.params["category_langs"] == ["en", "de", "sw"]
    assert iv.params["category_langs_rule"] == "every language of the statistics"
    assert iv.tensors[partial_key(0)].tolist() == [False, True, False, False, False, False]
    assert iv.params["category_percent"]["0"]["partial"] > 0
    assert iv.tensors[spec_key(0)].tolist() == [[False, False, False, False, True, False]]
    narrow = fit_clas(stats, ["de"], anchor="en", layers=[0], category_langs="en,de")
    assert not narrow.tensors[partial_key(0)].any()  # what the steered-languages-only set gave
    with pytest.raises(UsageError, match="must include"):
        fit_clas(stats, ["de"], anchor="en", layers=[0], category_langs=["en", "sw"])


def test_fit_categorises_over_every_corpus_language_and_records_it(gemma):
    texts = {**parallel_texts(8), "fr": parallel_texts(8, seed=1)["sw"]}
    iv = fit("clas", gemma, texts, ["en", "de"], layers=[0])
    assert iv.languages == ["de"] and iv.params["category_langs"] == ["en", "de", "sw", "fr"]
    assert iv.params["category_langs_rule"].startswith("every language of the corpus")
    assert set(iv.meta["data"]["langs"]) == {"en", "de", "sw", "fr"}  # statistics collected for the whole set
    chosen = fit("clas", gemma, texts, ["en", "de"], layers=[0], category_langs="en,de,fr")
    assert chosen.params["category_langs"] == ["en", "de", "fr"] and chosen.params["category_langs_rule"] == "given"
