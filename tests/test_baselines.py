"""Baselines (ICL, prompt search, LoRA fine-tuning, translate-test) and ``xlsteer compare``.

Fast tests use tiny random models and two or three items; the ones on the shipped Gemma-3-270M
are marked slow.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from xlsteer.baselines import finetune as FT
from xlsteer.baselines import icl as ICL
from xlsteer.baselines import prompt_search as PS
from xlsteer.baselines import translate as TR
from xlsteer.baselines import translators as TRS
from xlsteer.baselines.compare import compare_markdown, compare_methods, load_options
from xlsteer.baselines.methods import parse_methods
from xlsteer.errors import UsageError
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.tasks import get_task
from xlsteer.testing import replaced_task
from xlsteer.evaluation.tasks import get_template
from xlsteer.testing import tiny_model

EVAL = dict(max_length=512, n_boot=50)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def _every_item_predicted(res, task, langs, split, limit):
    mod = get_task(task)
    want = {(lang, it.id) for lang in langs for it in mod.load_items(None, lang, split, limit)}
    got = {(r["lang"], r["id"]) for r in res["items"] if r["prediction"] is not None or task in ("mgsm", "xquad")}
    assert got == want


# ---- ICL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mgsm", "xcopa", "xnli", "xquad"])
def test_icl_exemplars_never_come_from_test(task):
    ids = ICL.select_exemplar_ids(task, 2, seed=0)
    test_ids = ICL.test_ids(task, "en", None)
    assert ids and not set(ids) & test_ids
    pool = ICL.exemplar_pool(task, "sw" if task in ("xcopa", "mgsm", "xnli") else "de")
    assert {it.split for it in pool} == {get_task(task).baselines.icl_split} != {"test"}


def test_exemplar_leak_check_refuses_a_test_item():
    test_item = get_task("xcopa").load_items(None, "sw", "test", 1)[0]
    with pytest.raises(ICL.LeakError):
        ICL.check_no_test([test_item], "xcopa", None, "exemplars")
    relabelled = get_task("xnli").load_items(None, "de", "test", 1)[0]
    import dataclasses

    disguised = dataclasses.replace(relabelled, split="train")  # right split name, test id
    with pytest.raises(ICL.LeakError):
        ICL.check_no_test([disguised], "xnli", None, "exemplars")


def test_icl_same_exemplar_items_in_both_variants_and_every_item_predicted(lm):
    en = ICL.icl_template("xcopa", "en", k=2, seed=3)
    native = ICL.icl_template("xcopa", "native", k=2, seed=3)
    assert en.options["baseline"]["exemplar_ids"] == native.options["baseline"]["exemplar_ids"]
    item = get_task("xcopa").load_items(None, "sw", "test", 1)[0]
    ctx_en, ctx_sw = en.render(item).context, native.render(item).context
    assert " because" in ctx_en or " therefore" in ctx_en  # English exemplars use English connectors
    assert ctx_sw.count("\n") == 2 and ctx_en.count("\n") == 2  # two demonstrations, then the item
    res = ICL.run_icl(lm, "xcopa", ["en", "sw"], "native", k=2, limit=2, **EVAL)
    _every_item_predicted(res, "xcopa", ["en", "sw"], "test", 2)
    assert res["template"]["options"]["baseline"]["method"] == "icl-native"


def test_icl_on_dev_never_uses_the_item_as_its_own_exemplar():
    tpl = ICL.icl_template("xcopa", "en", k=2, seed=0)
    chosen = [*tpl.options["baseline"]["exemplar_ids"], tpl.options["baseline"]["spare_id"]]
    items = {it.id: it for it in get_task("xcopa").load_items(None, "en", "dev")}
    own = items[chosen[0]]
    ctx = tpl.render(own).context
    assert ICL.demonstration(tpl, own) not in ctx
    assert ICL.demonstration(tpl, items[chosen[2]]) in ctx  # the spare replaced it


# ---- prompt search ----------------------------------------------------------------------------


def test_prompt_search_never_scores_test_items(lm, monkeypatch):
    mod = get_task("xcopa")
    original = mod.load_items
    calls: list[str] = []

    def spy(data_dir, lang, split, limit=None):
        calls.append(split)
        return original(data_dir, lang, split, limit)

    with replaced_task("xcopa", load_items=spy):
        rec = PS.search(lm, "xcopa", ["en", "sw"], PS.SearchConfig(dev_limit=2, rounds=1, per_round=1, n_parents=1,
                                                                   seeds=["Choose the best ending."], propose_tokens=6),
                        EvalConfig(max_length=512))
    assert calls and set(calls) == {"dev"}
    assert len(rec["candidates"]) >= 2  # the empty instruction and the seed at least
    assert all("dev_score" in c for c in rec["candidates"])
    assert rec["best"]["instruction"] in {c["instruction"] for c in rec["candidates"]}
    with pytest.raises(ICL.LeakError):
        PS.search(lm, "xcopa", ["en", "sw"], split="test", dev_limit=2, rounds=0)


def test_instruction_is_prefixed_and_recorded():
    tpl = PS.instruction_template("xnli", "Answer 0, 1 or 2.")
    item = get_task("xnli").load_items(None, "de", "test", 1)[0]
    prompt = tpl.render(item).prompt
    assert prompt.startswith("Answer 0, 1 or 2.\n\nPremise: ")
    assert tpl.options["baseline"]["instruction"] == "Answer 0, 1 or 2."
    plain = get_template("xnli")
    assert (tpl.name, tpl.version) == (plain.name, plain.version)  # runs stay comparable item by item
    assert prompt.endswith(plain.render(item).prompt)


# ---- LoRA fine-tuning ---------------------------------------------------------------------------


def test_lora_lowers_training_loss_and_adapter_round_trips(tmp_path):
    lm = tiny_model("gemma3")
    items = FT.train_items("xcopa", ["en", "sw"], max_items=6)
    examples = FT.build_examples(lm, "xcopa", items)
    assert all(0 < e.n_answer < len(e.ids) for e in examples)
    cfg = FT.TrainConfig(steps=12, batch_size=6, lr=5e-3, rank=4, seed=0)
    before = FT.mean_loss(lm.model, examples, lm.tokenizer)
    pm, rec = FT.train_lora(lm, examples, cfg)
    after = FT.mean_loss(pm, examples, lm.tokenizer)
    assert after < before - 0.05, (before, after)
    assert len(rec["loss"]) == 12 and rec["trainable_parameters"] > 0
    rec["adapter_sha256"] = FT.adapter_hash(pm)
    path = FT.save_adapter(pm, tmp_path / "adapter", rec)
    assert (path / "adapter_model.safetensors").is_file() and (path / FT.TRAINING_RECORD).is_file()
    x = torch.tensor([[1, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        want = pm(input_ids=x).logits
        pm2, rec2 = FT.load_adapter(lm, path)
        got = pm2(input_ids=x).logits
        merged = FT.merged_model(lm, pm2, "sft", rec2)
        got_merged = merged.model(input_ids=x).logits
        base = lm.model(input_ids=x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_merged, want, rtol=1e-5, atol=1e-5)
    assert (base - want).abs().max() > 1e-3  # the base model itself was left untouched
    assert merged.fingerprint["adapter"]["sha256"] == rec["adapter_sha256"]


def test_xlt_trains_on_english_only_and_predicts_every_item():
    lm = tiny_model("llama")
    ft = FT.finetune(lm, "xnli", "xlt", ["en", "de"], config=FT.TrainConfig(steps=2, batch_size=2, max_train_items=4))
    assert ft.record["train_langs"] == ["en"] and ft.record["train_split"] == "train"
    from xlsteer.evaluation.runner import run_task

    res = run_task(ft.lm, "xnli", ["en", "de"], split="test", limit=2, **EVAL)
    _every_item_predicted(res, "xnli", ["en", "de"], "test", 2)
    assert res["model"]["fingerprint_sha256"] != run_task(lm, "xnli", ["en"], limit=1, **EVAL)["model"]["fingerprint_sha256"]


# ---- translate-test -------------------------------------------------------------------------------


class _Echo:
    """A translator stub that counts calls."""

    name = "echo"

    def __init__(self):
        self.calls = 0

    def translator_id(self, lang):
        return "echo/1"

    def translate(self, texts, lang):
        self.calls += 1
        return [f"EN({t})" for t in texts]


def test_translation_cache_is_keyed_and_reused(tmp_path):
    path = tmp_path / "cache.json"
    tr = _Echo()
    out = TR.translate_texts(tr, ["a b", "c", "a b"], "de", TRS.TranslationCache(path))
    assert out == ["EN(a b)", "EN(c)", "EN(a b)"] and tr.calls == 1
    again = TR.translate_texts(tr, ["c", "a b"], "de", TRS.TranslationCache(path))
    assert again == ["EN(c)", "EN(a b)"] and tr.calls == 1  # read back from the file
    TR.translate_texts(tr, ["c"], "fr", TRS.TranslationCache(path))
    assert tr.calls == 2  # another language is another key
    data = json.loads(path.read_text())
    assert data["format"] == TRS.TranslationCache.FORMAT and len(data["entries"]) == 3
    assert all(k.startswith("echo/1\t") for k in data["entries"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_self_translation_prompt_stops_at_newline(lm):
    seen = []

    def fake_generate(prompts, max_new_tokens):
        seen.extend(prompts)
        return [" The cat sleeps.\nTranslate to English: more"] * len(prompts)

    tr = TRS.SelfTranslator(lm, generate=fake_generate)
    assert tr.translate(["Die  Katze\nschläft."], "de") == ["The cat sleeps."]
    assert seen == ["Translate to English: Die Katze schläft.\nEnglish:"]
    assert tr.translator_id("de").startswith("self/tiny-llama/")


def test_translate_test_keeps_ids_and_predicts_every_item(lm):
    res = TR.run_translate_test(lm, "xcopa", ["en", "sw", "qu"], "gmt", limit=2, cache=False, **EVAL)
    assert res["translation"]["skipped"] == {"qu": "xcopa's English reference has no qu"}
    _every_item_predicted(res, "xcopa", ["en", "sw"], "test", 2)
    ex = res["translation"]["examples"][0]
    assert ex["lang"] == "sw" and ex["premise"] != ex["premise_source"]
    with pytest.raises(UsageError):
        TR.translated_fields("xquad")


def _apertium_reason() -> str | None:
    if shutil.which("apertium") is None:
        return "apertium is not installed (Debian: apt-get install apertium apertium-eng-spa)"
    if "es" not in TRS.apertium_pairs():
        return "apertium has no spa-eng pair (Debian: apt-get install apertium-eng-spa)"
    return None


@pytest.mark.skipif(_apertium_reason() is not None, reason=str(_apertium_reason()))
def test_apertium_translates_spanish_to_english():
    tr = TRS.ApertiumTranslator()
    out = tr.translate(["El gato duerme en la casa.", "Hola,\n¿cómo estás?"], "es")
    assert len(out) == 2
    assert "cat" in out[0].lower() and "house" in out[0].lower()
    assert tr.translator_id("es").startswith("apertium/") and tr.translator_id("es").endswith("spa-eng")


# ---- the registry and compare ---------------------------------------------------------------------


def test_method_names_and_options_parse():
    assert parse_methods("zero-shot,icl-en,sft+steer,translate-apertium") == [
        "zero-shot", "icl-en", "sft+steer", "translate-test"]
    assert len(parse_methods("all")) == 16
    with pytest.raises(UsageError):
        parse_methods("zero-shot,magic")
    assert load_options(["sft.steps=3", "icl-en.k=2", "prompt-opt.seeds=[\"x y z\"]"]) == {
        "sft": {"steps": 3}, "icl-en": {"k": 2}, "prompt-opt": {"seeds": ["x y z"]}}


def test_compare_pairs_every_method_with_zero_shot_on_the_same_items(lm, tmp_path):
    rec = compare_methods(lm, "xcopa", ["en", "sw", "qu"], ["icl-en", "translate-gmt", "translate-test"], limit=2,
                          max_length=512, n_boot=50, translation_cache=False, out_dir=tmp_path)
    assert rec["format"] == "xlsteer.methods" and rec["methods"][0] == "zero-shot" and rec["reference_added"]
    zs = rec["rows"]["zero-shot"]
    for name in ("icl-en", "translate-gmt"):
        row = rec["rows"][name]
        if name == "icl-en":
            assert row["item_ids_sha256"] == zs["item_ids_sha256"]
        assert "p" in row["per_lang"]["sw"] and "verdict" in row["per_lang"]["sw"]
        assert set(row["cost"]) >= {"fit_seconds", "extra_tokens_per_item", "trainable_parameters"}
        assert (tmp_path / rec["runs"][name]).is_file()
    assert rec["rows"]["icl-en"]["cost"]["extra_tokens_per_item"] > 0
    assert rec["rows"]["translate-gmt"]["per_lang"]["qu"]["status"] == "n/a"
    assert rec["rows"]["translate-gmt"]["average"]["partial"] is True  # qu has no Google-MT file
    assert rec["rows"]["translate-test"]["error"]  # apertium has no XCOPA language (or is absent)
    md = compare_markdown(rec)
    lines = [[c.strip() for c in x.strip("|").split("|")] for x in md.splitlines() if x.startswith("| ")]
    assert lines[0][:5] == ["method", "en (n=2)", "sw (n=2)", "qu (n=2)", "avg non-en"]
    assert len(lines) == 1 + 4 and any(x[0] == "translate-gmt" for x in lines)


def test_compare_resumes_per_method_and_reruns_what_changed(lm, tmp_path, monkeypatch):
    """A finished runs/<method>.json with the same settings is reused (no fitting again);
    a changed option re-runs that method only; the table is identical."""
    import xlsteer.baselines.methods as M

    kw = dict(limit=2, max_length=512, n_boot=50, translation_cache=False, out_dir=tmp_path)
    first = compare_methods(lm, "xcopa", ["en", "sw"], ["icl-en", "icl-native"], **kw)
    ran: list[str] = []
    real = M.run_method
    monkeypatch.setattr(M, "run_method", lambda name, ctx, **p: ran.append(name) or real(name, ctx, **p))
    again = compare_methods(lm, "xcopa", ["en", "sw"], ["icl-en", "icl-native"], **kw)
    assert ran == []
    assert compare_markdown(again) == compare_markdown(first)
    assert any("reused" in n for n in again["rows"]["icl-en"]["notes"])
    changed = compare_methods(lm, "xcopa", ["en", "sw"], ["icl-en", "icl-native"], options={"icl-en": {"k": 1}}, **kw)
    assert ran == ["icl-en"] and changed["rows"]["icl-en"]["params"]["k"] == 1
    # a damaged run file is not reused (and is no error): that method simply runs again
    (tmp_path / "runs" / "icl-native.json").write_text("[1, 2]")
    (tmp_path / "runs" / "zero-shot.json").write_text("{not json")
    ran.clear()
    compare_methods(lm, "xcopa", ["en", "sw"], ["icl-en", "icl-native"], options={"icl-en": {"k": 1}}, **kw)
    assert ran == ["zero-shot", "icl-native"]


def test_eval_cli_runs_a_baseline_method(tmp_path):
    from xlsteer.cli import main

    tiny = tiny_model("llama")
    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    out = tmp_path / "r.json"
    code = main(["--quiet", "eval", "--model", str(folder), "--task", "xcopa", "--langs", "en,sw", "--limit", "2",
                 "--method", "icl-native", "--no-cache", "--max-length", "512", "-o", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["method"]["name"] == "icl-native" and res["baseline"]["intervention"] is None
    assert res["comparison"]["per_lang"]["sw"]["metrics"]["acc"]["n"] == 2


# ---- the shipped model (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_gemma_self_translation_is_mostly_english():
    from xlsteer.data.corpora import load_ntrex
    from xlsteer.data.langs import identify_language
    from xlsteer.models.loading import load_model

    gemma = load_model("gemma3-270m")
    langs = ["de", "es", "fr", "it"]
    corpus = load_ntrex(None, langs, split="validation", limit=5)
    tr = TRS.SelfTranslator(gemma, max_new_tokens=64)
    outs = []
    for lang in langs:
        outs += TR.translate_texts(tr, corpus.texts[lang], lang, TRS.TranslationCache(None))
    ids = identify_language(outs)
    rate = sum(x == "en" for x in ids) / len(ids)
    print(f"self-translation English rate: {rate:.2f} ({sum(x == 'en' for x in ids)}/{len(ids)}): {ids}")
    assert len(outs) == 20 and rate >= 0.5


@pytest.mark.slow
def test_gemma_compare_cli_end_to_end(tmp_path, capsys):
    from xlsteer.cli import main

    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    code = main([
        # CI-sized: every method end to end on few items and one-point grids; the full-size run
        # (en + 4 languages) is documented in the README with its wall time
        "--quiet", "compare", "--model", "gemma3-270m", "--task", "xcopa", "--langs", "en,sw",
        "--methods", "all", "--limit", "6", "--dev-limit", "4", "--fit-limit", "24", "--no-cache",
        "-O", "sft.steps=6", "-O", "xlt.steps=6", "-O", "learned.steps=6", "-O", "prompt-opt.rounds=1",
        "-O", "prompt-opt.per_round=1", "-O", "translate-self.max_new_tokens=32",
        "-O", "diffmean.layers=[9]", "-O", "diffmean.alphas=[1]", "-O", "learned.alphas=[1]",
        "-O", "clas.alphas=[0.5]", "-O", "incline.alphas=[0.5]", "-O", "intmu.alphas=[1]",
        "-O", "sft+steer.layers=[9]", "-O", "sft+steer.alphas=[1]", "-o", str(out),
    ])
    wall = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert code == 0
    rec = json.loads((out / "compare.json").read_text())
    assert rec["format"] == "xlsteer.methods" and len(rec["methods"]) == 16
    table = (out / "compare.md").read_text()
    assert table.strip() in printed
    ok = [m for m in rec["methods"] if not rec["rows"][m]["error"]]
    assert set(ok) >= {"zero-shot", "icl-en", "icl-native", "prompt-opt", "xlt", "sft", "sft+steer", "translate-self",
                       "translate-gmt", "diffmean", "learned", "incline", "clas", "intmu"}
    for m in ok:
        assert "score" in rec["rows"][m]["per_lang"]["sw"]
    with capsys.disabled():
        print(f"\ncompare wall time: {wall:.0f} s\n{table}")
