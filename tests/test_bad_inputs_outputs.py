"""The bad-input catalogue, continued (see ``test_bad_inputs.py``): what commands write.

Categories: **outputs** (every writer's output against its inputs, the ``--force`` rule, a bad
output never replacing a good one), **names** (fields of records that become file names) and
**upgrade** (``xlsteer results upgrade``: a real subcommand, newer versions refused with the
right advice, never writing a file its own readers refuse). Each error case ends as the
catalogue promises (``catalogue.run_case``): exit 1 or 2, one ``error:`` line, nothing written,
every input unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from catalogue import one_error_line, run_case
from xlsteer.cli import main

# id, command ({placeholders}: tests/catalogue.py; {out}: an empty output dir), exit code, part of the message
CASES = {
    "outputs": [
        ("report_over_its_results_file", "report {results} -o {results}", 2, "is the input file"),
        ("report_over_a_file_of_its_run_folder", "report {run} -o {run}/notes.txt", 2, "input directory"),
        ("report_over_a_results_file_of_its_run", "report {run} -o {run}/r.json", 2, "is the input file"),
        ("write_tasks_over_existing_configs", "lm-eval --write-tasks {tasks_dir}", 2, "--force"),
        ("upgrade_onto_its_input", "results upgrade {res_v1_unreadable} -o {res_v1_unreadable}", 2,
         "is the input file"),
        ("eval_cache_inside_the_model", "eval --model {T} --task xcopa --langs sw --limit 1 "
         "--cache-dir {T}/cache -o {out}/r.json", 2, "input directory"),
        ("analyze_run_inside_its_corpus", "analyze --model {T} --langs en,de --data {corpus} -o {corpus}/run", 2,
         "input directory"),
        ("collect_over_the_model_config", "collect --model {T} --langs en,de --data {corpus} -o {T}/config.json", 2,
         "input directory"),
        ("export_of_an_invalid_vector", "export gguf {rel_no_ref_norm} --lang de -o {out}/v.gguf", 1, "ref_norm"),
        ("table_over_its_input_through_dotdot", "table {results} -o {corpus}/../results.json", 2, "input file"),
    ],
    "upgrade": [
        ("upgrade_a_newer_version", "results upgrade {res_future}", 1, "newer than this xlsteer reads"),
        ("upgrade_malformed_rows", "results upgrade {res_v1_rows_list} -o {out}/new.json", 1, "'rows' must be"),
        ("upgrade_to_an_unreadable_file", "results upgrade {res_v1_unreadable} -o {out}/new.json", 1,
         "does not match the xlsteer.eval schema"),
        ("upgrade_two_files_to_one_output", "results upgrade {res_future} {results} -o {out}/new.json", 2,
         "one output"),
        ("upgrade_without_a_file", "results upgrade", 2, "missing argument"),
    ],
}
_IDS = [(cat, c[0]) for cat, cases in CASES.items() for c in cases]


def test_every_category_has_cases():
    assert all(len(cases) >= 3 for cases in CASES.values())
    assert len({i for _, i in _IDS}) == len(_IDS)


@pytest.mark.parametrize("category, case_id", _IDS, ids=[f"{c}:{i}" for c, i in _IDS])
def test_bad_output(catalogue_files, category, case_id, tmp_path, capsys):
    _, command, expected, message = next(c for c in CASES[category] if c[0] == case_id)
    out = tmp_path / "out"
    out.mkdir()
    run_case(catalogue_files, command, expected, message, out, capsys)


def test_upgrade_has_help_and_advises_the_right_command(catalogue_files, capsys):
    assert main(["results", "upgrade", "--help"]) == 0
    assert "Convert result files of older formats" in capsys.readouterr().out
    assert main(["results", "upgrade", catalogue_files["res_future"]]) == 1
    line = capsys.readouterr().err.strip()
    assert "pip install -U xlsteer" in line and "xlsteer results upgrade" not in line


def test_upgrade_converts_once_and_leaves_current_files_alone(catalogue_files, tmp_path, capsys):
    doc = json.loads(Path(catalogue_files["results"]).read_text(encoding="utf-8"))
    old = {"format": "xlsteer.results", "format_version": 1, **{k: v for k, v in doc.items()
                                                                  if k not in ("format", "version")}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert main(["results", "upgrade", str(path)]) == 0
    upgraded = path.read_bytes()
    assert json.loads(upgraded)["format"] == "xlsteer.eval" and main(["table", str(path)]) == 0
    capsys.readouterr()
    assert main(["results", "upgrade", str(path)]) == 0
    assert "already xlsteer.eval v2" in capsys.readouterr().out and path.read_bytes() == upgraded


# ---- names: fields of a record that become file names ---------------------------------------

HOSTILE = {"dotdot": "../../escaped", "absolute": "/tmp/xlsteer-catalogue-escape", "nul": "a\x00b",
           "long": "n" * 5000}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_names_from_records_stay_in_the_output_folder(catalogue_files, kind, tmp_path, monkeypatch):
    """A results file whose task, split and main metric are hostile: report writes its figure under
    a slug inside its own folder (the drawing is stubbed: names are the point here)."""
    from xlsteer.analysis import plots

    monkeypatch.setattr(plots, "plot_scores", lambda *a, **k: plots.new_figure(1.0, 1.0))
    value = HOSTILE[kind]
    doc = json.loads(Path(catalogue_files["results"]).read_text(encoding="utf-8"))
    doc.update(task=value, split=value)
    work = tmp_path / "work"
    work.mkdir()
    (work / "r.json").write_text(json.dumps(doc), encoding="utf-8")
    assert main(["report", str(work / "r.json"), "-o", str(tmp_path / "out" / "page.html")]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written[0] == Path("out/page.html") and all(p.parts[0] in ("out", "work") for p in written)
    assert len(list((tmp_path / "out" / "page_figures").glob("scores_*.png"))) == 1
    assert not Path("/tmp/xlsteer-catalogue-escape.png").exists()
    assert all(len(p.name) <= 255 and "\x00" not in p.name for p in tmp_path.rglob("*"))


def test_a_good_gguf_survives_an_invalid_export(catalogue_files, tmp_path, capsys):
    good = tmp_path / "v.gguf"
    assert main(["export", "gguf", catalogue_files["vec"], "--lang", "de", "-o", str(good)]) == 0
    before = (good.read_bytes(), good.stat().st_mtime_ns)
    for bad in ("rel_no_ref_norm", "rel_ref_norm_zero", "layer_past_model"):
        capsys.readouterr()
        one_error_line(capsys, main(["export", "gguf", catalogue_files[bad], "--lang", "de", "-o", str(good)]), 1)
        assert (good.read_bytes(), good.stat().st_mtime_ns) == before
        assert [p.name for p in tmp_path.iterdir()] == ["v.gguf"], "no invalid file left behind"


def test_report_rerun_replaces_its_own_page_only(catalogue_files, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(catalogue_files["run"], run)
    assert main(["report", str(run)]) == 0 and main(["report", str(run)]) == 0
    assert (run / "notes.txt").read_text(encoding="utf-8") == "my notes\n"
