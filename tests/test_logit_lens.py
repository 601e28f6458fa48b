"""The logit lens decodes like the model does, and classifies tokens by the documented rule."""

from __future__ import annotations

import pytest
import torch

from xlsteer.analysis.logit_lens import TokenLanguage, apply_lens, language_shares, lens_logits
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.stats import positions_from_mask
from xlsteer.testing import tiny_model


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "gpt2"])
def test_lens_at_last_layer_equals_model_logits(arch):
    lm = tiny_model(arch)
    enc = lm.tokenizer(["hello world", "ab"], return_tensors="pt", padding=True)  # left padding
    with torch.no_grad():
        ref = lm.model(**enc, position_ids=positions_from_mask(enc["attention_mask"])).logits
    lens = lens_logits(lm, enc["input_ids"], enc["attention_mask"])
    last = lm.num_layers - 1
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(lens[last][real], ref[real], rtol=1e-5, atol=1e-5)
    assert set(lens) == set(range(lm.num_layers))


def test_lens_applies_the_models_final_softcapping():
    lm = tiny_model("gemma2")
    lm.model.config.final_logit_softcapping = 0.5  # small cap: visible in every logit
    ids = lm.tokenizer(["softcap"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = lm.model(ids).logits
    lens = lens_logits(lm, ids)[lm.num_layers - 1]
    torch.testing.assert_close(lens, ref, rtol=1e-5, atol=1e-5)
    assert lens.abs().max() <= 0.5


def test_token_language_script_rule():
    tl = TokenLanguage("ru", "en")
    assert tl.rule == "script"
    assert tl.classify(["привет", " hello", "123", "!", "hиб", "の"]) == ["input", "anchor", "other", "other", "other",
                                                                          "other"]


def test_token_language_langid_rule_is_conservative():
    tl = TokenLanguage("de", "en")
    assert tl.rule == "langid"
    labels = dict(zip(["Haus", "nicht", " house", "people", "ab", "привет", ""],
                      tl.classify(["Haus", "nicht", " house", "people", "ab", "привет", ""])))
    assert labels["Haus"] == labels["nicht"] == "input"
    assert labels[" house"] == labels["people"] == "anchor"
    assert labels["ab"] == "other"  # too short to identify
    assert labels["привет"] == "other"  # a third script
    assert labels[""] == "other"


@pytest.fixture(scope="module")
def cyrillic_llama():
    return tiny_model("llama", vocab_size=256)  # vocabulary reaches the Cyrillic letters


TEXTS = {"en": ["the sun is warm", "good day"], "ru": ["солнце тёплое", "добрый день"]}


def test_shares_sum_to_one_and_zero_strength_changes_nothing(cyrillic_llama):
    lm = cyrillic_llama
    iv = SteeringVector(sites=[Site(0, "resid_post")], tensors={vector_key(0): torch.randn(1, 64)},
                        params={"normalize": "none"}, languages=["ru"], anchor="en", strength=0.0)
    out = language_shares(lm, TEXTS, [0, 1], interventions=iv, k=5, positions="all")
    assert out["langs"] == ["ru"] and out["rule"]["ru"] == "script"
    for layer in (0, 1):
        assert sum(out["before"]["ru"][layer].values()) == pytest.approx(1.0)
        assert out["after"]["ru"][layer] == out["before"]["ru"][layer]


def test_steering_toward_an_anchor_token_raises_the_anchor_share(cyrillic_llama):
    """Planted: add a huge multiple of the unembedding row of 'a' at the last layer: top-1 becomes 'a'."""
    lm = cyrillic_llama
    head = lm.model.lm_head
    a_id = lm.tokenizer.convert_tokens_to_ids("a")
    v = 1e4 * head.weight[a_id].detach().clone().unsqueeze(0)
    last = lm.num_layers - 1
    iv = SteeringVector(sites=[Site(last, "resid_post")], tensors={vector_key(last): v},
                        params={"normalize": "none"}, languages=["ru"], anchor="en")
    out = language_shares(lm, TEXTS, [last], interventions=iv, k=1)
    assert out["after"]["ru"][last]["anchor"] == 1.0
    assert out["examples"]["after"]["ru"][last][0] == "a"
    assert out["before"]["ru"][last]["anchor"] < 1.0  # random weights do not predict 'a' for every text


def test_apply_lens_accepts_any_leading_shape():
    lm = tiny_model("llama")
    h = torch.randn(3, 64)
    with torch.no_grad():
        assert apply_lens(lm.model, h).shape == (3, lm.model.config.vocab_size)


def test_batched_decoding_equals_row_by_row():
    """Rows of all layers go through the head in chunks: same top-k as decoding each row alone."""
    from xlsteer.analysis.logit_lens import topk_from_hidden

    lm = tiny_model("gemma3")
    torch.manual_seed(0)
    hidden = {0: torch.randn(5, 64), 1: torch.randn(3, 64), 4: torch.zeros(0, 64)}
    got = topk_from_hidden(lm.model, hidden, k=4, chunk_rows=3)
    with torch.no_grad():
        for layer, rows in hidden.items():
            want = [apply_lens(lm.model, r[None]).topk(4, dim=-1).indices[0] for r in rows]
            assert got[layer].shape == (rows.shape[0], 4)
            for g, w in zip(got[layer], want):
                assert torch.equal(g, w)


def test_analysis_lens_from_the_pooled_pass_equals_its_own_forwards(cyrillic_llama, tmp_path):
    """analyze reads last-token states in the similarity forward; the shares must not change."""
    from xlsteer.analysis.run import analyze

    lm = cyrillic_llama
    torch.manual_seed(0)
    iv = SteeringVector(sites=[Site(0, "resid_post")], tensors={vector_key(0): 3 * torch.randn(1, 64)},
                        params={"normalize": "none"}, languages=["ru"], anchor="en")
    res = analyze(lm, tmp_path, TEXTS, [0, 1], {"v": iv}, anchor="en", k=5, projections=())
    want = language_shares(lm, TEXTS, [0, 1], interventions=iv, k=5)
    got = res["logit_lens"]["v"]
    for key in ("before", "after", "examples", "langs", "rule", "layers"):
        assert got[key] == want[key], key
    assert got["after"]["ru"] != got["before"]["ru"] or got["examples"]["after"] != got["examples"]["before"]
