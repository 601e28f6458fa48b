"""analyze() -> run directory -> one self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest
import torch

from xlsteer.analysis.neuron_map import category_table, lape_counts, neuron_map
from xlsteer.analysis.projection import project
from xlsteer.analysis.run import analyze
from xlsteer.cli import main
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.report.html import build_report, score_rows
from xlsteer.testing import tiny_model

TEXTS = {
    "en": ["the red house", "a dog runs fast", "water is cold", "we eat bread", "the sun is out"],
    "de": ["das rote Haus", "ein Hund rennt schnell", "Wasser ist kalt", "wir essen Brot", "die Sonne scheint"],
    "sw": ["nyumba nyekundu", "mbwa anakimbia haraka", "maji ni baridi", "tunakula mkate", "jua limetoka"],
    "fr": ["la maison rouge", "un chien court vite", "l'eau est froide", "nous mangeons du pain", "le soleil brille"],
}
PNG_URI = '<img src="data:image/png;base64,'


def _eval_doc(p_values: dict[str, float], degenerate_lang: str | None = None) -> dict:
    methods = {"none": {lang: {"mean": 0.5, "ci_low": 0.45, "ci_high": 0.55, "n": 200} for lang in TEXTS}}
    methods["diffmean"] = {}
    for i, (lang, p) in enumerate(p_values.items()):
        diff = 0.02 * (i + 1)
        cell = {"mean": 0.5 + diff, "ci_low": 0.45 + diff, "ci_high": 0.55 + diff, "n": 200,
                "comparison": {"diff": diff, "diff_ci_low": diff - 0.03, "diff_ci_high": diff + 0.03, "p": p,
                               "test": "mcnemar", "base_mean": 0.5, "method_mean": 0.5 + diff}}
        if lang == degenerate_lang:
            cell["degenerate"] = {"degenerate": True, "majority_label": "0", "majority_share": 0.97}
        methods["diffmean"][lang] = cell
    return {"kind": "eval", "task": "xnli", "metric": "accuracy", "split": "test", "anchor": "en",
            "baseline": "none", "methods": methods, "model": "tiny-llama"}


def _categories(layers: int = 2, d_ff: int = 128) -> dict:
    """What xlsteer.interventions.clas.neuron_categories returns: bool masks and percentages."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for layer in range(layers):
        kind = torch.randint(0, 4, (d_ff,), generator=g)
        masks = {name: kind == i for i, name in enumerate(("dead", "specific", "partial", "all"))}
        out[layer] = {**masks, "percent": {k: 100.0 * float(m.sum()) / d_ff for k, m in masks.items()}}
    return {"langs": list(TEXTS), "rule": "active: mean > 0", "layers": out}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    lm = tiny_model("llama")
    d = lm.hidden_size
    iv = SteeringVector(sites=[Site(0, "resid_post")],
                        tensors={vector_key(0): torch.randn(3, d, generator=torch.Generator().manual_seed(1))},
                        params={"normalize": "none"}, languages=["de", "sw", "fr"], anchor="en")
    run_dir = tmp_path_factory.mktemp("run")
    ev = _eval_doc({"de": 0.01, "sw": 0.30, "fr": 0.60}, degenerate_lang="fr")
    result = analyze(lm, run_dir, TEXTS, None, {"diffmean": iv}, categories=_categories(),
                     eval_results=[ev], lape={"de": {0: torch.tensor([1, 5]), 1: torch.tensor([7])},
                                             "sw": {0: torch.tensor([], dtype=torch.long), 1: torch.tensor([2, 3, 4])}},
                     bridge_layers=[1], compare_with=tiny_model("llama", seed=1), compare_labels=("base", "instruct"),
                     projections=("tsne",),
                     meta={"corpus": "test", "data_hash": "abc123"})
    (run_dir / "eval_xnli.json").write_text(json.dumps(ev))
    (run_dir / "sweep_dev.json").write_text(json.dumps({
        "kind": "sweep", "method": "diffmean", "task": "xnli", "split": "dev", "metric": "accuracy",
        "points": [{"layer": layer, "alpha": a, "score": 0.5 + 0.01 * layer - 0.002 * a}
                   for layer in (0, 1) for a in (1.0, 2.0, 4.0)], "best": {"layer": 1, "alpha": 1.0}}))
    html_path = build_report(run_dir, run_dir / "report.html")
    return {"dir": run_dir, "result": result, "html": html_path.read_text(encoding="utf-8"), "path": html_path}


def test_analyze_writes_analysis_json_and_figures(run):
    files = {p.name for p in run["dir"].glob("*.json")}
    for name in ("setup_analysis.json", "analysis_similarity_diffmean.json", "analysis_logit_lens_diffmean.json",
                 "analysis_projection.json", "analysis_regression.json", "analysis_neuron_map.json",
                 "analysis_compare_models.json"):
        assert name in files
        doc = json.loads((run["dir"] / name).read_text())
        assert doc["kind"] == ("setup" if name.startswith("setup") else "analysis")
        assert doc["data_hash"] == "abc123" and doc["model_fingerprint"]["num_layers"] == 2
    figs = sorted(p.name for p in (run["dir"] / "figures").glob("*.png"))
    assert figs == sorted(p.name for p in run["result"]["figures"])
    assert {"similarity_diffmean.png", "logit_lens_diffmean.png", "projection_diffmean_tsne.png",
            "neuron_categories.png", "lape_neurons.png", "regression_diffmean.png", "compare_models.png"} <= set(figs)
    reg = run["result"]["regression"][0]
    assert reg["fit"]["n"] == 3 and set(reg["points"]) == {"de", "sw", "fr"}


def test_report_has_every_section_heading(run):
    html = run["html"]
    for heading in ("Setup", "Scores", "Sweeps", "Analysis", "Similarity to the anchor", "Logit lens",
                    "Neuron categories (CLAS) and language neurons (LAPE)", "Projections (PCA, t-SNE)",
                    "Gain vs. change in similarity", "Base vs. instruction-tuned", "Other figures", "Files"):
        assert re.search(rf"<h[23][^>]*>{re.escape(heading)}", html), heading


def test_every_figure_is_embedded_as_a_png_data_uri(run):
    html = run["html"]
    for png in (run["dir"] / "figures").glob("*.png"):
        assert f"({png.name})</span></figcaption>" in html, png.name
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    n_figures = len(list((run["dir"] / "figures").glob("*.png")))
    assert len(uris) == n_figures + 2  # + the score chart and the sweep heatmap drawn by the report
    assert all(base64.b64decode(u).startswith(b"\x89PNG\r\n\x1a\n") for u in uris)
    beside = run["path"].parent / "report_figures"
    assert len(list(beside.glob("*.png"))) == len(uris)


def test_report_loads_nothing_from_elsewhere(run):
    html = run["html"]
    assert not re.search(r"https?://", html)
    values = re.findall(r"""\b(?:src|href|action|poster)\s*=\s*(["']?)([^"'\s>]*)""", html)
    assert values and all(v.startswith(("data:image/png;base64,", "#")) for _, v in values)
    for tag in ("<script", "<link", "<iframe", "@import", "url("):
        assert tag not in html


def test_scores_tables_show_cis_p_values_verdicts_and_flags(run):
    html = run["html"]
    assert "[0.450, 0.550]" in html  # baseline CI
    assert "Δ +0.020, p = 0.010" in html
    assert "de: significant gain" in html and "sw: no significant effect" in html
    assert "1 of 3 method × language comparisons have p &lt; 0.05" in html
    assert "Degenerate predictors" in html and "diffmean on fr" in html
    assert "Selected: layer = 1" in html  # sweep


def test_no_significant_effect_is_said_plainly(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(_eval_doc({"de": 0.2, "sw": 0.5})))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "No effect is significant at α = 0.05:" in html
    assert "none of the 2 method × language comparisons" in html


def test_missing_sections_and_bad_files_do_not_break_the_report(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "nokind.json").write_text('{"a": 1}')
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fake.png").write_text("not a png")
    html = build_report(tmp_path, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert "No evaluation results" in html and "No sweep results" in html and "No analysis results" in html
    assert "broken.json" in html and "not valid JSON" in html
    assert "no top-level &quot;kind&quot;" in html and "not a PNG file" in html
    assert PNG_URI not in html


def test_report_redraws_figures_missing_from_the_run(run, tmp_path):
    for name in ("analysis_similarity_diffmean.json", "analysis_neuron_map.json"):  # no figures/ folder
        shutil.copy(run["dir"] / name, tmp_path / name)
    html = build_report(tmp_path).read_text(encoding="utf-8")
    for name in ("similarity_diffmean.png", "separation_diffmean.png", "neuron_categories.png", "lape_neurons.png"):
        assert f"({name})</span></figcaption>" in html
    assert html.count(PNG_URI) == 4


def test_cli_report_prints_where_it_wrote(run, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(run["dir"]), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.is_file()


def test_score_rows_accept_several_shapes():
    rows = score_rows({"kind": "eval", "rows": [{"method": "m", "lang": "de", "mean": 0.4, "ci": [0.3, 0.5],
                                                 "p": 0.01, "diff": 0.1}]})
    assert rows[0]["ci_low"] == 0.3 and rows[0]["p"] == 0.01 and not rows[0]["is_baseline"]
    cmp = score_rows({"kind": "compare", "baseline": "none", "comparisons": {"clas": {"de": {
        "n": 10, "base_mean": 0.4, "method_mean": 0.5, "diff": 0.1, "p_mcnemar": 0.2, "p": 0.2,
        "verdict": "no significant effect (MDE 0.20)"}}}})
    by = {r["method"]: r for r in cmp}
    assert by["none"]["is_baseline"] and by["none"]["mean"] == 0.4
    assert by["clas"]["mean"] == 0.5 and by["clas"]["verdict"].startswith("no significant")
    single = score_rows({"kind": "eval", "method": "lape", "scores": {"de": {"accuracy": 0.3}, "sw": {"accuracy": 0.2}}})
    assert {(r["method"], r["lang"], r["mean"]) for r in single} == {("lape", "de", 0.3), ("lape", "sw", 0.2)}


def test_neuron_map_reads_the_colleagues_formats():
    from_masks = category_table(_categories())
    assert set(from_masks["percentages"]) == {0, 1}
    assert sum(from_masks["percentages"][0].values()) == pytest.approx(100.0)
    masks_only = {"layers": {3: {k: v for k, v in _categories()["layers"][0].items() if k != "percent"}}}
    assert category_table(masks_only)["percentages"][3] == pytest.approx(from_masks["percentages"][0])
    fractions = category_table({"5": {"dead": 0.1, "language-specific": 0.2, "partial shared": 0.3, "all": 0.4}},
                               bridge_layers={"layers": [5]})
    assert fractions["percentages"][5]["all_shared"] == pytest.approx(40.0) and fractions["bridge_layers"] == [5]
    assert lape_counts({"de": {"0": [1, 2, 3], 1: torch.tensor([4])}}) == {"de": {0: 3, 1: 1}}
    summary = neuron_map(fractions, {"counts": {"de": {5: 7}}})
    assert summary["categories"]["shared_percent"][5] == pytest.approx(70.0)
    assert summary["lape"]["per_lang"] == {"de": 7}


def test_projections_are_deterministic_and_share_axes():
    rng = np.random.default_rng(0)
    before = {"en": rng.normal(size=(8, 6)), "de": rng.normal(size=(8, 6)) + 2}
    after = {"en": before["en"], "de": before["en"] + 0.01}
    for method in ("pca", "tsne"):
        a = project(before, after, method=method, random_state=3)
        b = project(before, after, method=method, random_state=3)
        assert a["before"]["coords"] == b["before"]["coords"] and a["after"]["coords"] == b["after"]["coords"]
    pca = project(before, after, method="pca")
    np.testing.assert_allclose(pca["after"]["coords"]["en"], pca["before"]["coords"]["en"])  # same axes
    gap_before = np.linalg.norm(np.subtract(pca["before"]["centroids"]["de"], pca["before"]["centroids"]["en"]))
    gap_after = np.linalg.norm(np.subtract(pca["after"]["centroids"]["de"], pca["after"]["centroids"]["en"]))
    assert gap_after < 0.1 * gap_before


def test_analyze_derives_the_neuron_map_from_mlp_statistics():
    """With mlp_act statistics and no categories given, analyze uses the CLAS and LAPE fitters' selections."""
    pytest.importorskip("xlsteer.interventions.clas")
    from xlsteer.analysis.run import _from_stats
    from xlsteer.stats import collect

    lm = tiny_model("gemma3")
    texts = {lang: TEXTS[lang] for lang in ("en", "de", "sw")}
    stats = collect(lm, texts, [Site(0, "mlp_act"), Site(1, "mlp_act")])
    notes: list[str] = []
    categories, lape, bridges = _from_stats(stats, None, None, None, lm.num_layers, notes)
    summary = neuron_map(categories, lape, bridges)
    cats = summary["categories"]
    assert set(cats["percentages"]) == {0, 1}
    assert all(sum(p.values()) == pytest.approx(100.0) for p in cats["percentages"].values())
    assert set(summary["lape"]["counts"]) == {"en", "de", "sw"}
    assert bridges is None and any("bridge" in n for n in notes)  # a 2-layer model has no candidate layer


def test_result_files_of_unexpected_shape_are_noted_not_fatal(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"kind": "analysis", "analysis": "similarity",
                                                 "before": {"similarity": {"de": {"0": {"means": 1}}}}}))
    (tmp_path / "b.json").write_text(json.dumps({"kind": "eval", "provenance": "?", "methods": {"m": {"de": 5}}}))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "Could not render a.json" in html
    assert "<b>5.000</b>" in html  # a bare number is read as the score


def test_report_reads_the_evaluation_runners_files(tmp_path):
    """Files of xlsteer.evaluation.runner carry a "format", not a "kind"; paired tests come from
    compare_runs files, or the report computes them from the per-item records."""
    from xlsteer.evaluation.runner import compare_runs, evaluate, write_results

    lm = tiny_model("llama")
    iv = SteeringVector(sites=[Site(1, "resid_post")],
                        tensors={vector_key(1): torch.randn(2, lm.hidden_size, generator=torch.Generator().manual_seed(3))},
                        params={"normalize": "none"}, languages=["sw", "zh"], anchor="en", strength=4.0)
    kw = dict(split="dev", limit=6, n_boot=200)
    base = evaluate(lm, "xcopa", ["en", "sw", "zh"], **kw)
    steered = evaluate(lm, "xcopa", ["en", "sw", "zh"], interventions=iv, **kw)
    write_results(tmp_path / "base.json", base)
    write_results(tmp_path / "steered.json", steered)
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "xcopa · acc · dev" in html and "vector L1 ×4" in html and "none</b> <span" in html
    assert "paired tests for vector L1 ×4 computed from the per-item results" in html
    expected = compare_runs(base, steered)["per_lang"]["sw"]["metrics"]["acc"]["p"]
    assert f"p = {expected:.3f}" in html or (expected < 0.001 and "p &lt; 0.001" in html)
    write_results(tmp_path / "compare.json", compare_runs(base, steered))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "computed from the per-item results" not in html and "compare.json" in html
    assert "No effect is significant" in html or "method × language comparisons have p" in html


def test_report_reads_an_eval_file_with_embedded_baseline_and_comparison(tmp_path):
    """What ``xlsteer eval --intervention`` writes: the steered run with "baseline" and "comparison" inside."""
    per_lang = {lang: {"n": 10, "metrics": {"acc": {"mean": m, "ci_low": m - 0.1, "ci_high": m + 0.1, "n": 10}},
                       "degenerate": {"degenerate": False, "majority_label": 0, "majority_share": 0.5}}
                for lang, m in (("en", 0.6), ("sw", 0.5))}
    steered_per_lang = {lang: {**v, "metrics": {"acc": {**v["metrics"]["acc"], "mean": 0.7}}}
                        for lang, v in per_lang.items()}
    comparison = {"format": "xlsteer.comparison", "task": "xcopa", "split": "test",
                  "per_lang": {"sw": {"metrics": {"acc": {"base_mean": 0.5, "method_mean": 0.7, "diff": 0.2,
                                                          "p": 0.004, "verdict": "significant gain"}}}}}
    doc = {"format": "xlsteer.results", "task": "xcopa", "split": "test", "anchor": "en",
           "intervention": {"method": "vector", "layers": [6], "strength": 2.0}, "per_lang": steered_per_lang,
           "baseline": {"intervention": None, "per_lang": per_lang}, "comparison": comparison}
    (tmp_path / "xcopa_vector.json").write_text(json.dumps(doc))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "<b>vector L6 ×2</b>" in html and "<b>none</b>" in html
    assert "Δ +0.200, p = 0.004" in html and "sw: significant gain" in html
    assert "1 of 1 method × language comparisons have p &lt; 0.05" in html
