"""Selection on evidence: a steered setting replaces "no steering" only when its dev gain is
distinguishable from noise (xlsteer.evaluation.evidence), in every place that selects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xlsteer.errors import UsageError
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.evidence import SelectionRule, decide, evidence_text, gain_evidence
from xlsteer.evaluation.summary import metrics_from_record
from xlsteer.evaluation.sweep import NO_STEERING, UNSTEERED, _best, _selection

METRICS = {"names": ["acc"], "kinds": {"acc": "binary"}, "main": "acc", "continuous": ["margin"], "tie_break": "margin"}
ACC = metrics_from_record(METRICS)[0]


def _records(lang: str, correct: list[int], margin: float = 0.0) -> list[dict]:
    return [{"id": f"t/{i}", "lang": lang, "correct": bool(c), "scores": {"acc": float(c), "margin": margin}}
            for i, c in enumerate(correct)]


def _per_lang(items: dict[str, list[dict]]) -> dict:
    return {lang: {"metrics": {"acc": {"mean": float(np.mean([r["scores"]["acc"] for r in recs]))}},
                   "continuous": {"margin": {"mean": float(np.mean([r["scores"]["margin"] for r in recs]))}}}
            for lang, recs in items.items()}


def _dev(base: dict[str, list[int]], settings: dict[str, dict[str, list[int]]],
         margins: dict[str, float] | None = None) -> dict:
    """A sweep's dev evidence: the unsteered 0/1 correctness per language and each setting's."""
    items = {UNSTEERED: {lang: _records(lang, c) for lang, c in base.items()}}
    entries = []
    for key, by_lang in settings.items():
        items[key] = {lang: _records(lang, c, (margins or {}).get(key, 0.0)) for lang, c in by_lang.items()}
        layer, alpha = key[1:].split("@")
        entries.append({"layer": int(layer), "alpha": float(alpha), "key": key, "per_lang": _per_lang(items[key])})
    return {"baseline": {"per_lang": _per_lang(items[UNSTEERED])}, "entries": entries, "items": items,
            "metrics": METRICS, "metric": ACC}


def _flip(correct: list[int], wrong_to_right: int, right_to_wrong: int = 0) -> list[int]:
    """``correct`` with the first ``wrong_to_right`` wrong items right and ``right_to_wrong`` right ones wrong."""
    out = list(correct)
    wrong = [i for i, c in enumerate(out) if not c][:wrong_to_right]
    right = [i for i, c in enumerate(out) if c][:right_to_wrong]
    for i in wrong:
        out[i] = 1
    for i in right:
        out[i] = 0
    return out


BASE = [1, 0] * 45  # 90 dev items per language, accuracy 0.5


def test_dev_noise_of_one_item_selects_no_steering():
    """Six settings; five tie with the unsteered model on accuracy, one wins by a single item (and
    all have a higher mean margin): the old "max on dev" rule steered, the evidence rule does not."""
    settings = {f"L{layer}@1": {"sw": list(BASE)} for layer in range(5)}
    settings["L5@2"] = {"sw": _flip(BASE, 1)}
    dev = _dev({"sw": BASE}, settings, margins={k: 0.3 for k in settings})
    old = _best([{"key": UNSTEERED, "layer": None, "alpha": 0.0, "per_lang": dev["baseline"]["per_lang"]},
                 *dev["entries"]], ["sw"], "acc", "margin")
    assert old["steer"] is True and old["key"] == "L5@2"  # what used to be chosen
    for rule in (SelectionRule("test"), SelectionRule("one-se")):
        chosen = _selection(dev, ["en", "sw"], EvalConfig(select_rule=rule, n_boot=500))
        best = chosen["best"]
        assert best["steer"] is False and best["key"] == UNSTEERED and best["decision"] == NO_STEERING
        assert best["tested_key"] == "L5@2" and chosen["best_steered"]["key"] == "L5@2"
        ev = best["evidence"]
        assert ev["rule"] == rule.name and ev["gain"] == pytest.approx(1 / 90) and ev["n"] == 90
        assert ev["ci_low"] <= ev["gain"] <= ev["ci_high"] and ev["steer"] is False
        assert chosen["best_per_lang"]["sw"]["steer"] is False
        line = evidence_text(ev)
        assert "dev gain +0.011" in line and "no steering" in line and "\n" not in line
    assert decide(SelectionRule("test"), gain_evidence(ACC, dev["items"][UNSTEERED], dev["items"]["L5@2"], ["sw"]),
                  6)["p"] == 1.0  # exact McNemar: one discordant pair


def test_a_clear_dev_gain_is_selected_with_its_evidence():
    dev = _dev({"sw": BASE, "zh": BASE}, {"L1@1": {"sw": _flip(BASE, 20), "zh": _flip(BASE, 18)},
                                          "L2@1": {"sw": _flip(BASE, 2), "zh": BASE}})
    chosen = _selection(dev, ["en", "sw", "zh"], EvalConfig(n_boot=1000))
    best = chosen["best"]
    assert best["steer"] is True and best["key"] == "L1@1" and best["layer"] == 1
    ev = best["evidence"]
    assert ev["test"] == "stratified_paired_permutation" and ev["langs"] == ["sw", "zh"]
    assert ev["p_adjusted"] == min(1.0, 2 * ev["p"]) < 0.05 and ev["gain"] == pytest.approx((20 + 18) / 180)
    assert best["gain_over_baseline"] == pytest.approx(ev["gain"])
    per = chosen["best_per_lang"]
    assert per["sw"]["steer"] and per["zh"]["steer"] and per["sw"]["evidence"]["test"] == "mcnemar"


def test_per_language_choices_follow_each_languages_own_evidence():
    dev = _dev({"sw": BASE, "zh": BASE}, {"L1@1": {"sw": _flip(BASE, 25), "zh": _flip(BASE, 1)}})
    per = _selection(dev, ["sw", "zh"], EvalConfig(n_boot=500))["best_per_lang"]
    assert per["sw"]["steer"] is True and per["zh"]["steer"] is False
    assert per["zh"]["evidence"]["gain"] == pytest.approx(1 / 90)


def test_the_test_rule_corrects_for_the_number_of_settings():
    ev = {"gain": 0.05, "ci_low": 0.01, "ci_high": 0.09, "p": 0.02, "test": "mcnemar", "se": 0.02, "n": 100}
    assert decide(SelectionRule("test"), ev, 1)["steer"] is True
    many = decide(SelectionRule("test"), ev, 10)
    assert many["steer"] is False and many["p_adjusted"] == pytest.approx(0.2)
    assert decide(SelectionRule("test", level=0.25), ev, 10)["steer"] is True
    assert decide(SelectionRule("one-se"), ev, 10)["steer"] is True  # 0.05 > one SE of 0.02
    assert decide(SelectionRule("one-se"), {**ev, "gain": 0.02}, 1)["steer"] is False  # within one SE
    assert decide(SelectionRule("test"), {**ev, "gain": -0.05, "p": 0.001}, 1)["steer"] is False  # a loss


def test_rule_settings_are_checked():
    with pytest.raises(UsageError, match="selection rule"):
        SelectionRule("max")
    with pytest.raises(UsageError, match="level"):
        SelectionRule("test", level=1.5)
    with pytest.raises(UsageError, match="select_rule"):
        EvalConfig(select_rule="test")  # type: ignore[arg-type]


def test_a_steering_row_of_compare_takes_its_own_rule():
    """``-O diffmean.select_rule=one-se`` / ``select_level=0.01`` are declared options of a steering
    row (checked before the model loads); another rule or a level outside (0, 1) is refused."""
    from xlsteer.baselines.compare import check_options

    check_options({"diffmean": {"select_rule": "one-se", "select_level": 0.01}}, ["zero-shot", "diffmean"])
    for bad in ({"select_rule": "max"}, {"select_level": 1.0}, {"select_level": 0}):
        with pytest.raises(UsageError, match="select_"):
            check_options({"diffmean": bad}, ["zero-shot", "diffmean"])


def test_cli_sweep_per_language_gives_a_test_command_that_runs(tmp_path, capsys):
    """``xlsteer sweep --select per-lang`` prints the per-language choices and a ready-made
    ``xlsteer eval --sweep ... --select per-lang`` command; that command evaluates the choices on
    test against the unsteered model (one file, Holm over every non-anchor language)."""
    import shlex

    from test_task_jsonl import LANGS, mc_records, model_and_vector, write_task

    from xlsteer.cli import main

    spec = write_task(tmp_path, {"name": "colours_sel", "kind": "multiple_choice", "parallel": True,
                                 "splits": {"dev": "0-3", "test": "4-"}}, {lang: mc_records(lang, 8) for lang in LANGS})
    model, vector = model_and_vector(tmp_path)
    out = tmp_path / "sweep.json"
    for mode in ("global", "per-lang"):
        capsys.readouterr()
        assert main(["sweep", "--model", model, "--task", str(spec), "--intervention", vector, "--alphas", "1,4",
                     "--select", mode, "--no-cache", "-o", str(out)]) == 0
        text = capsys.readouterr().out
        rec = json.loads(out.read_text(encoding="utf-8"))
        assert rec["select_rule"] == {"name": "test", "level": 0.05} and "Bonferroni" in rec["selection_rule"]
        assert "\nunsteered " in text and "dev gain [95% CI]" in text and "selected (all languages): " in text and "; dev gain" in text
        assert "choice for sw:" in text and "choice for de:" in text
    command = next(line.strip() for line in text.splitlines() if line.strip().startswith("xlsteer eval"))
    assert f"--sweep {out} --select per-lang" in command
    argv = shlex.split(command)[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "results.json")
    capsys.readouterr()
    assert main([*argv, "--no-cache"]) == 0
    res = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert res["split"] == "test" and res["selection"]["mode"] == "per-lang"
    assert set(res["selection"]["per_lang"]) == {"sw", "de"}
    if res["selection"]["steer"]:
        assert {"sw", "de"} <= set(res["comparison"]["per_lang"])
    else:
        assert res["intervention"] is None and "comparison" not in res


def test_four_dev_items_that_all_gained_are_not_evidence():
    """Two languages, two dev items each, every one flipped from wrong to right: the exact
    stratified permutation test gives p = 2 / 16 = 0.125 (the bootstrap's p would be 0), so the
    rule keeps the unsteered model; six such items (p = 2 / 64) are enough at 0.05."""
    base = {lang: _records(lang, [0, 0]) for lang in ("de", "zh")}
    gained = {lang: _records(lang, [1, 1]) for lang in ("de", "zh")}
    ev = gain_evidence(ACC, base, gained, ["de", "zh"])
    assert ev["test"] == "stratified_paired_permutation" and ev["p"] == pytest.approx(0.125)
    assert decide(SelectionRule("test"), ev, 1)["steer"] is False
    base3 = {lang: _records(lang, [0, 0, 0]) for lang in ("de", "zh")}
    gained3 = {lang: _records(lang, [1, 1, 1]) for lang in ("de", "zh")}
    ev3 = gain_evidence(ACC, base3, gained3, ["de", "zh"])
    assert ev3["p"] == pytest.approx(2 / 64) and decide(SelectionRule("test"), ev3, 1)["steer"] is True
