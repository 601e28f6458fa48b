"""Names from data never become paths: every field that reaches a file name, made hostile.

The fields: an analysis file's ``intervention`` (similarity, logit lens), a projection's
``intervention`` and ``method``, a regression's ``method``, the ``figures`` an analysis lists, a
result file's task, split and main metric (the score figure's name), a sweep file's name (the
sweep figure's name), and, in ``analyze``, the names of the interventions. Each gets ``../``,
an absolute path, a NUL byte and a very long string; ``report`` and ``analyze`` must then write
only inside their output folder, only names a file system accepts, and never fail with a
traceback.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import ArtifactError
from xlsteer.filenames import confined, slug

HOSTILE = ["../../escaped", "/tmp/xlsteer-absolute-escape", "nul\x00byte", "long" * 2000, "..", "a/b\\..\\c"]


@pytest.fixture(scope="module", autouse=True)
def blank_figures():
    """Every plot is a blank 1x1-inch figure: these tests are about names and places, not drawing."""
    from xlsteer.analysis import plots

    mp = pytest.MonkeyPatch()
    for name in dir(plots):
        if name.startswith("plot_"):
            mp.setattr(plots, name, lambda *a, **k: plots.new_figure(1.0, 1.0))
    yield
    mp.undo()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _names_ok(root: Path) -> None:
    for p in root.rglob("*"):
        assert "\x00" not in p.name and len(p.name.encode()) <= 255 and not p.name.startswith(".."), p


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """A run folder of every analysis file kind the report redraws figures for."""
    from xlsteer.analysis.run import AnalysisInputs, analyze
    from xlsteer.interventions.vector import SteeringVector, vector_key
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    torch.manual_seed(0)
    lm = tiny_model("llama")
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.randn(1, lm.hidden_size)},
                        params={"normalize": "none"}, languages=["de"], anchor="en")
    run = tmp_path_factory.mktemp("analysed") / "run"
    texts = {"en": ["the red house", "a dog runs", "water is cold", "we eat"],
             "de": ["das rote Haus", "ein Hund läuft", "Wasser ist kalt", "wir essen"]}
    analyze(lm, run, texts, [1], {"diffmean": iv}, projections=("pca",),
            inputs=AnalysisInputs(meta={"corpus": "t", "data_hash": "x"}))
    return run


def test_slug_and_confined_refuse_every_escape(tmp_path):
    for value in HOSTILE + ["", "中文", "Diff Mean@6"]:
        s = slug(value)
        assert s and len(s) <= 80 and set(s) <= set("abcdefghijklmnopqrstuvwxyz0123456789-"), (value, s)
        assert confined(tmp_path, f"fig_{s}.png").parent == tmp_path
    assert slug("Diff Mean@6") == "diff-mean-6" and slug("long" * 2000) != slug("long" * 1999)
    assert slug("中文") != slug("日本") and slug("similarity") == "similarity"
    for bad in HOSTILE[:3] + ["", "x" * 300, "sub/../../x"]:
        with pytest.raises(ArtifactError):
            confined(tmp_path, bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ArtifactError, match="outside"):
        confined(tmp_path, "link/x.png")


def _hostile_run(analysed: Path, folder: Path, value: str) -> Path:
    """The analysis run with ``value`` in every field that names a figure, figures removed (redrawn)."""
    run = folder / "run"
    shutil.copytree(analysed, run)
    shutil.rmtree(run / "figures")
    for path in run.glob("analysis_*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "intervention" in doc:
            doc["intervention"] = value
        doc["figures"] = [value, f"figures/{value}.png"]
        for x in doc.get("projections") or []:
            x.update(intervention=value, method=value, figure=value)
        for r in doc.get("regressions") or []:
            r.update(method=value, figure=value)
        path.write_text(json.dumps(doc), encoding="utf-8")
    points = {"de": {"x": 0.1, "y": 0.2}, "sw": {"x": -0.1, "y": 0.0}, "zh": {"x": 0.3, "y": 0.1}}
    regression = {"format": "xlsteer.analysis", "version": 2, "analysis": "regression", "figures": [value],
                  "regressions": [{"method": value, "figure": value, "points": points, "fit": None,
                                   "interpretation": "", "metric": "acc", "task": "xcopa"}]}
    (run / "analysis_regression.json").write_text(json.dumps(regression), encoding="utf-8")
    return run


@pytest.mark.parametrize("value", HOSTILE, ids=["dotdot", "absolute", "nul", "long", "parent", "mixed"])
def test_report_writes_only_inside_its_folder(analysed, tmp_path, value, capsys):
    run = _hostile_run(analysed, tmp_path, value)
    out = tmp_path / "out"
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(["report", str(run), "-o", str(out / "page.html")])
    err = capsys.readouterr().err
    assert code == 0, err
    after = _tree(tmp_path)
    new = sorted(set(after) - set(before))
    assert new and all(n.startswith("out" + os.sep) for n in new), new
    assert all(after[k] == v for k, v in before.items()), "nothing outside the output folder was replaced"
    assert not Path("/tmp/xlsteer-absolute-escape.png").exists() and not (tmp_path.parent / "escaped.png").exists()
    _names_ok(out)
    assert len(list((out / "page_figures").glob("*.png"))) >= 4, "the figures were redrawn under safe names"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    from test_fuzz_readers import make_valid_files

    return make_valid_files(tmp_path_factory.mktemp("valid"), tmp_path_factory.mktemp("examples"))["results"]


@pytest.mark.parametrize("field", ["task", "split", "metric"])
def test_result_fields_that_name_the_score_figure(results, tmp_path, field, capsys):
    for i, value in enumerate(HOSTILE):
        folder = tmp_path / f"case-{i}"
        folder.mkdir()
        doc = json.loads(json.dumps(results))
        if field == "metric":
            main_metric = doc["metrics"]["main"]
            doc["metrics"]["names"] = [value if m == main_metric else m for m in doc["metrics"]["names"]]
            doc["metrics"]["main"] = value
        else:
            doc[field] = value
        (folder / "r.json").write_text(json.dumps(doc), encoding="utf-8")
        before = _tree(tmp_path)
        code = main(["report", str(folder / "r.json"), "-o", str(folder / "out" / "r.html")])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 0 or (code in (1, 2) and len(err) == 1), err
        new = sorted(set(_tree(tmp_path)) - set(before))
        assert all(n.startswith(f"case-{i}{os.sep}out{os.sep}") for n in new), new
        _names_ok(folder)


def test_sweep_file_name_becomes_a_safe_figure_name(tmp_path):
    from test_fuzz_cli import control_doc

    folder = tmp_path / ("s" * 240)
    folder.mkdir()
    (folder / ("sweep_" + "y" * 230 + ".json")).write_text(json.dumps(control_doc()), encoding="utf-8")
    assert main(["report", str(folder), "-o", str(tmp_path / "out" / "p.html")]) == 0
    _names_ok(tmp_path / "out")


def test_analyze_names_files_from_intervention_names_safely(tmp_path):
    from xlsteer.analysis.run import AnalysisInputs, analyze
    from xlsteer.interventions.vector import SteeringVector, vector_key
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    lm = tiny_model("llama")
    ivs = {name: SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.ones(1, lm.hidden_size)},
                                params={"normalize": "none"}, languages=["de"], anchor="en")
           for name in HOSTILE[:4]}
    run = tmp_path / "out" / "run"
    texts = {"en": ["the house", "a dog", "water"], "de": ["das Haus", "ein Hund", "Wasser"]}
    result = analyze(lm, run, texts, [1], ivs, projections=(),
                         inputs=AnalysisInputs(meta={"corpus": "t", "data_hash": "x"}))
    written = [Path(p) for p in [*result["files"], *result["figures"]]]
    assert written and all(run in p.parents for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _names_ok(run)
