"""``xlsteer demo --quick`` end to end on the shipped Gemma-3-270M (the README's main command, reduced)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    from xlsteer.cli import main

    run = tmp_path / "demo"
    code = main(["--quiet", "demo", "--quick", "-o", str(run)])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((run / "demo_summary.json").read_text())
    assert set(summary["table"]) == {"zero-shot", "diffmean", "clas"}
    assert summary["selected"]["diffmean"]["split"] == "dev" and summary["selected"]["clas"]["split"] == "dev"
    for name in ("eval_zero-shot.json", "eval_diffmean.json", "eval_clas.json", "compare_diffmean.json",
                 "stats.safetensors", "diffmean.safetensors", "clas.safetensors", "report.html"):
        assert (run / name).is_file(), name
    # the evaluation never saw a dev item, the sweep never a test item
    sweep = json.loads((run / "sweep_diffmean.json").read_text())
    assert sweep["split"] == "dev"
    assert json.loads((run / "eval_diffmean.json").read_text())["split"] == "test"
    from test_control import check_shape

    control = json.loads((run / "control.json").read_text())
    check_shape(control)
    assert [(r["prompt_lang"], r["target_lang"]) for r in control["rows"]] == [("en", "de"), ("de", "en")]
    assert "positive control" in printed and "mcnemar p " in printed
    for method in ("diffmean", "clas"):
        sel = summary["selected"][method]
        assert isinstance(sel["steer"], bool)
        if not sel["steer"]:  # "no steering": the test run is the unsteered model's, and the demo says so
            assert "no steering" in printed
    html = (run / "report.html").read_text()
    assert html.count("<img") >= 5
    assert "wall time" in printed and "report:" in printed
    assert not list(run.rglob("*.tmp*"))
    # a re-run reuses every stage's cached work and prints the same table
    code = main(["--quiet", "demo", "--quick", "-o", str(run)])
    again = capsys.readouterr().out
    assert code == 0
    strip = lambda text: [ln for ln in text.splitlines() if not ln.startswith(("wall time", "report:"))]  # noqa: E731
    assert strip(again) == strip(printed)
