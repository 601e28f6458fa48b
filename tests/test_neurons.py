"""LAPE neuron selection and the LAPE / Int_mu interventions."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hooks import record, steer
from xlsteer.interventions import fit
from xlsteer.interventions.neurons import IntMuIntervention, LapeIntervention, lape_neurons
from xlsteer.interventions.neurons import fit_intmu, fit_lape, lape_selection, mask_key, mu_key
from xlsteer.models.sites import Site
from xlsteer.stats import Statistics
from xlsteer.testing import tiny_model

from test_vector import check_truncated_and_foreign, parallel_texts, roundtrip

LANGS = ["en", "de", "sw", "fr"]


def planted_stats(d_ff=100, tokens=400, seed=0) -> Statistics:
    """P(act > 0) ~ 0.5 everywhere, except neuron 7 of layer 0 (only de) and 42 of layer 1 (only sw)."""
    g = torch.Generator().manual_seed(seed)
    sites = [Site(0, "mlp_gate"), Site(1, "mlp_gate")]
    stats = Statistics(LANGS, sites, {"mlp_gate": d_ff})
    for lang in LANGS:
        for site in sites:
            act = torch.randn(1, tokens, d_ff, generator=g)
            if site.layer == 0:
                act[..., 7] = act[..., 7].abs() * (1 if lang == "de" else -1)
            else:
                act[..., 42] = act[..., 42].abs() * (1 if lang == "sw" else -1)
            stats.update(lang, site, act, torch.ones(1, tokens, dtype=torch.bool))
    return stats


def test_lape_finds_planted_language_neurons():
    stats = planted_stats()
    found = lape_neurons(stats, [0, 1], LANGS)  # 1% of 200 neurons = 2
    assert found["de"][0].tolist() == [7] and found["de"][1].tolist() == []
    assert found["sw"][1].tolist() == [42] and found["sw"][0].tolist() == []
    assert all(v.numel() == 0 for lang in ("en", "fr") for v in found[lang].values())
    _, info = lape_selection(stats, [0, 1], LANGS)
    assert info["n_selected"] == 2 and 0.5 < info["bar"] < 1.0


def test_lape_needs_two_languages():
    with pytest.raises(UsageError, match="at least 2"):
        lape_neurons(planted_stats(), [0], ["de"])


def _acts(model, enc, site, iv=None, langs=None):
    seen = []
    if iv is None:
        with record(model, [site], lambda s, a, c: seen.append(a.clone())):
            model(**enc)
    else:
        with steer(model, iv, langs=langs), record(model, [site], lambda s, a, c: seen.append(a.clone())):
            model(**enc)
    return seen[0]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llama_stats(llama):
    from xlsteer.stats import collect

    return collect(llama, parallel_texts(8), [Site(0, "mlp_gate"), Site(1, "mlp_gate")])


HAND = {"de": {0: torch.tensor([3, 10, 50])}, "sw": {0: torch.tensor([5, 10])}, "en": {0: torch.tensor([99])}}


def test_lape_deactivate_and_amplify_only_touch_the_rows_neurons(llama, llama_stats):
    model = llama.model
    site = Site(0, "mlp_gate")
    iv = fit_lape(llama_stats, ["de", "sw"], anchor="en", layers=[0], neurons=HAND)
    assert iv.languages == ["de", "sw"] and iv.sites == [site]
    enc = llama.tokenizer(parallel_texts(3)["de"], return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    base = _acts(model, enc, site)
    off = _acts(model, enc, site, iv, ["de", "en", "sw"])
    assert torch.equal(off[1], base[1])  # anchor row
    for row, neurons in ((0, [3, 10, 50]), (2, [5, 10])):
        others = [i for i in range(base.shape[-1]) if i not in neurons]
        assert torch.all(off[row][real[row]][:, neurons] == 0)
        assert torch.equal(off[row][:, others], base[row][:, others])
    amplify = fit_lape(llama_stats, ["de", "sw"], anchor="en", layers=[0], neurons=HAND, mode="amplify")
    amp = _acts(model, enc, site, amplify.with_strength(0.5), ["de", "de", "de"])
    torch.testing.assert_close(amp[0][real[0]][:, [3, 10, 50]], 1.5 * base[0][real[0]][:, [3, 10, 50]])
    zero = _acts(model, enc, site, iv.with_strength(0.0), ["de", "sw", "de"])
    assert torch.equal(zero, base)
    # one chosen language's neurons for every steered row
    chosen = fit_lape(llama_stats, ["de", "sw"], anchor="en", layers=[0], neurons=HAND, neuron_lang="de")
    both = _acts(model, enc, site, chosen, ["sw", "sw", "en"])
    assert torch.all(both[0][real[0]][:, [3, 10, 50]] == 0) and torch.equal(both[0][:, 5], base[0][:, 5])


def test_intmu_writes_stored_means_exactly_and_nowhere_else(llama, llama_stats):
    model = llama.model
    site = Site(0, "mlp_gate")
    iv = fit_intmu(llama_stats, ["de", "sw"], anchor="en", layers=[0], neurons=HAND, mean_of="anchor")
    mu_en = llama_stats.mean("en", site, level="token")
    assert torch.equal(iv.tensors[mu_key(0)][0], mu_en) and torch.equal(iv.tensors[mu_key(0)][1], mu_en)
    enc = llama.tokenizer(parallel_texts(3)["de"], return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    base = _acts(model, enc, site)
    out = _acts(model, enc, site, iv, ["de", "en", "sw"])
    assert torch.equal(out[1], base[1])
    for row, neurons in ((0, [3, 10, 50]), (2, [5, 10])):
        sel = torch.zeros(base.shape[-1], dtype=torch.bool)
        sel[neurons] = True
        toks = out[row][real[row]]
        assert torch.equal(toks[:, sel], mu_en[sel].expand(toks.shape[0], -1))  # exactly the stored means
        assert torch.equal(out[row][:, ~sel], base[row][:, ~sel])  # nowhere else
        assert torch.equal(out[row][~real[row]], base[row][~real[row]])  # padding untouched
    half = _acts(model, enc, site, iv.with_strength(0.5), ["de", "de", "de"])
    torch.testing.assert_close(half[0][real[0]][:, [3]], 0.5 * base[0][real[0]][:, [3]] + 0.5 * mu_en[3])
    assert torch.equal(_acts(model, enc, site, iv.with_strength(0.0), ["de"] * 3), base)
    own = fit_intmu(llama_stats, ["de", "sw"], anchor="en", layers=[0], neurons=HAND, mean_of="target", neurons_of="union")
    assert own.tensors[mask_key(0)][0, 99] and torch.equal(own.tensors[mu_key(0)][1], llama_stats.mean("sw", site, "token"))


def test_lape_and_intmu_fit_dispatch_roundtrip_and_fingerprint(llama, tmp_path):
    texts = parallel_texts(8)
    lape = fit("lape", llama, texts, ["en", "de", "sw"], top_fraction=0.05, mode="amplify")
    assert isinstance(lape, LapeIntervention) and lape.params["selection"]["n_selected"] >= 1
    intmu = fit("intmu", llama, texts, ["en", "de", "sw"], top_fraction=0.05, neurons_of="union")
    assert isinstance(intmu, IntMuIntervention)
    for i, iv in enumerate((lape, intmu)):
        sub = tmp_path / str(i)
        sub.mkdir()
        roundtrip(iv, sub)
        check_truncated_and_foreign(iv, sub, llama)
    enc = llama.tokenizer(texts["de"][:4], return_tensors="pt", padding=True)
    base = llama.model(**enc).logits
    for iv in (lape.with_strength(4.0), intmu):
        with steer(llama.model, iv, langs=["en", "de", "en", "sw"]):
            mixed = llama.model(**enc).logits
        assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[2], base[2])


def test_lape_and_intmu_default_to_the_gate_site_and_keep_the_product_as_an_option(llama):
    """Tang et al. threshold act(gate) > 0 (mlp_gate); act(gate) * up (mlp_act) stays selectable."""
    texts = parallel_texts(8)
    for method in ("lape", "intmu"):
        default = fit(method, llama, texts, ["en", "de", "sw"], top_fraction=0.05)
        assert {s.name for s in default.sites} == {"mlp_gate"}
        assert default.params["site"] == "mlp_gate" and default.params["selection"]["site"] == "mlp_gate"
        old = fit(method, llama, texts, ["en", "de", "sw"], site="mlp_act", top_fraction=0.05)
        assert {s.name for s in old.sites} == {"mlp_act"} and old.params["selection"]["site"] == "mlp_act"
    with pytest.raises(UsageError, match="mlp_gate"):
        fit("lape", llama, texts, ["en", "de"], site="resid_post")


def test_gate_and_product_statistics_select_different_neurons(llama):
    """The product's sign also carries up's sign: P(act > 0) differs, so the selections differ."""
    from xlsteer.stats import collect

    sites = [Site(layer, name) for layer in (0, 1) for name in ("mlp_gate", "mlp_act")]
    stats = collect(llama, parallel_texts(8), sites)
    langs = ["en", "de", "sw"]
    gate = stats.prob_active("de", Site(0, "mlp_gate"), "zero")
    prod = stats.prob_active("de", Site(0, "mlp_act"), "zero")
    assert not torch.allclose(gate, prod)
    by_gate = lape_neurons(stats, [0, 1], langs, top_fraction=0.05, site="mlp_gate")
    by_prod = lape_neurons(stats, [0, 1], langs, top_fraction=0.05, site="mlp_act")
    assert any(not torch.equal(by_gate[lang][layer], by_prod[lang][layer]) for lang in langs for layer in (0, 1))
