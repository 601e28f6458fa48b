"""The demo's language-fidelity stage on a tiny random model: choice on dev, paired test, guard,
examples, and the report's side-by-side outputs (escaped). The shipped model: tests/test_demo.py."""

from __future__ import annotations

import json

import pytest

from xlsteer.data.paths import data_dir
from xlsteer.demo_fidelity import FidelityConfig, format_fidelity, run_fidelity
from xlsteer.testing import tiny_model


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = data_dir()
    if not (root / "lcb" / "test_sets.zip").is_file():
        pytest.skip("LCB data not present (xlsteer data fetch --only lcb --accept-nc)")
    run = tmp_path_factory.mktemp("fidelity")
    lm = tiny_model("llama")
    cfg = FidelityConfig(langs=("de", "ja"), layer=1, alphas=(4.0,), n_parallel=4, dev_limit=1, test_limit=2,
                         max_new_tokens=6, n_examples=2)
    common = dict(anchor="en", data_dir=str(root), seed=0, cache_dir=None, batch_size=4)
    log: list[str] = []
    summary = run_fidelity(run, lm, cfg, common, log.append)
    return run, cfg, summary, log


def test_the_stage_chooses_on_dev_and_pairs_on_test(stage):
    run, cfg, summary, log = stage
    sweep = json.loads((run / "sweep_lcb.json").read_text())
    assert sweep["split"] == "dev" and sweep["limit"] == cfg.dev_limit
    base = json.loads((run / "eval_lcb_unsteered.json").read_text())
    steered = json.loads((run / "eval_lcb_steered.json").read_text())
    assert base["split"] == steered["split"] == "test" and base["item_ids"] == steered["item_ids"]
    assert base["intervention"] is None
    assert (steered["intervention"] is not None) == summary["selected"]["steer"]
    assert summary["selected"]["split"] == "dev" and summary["max_new_tokens"] == cfg.max_new_tokens
    for lang in cfg.langs:
        row = summary["rows"][lang]
        assert row["n"] == cfg.test_limit
        assert row["unsteered"]["mean"] == base["per_lang"][lang]["metrics"]["line_pass"]["mean"]
        assert row["steered"]["mean"] == steered["per_lang"][lang]["metrics"]["line_pass"]["mean"]
        assert set(row["guard"]) == {"fluency", "degeneration"}
        assert len(summary["examples"][lang]) == cfg.n_examples
    # the vector steers toward the wanted language, away from the anchor
    from xlsteer.interventions.base import load_intervention

    vec = load_intervention(run / "lcb_diffmean.safetensors")
    assert vec.params["direction"] == "to_target" and vec.languages == list(cfg.langs)
    assert any("language fidelity" in line for line in log)


def test_the_text_summary_gives_pass_rates_tests_guard_and_examples(stage):
    _, cfg, summary, _ = stage
    text = format_fidelity(summary)
    assert "line pass unsteered" in text and "fluency" in text and "repetition" in text
    for lang in cfg.langs:
        assert any(line.startswith(lang) for line in text.splitlines())
    assert text.count("unsteered: ") == len(cfg.langs) * cfg.n_examples
    assert text.count("steered: ") == 2 * len(cfg.langs) * cfg.n_examples  # "unsteered: " contains it too


def test_the_report_shows_outputs_side_by_side_escaped(stage, tmp_path):
    import shutil

    from xlsteer.report import build_report

    run, cfg, _, _ = stage
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "eval_lcb_steered.json"
    doc = json.loads(path.read_text())
    if doc["intervention"] is None:
        doc["intervention"] = {"method": "diffmean"}  # the stage chose no steering: mark the run as steered
    doc["items"][0]["generated"] = "<script>alert(1)</script> Hallo"
    path.write_text(json.dumps(doc))
    html = build_report(copy).read_text(encoding="utf-8")
    first = html.index("What the model wrote")
    assert first < html.index("summary-table") or "summary-table" not in html  # the outputs lead the page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Hallo" in html and "<script>alert" not in html
    assert html.count("guard</td>") == len(cfg.langs)
