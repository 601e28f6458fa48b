"""One results schema: every writer's output validates, the shipped JSON Schema is the one the
types generate, older formats are converted by name or refused in one line."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from report_inputs import build, control_doc, load
from xlsteer.errors import DataError
from xlsteer.results import CONVERTER, FORMATS
from xlsteer.results.legacy import upgrade
from xlsteer.results.read import load_result
from xlsteer.results.schema import ControlResult, json_schema, validate


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return build(tmp_path_factory.mktemp("schema"))


def test_the_shipped_schema_is_generated_from_the_types():
    shipped = json.loads(resources.files("xlsteer.results").joinpath("schema.json").read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(json_schema()))
    assert {m["properties"]["format"]["const"] for m in shipped["$defs"].values()
            if "format" in m.get("properties", {})} == set(FORMATS)


def test_every_writers_output_validates(made):
    seen = set()
    files = [*made["demo"].glob("*.json"), made["eval_file"], made["compare"] / "compare.json",
             *(made["compare"] / "runs").glob("*.json")]
    for path in files:
        doc = load(path)
        assert "kind" not in doc and "format_version" not in doc, path.name
        seen.add(validate(doc).format)
    assert seen >= {"xlsteer.eval", "xlsteer.paired", "xlsteer.sweep", "xlsteer.methods", "xlsteer.analysis",
                    "xlsteer.setup", "xlsteer.control"}


def test_lm_eval_results_are_stamped():
    pytest.importorskip("lm_eval")
    from xlsteer.lmeval.harness import results_json

    doc = json.loads(results_json({"results": {"xcopa_sw": {"acc,none": 0.5}}, "versions": {"xcopa_sw": 1.0}}))
    assert validate(doc).format == "xlsteer.lm-eval" and doc["version"] == 2


def test_the_control_fixture_has_the_demos_shape():
    doc = validate(control_doc())
    assert isinstance(doc, ControlResult) and doc.rows[0].test == "mcnemar" and doc.rows[0].diff_ci == (0.3, 0.8)
    with pytest.raises(Exception):
        validate({**control_doc(), "rows": [{**control_doc()["rows"][0], "test": "t-test"}]})


def test_compare_uses_the_stratified_test_of_the_average(made):
    rec = load(made["compare"] / "compare.json")
    runs = {name: load(made["compare"] / path) for name, path in rec["runs"].items()}
    from xlsteer.evaluation.pairing import compare_runs

    avg = rec["rows"]["icl-en"]["average"]
    expected = compare_runs(runs["zero-shot"], runs["icl-en"], n_boot=100)["average"]["tests"]["acc"]
    assert avg["test"] == "stratified_paired_permutation" and "pooled_diff" not in avg
    assert avg["p"] == expected["p"] and avg["diff"] == expected["diff"] and avg["mde"] == expected["mde"]
    cell = rec["rows"]["icl-en"]["per_lang"]["sw"]
    assert "p_holm" in cell and cell["p_holm"] >= cell["p"]


def test_older_formats_are_converted_by_name(made, tmp_path):
    old = load(made["eval_file"])
    old = {**old, "format": "xlsteer.results", "format_version": 1, "kind": "eval"}
    old.pop("version")
    old["comparison"] = {**old["comparison"], "format": "xlsteer.comparison", "format_version": 1}
    old["comparison"].pop("version")
    doc, notes = upgrade(old)
    assert doc["format"] == "xlsteer.eval" and doc["comparison"]["format"] == "xlsteer.paired" and not notes
    compare_v1 = load(made["compare"] / "compare.json")
    compare_v1.update(format="xlsteer.compare", format_version=1, kind="compare")
    compare_v1.pop("version")
    compare_v1["rows"]["icl-en"]["average"]["pooled_diff"] = 0.1
    doc, notes = upgrade(compare_v1)
    assert doc["format"] == "xlsteer.methods" and "p" not in doc["rows"]["icl-en"]["average"]
    assert "pooled" in notes[0] and validate(doc)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    loaded = load_result(path)
    assert loaded.converted_from == "xlsteer.results v1" and loaded.format == "xlsteer.eval"


def test_unknown_shapes_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no xlsteer command writes"):
        upgrade({"kind": "eval", "methods": {"none": {"de": {"mean": 0.5}}}})
    with pytest.raises(DataError, match="newer than this xlsteer reads") as e:  # not: "convert it with upgrade"
        upgrade({"format": "xlsteer.eval", "version": 7})
    assert "upgrade" not in str(e.value).replace("pip install -U", "")
    with pytest.raises(DataError, match=CONVERTER.split(" FILE")[0]):
        upgrade({"format": "xlsteer.unknown"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "xlsteer.eval", "version": 2, "task": "xcopa"}), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_result(bad)
    assert "\n" not in str(e.value) and "does not match the xlsteer.eval schema" in str(e.value)


def test_the_converter_rewrites_older_files(made, tmp_path, capsys):
    from xlsteer.results.__main__ import main

    old = {**load(made["demo"] / "compare_diffmean.json"), "format": "xlsteer.comparison", "format_version": 1}
    old.pop("version")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert main(["upgrade", str(path)]) == 0
    assert validate(load(path)).format == "xlsteer.paired" and "upgraded" in capsys.readouterr().out
