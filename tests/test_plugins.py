"""Plugins: one external Python file (docs/examples/toy_plugin.py) brings a steering method, an
intervention kind, a task and an architecture to every command, each run in its own process; an
intervention it made names it when it is missing; a broken plugin is one line; XLSTEER_PLUGINS
and the ``xlsteer.plugins`` entry points load the same way."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xlsteer import registry as R
from xlsteer.cli import main
from xlsteer.models.archs import ARCHS
from xlsteer.plugins import load_plugin, load_plugins

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "docs" / "examples" / "toy_plugin.py"
LANGS = "en,de,fr"


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, XLSTEER_QUIET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               XLSTEER_CACHE_DIR=str(root / "cache"))
    env.pop("XLSTEER_DEBUG", None)
    env.pop("XLSTEER_PLUGINS", None)
    return env


def _xlsteer(root: Path, *args: str, plugin: bool = True) -> subprocess.CompletedProcess:
    """``xlsteer [--plugin toy_plugin.py] ARGS`` in a process of its own (caches under ``root``)."""
    cmd = [sys.executable, "-m", "xlsteer", *(["--plugin", str(PLUGIN)] if plugin else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(root), timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny random ToyLM written by the example file itself (run as a script), and ``xlsteer
    --plugin FILE fit toy-shift`` on it: run/shift.safetensors."""
    root = tmp_path_factory.mktemp("toy_plugin")
    proc = subprocess.run([sys.executable, str(PLUGIN), str(root / "toy-model")], capture_output=True, text=True,
                          env=_env(root), timeout=600)
    assert proc.returncode == 0, proc.stderr
    (root / "run").mkdir()
    _ok(_xlsteer(root, "fit", "toy-shift", "--model", str(root / "toy-model"), "--langs", "de,fr", "--limit", "16",
                 "-p", "scale=50", "-o", str(root / "run" / "shift.safetensors")))
    return root


def test_the_plugin_file_works_in_fit_eval_compare_and_report_each_in_its_own_process(toy):
    model, run = str(toy / "toy-model"), toy / "run"
    shift = run / "shift.safetensors"
    from xlsteer.io import load_tensors

    tensors, meta = load_tensors(shift)
    digest = hashlib.sha256(PLUGIN.read_bytes()).hexdigest()
    assert meta["method"] == "toy-shift" and meta["sites"] == ["mlp_out@2"] and set(tensors) == {"shift@2"}
    assert meta["plugins"] == [{"ref": str(PLUGIN.resolve()), "kind": "file", "sha256": digest}]

    _ok(_xlsteer(toy, "eval", "--model", model, "--task", "toy-colours", "--langs", LANGS, "--intervention", str(shift),
                 "-o", str(run / "eval.json")))
    res = json.loads((run / "eval.json").read_text())
    assert res["task"] == "toy-colours" and res["intervention"]["method"] == "toy-shift"
    assert res["task_spec"]["source"] == {"kind": "plugin", "file": "toy_plugin.py"}
    assert res["data"]["files"] == [str(PLUGIN.resolve())]  # the items live in the plugin: its bytes are hashed
    unsteered = {(it["lang"], it["id"]): it["margin"] for it in res["baseline"]["items"]}
    moved = {lang: [it["margin"] != unsteered[(lang, it["id"])] for it in res["items"] if it["lang"] == lang]
             for lang in ("en", "de", "fr")}
    assert not any(moved["en"]) and all(moved["de"]) and all(moved["fr"])  # the anchor is never steered

    _ok(_xlsteer(toy, "compare", "--model", model, "--task", "toy-colours", "--langs", LANGS, "--methods",
                 "zero-shot,toy-shift", "--fit-limit", "16", "-O", "toy-shift.scale=50", "-o", str(run)))
    rec = json.loads((run / "compare.json").read_text())
    row = rec["rows"]["toy-shift"]
    assert rec["methods"] == ["zero-shot", "toy-shift"] and row["error"] is None, row["error"]
    assert row["description"] == "toy shift at mlp_out (strength on dev)"
    assert row["selection"]["grid"] == {"layers": [2], "alphas": [0.5, 1.0]}

    out = _ok(_xlsteer(toy, "report", str(run)))
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "wrote" in out and "toy-colours" in html and "toy-shift" in html


def test_without_the_plugin_its_intervention_is_one_line_naming_the_plugin(toy):
    shift = toy / "run" / "shift.safetensors"
    proc = _xlsteer(toy, "eval", "--model", str(toy / "toy-model"), "--task", "toy-colours", "--langs", "de",
                    "--intervention", str(shift), "-o", str(toy / "never.json"), plugin=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (f"error: intervention file {shift} was made with plugin {PLUGIN.resolve()}; pass it before "
                        f"the command: xlsteer --plugin {PLUGIN.resolve()} ... (or list it in XLSTEER_PLUGINS)")
    assert not (toy / "never.json").exists()
    with pytest.raises(Exception, match="made with plugin"):  # the Python API says the same
        from xlsteer.interventions import load_intervention

        load_intervention(shift)


def test_docs_show_the_example_file_as_it_is():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    shown = doc.split("<!-- toy_plugin.py: begin -->\n```python\n", 1)[1].split("```\n<!-- toy_plugin.py: end -->")[0]
    assert shown == PLUGIN.read_text(encoding="utf-8")


# ---- loading, in this process (every registry is put back after each test) -----------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Registries and loaded plugins restored afterwards; a folder on sys.path for plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("XLSTEER_PLUGINS", raising=False)
    before = set(sys.modules)
    with R.restoring():
        yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("xlsteer_plugin_", "plugmod_")):
            del sys.modules[name]


def _arch_plugin(path: Path, model_type: str, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        from xlsteer.models.archs import register_arch
        register_arch({model_type!r}, like="llama", layers="backbone.layers")
    """) + textwrap.dedent(extra), encoding="utf-8")
    return path


@pytest.mark.parametrize("body, expected", [
    ("def broken(:\n", "syntax error at line 4: invalid syntax"),
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("register_arch('llama', like='gemma2')\n", "an architecture named 'llama' is already registered"),
])
def test_a_broken_plugin_is_one_line_naming_it_and_its_rows_are_taken_back(isolated, capsys, body, expected):
    bad = _arch_plugin(isolated / "bad.py", "half_registered", extra=body)
    assert main(["--plugin", str(bad), "tasks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: plugin {bad.resolve()} failed to load: ") and expected in err
    assert "half_registered" not in ARCHS and R.loaded_plugins() == []


@pytest.mark.parametrize("ref, expected", [
    ("missing_plugin.py", "plugin file missing_plugin.py not found"),
    ("no_such_plugin_module", "'no_such_plugin_module' is neither a Python file nor an importable module"),
])
def test_a_plugin_that_is_not_there_is_one_line(isolated, capsys, ref, expected):
    assert main(["--plugin", ref, "tasks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_env_plugins_load_after_the_command_line_in_order_and_once(isolated, monkeypatch):
    first = _arch_plugin(isolated / "first.py", "from_option")
    _arch_plugin(isolated / "plugmod_env.py", "from_env_module")
    second = _arch_plugin(isolated / "second.py", "from_env_file")
    monkeypatch.setenv("XLSTEER_PLUGINS", os.pathsep.join(["plugmod_env", "", str(second)]))
    loaded = load_plugins([str(first)], entry_points=False)
    assert [(p.ref, p.kind) for p in loaded] == [(str(first.resolve()), "file"), ("plugmod_env", "module"),
                                                 (str(second.resolve()), "file")]
    assert ARCHS.origin("from_env_module").ref == "plugmod_env" and ARCHS.get("from_env_file").layers == "backbone.layers"
    assert ARCHS.origin("from_env_module").sha256 == hashlib.sha256((isolated / "plugmod_env.py").read_bytes()).hexdigest()
    assert load_plugin(first) == loaded[0] and len(R.loaded_plugins()) == 3  # a second load is a no-op


def test_entry_points_of_installed_packages_load(isolated):
    dist = isolated / "toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[xlsteer.plugins]\ntoy = plugmod_ep:register\n", encoding="utf-8")
    (isolated / "plugmod_ep.py").write_text(textwrap.dedent("""
        from xlsteer.models.archs import register_arch
        CALLS = []
        def register():
            CALLS.append(1)
            register_arch("from_entry_point", like="gpt2")
    """), encoding="utf-8")
    loaded = load_plugins(env=False)
    assert [(p.ref, p.kind) for p in loaded] == [("plugmod_ep", "module")]
    assert "from_entry_point" in ARCHS and ARCHS.origin("from_entry_point").ref == "plugmod_ep"
    load_plugins(env=False)
    assert sys.modules["plugmod_ep"].CALLS == [1]


def test_a_plugin_may_add_a_kind_of_task_reference(isolated):
    from xlsteer.evaluation.tasks import TaskSource, get_task, register_task_source, resolve_task

    xcopa = get_task("xcopa")

    def build(ref: str, **options) -> list:
        import dataclasses

        return [dataclasses.replace(xcopa, name=ref.replace(":", "-"))]

    register_task_source("mirror", TaskSource(lambda ref: ref.startswith("mirror:"), build))
    [spec] = resolve_task("mirror:xcopa")
    assert spec.name == "mirror-xcopa" and get_task("mirror-xcopa") is spec
    assert resolve_task("xcopa") == [xcopa]
