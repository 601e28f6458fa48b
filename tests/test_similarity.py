"""Similarity to the anchor and separation, against numpy oracles and on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xlsteer.analysis.similarity import (
    cosine_rows,
    layer_similarity,
    mean_similarity,
    paired_similarity,
    pooled_items,
    separation,
    silhouette,
    similarity_to_anchor,
    variance_ratio,
)
from xlsteer.errors import DataError, LanguageError
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

TEXTS = {
    "en": ["the red house", "a small dog runs", "water is cold", "we eat bread now", "the sun is bright", "go home"],
    "de": ["das rote Haus", "ein kleiner Hund läuft", "Wasser ist kalt", "wir essen jetzt Brot", "die Sonne ist hell",
           "geh nach Hause"],
    "sw": ["nyumba nyekundu", "mbwa mdogo anakimbia", "maji ni baridi", "tunakula mkate sasa", "jua ni kali",
           "nenda nyumbani"],
}


def _cos_np(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _silhouette_np(x: np.ndarray, labels: np.ndarray) -> float:
    """Textbook silhouette with cosine distance (the oracle)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    s = []
    for i in range(len(x)):
        same = labels == labels[i]
        same[i] = False
        if not same.any():
            s.append(0.0)
            continue
        a = dist[i, same].mean()
        b = min(dist[i, labels == k].mean() for k in np.unique(labels) if k != labels[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 16))
    return {
        "en": base,
        "de": base + 0.5 * rng.normal(size=(20, 16)) + 1.0,
        "sw": rng.normal(size=(20, 16)) - 2.0,
    }


def test_paired_and_mean_cosine_match_numpy(synthetic):
    x, y = synthetic["de"], synthetic["en"]
    rows = np.array([_cos_np(a, b) for a, b in zip(x, y)])
    np.testing.assert_allclose(cosine_rows(x, y), rows, rtol=1e-12)
    assert paired_similarity(x, y) == pytest.approx(rows.mean(), rel=1e-12)
    assert mean_similarity(x, y) == pytest.approx(_cos_np(x.mean(0), y.mean(0)), rel=1e-12)
    out = similarity_to_anchor(synthetic, "en")
    assert set(out) == {"de", "sw"}
    assert out["de"]["paired"] == pytest.approx(rows.mean(), rel=1e-12)
    assert out["de"]["paired_sd"] == pytest.approx(rows.std(ddof=1), rel=1e-9)


def test_cosine_accepts_tensors_and_zero_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, 0.0])


def test_translations_closer_than_unrelated_items(synthetic):
    out = similarity_to_anchor(synthetic, "en")
    assert out["de"]["paired"] > out["sw"]["paired"]


def test_separation_matches_numpy(synthetic):
    x = np.concatenate(list(synthetic.values()))
    labels = np.repeat(np.arange(3), 20)
    assert silhouette(synthetic) == pytest.approx(_silhouette_np(x, labels), abs=1e-9)
    mu = x.mean(0)
    between = sum(20 * ((v.mean(0) - mu) ** 2).sum() for v in synthetic.values())
    within = sum(((v - v.mean(0)) ** 2).sum() for v in synthetic.values())
    assert variance_ratio(synthetic) == pytest.approx(between / within, rel=1e-12)


def test_separation_per_layer_and_planted_extremes():
    rng = np.random.default_rng(1)
    far = {"a": rng.normal(size=(10, 8)) + 50, "b": rng.normal(size=(10, 8)) - 50}
    same = {"a": rng.normal(size=(200, 8)), "b": rng.normal(size=(200, 8))}
    out = separation({3: far, 4: same})
    assert set(out) == {3, 4}
    assert out[3]["silhouette"] > 0.9 and out[3]["variance_ratio"] > 100
    assert abs(out[4]["silhouette"]) < 0.1 and out[4]["variance_ratio"] < 0.05


def test_silhouette_undefined_for_one_language():
    assert silhouette({"en": np.ones((3, 4))}) is None


def test_pooled_items_exclude_bos_and_padding():
    lm = tiny_model("llama", layers=3)  # its tokenizer prepends BOS and pads on the left
    texts = {"en": ["ab", "a longer text here"]}
    items = pooled_items(lm, texts, [0, 1], batch_size=2)  # not the last layer: its hidden state is normed
    for i, text in enumerate(texts["en"]):
        enc = lm.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        for layer in (0, 1):
            expected = hs[layer + 1][0, 1:].mean(0).numpy()  # drop BOS; no padding in a batch of one
            np.testing.assert_allclose(items[layer]["en"][i], expected, rtol=1e-4, atol=1e-5)


def test_last_token_pooling_reads_the_last_real_token():
    lm = tiny_model("qwen2")
    items = pooled_items(lm, {"en": ["ab", "abcdef"]}, [0], pooling="last", batch_size=2)
    enc = lm.tokenizer(["ab"], return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(items[0]["en"][0], hs[1][0, -1].numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _diffmean(lm, layer: int, strength: float = 1.0) -> SteeringVector:
    items = pooled_items(lm, TEXTS, [layer])[layer]
    v = torch.tensor(np.stack([items["en"].mean(0) - items[lang].mean(0) for lang in ("de", "sw")]))
    return SteeringVector(sites=[Site(layer, "resid_post")], tensors={vector_key(layer): v},
                          params={"normalize": "none"}, languages=["de", "sw"], anchor="en", strength=strength)


def test_zero_strength_leaves_similarity_unchanged(llama):
    out = layer_similarity(llama, TEXTS, [0, 1], interventions=_diffmean(llama, 0, strength=0.0))
    assert out["steered_langs"] == ["de", "sw"]
    for lang in ("de", "sw"):
        for layer in (0, 1):
            assert out["delta"][lang][layer]["paired"] == pytest.approx(0.0, abs=1e-6)


def test_diffmean_vector_puts_language_means_on_the_anchor_mean(llama):
    """Mean pooling is linear: adding mean(en) - mean(de) at a layer makes the means identical there."""
    out = layer_similarity(llama, TEXTS, [0, 1], interventions=_diffmean(llama, 0))
    for lang in ("de", "sw"):
        assert out["after"]["similarity"][lang][0]["means"] == pytest.approx(1.0, abs=1e-5)
        assert out["before"]["similarity"][lang][0]["means"] < 0.999
    # the anchor is never steered, and the layer before the steered one would be untouched
    assert out["after"]["separation"][0]["silhouette"] is not None


def test_uncovered_language_is_left_out_of_delta(llama):
    iv = _diffmean(llama, 1)
    iv.languages = ["de", "xx"]  # pretend it was fitted for de only
    out = layer_similarity(llama, TEXTS, [1], interventions=iv)
    assert out["steered_langs"] == ["de"]
    assert "sw" not in out["delta"]


def test_unparallel_texts_are_refused(llama):
    with pytest.raises(DataError, match="not parallel"):
        layer_similarity(llama, {"en": ["a", "b"], "de": ["a"]}, [0])
    with pytest.raises(LanguageError, match="anchor"):
        layer_similarity(llama, {"de": ["a"], "sw": ["b"]}, [0])
