"""Markdown tables of results files: every figure comes from the file, warnings included."""

from __future__ import annotations

import json

import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import DataError
from xlsteer.evaluation.tables import comparison_table, results_markdown, run_table
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
    return {name: json.loads((root / f"{name}.json").read_text(encoding="utf-8")) for name in ("plain", "steered")}


def _row(table: str, first: str) -> list[str]:
    return next([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                if line.startswith(f"| {first} |"))


def test_run_table_reads_every_figure_from_the_file(files):
    res = files["plain"]
    table = run_table(res)
    for lang in res["langs"]:
        d = res["per_lang"][lang]
        row = _row(table, lang)
        acc = d["metrics"]["acc"]
        assert row[1] == str(d["n"]) and row[2] == f"{acc['mean']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"
        assert row[-1].startswith(f"{d['degenerate']['majority_share']:.0%}")
        assert ("degenerate" in row[-1]) == d["degenerate"]["degenerate"]
    avg = _row(table, "avg non-en")
    ci = res["average"]["ci"]["acc"]
    assert avg[1] == "12" and avg[2] == f"{res['average']['metrics']['acc']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"
    assert _row(table, "en")[-3] == "–"  # the anchor has no agreement with itself


def test_steered_file_gives_both_runs_and_the_paired_tests(files):
    res = files["steered"]
    text = results_markdown(res)
    assert text.count("| lang | n |") == 2 and "| lang | metric |" in text
    table = comparison_table(res)
    for line in table.splitlines():
        if line.startswith("| sw | margin |"):
            t = res["comparison"]["per_lang"]["sw"]["continuous"]["margin"]
            assert f"{t['diff']:+.2f} [{t['diff_ci_low']:+.2f}, {t['diff_ci_high']:+.2f}]" in line
    avg = res["comparison"]["average"]["tests"]["acc"]
    row = next(line for line in table.splitlines() if line.startswith("| avg non-en | acc |"))
    assert f"{avg['diff']:+.3f}" in row and "stratified paired bootstrap" in row
    assert "Predictions changed by steering" in table


def test_bad_files_are_one_line_errors(files, tmp_path, capsys):
    with pytest.raises(DataError, match="no unsteered baseline"):
        comparison_table(files["plain"])
    with pytest.raises(DataError, match="not an xlsteer results file"):
        run_table({"format": "something else"})
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}', encoding="utf-8")
    out = tmp_path / "t.md"
    assert main(["table", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an xlsteer results file" in err and not out.exists()


def test_cli_writes_the_markdown(files, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(files["plain"]), encoding="utf-8")
    assert main(["table", str(path), "-o", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == run_table(files["plain"]) + "\n"
