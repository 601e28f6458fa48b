"""The bad-input catalogue, continued (see ``test_bad_inputs.py``): what commands read and parse.

Categories: **downloads** (``data fetch`` options that mean nothing; the hostile servers are in
``test_fetch_limits.py``), **readers** (files of every kind read at the boundary with limits:
size, depth, non-finite numbers, special files, symlink loops) and **values** (values that
parse but mean nothing: method parameters of ``fit -p`` / ``compare -O`` with unknown keys,
wrong types or out-of-range values before any model time, ``ref_norm``, layers past the model,
site names). Each case ends as the catalogue promises (``catalogue.run_case``).
"""

from __future__ import annotations

import resource
import tracemalloc

import pytest

from catalogue import run_case
from xlsteer.cli import main

CASES = {
    "downloads": [
        ("fetch_timeout_nan", "data fetch --dest {out}/d --timeout nan", 2, "--timeout"),
        ("fetch_timeout_negative", "data fetch --dest {out}/d --timeout -5", 2, "--timeout"),
        ("fetch_mirror_not_a_url", "data fetch --dest {out}/d --mirror 'not a url'", 2, "not an http(s) URL"),
        ("fetch_mirror_not_http", "data fetch --dest {out}/d --mirror file:///etc", 2, "not an http(s) URL"),
    ],
    "readers": [
        ("report_deeply_nested_results", "report {res_deep} -o {out}/r.html", 2, "deeper than"),
        ("table_nan_in_results", "table {res_nan}", 1, "not finite"),
        ("report_nan_in_results", "report {res_nan} -o {out}/r.html", 2, "not finite"),
        ("table_number_overflows", "table {res_overflow}", 1, "not finite"),
        ("table_600mb_sparse_results", "table {huge_results}", 1, "more than the"),
        ("tasks_1gib_sparse_spec", "tasks --task {sparse_spec}", 1, "more than the"),
        ("tasks_1gib_sparse_jsonl", "tasks --task {sparse_jsonl_spec}", 1, "more than the"),
        ("tasks_symlink_loop_in_the_data", "tasks --task {loop_spec}", 1, "cannot be resolved"),
        ("collect_corpus_file_is_a_pipe", "collect --model {T} --langs en,de --data {fifo_corpus} "
         "-o {out}/s.safetensors", 1, "not a regular file"),
        ("categories_number_overflows", "analyze --model {T} --langs en,de --data {corpus} --limit 2 "
         "--categories {categories_overflow} -o {out}/run", 1, "not finite"),
        ("inspect_mistyped_provenance", "inspect {provenance_text}", 1, "'provenance' must be"),
        ("eval_relative_without_ref_norm", "eval --model {T} --task xcopa --langs sw --limit 1 --no-cache "
         "--intervention {rel_no_ref_norm} -o {out}/r.json", 1, "no ref_norm"),
    ],
    "values": [
        ("compare_option_unknown_key", "compare --model {T} --task xcopa --langs en,sw --methods icl-en "
         "-O icl-en.nosuch=1 -o {out}/cmp", 2, "has no parameter 'nosuch'"),
        ("compare_option_wrong_type", "compare --model {T} --task xcopa --langs en,sw --methods icl-en "
         "-O icl-en.k=abc -o {out}/cmp", 2, "wrong type"),
        ("compare_option_out_of_range", "compare --model {T} --task xcopa --langs en,sw --methods clas "
         "-O clas.beta=-1 -o {out}/cmp", 2, "out of range"),
        ("compare_option_not_finite", "compare --model {T} --task xcopa --langs en,sw --methods diffmean "
         "-O diffmean.alphas=[1,1e999] -o {out}/cmp", 2, "not a finite number"),
        ("compare_option_for_a_method_not_run", "compare --model {T} --task xcopa --langs en,sw --methods icl-en "
         "-O sft.steps=2 -o {out}/cmp", 2, "not among the methods run"),
        ("compare_option_site_not_a_site", "compare --model {T} --task xcopa --langs en,sw --methods diffmean "
         "-O diffmean.site=7 -o {out}/cmp", 2, "site"),
        ("fit_ref_norm_zero", "fit diffmean --model {T} --langs de --data {corpus} -p normalize=relative "
         "-p ref_norm=0 -o {out}/v.safetensors", 2, "out of range"),
        ("fit_choice_not_a_choice", "fit lape --model {T} --langs de --data {corpus} -p mode=sideways "
         "-o {out}/v.safetensors", 2, "one of deactivate, amplify"),
        ("intervention_ref_norm_zero", "inspect {rel_ref_norm_zero}", 1, "finite number > 0"),
        ("intervention_ref_norm_negative", "export gguf {rel_ref_norm_negative} --lang de -o {out}/v.gguf", 1,
         "finite number > 0"),
        ("intervention_ref_norm_text", "eval --model {T} --task xcopa --langs sw --limit 1 --no-cache "
         "--intervention {rel_ref_norm_text} -o {out}/r.json", 1, "ref_norm must be an object"),
        ("export_layer_past_the_model", "export gguf {layer_past_model} --lang de -o {out}/v.gguf", 1,
         "outside the model"),
        ("intervention_site_param_not_a_site", "inspect {site_param_number}", 1, "not a site name"),
        ("sweep_unknown_site", "sweep --model {T} --task xcopa --langs sw --limit 1 --stats {stats} "
         "--site resid_mid -o {out}/r.json", 2, "unknown site"),
    ],
}
_IDS = [(cat, c[0]) for cat, cases in CASES.items() for c in cases]


def test_every_category_has_cases():
    assert all(len(cases) >= 3 for cases in CASES.values())
    assert len({i for _, i in _IDS}) == len(_IDS)


@pytest.mark.parametrize("category, case_id", _IDS, ids=[f"{c}:{i}" for c, i in _IDS])
def test_bad_input_read(catalogue_files, category, case_id, tmp_path, capsys, monkeypatch):
    from xlsteer.models import loading

    _, command, expected, message = next(c for c in CASES[category] if c[0] == case_id)
    if category == "values" and case_id.startswith("compare_"):  # refused before any model time
        monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    out.mkdir()
    run_case(catalogue_files, command, expected, message, out, capsys)


@pytest.mark.parametrize("spec", ["sparse_spec", "sparse_jsonl_spec"])
def test_a_1gib_sparse_file_fails_without_being_read(catalogue_files, spec, capsys):
    """The refusal comes from the file's size, before it is read: memory stays far below 1 GiB."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        code = main(["tasks", "--task", catalogue_files[spec]])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1 and "more than the" in capsys.readouterr().err
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB allocated while refusing a 1 GiB file"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 256 * 1024, f"resident memory grew by {grown_kib / 1024:.0f} MiB"


def test_a_jsonl_line_past_its_bound_is_refused_streaming(tmp_path, capsys, monkeypatch):
    """Within the file-size limit, a line longer than the line bound fails without reading on."""
    from xlsteer import bounded
    from catalogue import RECORDS, SPEC

    import json

    monkeypatch.setitem(bounded.LINE_LIMITS, "lines", 1000)
    (tmp_path / "en.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    (tmp_path / "sw.jsonl").write_text(json.dumps(RECORDS[0]) + "\n" + "x" * 5000 + "\n", encoding="utf-8")
    (tmp_path / "s.yaml").write_text(SPEC.format(name="t", en="en.jsonl", sw="sw.jsonl"), encoding="utf-8")
    assert main(["tasks", "--task", str(tmp_path / "s.yaml")]) == 1
    assert "line 2 is longer than" in capsys.readouterr().err


def test_numeric_answers_are_parsed_without_overflow():
    from xlsteer.evaluation.metrics_numeric import extract_number, mgsm_exact_match

    assert not mgsm_exact_match("1e400", "400", "en") and not mgsm_exact_match("The answer is 1e400", 400, "en")
    assert extract_number("1e400", "en") == "1E+400" and extract_number("1e999999999", "en") == "1E+999999999"
    assert mgsm_exact_match("The answer is 4e2", 400, "en") and extract_number("2.5E-3") == "0.0025"


def test_each_method_declares_exactly_its_settable_parameters():
    """-p/-O parameters are declared once, with the fit function: every declared name is one of its
    parameters (its settings record's fields included), every parameter a user may set (not one the
    command passes itself) is declared, and every default is a value the declaration accepts."""
    import dataclasses
    import inspect

    from xlsteer.cli.params import _RESERVED
    from xlsteer.interventions.registry import get_method, method_names
    from xlsteer.settings import _record_in, parameters_of

    for name in ("diffmean", "learned", "incline", "clas", "lape", "intmu"):
        assert name in method_names()
        spec = get_method(name)
        settable = {k for k in parameters_of(spec.fit) if k not in _RESERVED}
        assert set(spec.params) == settable, (name, sorted(settable ^ set(spec.params)))
        defaults: dict = {}
        for key, p in inspect.signature(spec.fit).parameters.items():
            record = _record_in(p.annotation, spec.fit.__globals__)
            if record is None:
                defaults[key] = p.default
            else:
                defaults.update({f.name: f.default for f in dataclasses.fields(record)})
        for key, param in spec.params.items():
            default = defaults[key]
            assert default in (inspect.Parameter.empty, dataclasses.MISSING) or param.accepts(default), \
                (name, key, default)


def test_the_cache_skips_a_line_past_its_bound_and_keeps_the_rest(tmp_path, monkeypatch):
    """The per-item cache is streamed: a line longer than any record is skipped (its item is
    recomputed), the lines around it are read, and a torn last line is cut off."""
    import json

    from xlsteer import bounded
    from xlsteer.evaluation.engine_cache import _Store

    monkeypatch.setitem(bounded.LINE_LIMITS, "cache", 200)
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"scope": {}}), json.dumps({"k": "a", "v": 1}), json.dumps({"k": "big", "v": "x" * 1000}),
             json.dumps({"k": "b", "v": 2})]
    path.write_text("\n".join(lines) + "\n" + '{"k": "torn", "v"', encoding="utf-8")
    store = _Store(path, {})
    assert store.data == {"a": 1, "b": 2}
    assert path.read_text(encoding="utf-8").endswith(lines[-1] + "\n"), "the torn line is cut off"


def test_a_control_vector_past_its_size_limit_is_refused_before_parsing(catalogue_files, tmp_path, monkeypatch):
    from xlsteer import bounded
    from xlsteer.errors import ArtifactError
    from xlsteer.export.gguf import read_control_vector

    out = tmp_path / "v.gguf"
    assert main(["export", "gguf", catalogue_files["vec"], "--lang", "de", "-o", str(out)]) == 0
    monkeypatch.setitem(bounded.FILE_LIMITS, "gguf", 100)
    with pytest.raises(ArtifactError, match="more than the 100 bytes"):
        read_control_vector(out)
    monkeypatch.setenv(bounded.ENV_VAR, "1")  # the one knob that raises every limit
    assert 1 in read_control_vector(out)


def test_a_data_dir_file_is_streamed_line_by_line(tmp_path, monkeypatch):
    """The built-in tasks' TSV/JSONL files are read like every line-oriented file: CRLF and a BOM
    handled as before, and a line past its bound refused by number without reading on."""
    from xlsteer import bounded
    from xlsteer.errors import DataError
    from xlsteer.evaluation.tasks.base import read_lines

    path = tmp_path / "dev.tsv"
    path.write_bytes("\ufeffa\tb\r\nc\td\r\n\r\ne\n".encode("utf-8"))
    assert read_lines(path) == ["a\tb", "c\td", "", "e"]
    monkeypatch.setitem(bounded.LINE_LIMITS, "lines", 100)
    path.write_bytes(b"a\tb\n" + b"x" * 500 + b"\nc\n")
    with pytest.raises(DataError, match="line 2 is longer than"):
        read_lines(path)
    path.write_bytes(b"a\n\xff\n")
    with pytest.raises(DataError, match="not UTF-8 .line 2"):
        read_lines(path)
