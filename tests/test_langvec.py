"""ReCoVeR language vectors: the fit and the application against a hand computation of the authors' code."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hooks import steer
from xlsteer.interventions import fit
from xlsteer.interventions.base import Intervention
from xlsteer.interventions.langvec import LanguageVectors, langvec_key
from xlsteer.interventions.registry import get_method
from xlsteer.testing import tiny_model

TEXTS = {
    "en": ["The cat sleeps on the warm mat.", "We walk to school every day.", "Rain falls on the old roof."],
    "de": ["Die Katze schläft auf der Matte.", "Wir gehen jeden Tag zur Schule.", "Regen fällt auf das alte Dach."],
    "ru": ["Кошка спит на тёплом коврике.", "Мы ходим в школу каждый день.", "Дождь падает на старую крышу."],
    "zh": ["猫在暖和的垫子上睡觉。", "我们每天走路去学校。", "雨落在旧屋顶上。"],
}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", vocab_size=400, layers=3)


def _layer_outputs(lm, text):
    """Per layer, the decoder layer's output on one unpadded text (BOS first)."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o)[0]))
             for layer in lm.model.model.layers]
    try:
        with torch.inference_mode():
            lm.model(torch.tensor([lm.tokenizer(text)["input_ids"]]))
    finally:
        for h in hooks:
            h.remove()
    return outs


def _hand_vectors(lm, langs):
    """collect.py: per text the mean over its tokens after BOS; the mean over texts; minus the mean over langs."""
    means = {}
    for lang in langs:
        per_text = [torch.stack([o[1:].double().mean(0) for o in _layer_outputs(lm, t)]) for t in TEXTS[lang]]
        means[lang] = torch.stack(per_text).mean(0)  # (layers, d)
    centre = torch.stack(list(means.values())).mean(0)
    return {lang: means[lang] - centre for lang in langs}


def _recover_hooks(lm, v, alpha, restore_norm=True):
    """steering.py's naive_steer (scaling "norm"): h + alpha * unit(v), norm restored, first token reset."""
    def hook(layer):
        def run(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            u = (v[layer] / v[layer].norm()).to(h.dtype)
            out = h + alpha * u
            if restore_norm:
                out = out / out.norm(dim=-1, keepdim=True) * h.norm(dim=-1, keepdim=True)
            out[:, :1] = h[:, :1]
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return run
    return [layer.register_forward_hook(hook(i)) for i, layer in enumerate(lm.model.model.layers)]


def test_vectors_are_language_means_minus_the_mean_over_languages(lm):
    iv = fit("langvec", lm, TEXTS, ["en", "de", "ru", "zh"], anchor="en", batch_size=2)
    hand = _hand_vectors(lm, ["en", "de", "ru", "zh"])
    assert iv.params["vector_langs"] == ["en", "de", "ru", "zh"] and iv.layers == [0, 1, 2]
    for layer in iv.layers:
        for i, lang in enumerate(iv.params["vector_langs"]):
            assert torch.allclose(iv.tensors[langvec_key(layer)][i].double(), hand[lang][layer], atol=1e-4)
    assert get_method("langvec").layer_policy.fit_layers(3) == [0, 1, 2]


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_steering_equals_the_authors_hooks(lm, beta):
    iv = fit("langvec", lm, TEXTS, ["en", "de", "zh"], anchor="en", beta=beta, batch_size=3).with_strength(3.0)
    assert sorted(iv.params["vector_langs"]) == sorted(TEXTS)  # the mean is over every corpus language
    hand = _hand_vectors(lm, list(TEXTS))
    prompts = ["Hello there, how are", "abc"]
    tok = lm.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True)
    with steer(lm.model, iv, langs=["zh", "de"], anchor="en") as _, torch.inference_mode():
        ours = lm.model(**enc).logits
    for row, (prompt, lang) in enumerate(zip(prompts, ["zh", "de"])):
        v = hand[lang] - beta * hand["en"]
        handles = _recover_hooks(lm, v, 3.0)
        try:
            with torch.inference_mode():
                theirs = lm.model(torch.tensor([tok(prompt)["input_ids"]])).logits[0]
        finally:
            for h in handles:
                h.remove()
        n = theirs.shape[0]
        assert torch.allclose(ours[row, -n:], theirs, atol=1e-4)


def test_anchor_rows_are_bit_identical_and_strength_zero_is_the_identity(lm):
    iv = fit("langvec", lm, TEXTS, ["en", "de"], anchor="en", batch_size=3)
    enc = lm.tokenizer(["Hello there", "Guten Tag, wie geht"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = lm.model(**enc).logits
        with steer(lm.model, iv.with_strength(5.0), langs=["en", "de"], anchor="en"):
            steered = lm.model(**enc).logits
        with steer(lm.model, iv.with_strength(0.0), langs=["de", "de"], anchor="en"):
            zero = lm.model(**enc).logits
    assert torch.equal(steered[0], plain[0])
    assert not torch.allclose(steered[1], plain[1])
    assert torch.equal(zero, plain)


def test_source_conventions_and_relative_scaling(lm):
    iv = fit("langvec", lm, TEXTS, ["en", "de", "zh"], anchor="en", batch_size=3, mean_langs=["en", "de", "zh"])
    assert iv.params["vector_langs"] == ["en", "de", "zh"]
    table = iv.tensors[langvec_key(1)].double()
    de, en = table[1], table[0]
    none = iv.with_params(source="none").directions(1)[0].double()
    assert torch.allclose(none, de / de.norm(), atol=1e-6)
    assert torch.allclose(iv.with_params(beta=0.0).directions(1)[0].double(), none, atol=1e-6)
    cross = iv.directions(1)[0].double()
    assert torch.allclose(cross, (de - en) / (de - en).norm(), atol=1e-6)
    named = iv.with_params(source="zh").directions(1)[0].double()
    assert torch.allclose(named, (de - table[2]) / (de - table[2]).norm(), atol=1e-6)
    # relative: the added vector is alpha * ||h|| * unit(v); with restore_norm the norm is unchanged
    rel = iv.with_params(scaling="relative", restore_norm=False).with_strength(0.5)
    enc = lm.tokenizer(["Guten Tag, wie geht"], return_tensors="pt")
    got = {}
    with torch.inference_mode():
        from xlsteer.hooks import record
        from xlsteer.models.sites import Site

        def keep(site, act, ctx):
            got[site.layer] = act.clone()

        with record(lm.model, [Site(0, "resid_post")], keep):
            lm.model(**enc)
        plain = got[0]
        with steer(lm.model, rel.at_layers([0]), langs="de", anchor="en", readers=[([Site(0, "resid_post")], keep)]):
            lm.model(**enc)
    u = rel.directions(0)[0]
    want = plain + 0.5 * plain.norm(dim=-1, keepdim=True) * u
    want[0, 0] = plain[0, 0]
    assert torch.allclose(got[0], want, atol=1e-4)


def test_save_load_keeps_everything_and_bad_settings_are_usage_errors(lm, tmp_path):
    iv = fit("langvec", lm, TEXTS, ["en", "de"], anchor="en", beta=0.5, batch_size=3)
    path = iv.save(tmp_path / "lv.safetensors")
    back = Intervention.load(path)
    assert isinstance(back, LanguageVectors) and back.params["beta"] == 0.5
    assert torch.equal(back.tensors[langvec_key(2)], iv.tensors[langvec_key(2)])
    assert back.meta["model_fingerprint"] == lm.fingerprint
    with pytest.raises(UsageError, match="no setting"):
        iv.with_params(gamma=1)
    with pytest.raises(UsageError, match="scaling"):
        fit("langvec", lm, TEXTS, ["en", "de"], anchor="en", scaling="odd", batch_size=3)


def test_compare_sweeps_beta_and_layer_ranges_on_dev(lm):
    from xlsteer.baselines.context import RunContext
    from xlsteer.baselines.steering import steer_and_evaluate

    ctx = RunContext(lm=lm, task="mgsm", langs=["en", "de"], split="test", limit=2, dev_limit=2, fit_limit=4,
                     n_boot=50, options={})
    run = steer_and_evaluate(ctx, "langvec", {"alphas": [2.0], "layer_ranges": ["all", "1-2"], "betas": [0, 1],
                                              "mean_langs": ["en", "de", "ru"]})
    sel = run.selection
    assert set(sel["dev_scores"]) == {"unsteered", "beta0-all@2", "beta1-all@2", "beta0-1-2@2", "beta1-1-2@2"}
    assert run.params["mean_langs"] == ["en", "de", "ru"] and "betas" not in run.params
    if sel["steer"]:
        assert sel["variant"]["label"] in {"beta0-all", "beta1-all", "beta0-1-2", "beta1-1-2"}
        assert sel["layers"] == ([0, 1, 2] if sel["variant"]["layers"] == "all" else [1, 2])
    with pytest.raises(UsageError, match="layer range"):
        from xlsteer.interventions.langvec import dev_variants

        dev_variants(3, {"layer_ranges": ["2-7"]})
