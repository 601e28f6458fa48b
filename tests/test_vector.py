"""DiffMean steering vectors: the analytic mean difference, exact mean transport, routing, files."""

from __future__ import annotations

import math
import random

import pytest
import torch

from xlsteer.errors import ArtifactError, FingerprintError, UsageError
from xlsteer.hooks import record, steer
from xlsteer.interventions import fit, load_intervention
from xlsteer.interventions.vector import SteeringVector, fit_diffmean, vector_key
from xlsteer.interventions.base import Intervention
from xlsteer.models.sites import Site
from xlsteer.stats import Statistics, collect
from xlsteer.testing import tiny_model

ALPHABETS = {"en": "abcdefghijklm ", "de": "nopqrstuvwxyzäöü ", "sw": "ABCDEFGHIJKLMNOP "}


def parallel_texts(n: int = 12, langs=("en", "de", "sw"), seed: int = 0) -> dict[str, list[str]]:
    """Synthetic 'languages': each draws characters from its own alphabet (distinct token sets)."""
    rng = random.Random(seed)
    lengths = [rng.randint(6, 18) for _ in range(n)]
    return {lang: ["".join(rng.choice(ALPHABETS[lang]) for _ in range(k)) for k in lengths] for lang in langs}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def roundtrip(iv: Intervention, tmp_path, name="iv.safetensors") -> Intervention:
    """Save, load, compare tensors bit-exactly and metadata exactly; re-saving gives the same bytes."""
    p = iv.save(tmp_path / name)
    loaded = Intervention.load(p)
    assert type(loaded) is type(iv)
    assert loaded.tensors.keys() == iv.tensors.keys()
    for k, t in iv.tensors.items():
        assert loaded.tensors[k].dtype == t.dtype and torch.equal(loaded.tensors[k], t)
    from xlsteer.io import load_tensors

    _, meta = load_tensors(p)
    assert loaded.metadata() == meta
    for key in ("model_fingerprint", "data_hash", "fit_seconds") if "model_fingerprint" in iv.meta else ("fit_seconds",):
        assert key in meta
    assert loaded.params == iv.params and loaded.languages == iv.languages and loaded.sites == iv.sites
    p2 = loaded.save(tmp_path / ("again-" + name))
    assert p.read_bytes() == p2.read_bytes()
    return loaded


def check_truncated_and_foreign(iv: Intervention, tmp_path, lm) -> None:
    p = iv.save(tmp_path / "t.safetensors")
    data = p.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        Intervention.load(bad)
    load_intervention(p, lm)  # fits its own model
    wider = tiny_model("llama", hidden=96)
    with pytest.raises(FingerprintError):
        load_intervention(p, wider)
    other = tiny_model("qwen2")  # same widths, another network
    with pytest.raises(FingerprintError):
        load_intervention(p, other)
    # without a recorded fingerprint the width check still refuses a wider model
    iv2 = iv.with_strength(1.0)
    iv2.meta = {k: v for k, v in iv.meta.items() if k != "model_fingerprint"}
    p3 = iv2.save(tmp_path / "nofp.safetensors")
    with pytest.raises(FingerprintError, match="width"):
        load_intervention(p3, wider)


def synthetic_stats(seed=0):
    g = torch.Generator().manual_seed(seed)
    sites = [Site(0, "resid_post"), Site(1, "resid_post")]
    stats = Statistics(["en", "de", "sw"], sites, {"resid_post": 5})
    raw: dict = {}
    for lang in stats.langs:
        for site in sites:
            for _ in range(3):  # three batches of 4 items with ragged lengths
                act = torch.randn(4, 7, 5, generator=g) * 3 + (1 if lang == "en" else -2)
                mask = torch.zeros(4, 7, dtype=torch.bool)
                for b in range(4):
                    mask[b, 7 - int(torch.randint(1, 8, (1,), generator=g)) :] = True
                stats.update(lang, site, act, mask)
                raw.setdefault((lang, site), []).append((act, mask))
    return stats, raw


def analytic_item_mean(batches) -> torch.Tensor:
    pooled = []
    for act, mask in batches:
        for b in range(act.shape[0]):
            pooled.append(act[b][mask[b]].double().mean(0))
    return torch.stack(pooled).mean(0)


def test_diffmean_equals_analytic_mean_difference():
    stats, raw = synthetic_stats()
    v = fit_diffmean(stats, [0, 1], ["de", "sw"], anchor="en")
    for site in (Site(0, "resid_post"), Site(1, "resid_post")):
        want = torch.stack(
            [analytic_item_mean(raw[("en", site)]) - analytic_item_mean(raw[(t, site)]) for t in ("de", "sw")]
        ).float()
        torch.testing.assert_close(v.tensors[vector_key(site.layer)], want, rtol=0, atol=1e-6)
    assert v.params["normalize"] == "none" and v.params["pooling"] == "mean"
    assert v.languages == ["de", "sw"] and v.anchor == "en"


def test_diffmean_toward_the_wanted_language_is_the_controls_vector_under_the_target():
    stats, _ = synthetic_stats()
    toward = fit_diffmean(stats, [0, 1], ["de", "sw"], anchor="en", direction="to_target")
    away = fit_diffmean(stats, [0, 1], ["de", "sw"], anchor="en")
    assert toward.params["direction"] == "to_target" and "direction" not in away.params
    for layer in (0, 1):
        assert torch.equal(toward.tensors[vector_key(layer)], -away.tensors[vector_key(layer)])
        # the positive control's vector (target as the anchor, prompt language steered): same numbers
        control = fit_diffmean(stats, [layer], ["en"], anchor="de")
        assert torch.equal(toward.tensors[vector_key(layer)][0], control.tensors[vector_key(layer)][0])
    with pytest.raises(UsageError, match="direction"):
        fit_diffmean(stats, [0], ["de"], direction="sideways")


def test_relative_normalization_scales_to_rms_token_norm():
    stats, raw = synthetic_stats(1)
    v = fit_diffmean(stats, [0], ["de"], normalize="relative")
    site = Site(0, "resid_post")
    toks = torch.cat([act[mask] for lang in ("en", "de") for act, mask in raw[(lang, site)]]).double()
    rms = math.sqrt(float(toks.pow(2).sum(1).mean()))
    assert v.params["ref_norm"]["0"] == pytest.approx(rms, rel=1e-6)
    assert float(v.effective(0).norm()) == pytest.approx(rms, rel=1e-5)
    given = fit_diffmean(stats, [0], ["de"], normalize="relative", ref_norm={0: 7.0})
    assert float(given.effective(0).norm()) == pytest.approx(7.0, rel=1e-5)
    assert given.params["ref_norm_source"] == "given"
    unit = fit_diffmean(stats, [0], ["de"], normalize="unit")
    assert float(unit.effective(0).norm()) == pytest.approx(1.0, rel=1e-5)


def test_anchor_as_target_is_refused():
    stats, _ = synthetic_stats()
    with pytest.raises(UsageError, match="anchor"):
        fit_diffmean(stats, [0], ["en", "de"], anchor="en")
    with pytest.raises(UsageError, match="normalize"):
        fit_diffmean(stats, [0], ["de"], normalize="cosine")


def _pooled_mean(lm, texts, site, lang, iv=None):
    """Mean over items of the mean-pooled state at ``site`` (BOS excluded), read via record()."""
    model, tok = lm.model, lm.tokenizer
    enc = tok(texts, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool() & (enc["input_ids"] != tok.bos_token_id)
    got = []

    def reader(s, act, ctx):
        m = mask.to(act.dtype)
        got.append((torch.einsum("bt,btd->bd", m, act) / m.sum(1, keepdim=True)).double())

    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        if iv is None:
            with record(model, [site], reader):
                model(**enc, position_ids=pos)
        else:
            with steer(model, iv, langs=lang), record(model, [site], reader):
                model(**enc, position_ids=pos)
    return got[0].mean(0)


@pytest.mark.parametrize("layer", [0, 1])
def test_steering_moves_target_mean_exactly_onto_anchor_mean(llama, layer):
    texts = parallel_texts(10)
    site = Site(layer, "resid_post")
    stats = collect(llama, texts, [site], pooling="mean", batch_size=4)
    v = fit_diffmean(stats, [layer], ["de", "sw"])
    en = _pooled_mean(llama, texts["en"], site, "en")
    for lang in ("de", "sw"):
        before = _pooled_mean(llama, texts[lang], site, lang)
        after = _pooled_mean(llama, texts[lang], site, lang, iv=v)
        scale = float(en.abs().max())
        assert float((before - en).abs().max()) > 1e-2 * scale  # the languages really differ
        torch.testing.assert_close(after, en, rtol=0, atol=1e-5 * scale)


def test_strength_zero_is_identity_and_anchor_rows_untouched(llama):
    texts = parallel_texts(6)
    stats = collect(llama, texts, [Site(0, "resid_post")])
    v = fit_diffmean(stats, [0], ["de", "sw"]).with_strength(3.0)
    ids = llama.tokenizer(texts["de"][:4], return_tensors="pt", padding=True)
    base = llama.model(**ids).logits
    with steer(llama.model, v.with_strength(0.0), langs="de"):
        assert torch.equal(llama.model(**ids).logits, base)
    with steer(llama.model, v, langs=["en", "de", "en", "sw"]):
        mixed = llama.model(**ids).logits
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[2], base[2])
    assert not torch.allclose(mixed[1], base[1]) and not torch.allclose(mixed[3], base[3])


def test_select_layers_keeps_vectors(llama):
    texts = parallel_texts(6)
    v = fit("diffmean", llama, texts, ["de"], layers=[0, 1], normalize="relative")
    one = v.select_layers([1])
    assert one.layers == [1] and torch.equal(one.tensors[vector_key(1)], v.tensors[vector_key(1)])
    assert list(one.params["ref_norm"]) == ["1"]
    with pytest.raises(UsageError, match="no layer"):
        v.select_layers([5])


def test_fit_dispatch_records_provenance_and_caches_statistics(llama, tmp_path):
    texts = parallel_texts(8)
    cache = tmp_path / "stats.safetensors"
    v = fit("diffmean", llama, texts, ["en", "de", "sw"], layers=[1], stats_cache=cache)
    assert v.meta["model_fingerprint"] == llama.fingerprint
    assert len(v.meta["data_hash"]) == 64 and v.meta["data"]["n_items"] == 8
    assert v.meta["statistics_source"] == "collected" and cache.is_file()
    assert v.meta["fit_seconds"] >= v.meta["collect_seconds"] >= 0
    again = fit("diffmean", llama, texts, ["de", "sw"], layers=[1], stats_cache=cache)
    assert again.meta["statistics_source"].startswith("cache")
    assert torch.equal(again.tensors[vector_key(1)], v.tensors[vector_key(1)])
    other = fit("diffmean", llama, parallel_texts(8, seed=5), ["de", "sw"], layers=[1], stats_cache=cache)
    assert other.meta["statistics_source"] == "collected"  # other text: the cache is not reused
    with pytest.raises(UsageError, match="unknown method"):
        fit("steer", llama, texts, ["de"])


def test_roundtrip_truncation_and_fingerprint(llama, tmp_path):
    texts = parallel_texts(6)
    v = fit("diffmean", llama, texts, ["de", "sw"], layers=[0, 1], normalize="relative")
    loaded = roundtrip(v, tmp_path)
    assert loaded.meta["model_fingerprint"] == llama.fingerprint
    check_truncated_and_foreign(v, tmp_path, llama)


def test_wrong_width_at_apply_time_is_a_fingerprint_error(llama):
    v = SteeringVector(
        sites=[Site(0, "resid_post")], tensors={vector_key(0): torch.ones(1, 32)},
        params={"normalize": "none"}, languages=["de"],
    )
    with pytest.raises(FingerprintError, match="width"):
        with steer(llama.model, v, langs="de"):
            llama.model(torch.tensor([[5, 6, 7]]))


def test_collect_ends_the_forward_after_the_last_site_without_changing_a_statistic(llama):
    """Statistics at an early layer are the same whether the forward stops after it (the sites
    read) or runs to the end (a deeper site asked for too); the model is left as it was."""
    texts = parallel_texts(8)
    probe = llama.tokenizer(["a probe sentence"], return_tensors="pt")
    with torch.inference_mode():
        before = llama.model(**probe).logits
    early = collect(llama, texts, [Site(0, "resid_post")], batch_size=3)
    full = collect(llama, texts, [Site(0, "resid_post"), Site(llama.num_layers - 1, "resid_post")], batch_size=3)
    for lang in texts:
        a, b = early.mean(lang, Site(0, "resid_post")), full.mean(lang, Site(0, "resid_post"))
        assert torch.equal(a, b), lang
    with torch.inference_mode():
        assert torch.equal(llama.model(**probe).logits, before)
