"""Fuzz tests of the commands that read user files (hypothesis), called as a user calls them.

Valid files of each kind the CLI reads at its boundary -- results (eval, sweep, control,
analysis), older-format results (``results upgrade``), interventions and statistics
(``inspect``, ``export gguf``), a JSONL task spec and its data (``tasks --task``) -- are mutated
as in ``test_fuzz_readers`` (values swapped for other types, huge or non-finite numbers, deep
nesting, truncation, flipped bytes, other encodings) and handed to ``xlsteer report``, ``table``,
``results upgrade``, ``inspect``, ``export gguf`` and ``tasks --task``. Each must exit 0, 1 or 2
with at most one ``error:`` line, never a traceback, and leave no output file when it fails.
The normal run tries a few examples per command (seconds); ``-m fuzz`` runs many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_fuzz_readers import _VALUES, make_valid_files, mutated_bytes, mutated_json
from xlsteer.cli import main

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SPEC = "name: fuzzy\nkind: multiple_choice\nfiles: {en: en.jsonl, sw: sw.jsonl}\nsplits: {dev: \"0-0\", test: \"1-\"}\n"
RECORDS = [{"context": "The sky is", "choices": ["blue", "green"], "gold": 0},
           {"context": "Water is", "choices": ["dry", "wet"], "gold": 1},
           {"context": "Fire is", "choices": ["hot", "cold"], "gold": 0}]


def control_doc() -> dict:
    rows = [{"prompt_lang": "sw", "target_lang": "en", "n": 20, "unsteered_share": 0.1, "steered_share": 0.65,
             "unsteered_ci": [0.0, 0.25], "steered_ci": [0.45, 0.85], "diff": 0.55, "diff_ci": [0.3, 0.8],
             "p": 0.0004, "test": "mcnemar"}]
    return {"format": "xlsteer.control", "version": 1, "model": "tiny-llama", "method": "diffmean", "layer": 1,
            "alpha": 4.0, "n_new_tokens": 8, "rows": rows, "provenance": {"versions": {"xlsteer": "0.1.0"}}}


def legacy_doc(results: dict) -> dict:
    """The eval file as the format before the typed schema wrote it (``results upgrade`` input)."""
    doc = {k: v for k, v in results.items() if k not in ("format", "version")}
    return {"format": "xlsteer.results", "format_version": 1, **doc}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Any]:
    """One valid input of each kind (the readers' fuzz files plus a sweep, a control, an analysis)."""
    torch.set_num_threads(1)
    files = make_valid_files(tmp_path_factory.mktemp("cli_valid"), tmp_path_factory.mktemp("cli_examples"))
    from xlsteer.analysis.run import AnalysisInputs, analyze
    from xlsteer.evaluation.sweep import sweep
    from xlsteer.interventions.base import Intervention
    from xlsteer.testing import tiny_model

    lm = tiny_model("llama")
    iv = Intervention.load(files["vector"])
    files["sweep"] = json.loads(json.dumps(sweep(lm, "xcopa", ["en", "sw"], intervention=iv, alphas=[1.0],
                                                 split="dev", limit=2, n_boot=50), default=str))
    files["control"] = control_doc()
    run = Path(files["root"]) / "analysis_run"
    texts = {"en": ["the red house", "a dog runs", "water is cold"], "de": ["das rote Haus", "ein Hund läuft",
                                                                         "Wasser ist kalt"]}
    analyze(lm, run, texts, [1], {"diffmean": iv}, projections=(),
            inputs=AnalysisInputs(meta={"corpus": "t", "data_hash": "x"}))
    files["analysis"] = json.loads((run / "analysis_similarity_diffmean.json").read_text(encoding="utf-8"))
    files["legacy"] = legacy_doc(files["results"])
    return files


# ---- one CLI call, judged ---------------------------------------------------------------------


def crash_of(argv: list[str], out: Path | None = None) -> str | None:
    """None when the command ended as the CLI promises; else what went wrong (a traceback's last
    frame and exception, several error lines, or an output left behind by a failed command)."""
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            code = main(argv)
        except BaseException as e:  # noqa: BLE001 - anything escaping main() is the bug being looked for
            frame = traceback.extract_tb(e.__traceback__)[-1]
            return f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno} ({str(e)[:80]!r})"
    lines = [line for line in err.getvalue().splitlines() if line.strip() and not line.startswith("warning:")]
    if code not in (0, 1, 2):
        return f"exit code {code}"
    if code != 0 and (len(lines) != 1 or not lines[0].startswith("error: ")):
        return f"exit {code} with stderr {err.getvalue()[:300]!r}"
    if "Traceback" in err.getvalue() + std.getvalue():
        return "a traceback was printed"
    if code != 0 and out is not None and out.exists():
        return f"a failed command left {out.name}"
    return None


_WORK: list[Path] = []


def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="cli-", dir=_WORK[0]))


def _json_file(folder: Path, name: str, doc: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps(doc, allow_nan=True), encoding="utf-8")
    return path


def _draw_doc(data: Any, valid: dict[str, Any], kind: str) -> bytes:
    """A mutated JSON document of ``kind`` (value level or byte level)."""
    if data.draw(st.booleans()):
        return json.dumps(data.draw(mutated_json(valid[kind])), allow_nan=True).encode("utf-8")
    return data.draw(mutated_bytes(json.dumps(valid[kind]).encode("utf-8")))


def _draw_safetensors(data: Any, valid: dict[str, Any], kind: str, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / f"{kind}.safetensors"
    if data.draw(st.booleans()):
        tensors, meta = valid[kind + "_parts"]
        save_file(tensors, str(path), metadata={"xlsteer": json.dumps(data.draw(mutated_json(meta)), allow_nan=True)})
    else:
        path.write_bytes(data.draw(mutated_bytes(Path(valid[kind]).read_bytes())))
    return path


# ---- the entry points -------------------------------------------------------------------------


def _report(valid: dict[str, Any], data: Any) -> str | None:
    folder = _folder()
    kind = data.draw(st.sampled_from(["results", "sweep", "control", "analysis"]))
    path = folder / f"{kind}.json"
    path.write_bytes(_draw_doc(data, valid, kind))
    out = folder / "out" / "page.html"
    target = path if data.draw(st.booleans()) else folder
    return crash_of(["report", str(target), "-o", str(out)], out)


def _table(valid: dict[str, Any], data: Any) -> str | None:
    folder = _folder()
    kind = data.draw(st.sampled_from(["results", "sweep"]))
    path = folder / "r.json"
    path.write_bytes(_draw_doc(data, valid, kind))
    out = folder / "t.md"
    return crash_of(["table", str(path), "-o", str(out)], out)


def _upgrade(valid: dict[str, Any], data: Any) -> str | None:
    folder = _folder()
    path = folder / "old.json"
    path.write_bytes(_draw_doc(data, valid, data.draw(st.sampled_from(["legacy", "results"]))))
    out = folder / "new.json"
    problem = crash_of(["results", "upgrade", str(path), "-o", str(out)], out)
    if problem is None and out.exists():  # what upgrade writes, its own readers accept
        from xlsteer.errors import XlsteerError
        from xlsteer.results.read import load_result

        try:
            load_result(out)
        except XlsteerError as e:
            problem = f"upgrade wrote a file its own reader refuses ({e})"
    return problem


def _inspect(valid: dict[str, Any], data: Any) -> str | None:
    kind = data.draw(st.sampled_from(["vector", "clas", "stats"]))
    path = _draw_safetensors(data, valid, kind, _folder())
    return crash_of(["inspect", str(path)] + (["--json"] if data.draw(st.booleans()) else []))


def _export(valid: dict[str, Any], data: Any) -> str | None:
    folder = _folder()
    path = _draw_safetensors(data, valid, data.draw(st.sampled_from(["vector", "vector", "clas"])), folder)
    out = folder / "v.gguf"
    return crash_of(["export", "gguf", str(path), "--lang", "de", "-o", str(out)], out)


def _tasks(valid: dict[str, Any], data: Any) -> str | None:
    folder = _folder()
    lines = [json.dumps(r) for r in RECORDS]
    what = data.draw(st.sampled_from(["spec", "record", "bytes"]))
    spec, sw = SPEC.encode(), "\n".join(lines).encode()
    if what == "spec":
        spec = data.draw(mutated_bytes(spec)) if data.draw(st.booleans()) else \
            (SPEC + f"extra: {json.dumps(data.draw(_VALUES))}\n").encode()
    elif what == "record":
        i = data.draw(st.integers(0, len(RECORDS) - 1))
        recs = [dict(r) for r in RECORDS]
        recs[i] = data.draw(mutated_json(recs[i]))
        sw = "\n".join(json.dumps(r, allow_nan=True) for r in recs).encode()
    else:
        sw = data.draw(mutated_bytes(sw))
    (folder / "en.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "sw.jsonl").write_bytes(sw)
    (folder / "spec.yaml").write_bytes(spec)
    return crash_of(["tasks", "--task", str(folder / "spec.yaml")])


ENTRY_POINTS: dict[str, Callable[[dict[str, Any], Any], str | None]] = {
    "report": _report, "table": _table, "upgrade": _upgrade, "inspect": _inspect, "export": _export, "tasks": _tasks}


def _case(budget: settings, name: str) -> Callable[[dict[str, Any]], None]:
    @budget
    @given(data=st.data())
    def run(valid, data):
        problem = ENTRY_POINTS[name](valid, data)
        assert problem is None, problem

    return run


@pytest.fixture
def work(tmp_path):
    _WORK[:] = [tmp_path]
    os.environ.pop("XLSTEER_DEBUG", None)
    yield tmp_path


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_command_reads_or_fails_with_one_line(valid, work, entry):
    _case(FAST, entry)(valid)


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_command_long_fuzz(valid, work, entry):
    _case(LONG, entry)(valid)


def test_the_valid_inputs_pass(valid, work):
    """The fuzzing starts from files every command accepts (else it would only test refusals)."""
    folder = _folder()
    results = _json_file(folder, "r.json", valid["results"])
    assert main(["table", str(results)]) == 0
    assert main(["report", str(results), "-o", str(folder / "r.html")]) == 0
    legacy = _json_file(folder, "old.json", valid["legacy"])
    assert main(["results", "upgrade", str(legacy), "-o", str(folder / "new.json")]) == 0
    assert main(["table", str(folder / "new.json")]) == 0
    assert main(["inspect", str(valid["vector"])]) == 0
    assert main(["export", "gguf", str(valid["vector"]), "--lang", "de", "-o", str(folder / "v.gguf")]) == 0
    (folder / "en.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    (folder / "sw.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    (folder / "spec.yaml").write_text(SPEC, encoding="utf-8")
    assert main(["tasks", "--task", str(folder / "spec.yaml")]) == 0
