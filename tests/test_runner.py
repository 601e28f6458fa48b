"""run_task(): the results structure; compare_runs(): paired tests; the eval CLI."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import UsageError
from xlsteer.evaluation import metrics as M
from xlsteer.evaluation.pairing import compare_runs
from xlsteer.evaluation.runner import run_task, write_results
from xlsteer.evaluation.summary import macro_f1_codes
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

TOP_LEVEL = {
    "task_spec", "format", "version", "task", "split", "langs", "anchor", "template", "model", "data", "item_ids",
    "limit", "seed", "n_boot", "calibrate", "intervention", "alpha", "decoding", "metrics", "engine", "per_lang", "average",
    "items", "versions",
}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def xcopa(lm):
    return run_task(lm, "xcopa", ["en", "sw", "zh"], split="dev", limit=6, n_boot=200)


def _vector(lm, langs=("sw", "zh"), layer=1, strength=4.0):
    g = torch.Generator().manual_seed(3)
    return SteeringVector(sites=[Site(layer, "resid_post")],
                          tensors={vector_key(layer): torch.randn(len(langs), lm.hidden_size, generator=g)},
                          params={"normalize": "none"}, languages=list(langs), anchor="en", strength=strength)


def test_results_structure(xcopa):
    r = xcopa
    assert set(r) == TOP_LEVEL
    assert r["task"] == "xcopa" and r["split"] == "dev" and r["langs"] == ["en", "sw", "zh"]
    assert r["template"]["name"] == "xcopa" and r["template"]["version"]
    assert r["model"]["fingerprint"]["num_layers"] == 2 and len(r["model"]["fingerprint_sha256"]) == 64
    assert len(r["data"]["data_hash"]) == 64 and "xcopa/data/sw/val.sw.jsonl" in r["data"]["files"]
    assert r["item_ids"]["n"] == 18 and len(r["item_ids"]["sha256"]) == 64
    assert r["intervention"] is None and "torch" in r["versions"]
    for lang in r["langs"]:
        d = r["per_lang"][lang]
        assert d["n"] == 6
        for m in ("acc", "acc_norm"):
            s = d["metrics"][m]
            assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        assert set(d["continuous"]) == {"margin", "p_correct"}
        assert isinstance(d["degenerate"]["degenerate"], bool)
    assert len(r["items"]) == 18
    rec = r["items"][0]
    for key in ("id", "lang", "gold", "prediction", "correct", "logprobs", "margin", "p_correct", "scores"):
        assert key in rec
    assert len(rec["logprobs"]) == 2
    assert rec["margin"] == pytest.approx(rec["logprobs"][rec["gold"]] - rec["logprobs"][1 - rec["gold"]])
    accs = [r["per_lang"][lang]["metrics"]["acc"]["mean"] for lang in ("sw", "zh")]
    assert r["average"]["langs"] == ["sw", "zh"]
    assert r["average"]["metrics"]["acc"] == pytest.approx(np.mean(accs))


def test_consistency_with_the_anchor_on_the_same_items(xcopa):
    r = xcopa
    assert r["per_lang"]["en"]["consistency"] is None
    for lang in ("sw", "zh"):
        c = r["per_lang"][lang]["consistency"]
        mine = {x["id"]: x for x in r["items"] if x["lang"] == lang}
        en = {x["id"]: x for x in r["items"] if x["lang"] == "en"}
        assert c["n"] == 6
        assert c["agreement"] == pytest.approx(np.mean([mine[i]["prediction"] == en[i]["prediction"] for i in en]))
        assert 0.0 <= c["mean_js"] <= 1.0
    assert "consistency" in r["average"] and "mean_js" in r["average"]["consistency"]


def test_no_consistency_without_the_anchor(lm):
    r = run_task(lm, "xcopa", ["sw", "zh"], split="dev", limit=3, n_boot=100)
    assert all(r["per_lang"][lang]["consistency"] is None for lang in ("sw", "zh"))
    assert r["average"]["langs"] == ["sw", "zh"]


def test_paired_comparison_of_identical_runs_gives_p_one(xcopa):
    c = compare_runs(xcopa, xcopa)
    for lang in xcopa["langs"]:
        d = c["per_lang"][lang]
        for name in ("acc", "acc_norm"):
            assert d["metrics"][name]["p"] == 1.0 and d["metrics"][name]["diff"] == 0.0
            assert d["metrics"][name]["p_mcnemar"] == 1.0
        assert d["continuous"]["margin"]["p"] == 1.0
        assert d["prediction_changed"] == 0.0
        assert "no significant effect" in d["metrics"]["acc"]["verdict"]
    for name in ("acc", "acc_norm", "margin", "p_correct"):  # the average over non-anchor languages too
        t = c["average"]["tests"][name]
        assert t["p"] == 1.0 and t["diff"] == 0.0 and t["n"] == 12 and t["n_groups"] == 2


def test_the_average_has_a_stratified_ci(xcopa):
    avg = xcopa["average"]
    assert avg["langs"] == ["sw", "zh"]
    for name in ("acc", "acc_norm", "margin", "p_correct"):
        value = avg["metrics"].get(name, avg["continuous"].get(name))
        assert avg["ci"][name]["ci_low"] <= value <= avg["ci"][name]["ci_high"]


def test_steered_run_records_the_intervention_and_compares_item_by_item(lm, xcopa):
    iv = _vector(lm)
    steered = run_task(lm, "xcopa", ["en", "sw", "zh"], split="dev", limit=6, n_boot=200, interventions=iv, alpha=2.0)
    info = steered["intervention"]
    assert info["method"] == "vector" and info["layers"] == [1] and info["strength"] == 2.0
    assert len(info["hash"]) == 64 and steered["alpha"] == 2.0
    # the anchor is never steered: its items are identical
    en_a = [x["logprobs"] for x in xcopa["items"] if x["lang"] == "en"]
    en_b = [x["logprobs"] for x in steered["items"] if x["lang"] == "en"]
    assert en_a == en_b
    sw_a = [x["logprobs"] for x in xcopa["items"] if x["lang"] == "sw"]
    sw_b = [x["logprobs"] for x in steered["items"] if x["lang"] == "sw"]
    assert sw_a != sw_b
    c = compare_runs(xcopa, steered)
    d = c["per_lang"]["sw"]
    assert d["n"] == 6 and 0.0 <= d["metrics"]["acc"]["p"] <= 1.0
    assert {"diff", "diff_ci_low", "diff_ci_high", "mde", "verdict", "b01", "b10"} <= set(d["metrics"]["acc"])
    assert d["continuous"]["margin"]["diff"] == pytest.approx(
        np.mean([b["margin"] - a["margin"] for a, b in zip(
            [x for x in xcopa["items"] if x["lang"] == "sw"], [x for x in steered["items"] if x["lang"] == "sw"])]))
    assert set(d["consistency"]) == {"base", "other"}
    assert c["average"]["langs"] == ["sw", "zh"]


def test_small_samples_get_exact_p_values_not_the_bootstraps(lm):
    """Two items per language that all gained: the bootstrap's p reads 0 (no resample reaches no
    difference), the exact permutation test 2/2^4 on the average and 2/2^2 per language."""
    import copy

    base = run_task(lm, "xcopa", ["en", "sw", "zh"], split="dev", limit=2, n_boot=200)
    other = copy.deepcopy(base)
    for item in other["items"]:
        if item["lang"] != "en":
            item["scores"]["margin"] += 1.0 + 0.1 * len(item["id"])
    c = compare_runs(base, other, n_boot=200)
    avg = c["average"]["tests"]["margin"]
    assert avg["test"] == "stratified_paired_permutation" and avg["p"] == pytest.approx(2 / 2 ** 4)
    assert avg["p_bootstrap"] == 0.0 and avg["diff_ci_low"] > 0
    assert "no significant effect" in avg["verdict"]
    for lang in ("sw", "zh"):
        t = c["per_lang"][lang]["continuous"]["margin"]
        assert t["test"] == "paired_permutation" and t["p"] == pytest.approx(0.5) and t["p_bootstrap"] == 0.0


def test_compare_refuses_different_items(lm, xcopa):
    other = run_task(lm, "xcopa", ["en", "sw", "zh"], split="dev", limit=5, n_boot=100)
    with pytest.raises(Exception, match="different items"):
        compare_runs(xcopa, other)


def test_xnli_macro_f1_and_calibration(lm):
    r = run_task(lm, "xnli", ["en", "de"], split="dev", limit=8, n_boot=200, calibrate=True)
    for lang in ("en", "de"):
        items = [x for x in r["items"] if x["lang"] == lang]
        assert r["per_lang"][lang]["metrics"]["macro_f1"]["mean"] == pytest.approx(
            M.macro_f1([x["prediction"] for x in items], [x["gold"] for x in items], labels=[0, 1, 2]))
        for x in items:
            assert x["logprobs_calibrated"] == pytest.approx(
                [a - b for a, b in zip(x["logprobs"], x["content_free_logprobs"])])
            assert x["prediction"] == int(np.argmax(x["logprobs_calibrated"]))
    assert r["calibrate"] is True
    assert compare_runs(r, r)["per_lang"]["de"]["metrics"]["macro_f1"]["p"] == 1.0


def test_vectorised_macro_f1_equals_metrics_macro_f1():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, gold = rng.integers(0, 3, 15), rng.integers(0, 3, 15)
        got = macro_f1_codes((pred * 3 + gold)[None, :], 3)[0]
        assert got == pytest.approx(M.macro_f1(list(pred), list(gold), labels=[0, 1, 2]))


def test_generation_tasks_record_text_and_scores(lm):
    r = run_task(lm, "mgsm", ["en", "de"], split="dev", limit=2, n_boot=100, template="mgsm-direct",
                 template_options={"max_new_tokens": 3, "k": 1})
    x = r["items"][0]
    assert {"generated", "prediction", "gold", "scores"} <= set(x) and set(x["scores"]) == {"em"}
    assert r["template"]["exemplars"] == {"k": 1, "lang": {"en": "en", "de": "de"}}
    assert "mgsm/mgsm_exemplars.json" in r["data"]["files"]
    q = run_task(lm, "xquad", ["en"], split="dev", limit=2, n_boot=100, max_length=200,
                 template_options={"max_new_tokens": 3})
    assert set(q["per_lang"]["en"]["metrics"]) == {"f1", "em"} and q["engine"]["truncated"] == 2


def test_usage_errors(lm):
    with pytest.raises(UsageError, match="calibrate"):
        run_task(lm, "xcopa", ["sw"], split="dev", limit=2, calibrate=True)
    with pytest.raises(UsageError, match="without an intervention"):
        run_task(lm, "xcopa", ["sw"], split="dev", limit=2, alpha=1.0)
    with pytest.raises(UsageError, match="limit"):
        run_task(lm, "xcopa", ["sw"], split="dev", limit=0)


def test_results_file_is_deterministic(xcopa, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_results(a, xcopa)
    write_results(b, json.loads(a.read_text(encoding="utf-8")))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_cli_limit_zero_or_negative_is_a_usage_error(limit, capsys, tmp_path):
    code = main(["eval", "--task", "xcopa", "--langs", "sw", "--limit", limit, "-o", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'--limit'" in err and "is not in the range 1<=x" in err


def test_cli_eval_steered_prints_table_and_writes_json(lm, tmp_path, capsys):
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    iv_path = _vector(lm, strength=1.0).save(tmp_path / "v.safetensors")
    out = tmp_path / "r.json"
    code = main(["-q", "eval", "--model", str(folder), "--task", "xcopa", "--langs", "en,sw", "--split", "dev",
                 "--limit", "4", "--intervention", str(iv_path), "--alpha", "3", "--cache-dir", str(tmp_path / "c"),
                 "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "unsteered" in text and "diff [95% CI]" in text and re.search(r"^sw\s+4\s", text, re.M)
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["intervention"]["strength"] == 3.0 and len(r["items"]) == 8
    assert r["baseline"]["intervention"] is None and "per_lang" in r["comparison"]


# ----------------------------------------------------------------------------------------------
# end to end on the shipped model


@pytest.mark.slow
def test_gemma_xcopa_cli_unsteered_and_diffmean(tmp_path, capsys):
    from xlsteer.stats import collect_statistics
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.models.loading import load_model

    t0 = time.perf_counter()
    lm = load_model("gemma3-270m")
    layer = 6
    stats = collect_statistics(lm, langs=["en", "sw", "zh"], sites=[Site(layer, "resid_post")], corpus="ntrex",
                               split="fit", limit=100)
    iv_path = fit_diffmean(stats, [layer], ["sw", "zh"], anchor="en").save(tmp_path / "diffmean.safetensors")
    t_fit = time.perf_counter() - t0
    del lm

    out = tmp_path / "results.json"
    t1 = time.perf_counter()
    code = main(["eval", "--model", "gemma3-270m", "--task", "xcopa", "--langs", "en,sw,zh", "--limit", "40",
                 "--intervention", str(iv_path), "--alpha", "1", "--cache-dir", str(tmp_path / "cache"),
                 "-o", str(out)])
    t_eval = time.perf_counter() - t1
    text = capsys.readouterr().out
    assert code == 0, text
    assert "unsteered" in text and f"diffmean L{layer} α1" in text  # the steered run is named with its setting
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["split"] == "test" and r["item_ids"]["per_lang"] == {"en": 40, "sw": 40, "zh": 40}
    assert len(r["items"]) == 120 and len(r["baseline"]["items"]) == 120
    assert all(len(x["logprobs"]) == 2 for x in r["items"])
    assert r["intervention"]["layers"] == [layer]
    en_base = [x["logprobs"] for x in r["baseline"]["items"] if x["lang"] == "en"]
    assert [x["logprobs"] for x in r["items"] if x["lang"] == "en"] == en_base  # the anchor is not steered
    assert r["comparison"]["per_lang"]["sw"]["n"] == 40
    print(f"\n{text}\nfit {t_fit:.1f} s, eval (unsteered + steered) {t_eval:.1f} s", flush=True)


def test_langs_all_is_the_tasks_languages_anchor_first():
    from xlsteer.cli.options import parse_langs, task_langs
    from xlsteer.evaluation.tasks import get_task

    for task in ("mgsm", "xcopa", "xnli", "xquad"):
        langs = parse_langs("all", all_langs=task_langs(task))
        assert langs[0] == "en" and sorted(langs) == sorted(get_task(task).langs)
    assert parse_langs("sw,all", all_langs=task_langs("xcopa"))[:2] == ["sw", "en"]  # no duplicates
    assert task_langs("xnli", anchor="de")[0] == "de"
    with pytest.raises(UsageError, match="needs a task"):
        parse_langs("all")


def test_per_language_tests_carry_holm_adjusted_p(lm, xcopa):
    from xlsteer.evaluation.significance import holm

    steered = run_task(lm, "xcopa", ["en", "sw", "zh"], split="dev", limit=6, n_boot=200, interventions=_vector(lm),
                       alpha=2.0)
    c = compare_runs(xcopa, steered)
    for name in ("acc", "margin"):
        group = "metrics" if name == "acc" else "continuous"
        raw = [c["per_lang"][lang][group][name]["p"] for lang in ("sw", "zh")]
        assert [c["per_lang"][lang][group][name]["p_holm"] for lang in ("sw", "zh")] == holm(raw)
        assert "p_holm" not in c["per_lang"]["en"][group][name]  # the anchor is not in the family
