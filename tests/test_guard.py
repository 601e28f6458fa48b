"""The quality guard: fluency under the unsteered model and seq-rep-4 degeneration, beside every metric."""

from __future__ import annotations

import math

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.evaluation.api import evaluate
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.engine import Engine
from xlsteer.evaluation.guard import guard_scores, guarded, seq_rep_n
from xlsteer.evaluation.runner import run_task
from xlsteer.evaluation.tasks import get_task
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

CFG = EvalConfig(split="dev", limit=3, n_boot=50, template="mgsm-direct", guard=True,
                 template_options={"max_new_tokens": 8})


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def _vector(lm, strength=6.0):
    g = torch.Generator().manual_seed(1)
    d = lm.model.config.hidden_size
    return SteeringVector(sites=[Site(0, "resid_post")], tensors={vector_key(0): torch.randn(1, d, generator=g)},
                          params={"normalize": "none"}, languages=["de"], anchor="en", strength=strength)


def _unsteered_mean_loglik(lm, prompt: str, output: str) -> float:
    """Oracle: the whole sequence through the plain model, the output's tokens split as lm-eval does."""
    tok = lm.tokenizer
    ctx = tok(prompt)["input_ids"]
    whole = tok(prompt + output)["input_ids"]
    ids = torch.tensor([ctx + whole[len(ctx):]])
    with torch.inference_mode():
        lp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
    cont = ids[0, len(ctx):]
    return float(lp[torch.arange(len(ctx) - 1, ids.shape[1] - 1), cont].mean())


def test_seq_rep_4_by_hand():
    assert seq_rep_n([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 - 4 / 5)  # 5 4-grams, (1,2,3,4) twice
    assert seq_rep_n([7] * 10) == pytest.approx(1 - 1 / 7)
    assert seq_rep_n([1, 2, 3, 4, 5]) == 0.0
    assert seq_rep_n([1, 1, 1]) == 0.0  # no 4-gram


def test_fluency_is_the_unsteered_models_mean_loglik_even_for_steered_outputs(lm):
    steered = run_task(lm, "mgsm", ["de"], _vector(lm), CFG)
    plain = run_task(lm, "mgsm", ["de"], None, CFG)
    assert [r["generated"] for r in steered["items"]] != [r["generated"] for r in plain["items"]]
    tpl = get_task("mgsm").template("mgsm-direct").with_options(max_new_tokens=8)
    from xlsteer.evaluation.tasks.spec import items_by_lang

    items = items_by_lang(get_task("mgsm"), ["de"], "dev", 3, None)["de"]
    for run in (steered, plain):
        for it, rec in zip(items, run["items"]):
            prompt = tpl.render(it).prompt
            if rec["generated"].strip():
                assert rec["scores"]["fluency"] == pytest.approx(
                    _unsteered_mean_loglik(lm, prompt, rec["generated"]), abs=1e-4)
            tokens = lm.tokenizer(rec["generated"], add_special_tokens=False)["input_ids"]
            assert rec["scores"]["degeneration"] == pytest.approx(seq_rep_n(tokens))


def test_an_empty_output_scores_a_uniform_guess(lm):
    eng = Engine(lm)
    out = guard_scores(eng, ["Question: x\nAnswer:", "abc"], ["", " hello"], ["de", "de"], ["k1", "k2"], {})
    assert out[0] == {"fluency": -math.log(len(lm.tokenizer)), "degeneration": 0.0}
    assert out[1]["fluency"] > -50


def test_the_guard_sits_beside_the_metrics_with_paired_tests(lm):
    res = evaluate(lm, "mgsm", ["en", "de"], _vector(lm), CFG).to_json()
    assert res["metrics"]["continuous"] == ["fluency", "degeneration"] and "guard" in res["metrics"]
    for name in ("fluency", "degeneration"):
        assert set(res["per_lang"]["de"]["continuous"][name]) >= {"mean", "ci_low", "ci_high"}
        assert name in res["comparison"]["per_lang"]["de"]["continuous"]
        assert name in res["comparison"]["average"]["tests"]
    from xlsteer.evaluation.tables import results_tables
    from xlsteer.results.schema import validate

    text = results_tables(validate(res), style="text")
    assert "fluency" in text and "degeneration" in text


def test_guard_is_cached_like_every_result(lm, tmp_path):
    cfg = CFG.replace(cache_dir=tmp_path)
    first = run_task(lm, "mgsm", ["de"], None, cfg)
    eng = Engine(lm, cache_dir=tmp_path)
    again = run_task(lm, "mgsm", ["de"], None, cfg, engine=eng)
    assert eng.computed == 0 and again["items"] == first["items"]


def test_guard_switch_and_its_errors():
    assert not get_task("mgsm").quality_guard and "fluency" not in get_task("mgsm").continuous
    assert guarded(get_task("mgsm"), True).continuous == ("fluency", "degeneration")
    assert guarded(get_task("mgsm"), None) is get_task("mgsm")
    with pytest.raises(UsageError, match="not a generation task"):
        guarded(get_task("xcopa"), True)


def test_a_methods_table_shows_the_guard_next_to_the_pass_rate(lm):
    from xlsteer.baselines.compare import assemble_compare, compare_markdown
    from xlsteer.baselines.context import MethodRun, RunContext

    plain = run_task(lm, "mgsm", ["en", "de"], None, CFG)
    steered = run_task(lm, "mgsm", ["en", "de"], _vector(lm), CFG)
    ctx = RunContext(lm=lm, task="mgsm", langs=["en", "de"], split="dev", limit=3, n_boot=50, guard=True)
    rec = assemble_compare(ctx, ["zero-shot", "diffmean"], {"zero-shot": MethodRun("zero-shot", "reference", plain),
                                                            "diffmean": MethodRun("diffmean", "steering", steered)})
    g = rec["rows"]["diffmean"]["guard"]
    assert set(g) == {"fluency", "degeneration"} and "diff" in g["fluency"] and "p" in g["fluency"]
    assert "fluency" in rec["rows"]["diffmean"]["per_lang"]["de"]["guard"]
    table = compare_markdown(rec)
    assert "fluency avg (Δ)" in table and "degeneration avg (Δ)" in table and "Quality guard" in table
    row = next(line for line in table.splitlines() if line.startswith("| diffmean"))
    assert f"{g['fluency']['score']:.2f} ({g['fluency']['diff']:+.2f}" in row
