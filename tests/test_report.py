"""xlsteer report: the answer first (summary table, marks, MDE, control, one sentence) for a demo-like
run directory, an xlsteer compare directory and a single eval results file."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from report_inputs import build, control_doc
from xlsteer.cli import main
from xlsteer.report import build_report

PNG_URI = '<img src="data:image/png;base64,'


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return build(tmp_path_factory.mktemp("report"))


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _order(html: str, *needles: str) -> list[int]:
    return [html.index(n) for n in needles]


def _summary(html: str) -> str:
    return html[html.index('<section id="summary">'):html.index('<section id="scores">')]


def test_demo_run_leads_with_the_summary_and_every_method(made):
    html = _html(build_report(made["demo"]))
    pos = _order(html, 'id="summary"', 'id="scores"', 'id="sweeps"', 'id="analysis"', 'id="provenance"')
    assert pos == sorted(pos)
    summary = _summary(html)
    for method in ("zero-shot", "diffmean"):
        assert f'<th scope="row">{method}' in summary
    assert "(reference)" in summary and "MDE of the average (power 0.8): diffmean" in summary
    assert re.search(r'<p class="verdict-line">(No method changes acc|\d+ of \d+ method × language)', summary)
    assert "<details>" in html[html.index('id="provenance"'):]  # provenance collapsed, last


def test_the_positive_control_is_in_the_summary(made):
    summary = _summary(_html(build_report(made["demo"])))
    assert "Positive control: diffmean at layer 1" in summary and "sw → en" in summary
    assert "The intervention changes behaviour (positive control); the task score does" in summary


def test_a_control_without_significant_change_says_so(made, tmp_path):
    doc = control_doc()
    for r in doc["rows"]:
        r["p"] = 0.4
    (tmp_path / "control.json").write_text(json.dumps(doc), encoding="utf-8")
    summary = _summary(_html(build_report(tmp_path)))
    assert "shows no change in behaviour" in summary


def test_compare_directory_renders_its_full_table(made):
    html = _html(build_report(made["compare"]))
    rec = json.loads((made["compare"] / "compare.json").read_text(encoding="utf-8"))
    summary = _summary(html)
    full = html[html.index('id="compare-table"'):]
    for method in rec["methods"]:
        assert f'<th scope="row">{method}' in summary and f'<th scope="row">{method}' in full
    assert "stratified_paired_permutation" in full and "trained parameters" in full
    assert html.index('id="summary-table"') < html.index('id="compare-table"')


def test_eval_results_file_reports_beside_itself(made, capsys):
    out = made["eval_file"].with_suffix(".html")
    assert main(["report", str(made["eval_file"])]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    summary = _summary(_html(out))
    assert '<th scope="row">unsteered' in summary and '<th scope="row">vector L1 α4' in summary


def test_marks_follow_the_holm_adjusted_p(made, tmp_path):
    doc = json.loads(made["eval_file"].read_text(encoding="utf-8"))
    acc = doc["comparison"]["per_lang"]["sw"]["metrics"]["acc"]
    acc.update(diff=0.5, p=0.01, p_holm=0.02)
    doc["comparison"]["per_lang"]["zh"]["metrics"]["acc"].update(diff=-0.5, p=0.03, p_holm=0.06)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    summary = _summary(_html(build_report(path)))
    assert summary.count('class="up"') == 1 and 'class="down"' not in summary  # zh: p < .05 but not after Holm
    assert "1 of 2 method × language changes are significant after Holm (vector L1 α4 ▲ sw)" in summary


def test_every_figure_has_alt_text_a_caption_and_a_file(made):
    page = build_report(made["demo"], made["demo"] / "r.html")
    html = _html(page)
    figures = re.findall(r'<figure id="[^"]+">\s*<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)">\s*'
                         r"<figcaption>([^<]+)<span", html)
    assert len(figures) == html.count("<img") >= 6
    assert all(base64.b64decode(b).startswith(b"\x89PNG") and alt.strip() and cap.strip() for b, alt, cap in figures)
    assert len(list((page.parent / "r_figures").glob("*.png"))) == len(figures)
    for png in (made["demo"] / "figures").glob("*.png"):
        assert f"({png.name})</span></figcaption>" in html


def test_text_from_files_is_escaped_and_nothing_is_loaded(made, tmp_path):
    doc = json.loads(made["eval_file"].read_text(encoding="utf-8"))
    doc["method"] = "<script>alert(1)</script>"
    (tmp_path / "e.json").write_text(json.dumps(doc), encoding="utf-8")
    html = _html(build_report(tmp_path))
    assert "<script" not in html and "&lt;script&gt;" in html
    assert not re.search(r"https?://", html.replace("http://www.w3.org", ""))
    for tag in ("<link", "<iframe", "@import", "url("):
        assert tag not in html


def test_bad_and_older_files_are_listed_not_fatal(made, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "handmade.json").write_text('{"kind": "eval", "methods": {}}')
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fake.png").write_text("not a png")
    html = _html(build_report(tmp_path, tmp_path / "out" / "r.html"))
    assert "No evaluation results" in html and "No sweep results" in html and "No analysis results" in html
    assert "malformed JSON" in html and "no xlsteer command writes" in html and "not a PNG file" in html
    assert "3 file(s) could not be read" in html and PNG_URI not in html


def test_report_redraws_analysis_figures_missing_from_the_run(made, tmp_path):
    for name in ("analysis_similarity_diffmean.json",):
        (tmp_path / name).write_text((made["demo"] / name).read_text(encoding="utf-8"), encoding="utf-8")
    html = _html(build_report(tmp_path))
    for name in ("similarity_diffmean.png", "separation_diffmean.png"):
        assert f"({name})</span></figcaption>" in html


def test_no_python_string_builds_html_tags():
    """Markup lives in the templates; the report's Python only prepares data."""
    package = Path(__import__("xlsteer.report", fromlist=["x"]).__file__).parent
    for path in package.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""["'][^"'\n]*<(/?)(p|div|table|tr|td|th|span|b|br|img|h\d|code|ul|li|figure)\b""",
                             text), path.name


def test_lm_eval_results_get_a_summary_table(tmp_path):
    pytest.importorskip("lm_eval")
    from xlsteer.lmeval.harness import results_json

    results = {"results": {"xcopa_sw": {"alias": "xcopa_sw", "acc,none": 0.55, "acc_stderr,none": 0.05},
                           "xcopa_zh": {"alias": "xcopa_zh", "acc,none": 0.6, "acc_stderr,none": 0.05}},
               "n-samples": {"xcopa_sw": {"original": 100, "effective": 20}, "xcopa_zh": {"original": 100,
                                                                                         "effective": 20}}}
    (tmp_path / "lm.json").write_text(results_json(results), encoding="utf-8")
    summary = _summary(_html(build_report(tmp_path)))
    assert '<th scope="row">lm</th>' in summary and "<b>0.550</b>" in summary and "no paired test" in summary
