"""INCLINE: a planted linear map is recovered; application, positions, routing and files."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hook_session import rows_for
from xlsteer.hooks import record, steer
from xlsteer.interventions import fit
from xlsteer.interventions.incline import InclineIntervention, fit_incline, incline_texts
from xlsteer.interventions.incline import map_key
from xlsteer.models.sites import Site
from xlsteer.stats import Statistics
from xlsteer.testing import tiny_model

from test_vector import check_truncated_and_foreign, parallel_texts, roundtrip


def planted(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    return x.float(), a, (x @ a).float()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_recovers_planted_map_from_pooled_matrices():
    x, a, y = planted()
    iv = fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"], anchor="en")
    w = iv.tensors[map_key(0)][0].double()
    torch.testing.assert_close(w, a - torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-4)  # delta: X W = Y - X
    assert iv.params["fit"]["de"]["0"]["r2"] == pytest.approx(1.0, abs=1e-8)
    faithful = fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"], target="anchor")
    torch.testing.assert_close(faithful.tensors[map_key(0)][0].double(), a, rtol=0, atol=1e-4)  # X W = Y
    # applying at strength 1 maps a source state onto its anchor state: h + h W = h A
    site = Site(0, "mlp_out")
    h = x[:3].unsqueeze(1)
    out = iv.apply(site, h, rows_for(iv, ["de", "de", "en"]), iv.prepare(site, h.device, h.dtype))
    torch.testing.assert_close(out[:2, 0], y[:2], rtol=0, atol=1e-4)
    assert torch.equal(out[2], h[2])  # anchor row


def test_recovers_planted_map_from_statistics_items():
    x, a, y = planted(n=120, d=8, seed=1)
    site = Site(2, "mlp_out")
    stats = Statistics(["en", "sw"], [site], {"mlp_out": 8}, keep_items=True)
    for lang, m in (("en", y), ("sw", x)):
        for start in range(0, 120, 40):  # one token per item; three batches in corpus order
            chunk = m[start : start + 40].unsqueeze(1)
            stats.update(lang, site, chunk, torch.ones(40, 1, dtype=torch.bool))
    iv = fit_incline(stats, [2], ["sw"], anchor="en")
    torch.testing.assert_close(iv.tensors[map_key(2)][0].double(), a - torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-4)
    assert iv.params["positions"] == "last_prompt" and iv.params["pooling"] == "mean"


def test_too_few_pairs_without_ridge_names_the_ridge_option():
    x, a, y = planted(n=10, d=16)
    with pytest.raises(UsageError, match="--ridge"):
        fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"])
    iv = fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"], ridge=0.01)
    assert torch.isfinite(iv.tensors[map_key(0)]).all() and iv.params["fit"]["de"]["0"]["lambda"] > 0
    # ridge shrinks the map toward zero
    big = fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"], ridge=10.0)
    assert big.tensors[map_key(0)].norm() < iv.tensors[map_key(0)].norm()
    with pytest.raises(UsageError, match="sign"):
        fit_incline({"en": {0: y}, "de": {0: x}}, [0], ["de"], ridge=0.1, sign=2)


def test_sign_minus_one_equals_negative_strength():
    x, a, y = planted(n=40, d=8)
    src = {"en": {0: y}, "de": {0: x}}
    minus = fit_incline(src, [0], ["de"], sign=-1)
    plus = fit_incline(src, [0], ["de"]).with_strength(-1.0)
    site = Site(0, "mlp_out")
    h = x[:4].unsqueeze(1)
    assert torch.equal(minus.apply(site, h, rows_for(minus, ["de"] * 4), minus.prepare(site, h.device, h.dtype)),
                       plus.apply(site, h, rows_for(plus, ["de"] * 4), plus.prepare(site, h.device, h.dtype)))


def test_code_switched_texts_keep_rows_aligned():
    texts = {"en": ["a", "b", "c", "d"], "de": ["w", "x", "y", "z"]}
    out = incline_texts(texts, ["de"], "en", code_switch=True)
    assert out["de"] == ["w", "x", "y c", "z d"]
    assert out["en"] == ["a", "b", "c c", "d d"]
    assert incline_texts(texts, ["de"], "en") == texts


def test_incline_on_a_model_last_prompt_routing_identity(llama, tmp_path):
    texts = parallel_texts(12)
    iv = fit("incline", llama, texts, ["en", "de", "sw"], layers=[0, 1], ridge=0.1)
    assert isinstance(iv, InclineIntervention) and iv.sites == [Site(0, "mlp_out"), Site(1, "mlp_out")]
    enc = llama.tokenizer(texts["de"][:4], return_tensors="pt", padding=True)
    model = llama.model
    base = model(**enc).logits
    policy = iv.params["positions"]
    with steer(model, iv.with_strength(0.0), langs="de", positions=policy):
        assert torch.equal(model(**enc).logits, base)
    # only the last prompt token's MLP output at layer 0 changes
    site = Site(0, "mlp_out")
    seen = []
    with record(model, [site], lambda s, a, c: seen.append(a.clone())):
        model(**enc)
    with steer(model, iv, langs="de", positions=policy), record(model, [site], lambda s, a, c: seen.append(a.clone())):
        model(**enc)
    before, after = seen
    assert torch.equal(before[:, :-1], after[:, :-1])
    w = iv.tensors[map_key(0)][0]
    torch.testing.assert_close(after[:, -1], before[:, -1] + before[:, -1] @ w, rtol=1e-5, atol=1e-6)
    # a mixed batch never touches anchor rows
    with steer(model, iv.with_strength(5.0), langs=["en", "de", "en", "sw"], positions=policy):
        mixed = model(**enc).logits
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[2], base[2])
    assert not torch.allclose(mixed[1], base[1]) and not torch.allclose(mixed[3], base[3])


def test_incline_roundtrip_and_fingerprint(llama, tmp_path):
    iv = fit("incline", llama, parallel_texts(12), ["de", "sw"], layers=[1], ridge=0.05, code_switch=True, sign=-1)
    assert iv.params["code_switch"] is True and iv.params["sign"] == -1
    roundtrip(iv, tmp_path)
    check_truncated_and_foreign(iv, tmp_path, llama)
