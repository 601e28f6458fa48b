"""Markdown tables of results files: every figure comes from the file, warnings included."""

from __future__ import annotations

import json

import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import DataError
from xlsteer.evaluation.tables import comparison_table, results_tables, run_table
from xlsteer.formats import p_value
from xlsteer.results.schema import validate
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "tiny")
    lm.tokenizer.save_pretrained(root / "tiny")
    g = torch.Generator().manual_seed(3)
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.randn(2, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["sw", "zh"], anchor="en", strength=4.0)
    iv_path = iv.save(root / "v.safetensors")
    common = ["-q", "eval", "--model", str(root / "tiny"), "--langs", "en,sw,zh", "--split", "dev", "--limit", "6",
              "--no-cache"]
    assert main([*common, "--task", "xnli", "-o", str(root / "plain.json")]) == 0
    assert main([*common, "--task", "xcopa", "--intervention", str(iv_path), "-o", str(root / "steered.json")]) == 0
    return {name: validate(json.loads((root / f"{name}.json").read_text(encoding="utf-8")))
            for name in ("plain", "steered")}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(table: str, first: str, second: str | None = None) -> list[str]:
    return next(_cells(line) for line in table.splitlines() if line.startswith("|") and _cells(line)[0] == first
                and (second is None or _cells(line)[1] == second))


def test_run_table_reads_every_figure_from_the_file(files):
    res = files["plain"]
    table = run_table(res)
    for lang in res.langs:
        d = res.per_lang[lang]
        row = _row(table, lang)
        acc = d.metrics["acc"]
        assert row[1] == str(d.n) and row[2] == f"{acc.mean:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]"
        assert row[-1].startswith(f"{d.degenerate.majority_share:.0%}")
        assert ("degenerate" in row[-1]) == d.degenerate.degenerate
    avg = _row(table, "avg non-en")
    ci = res.average.ci["acc"]
    assert avg[1] == "12" and avg[2] == f"{res.average.metrics['acc']:.3f} [{ci.ci_low:.3f}, {ci.ci_high:.3f}]"
    assert _row(table, "en")[-3] == "–"  # the anchor has no agreement with itself


def test_steered_file_gives_both_runs_and_the_paired_tests(files):
    res = files["steered"]
    text = results_tables(res)
    heads = [line for line in text.splitlines() if line.startswith("|") and _cells(line)[0] == "lang"]
    assert [_cells(h)[1] for h in heads] == ["n", "n", "metric"]
    table = comparison_table(res)
    t = res.comparison.per_lang["sw"].continuous["margin"]
    assert _row(table, "sw", "margin")[4] == f"{t.diff:+.2f} [{t.diff_ci_low:+.2f}, {t.diff_ci_high:+.2f}]"
    assert _row(table, "sw", "acc")[6] == p_value(res.comparison.per_lang["sw"].metrics["acc"].p_holm)
    avg = res.comparison.average.tests["acc"]
    row = _row(table, "avg non-en", "acc")
    assert row[4].startswith(f"{avg.diff:+.3f}") and "stratified_paired_permutation" in row[5]
    assert "Predictions changed by steering" in table


def test_bad_files_are_one_line_errors(files, tmp_path, capsys):
    with pytest.raises(DataError, match="no unsteered baseline"):
        comparison_table(files["plain"])
    with pytest.raises(DataError, match="not an xlsteer eval results file"):
        results_tables(validate({"format": "xlsteer.control", "version": 1, "model": "m", "method": "x", "layer": 1,
                                 "alpha": 1.0, "n_new_tokens": 4, "rows": []}))
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}', encoding="utf-8")
    out = tmp_path / "t.md"
    assert main(["table", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an xlsteer result file" in err and not out.exists()


def test_cli_writes_the_markdown(files, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(files["plain"].model_dump_json(), encoding="utf-8")
    assert main(["table", str(path), "-o", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == run_table(files["plain"]) + "\n"


def test_table_prints_compare_and_sweep_files_too(tmp_path, capsys):
    from report_inputs import build

    made = build(tmp_path)
    assert main(["table", str(made["compare"] / "compare.json")]) == 0
    text = capsys.readouterr().out
    assert text.strip() == (made["compare"] / "compare.md").read_text(encoding="utf-8").strip()
    assert main(["table", str(made["demo"] / "sweep_diffmean.json")]) == 0
    out = capsys.readouterr().out
    assert "selected (all languages): " in out and "| unsteered " in out and "dev gain" in out
    assert main(["table", str(made["demo"] / "control.json")]) == 1
    assert "not xlsteer.control files" in capsys.readouterr().err
