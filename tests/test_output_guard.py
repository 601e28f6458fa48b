"""No command may write over what it reads: the writing commands, found in the CLI itself.

The list of commands that write is not kept by hand: it is every command of ``xlsteer.cli.cli``
with a parameter of the type :class:`xlsteer.cli.guard.Output` (and a parameter named like an
output must have that type). Each is run with every output option equal to each of its inputs
and to a file inside each input folder; each run must refuse in one line, exit 2, before any
work, and leave every input byte-identical with its modification time unchanged. Then the same
guard's other promises: ``report`` over its own earlier page is allowed, ``lm-eval --write-tasks``
replaces configs only with ``--force``, and ``export gguf`` of an invalid vector leaves a good
``.gguf`` as it was and no file behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from xlsteer.cli import cli, main
from xlsteer.cli.guard import Input, Output, writing_commands

# parameter names that write something; each must be declared with the Output type
_OUTPUT_NAMES = ("output", "dest", "write_tasks", "stats_cache", "translation_cache", "cache_dir")

SPEC = "name: guarded\nkind: multiple_choice\nfiles: {en: en.jsonl, sw: sw.jsonl}\nsplits: {dev: \"0-0\", test: \"1-\"}\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """One input of each kind the writing commands read (tiny model, corpus, task, data dir, ...)."""
    from xlsteer.stats import collect_statistics
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    root = tmp_path_factory.mktemp("guard")
    torch.manual_seed(0)
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("the cat sat\nit rains\n", encoding="utf-8")
    (corpus / "de.txt").write_text("die Katze saß\nes regnet\n", encoding="utf-8")
    stats = collect_statistics(lm, langs=["en", "de"], sites=[Site(1, "resid_post")], corpus=str(corpus), limit=2)
    stats.save(root / "stats.safetensors")
    fit_diffmean(stats, [1], ["de"], anchor="en").save(root / "vec.safetensors")
    task = root / "task"
    task.mkdir()
    rec = [{"context": "The sky is", "choices": ["blue", "green"], "gold": 0},
           {"context": "Water is", "choices": ["dry", "wet"], "gold": 1}]
    for lang in ("en", "sw"):
        (task / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in rec) + "\n", encoding="utf-8")
    (task / "spec.yaml").write_text(SPEC, encoding="utf-8")
    data = root / "data"  # a data dir of its own: the shared one is never handed to a writer here
    data.mkdir()
    from xlsteer.data.paths import data_dir

    shutil.copy(data_dir() / "SHA256SUMS", data / "SHA256SUMS")
    results = {"format": "xlsteer.results", "format_version": 1, "task": "xcopa"}
    (root / "old.json").write_text(json.dumps(results), encoding="utf-8")
    run = root / "run"
    (run / "figures").mkdir(parents=True)
    (run / "r.json").write_text(json.dumps({"format": "xlsteer.control", "version": 1}), encoding="utf-8")
    include = root / "include"
    include.mkdir()
    (include / "mytask.yaml").write_text("task: mytask\n", encoding="utf-8")
    (root / "categories.json").write_text("{}", encoding="utf-8")
    (root / "lid.176.bin").write_bytes(b"a language-ID model")  # refused before anything reads it
    return {"lid": str(root / "lid.176.bin"), "model": str(root / "model"), "corpus": str(corpus), "stats": str(root / "stats.safetensors"),
            "vec": str(root / "vec.safetensors"), "spec": str(task / "spec.yaml"), "data": str(data),
            "old": str(root / "old.json"), "run": str(run), "include": str(include),
            "categories": str(root / "categories.json"), "root": str(root)}


# the value each input parameter gets (by parameter name), and what each writing command needs
# besides its inputs to be a valid call; a writing command missing here fails the test below
INPUT_VALUES = {"model": "model", "data_dir": "data", "corpus": "corpus", "task": "spec", "include_path": "include",
                "intervention": "vec", "intervention_files": "vec", "interventions": "vec", "stats_path": "stats",
                "stats_file": "stats", "eval_files": "old", "categories_file": "categories",
                "compare_model": "model", "results": "old", "run_dir": "run", "file": "vec", "files": "old",
                "sweep_path": "old", "lid_model": "lid"}
ARGS = {
    ("collect",): ["--langs", "en,de", "--limit", "1"],
    ("fit",): ["diffmean", "--langs", "de", "--limit", "1"],
    ("eval",): ["--langs", "en,sw", "--limit", "1"],
    ("sweep",): ["--langs", "en,sw", "--limit", "1"],
    ("table",): [],
    ("analyze",): ["--langs", "en,de", "--limit", "2"],
    ("report",): [],
    ("export", "gguf"): ["--lang", "de"],
    ("compare",): ["--langs", "en,sw", "--limit", "1", "--methods", "zero-shot"],
    ("lm-eval",): ["--tasks", "xcopa_sw", "--limit", "1"],
    ("demo",): ["--quick"],
    ("data", "fetch"): ["--mirror", "http://127.0.0.1:9"],
    ("results", "upgrade"): [],
    ("results", "schema"): [],
}
# parameters left out of the base call: they exclude another one given (sweep: --stats or --intervention)
LEFT_OUT = {("sweep",): {"intervention"}, ("eval",): {"sweep_path"}, ("lm-eval",): set()}


def _flag(param) -> str | None:
    return max(param.opts, key=len) if param.param_type_name == "option" else None


def _call(words: tuple[str, ...], cmd, inputs, files: dict[str, str]) -> list[str]:
    """A valid call of ``cmd`` that names every input it declares (positional ones in order)."""
    argv = list(words) + list(ARGS[words])
    for p in inputs:
        if p.name in LEFT_OUT.get(words, set()):
            continue
        value = files[INPUT_VALUES[p.name]]
        flag = _flag(p)
        argv += [flag, value] if flag else [value]
    return argv


def _targets(inputs, words, files: dict[str, str]) -> list[str]:
    """Each input itself, and an existing file inside each input folder."""
    out = []
    for p in inputs:
        if p.name in LEFT_OUT.get(words, set()):
            continue
        value = Path(files[INPUT_VALUES[p.name]])
        out.append(str(value))
        if value.is_dir():
            out.append(str(next(f for f in sorted(value.rglob("*")) if f.is_file())))
    return out


def _state(files: dict[str, str]) -> dict[str, tuple[bytes, int]]:
    root = Path(files["root"])
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_output_parameter_is_declared_as_one():
    """A new option that writes, named like an output, is under the guard (else this fails)."""
    from xlsteer.cli.guard import commands

    for words, cmd in commands(cli):
        for p in cmd.params:
            if p.name in _OUTPUT_NAMES:
                assert isinstance(p.type, Output), f"{' '.join(words)} {p.name} writes but is not an Output"


def test_the_writing_commands_are_found_in_the_cli():
    found = {words for words, *_ in writing_commands(cli)}
    assert {("report",), ("results", "upgrade"), ("lm-eval",), ("export", "gguf"), ("eval",), ("compare",)} <= found
    assert found == set(ARGS), f"give each writing command a valid call in ARGS: {sorted(found ^ set(ARGS))}"


def _cases():
    """(command, output parameter) of every writing command that reads something (data fetch and
    results schema read nothing: they have no input to collide with)."""
    return [(words, out.name) for words, cmd, outs, ins in writing_commands(cli) for out in outs if ins]


@pytest.mark.parametrize("words, output", _cases(), ids=[" ".join(w) + ":" + o for w, o in _cases()])
def test_no_output_may_be_an_input_or_inside_an_input_folder(files, words, output, capsys, monkeypatch):
    from xlsteer.models import loading

    def no_model(*a, **k):  # the guard refuses before any work; loading a model would mean it did not
        raise AssertionError("the command started its work")

    monkeypatch.setattr(loading, "load_model", no_model)
    (_, cmd, outs, inputs), = [r for r in writing_commands(cli) if r[0] == words]
    out = next(p for p in outs if p.name == output)
    base = _call(words, cmd, inputs, files)
    targets = _targets(inputs, words, files)
    assert targets
    for target in targets:
        before = _state(files)
        argv = base + ([_flag(out), target] if _flag(out) else [target])
        capsys.readouterr()
        code = main(argv)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, code, err)
        assert _state(files) == before, f"{argv} changed an input"


def test_report_replaces_its_own_page_in_the_run_folder_but_nothing_else(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0, "a re-run replaces RUN_DIR/report.html, its own page"
    notes = run / "notes.txt"
    notes.write_text("mine", encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(notes)]) == 2
    assert "input directory" in capsys.readouterr().err and notes.read_text(encoding="utf-8") == "mine"
    assert main(["report", str(run / "r.json"), "-o", str(run / "r.json")]) == 2


def test_write_tasks_replaces_configs_only_with_force(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "xcopa_sw.yaml").write_text("mine\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["lm-eval", "--write-tasks", str(tasks)]) == 2
    assert "--force" in capsys.readouterr().err and (tasks / "xcopa_sw.yaml").read_text() == "mine\n"
    assert main(["lm-eval", "--write-tasks", str(tasks), "--force"]) == 0
    assert (tasks / "xcopa_sw.yaml").read_text() != "mine\n"


def test_export_of_an_invalid_vector_keeps_the_good_file(files, tmp_path, capsys):
    from safetensors.torch import save_file

    from xlsteer.io import load_tensors

    good = tmp_path / "v.gguf"
    assert main(["export", "gguf", files["vec"], "--lang", "de", "-o", str(good)]) == 0
    before = (good.read_bytes(), good.stat().st_mtime_ns)
    tensors, meta = load_tensors(files["vec"])
    for i, params in enumerate([{"normalize": "relative"}, {"normalize": "relative", "ref_norm": {"1": 0}},
                                {"normalize": "relative", "ref_norm": "abc"}]):
        bad = tmp_path / f"bad{i}.safetensors"
        save_file(tensors, str(bad), metadata={"xlsteer": json.dumps({**meta, "params": {**meta["params"], **params}})})
        capsys.readouterr()
        assert main(["export", "gguf", str(bad), "--lang", "de", "-o", str(good)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "ref_norm" in err[0], err
        assert (good.read_bytes(), good.stat().st_mtime_ns) == before
        assert sorted(p.name for p in tmp_path.iterdir() if "gguf" in p.name) == ["v.gguf"]


def test_a_written_file_that_fails_its_check_replaces_nothing(tmp_path):
    from xlsteer.errors import ArtifactError
    from xlsteer.io import atomic_write_text

    path = tmp_path / "x.json"
    path.write_text("good", encoding="utf-8")

    def refuse(p: Path) -> None:
        raise ArtifactError(f"{p} is bad")

    with pytest.raises(ArtifactError, match="x.json left unchanged"):
        atomic_write_text(path, "bad", validate=refuse)
    assert path.read_text(encoding="utf-8") == "good" and os.listdir(tmp_path) == ["x.json"]


def test_inputs_and_outputs_are_typed_not_listed():
    """Every command that reads a file declares it as an Input (so the guard sees it)."""
    from xlsteer.cli.guard import commands

    for words, cmd in commands(cli):
        for p in cmd.params:
            if p.name in INPUT_VALUES and not isinstance(p.type, (Input, Output)) and p.name != "task":
                raise AssertionError(f"{' '.join(words)} {p.name} reads a path but is not an Input")
