"""Shared pieces of the bad-input catalogue's sibling modules (``test_bad_inputs_*.py``).

``build_files`` makes, once per session, the small valid and broken inputs the cases name by
``{placeholder}``: a tiny model folder, a parallel corpus, statistics and a DiffMean vector, a
results file and a run folder, and broken variants of each (a vector whose ``ref_norm`` is
missing, zero or text, a layer past the model, a non-finite number in a results file, sparse
1 GiB files, a symlink loop, ...). ``run_case`` runs one command in-process and checks the
catalogue's promise: exit 1 or 2, exactly one ``error:`` line naming the problem, no traceback,
nothing written to the output folder, every input unchanged.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

GiB = 1 << 30

SPEC = "name: {name}\nkind: multiple_choice\nfiles: {{en: {en}, sw: {sw}}}\nsplits: {{dev: \"0-0\", test: \"1-\"}}\n"
RECORDS = [{"context": "The sky is", "choices": ["blue", "green"], "gold": 0},
           {"context": "Water is", "choices": ["dry", "wet"], "gold": 1}]


def _intervention_variants(root: Path, vec: Path) -> dict[str, str]:
    """The vector with one metadata field made wrong (each a file of its own)."""
    from safetensors.torch import save_file

    from xlsteer.io import load_tensors

    tensors, meta = load_tensors(vec)
    out: dict[str, str] = {}

    def variant(name: str, tensors_: dict | None = None, **changes: Any) -> None:
        doc = {**meta, **changes}
        save_file(tensors_ or tensors, str(root / f"{name}.safetensors"),
                  metadata={"xlsteer": json.dumps(doc, allow_nan=True)})
        out[name] = str(root / f"{name}.safetensors")

    relative = {**meta["params"], "normalize": "relative"}
    variant("rel_no_ref_norm", params=relative)
    variant("rel_ref_norm_zero", params={**relative, "ref_norm": {"1": 0.0}})
    variant("rel_ref_norm_negative", params={**relative, "ref_norm": {"1": -3.5}})
    variant("rel_ref_norm_text", params={**relative, "ref_norm": "large"})
    variant("site_param_number", params={**meta["params"], "site": 7})
    variant("provenance_text", provenance="yesterday")
    past = {k.replace("@1", "@9"): v for k, v in tensors.items()}
    variant("layer_past_model", past, sites=["resid_post@9"])
    return out


def _results_variants(root: Path, results: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, text in {
        "res_nan": json.dumps(results).replace('"mean": 0.0', '"mean": NaN', 1),
        "res_overflow": json.dumps(results).replace('"n": 2', '"n": 2, "extra": 1e400', 1),
        "res_deep": json.dumps({**results, "x": 0})[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}",
        "res_future": json.dumps({**results, "version": 9}),
        "res_v1_rows_list": json.dumps({"format": "xlsteer.compare", "format_version": 1, "rows": [1, 2]}),
        "res_v1_unreadable": json.dumps({"format": "xlsteer.results", "format_version": 1, "task": "xcopa"}),
        "categories_overflow": '{"0": {"dead": 1e400}}',
    }.items():
        (root / f"{name}.json").write_text(text, encoding="utf-8")
        out[name] = str(root / f"{name}.json")
    assert "NaN" in (root / "res_nan.json").read_text() and "1e400" in (root / "res_overflow.json").read_text()
    return out


def _sparse(path: Path, size: int = GiB) -> str:
    """A file of ``size`` bytes that takes no disk space (all zero bytes, no line break)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def _task_files(root: Path) -> dict[str, str]:
    """A good JSONL task, a 1 GiB sparse spec, a spec over a 1 GiB sparse JSONL file, a symlink loop."""
    task = root / "task"
    task.mkdir()
    for lang in ("en", "sw"):
        (task / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    (task / "spec.yaml").write_text(SPEC.format(name="good", en="en.jsonl", sw="sw.jsonl"), encoding="utf-8")
    _sparse(task / "huge.jsonl")
    (task / "huge_data.yaml").write_text(SPEC.format(name="huge", en="en.jsonl", sw="huge.jsonl"), encoding="utf-8")
    _sparse(task / "sparse.yaml")
    os.symlink("loop_b.jsonl", task / "loop_a.jsonl")
    os.symlink("loop_a.jsonl", task / "loop_b.jsonl")
    (task / "loop.yaml").write_text(SPEC.format(name="loop", en="en.jsonl", sw="loop_a.jsonl"), encoding="utf-8")
    return {"spec": str(task / "spec.yaml"), "sparse_spec": str(task / "sparse.yaml"),
            "sparse_jsonl_spec": str(task / "huge_data.yaml"), "loop_spec": str(task / "loop.yaml")}


def build_files(root: Path) -> dict[str, str]:
    """Every input the sibling catalogue modules name (seconds, on the tiny model)."""
    import torch

    from xlsteer.stats import collect_statistics
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.models.loading import load_model
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    torch.manual_seed(0)
    e: dict[str, str] = {"root": str(root)}
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "tiny")
    tiny.tokenizer.save_pretrained(root / "tiny")
    e["T"] = str(root / "tiny")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("the cat sat\nit rains today\nwe went home\n", encoding="utf-8")
    (corpus / "de.txt").write_text("die Katze saß\nes regnet heute\nwir gingen heim\n", encoding="utf-8")
    e["corpus"] = str(corpus)
    lm = load_model(e["T"])
    stats = collect_statistics(lm, langs=["en", "de"], sites=[Site(0, "resid_post"), Site(1, "resid_post")],
                               corpus=str(corpus), limit=3)
    e["stats"] = str(stats.save(root / "stats.safetensors"))
    vec = fit_diffmean(stats, [1], ["de"], anchor="en", meta={"model_fingerprint": lm.fingerprint})
    e["vec"] = str(vec.save(root / "vec.safetensors"))
    e.update(_intervention_variants(root, Path(e["vec"])))
    from xlsteer.cli import main

    assert main(["eval", "--model", e["T"], "--task", "xcopa", "--langs", "en,sw", "--limit", "2", "--no-cache",
                 "-o", str(root / "results.json")]) == 0
    e["results"] = str(root / "results.json")
    e.update(_results_variants(root, json.loads((root / "results.json").read_text(encoding="utf-8"))))
    run = root / "run"
    run.mkdir()
    shutil.copy(root / "results.json", run / "r.json")
    (run / "notes.txt").write_text("my notes\n", encoding="utf-8")
    e["run"] = str(run)
    e["huge_results"] = _sparse(root / "huge_results.json", 600 << 20)
    (root / "tasks_dir").mkdir()
    (root / "tasks_dir" / "xcopa_sw.yaml").write_text("my own config\n", encoding="utf-8")
    e["tasks_dir"] = str(root / "tasks_dir")
    fifo = root / "fifo_corpus"
    fifo.mkdir()
    (fifo / "en.txt").write_text("hello\n", encoding="utf-8")
    os.mkfifo(fifo / "de.txt")
    e["fifo_corpus"] = str(fifo)
    e.update(_task_files(root))
    return e


def _state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root`` (not the sparse ones' bytes: they are 1 GiB)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def one_error_line(capsys: Any, code: int, expected: int) -> str:
    cap = capsys.readouterr()
    assert code == expected, f"exit code {code}, expected {expected}\nstderr: {cap.err}\nstdout: {cap.out[-2000:]}"
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{cap.err}"
    assert lines[0].startswith("error: ") and "Traceback" not in cap.err + cap.out, lines[0]
    return lines[0]


def run_case(files: dict[str, str], command: str, expected: int, message: str, out: Path, capsys: Any) -> str:
    """Run one catalogue case; returns its error line (after every check of the catalogue's promise)."""
    from xlsteer.cli import main

    root = Path(files["root"])
    before = _state(root)
    argv = [part.format(**files, out=str(out)) for part in shlex.split(command)]
    capsys.readouterr()
    line = one_error_line(capsys, main(argv), expected)
    assert message.lower() in line.lower(), line
    assert len(line) < 600, "one short line"
    assert sorted(os.listdir(out)) == [], "nothing (no result, no temp file) is left in the output directory"
    assert _state(root) == before, "every input is unchanged (bytes and modification time)"
    return line
