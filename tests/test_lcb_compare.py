"""``xlsteer compare`` on LCB: every language-fidelity method and baseline on the same items, steering
toward each row's wanted language, the guard beside every pass rate, dev selection with "no
steering" a candidate, prompt baselines the task declares, and task preservation. A tiny random
model here; the shipped model end to end in the slow test at the bottom."""

from __future__ import annotations

import json

import pytest

from xlsteer.baselines.compare import compare_markdown, compare_methods
from xlsteer.baselines.context import RunContext
from xlsteer.baselines.steering import toward_goal
from xlsteer.baselines.task_prompts import declared, prompt_options
from xlsteer.data.paths import data_dir
from xlsteer.errors import UsageError
from xlsteer.evaluation.tasks.spec import get_task, get_template
from xlsteer.interventions.registry import get_method
from xlsteer.testing import tiny_model

METHODS = ["zero-shot", "instruct", "few-shot", "script-gate", "diffmean", "langvec", "lape", "incline"]
OPTIONS = {"langvec": {"alphas": [0.05], "betas": [1], "layer_ranges": ["all"], "mean_langs": ["en", "de", "ja"]},
           "diffmean": {"layers": [1], "alphas": [4]}, "lape": {"alphas": [1]}}


@pytest.fixture(scope="module")
def root():
    root = data_dir()
    if not (root / "lcb" / "test_sets.zip").is_file():
        pytest.skip("LCB data not present (xlsteer data fetch --only lcb --accept-nc)")
    return root


@pytest.fixture(scope="module")
def compared(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lcb-compare")
    lm = tiny_model("llama")
    rec = compare_methods(lm, "lcb-cross-okapi", ["de", "ja"], METHODS, out_dir=out, options=OPTIONS, limit=1,
                          dev_limit=1, fit_limit=4, n_boot=50, data_dir=str(root), cache_dir=None, batch_size=4,
                          preserve="xquad:1")
    return rec, out


def test_every_method_runs_on_the_same_items_with_the_guard(compared):
    rec, out = compared
    rows = rec["rows"]
    ok = [m for m in METHODS if m != "incline"]
    for m in ok:
        assert rows[m]["error"] is None, (m, rows[m]["error"])
        assert rows[m]["item_ids_sha256"] == rows["zero-shot"]["item_ids_sha256"]
        assert set(rows[m]["guard"]) == {"fluency", "degeneration"}, m
    table = compare_markdown(rec)
    head = next(line for line in table.splitlines() if line.startswith("| method"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    # the guard sits right after the pass rates, then preservation
    assert cols[1:6] == ["de (n=1)", "ja (n=1)", "avg non-en", "fluency avg (Δ)", "degeneration avg (Δ)"]
    assert cols[6] == "xquad f1 avg (Δ)"
    assert json.loads((out / "runs" / "zero-shot.json").read_text())["task"] == "lcb-cross-okapi"


def test_a_method_that_only_moves_rows_toward_the_anchor_is_refused_with_the_reason(compared):
    rec, _ = compared
    assert "wanted" in rec["rows"]["incline"]["error"] and "incline" in rec["rows"]["incline"]["error"]


def test_steering_rows_go_toward_the_wanted_language_chosen_on_dev(compared):
    rec, _ = compared
    rows = rec["rows"]
    assert rows["diffmean"]["params"]["direction"] == "to_target"
    assert rows["lape"]["params"]["mode"] == "amplify"
    for m in ("diffmean", "langvec", "lape"):
        sel = rows[m]["selection"]
        assert sel["split"] == "dev" and isinstance(sel["steer"], bool)
        assert "unsteered" in sel["dev_scores"] and len(sel["dev_scores"]) == 2  # no steering is a candidate


def test_prompt_baselines_add_their_tokens_and_change_nothing_else(compared):
    rec, _ = compared
    rows = rec["rows"]
    added = {m: rows[m]["cost"]["extra_tokens_per_item"] for m in ("instruct", "few-shot")}
    assert 0 < added["instruct"] < added["few-shot"]
    assert rows["instruct"]["params"]["template_options"]["explicit"] is True
    assert rows["few-shot"]["params"]["template_options"]["k"] == 5


def test_preservation_is_measured_for_interventions_and_not_for_prompts(compared):
    rec, _ = compared
    rows = rec["rows"]
    assert rows["zero-shot"]["preservation"]["status"] == "reference"
    for m in ("instruct", "few-shot", "script-gate"):
        assert rows[m]["preservation"]["status"] == "n/a"
    for m in ("diffmean", "langvec", "lape"):
        p = rows[m]["preservation"]
        assert p["status"] == "ok" and p["task"] == "xquad" and p["langs"] == ["de"]  # ja is not an XQuAD language
        assert p["limit"] == 1 and "average" in p


def test_toward_goal_and_declared_prompts_are_task_owned():
    lm = tiny_model("llama")
    lcb = RunContext.create(lm, "lcb-cross", ["de"], options={"diffmean": {"direction": "to_anchor"}})
    xcopa = RunContext.create(lm, "xcopa", ["sw"])
    assert toward_goal(xcopa, get_method("diffmean"), {"alphas": [1]}) == {"alphas": [1]}
    # the user's -O wins over the task's goal
    assert toward_goal(lcb, get_method("diffmean"), {})["direction"] == "to_anchor"
    assert toward_goal(RunContext.create(lm, "lcb", ["de"]), get_method("lape"), {})["mode"] == "amplify"
    with pytest.raises(UsageError, match="wanted"):
        toward_goal(lcb, get_method("incline"), {})
    with pytest.raises(UsageError, match="declares no such prompt"):
        declared("xcopa", "instruct")
    assert prompt_options(lcb, "few-shot", {"k": 2, "explicit": True}) == {"k": 2}  # only the keys it changes
    item = get_task("lcb-cross").load_items(data_dir(), "de", "dev", 1)[0] if (
        data_dir() / "lcb" / "test_sets.zip").is_file() else None
    if item is not None:
        text = get_template("lcb-cross", "lcb-qa", **declared("lcb-cross", "instruct").options).render(item, [])
        assert "Answer in German." in str(text)


@pytest.mark.slow
def test_gemma_compare_on_lcb_end_to_end(root, tmp_path, capsys):
    """The CLI on the shipped model: every language-fidelity method and baseline, tiny sizes."""
    from xlsteer.cli import main

    out = tmp_path / "cmp"
    code = main(["--quiet", "compare", "--model", "gemma3-270m", "--task", "lcb-cross-okapi", "--langs", "ja",
                 "--methods", "zero-shot,instruct,few-shot,script-gate,langvec,diffmean,lape", "--limit", "1",
                 "--dev-limit", "1", "--fit-limit", "8", "-O", "langvec.alphas=[0.01]", "-O", "langvec.betas=[1]",
                 "-O", 'langvec.layer_ranges=["all"]', "-O", "langvec.mean_langs=en,ja,de", "-O", "diffmean.layers=[4]",
                 "-O", "diffmean.alphas=[1]", "-O", "lape.alphas=[1]", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    rec = json.loads((out / "compare.json").read_text())
    assert all(rec["rows"][m]["error"] is None for m in rec["methods"]), {m: rec["rows"][m]["error"] for m in rec["methods"]}
    assert "fluency avg (Δ)" in printed and "line_pass" in printed
