"""End to end on the shipped Gemma-3-270M: every method fits on 200 NTREX sentences in 3 languages
(+ English) and changes a greedy generation. Prints fit times and CLAS category percentages."""

from __future__ import annotations

import time

import pytest
import torch

from xlsteer.hooks import steer
from xlsteer.interventions import fit
from xlsteer.models.sites import Site, num_layers
from xlsteer.stats import collect

LANGS = ["de", "zh", "sw"]
N_SENTENCES = 200
MAX_LENGTH = 64
PROMPT = {"de": "Die Hauptstadt von Frankreich ist", "zh": "法国的首都是", "sw": "Mji mkuu wa Ufaransa ni"}


def _corpus():
    try:
        from xlsteer.data.corpora import load_ntrex

        return load_ntrex(langs=["en", *LANGS], split="fit", limit=N_SENTENCES)
    except ImportError:  # the loader is optional for this test: read the files in place
        from pathlib import Path

        root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntrex128"
        files = {"en": "eng", "de": "deu", "zh": "zho-CN", "sw": "swa"}
        return {
            lang: [line.rstrip("\r") for line in (root / f"newstest2019-{'src' if lang == 'en' else 'ref'}.{code}.txt")
                   .read_text(encoding="utf-8").split("\n")[:N_SENTENCES]]
            for lang, code in files.items()
        }


def _greedy(lm, lang, iv=None, positions="all", n=12):
    tok, model = lm.tokenizer, lm.model
    enc = tok([PROMPT[lang]], return_tensors="pt")
    kw = dict(max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        if iv is None:
            out = model.generate(**enc, **kw)
        else:
            with steer(model, iv, langs=lang, positions=positions):
                out = model.generate(**enc, **kw)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_every_method_fits_on_gemma_and_changes_generation():
    from xlsteer.models.loading import load_model

    lm = load_model("gemma3-270m")
    corpus = _corpus()
    texts = getattr(corpus, "texts", corpus)
    n_layers = num_layers(lm.model)
    sites = [Site(layer, name) for layer in range(n_layers) for name in ("resid_post", "mlp_out", "mlp_act", "mlp_gate")]
    t0 = time.perf_counter()
    stats = collect(lm, texts, sites, keep_items=True, max_length=MAX_LENGTH, batch_size=8,
                    meta={"model_fingerprint": lm.fingerprint})
    collect_s = time.perf_counter() - t0

    mid = n_layers // 2
    specs = {
        "diffmean": dict(layers=[mid], strength=1.0),
        "clas": dict(strength=4.0),
        "incline": dict(layers=list(range(n_layers)), ridge=0.01, strength=1.0),
        "lape": dict(strength=1.0),
        "intmu": dict(strength=1.0),
    }
    fitted, seconds = {}, {}
    for method, spec in specs.items():
        spec = dict(spec)
        strength = spec.pop("strength")
        t = time.perf_counter()
        iv = fit(method, lm, corpus, ["en", *LANGS], stats=stats, max_length=MAX_LENGTH, **spec)
        seconds[method] = time.perf_counter() - t
        fitted[method] = iv.with_strength(strength)
    t = time.perf_counter()
    learned = fit("learned", lm, corpus, LANGS, layers=[mid], init=fitted["diffmean"], target_layer=mid + 2,
                  steps=10, eval_every=5, patience=2, dev_fraction=0.1, max_length=MAX_LENGTH)
    seconds["learned"] = time.perf_counter() - t
    fitted["learned"] = learned

    print(f"\nGemma-3-270M, {N_SENTENCES} NTREX sentences x {len(LANGS) + 1} languages, max_length {MAX_LENGTH}")
    print(f"shared statistics collection ({len(sites)} sites, keep_items): {collect_s:.1f} s")
    for method, s in seconds.items():
        print(f"fit {method:9s} {s:8.2f} s" + ("  (trains on the corpus; no statistics)" if method == "learned" else "  (from the statistics)"))
    clas = fitted["clas"]
    print("CLAS category % per layer (dead / specific / partial / all-shared), T_act rule:", clas.params["threshold_rule"])
    for layer, pct in sorted(clas.params["category_percent"].items(), key=lambda kv: int(kv[0])):
        print(f"  layer {int(layer):2d}: {pct['dead']:5.1f} {pct['specific']:5.1f} {pct['partial']:5.1f} {pct['all']:5.1f}")
    print("CLAS bridge layers:", clas.params["bridge_layers"], "|", clas.params["bridge_rule"])
    h = learned.params["history"]
    print("learned align dev loss (initial -> best):", {k: (round(v["initial_dev"], 3), round(v["best_dev"], 3)) for k, v in h.items()})
    print("LAPE neurons per language:", fitted["lape"].params["selection"]["per_lang"])

    for pct in clas.params["category_percent"].values():
        assert sum(pct.values()) == pytest.approx(100.0)
    assert all(layer < n_layers - 2 for layer in clas.params["bridge_layers"])
    for lang in LANGS:
        assert h[lang]["best_dev"] <= h[lang]["initial_dev"]

    changed = {}
    for lang in ("de",):
        base = _greedy(lm, lang)
        print(f"[{lang}] unsteered: {base!r}")
        for method, iv in fitted.items():
            positions = iv.params.get("positions", "all")
            out = _greedy(lm, lang, iv, positions=positions)
            changed[method] = out != base
            print(f"[{lang}] {method:9s}: {out!r}")
    assert changed["diffmean"] and changed["learned"]
    assert sum(changed.values()) >= 4, changed
