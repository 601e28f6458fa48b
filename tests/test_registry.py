"""Registries resolved on first use: a built-in row is a ``"module:attr"`` string imported when the
name is first asked for; the module it names may register that very object; any other second
registration is refused; rows registered while a plugin loads remember that plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import xlsteer.registry as R
from xlsteer.errors import UsageError
from xlsteer.registry import PluginOrigin, Registry, loading, require_plugins


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write importable modules into a fresh folder on sys.path; forgets them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def no_loaded_plugins(monkeypatch):
    monkeypatch.setattr(R, "_LOADED", [])


def test_a_row_is_imported_when_first_asked_for(modules):
    modules("rows_lazy", "IMPORTS = [1]\nTHING = object()\n")
    reg = Registry("thing", {"a": "rows_lazy:THING"})
    assert reg.names() == ["a"] and "a" in reg and "A" not in reg
    assert "rows_lazy" not in sys.modules  # listing and membership import nothing
    thing = reg.get("a")
    assert thing is sys.modules["rows_lazy"].THING and reg.get("a") is thing


def test_the_module_a_row_names_may_register_that_object(modules):
    modules("rows_home", """
        from xlsteer.registry import Registry
        REG = Registry("method", {"f": "rows_def:f", "g": "rows_def:g"})
    """)
    modules("rows_def", """
        from rows_home import REG

        def f():
            return "f"

        REG.register("f", f)

        def g():
            return "g"
    """)
    reg = sys.modules.get("rows_home") or __import__("rows_home")
    assert reg.REG.get("f")() == "f" and reg.REG.get("g")() == "g"  # registered by its module / read from it
    with pytest.raises(UsageError, match="a method named 'f' is already registered"):
        reg.REG.register("f", lambda: "other")


def test_a_row_naming_a_missing_attribute_is_one_line(modules):
    modules("rows_empty", "")
    with pytest.raises(UsageError, match="rows_empty has no attribute 'nope'"):
        Registry("thing", {"x": "rows_empty:nope"}).get("x")


def test_names_duplicates_and_temporary_rows():
    reg: Registry[int] = Registry("number", {"one": 1}, key=str.lower)
    reg.register("Two", 2)
    assert reg.names() == ["one", "two"] and reg.get("TWO") == 2
    with pytest.raises(UsageError, match="already registered"):
        reg.register("two", 22)
    with reg.temporarily("two", 3, replace=True) as value:
        assert value == 3 and reg.get("two") == 3
    assert reg.get("two") == 2
    with reg.temporarily("three", 3):
        assert reg.names() == ["one", "two", "three"]
    assert "three" not in reg
    with pytest.raises(UsageError, match="built-in"):
        reg.unregister("one")
    with pytest.raises(UsageError, match="must be non-empty and without spaces"):
        reg.register("a b", 5)


def test_an_unknown_name_is_one_line_with_the_closest_name():
    reg = Registry("task", {"xcopa": 1, "xnli": 2})
    with pytest.raises(UsageError) as e:
        reg.get("xcpoa")
    assert str(e.value) == "unknown task 'xcpoa' (did you mean 'xcopa'?); choose one of xcopa, xnli"


def test_rows_registered_while_a_plugin_loads_remember_it(no_loaded_plugins):
    reg = Registry("thing")
    origin = PluginOrigin("/plugins/mine.py", "file", "ab" * 32)
    reg.register("before", 0)
    with loading(origin):
        reg.register("mine", 1)
        assert R.current_plugin() == origin
    assert reg.origin("mine") == origin and reg.origin("before") is None and R.current_plugin() is None
    assert R.loaded_plugins() == [origin]
    require_plugins([origin.record()], "x")
    moved = {"ref": "/elsewhere/mine.py", "kind": "file", "sha256": origin.sha256}
    require_plugins([moved], "x")  # the same source under another path


def test_an_artifact_of_a_plugin_not_loaded_names_it_in_one_line(no_loaded_plugins):
    with pytest.raises(UsageError) as e:
        require_plugins([{"ref": "/plugins/gone.py", "kind": "file", "sha256": "cd" * 32}], "intervention file v.st")
    msg = str(e.value)
    assert "\n" not in msg and "intervention file v.st was made with plugin /plugins/gone.py" in msg
    assert "xlsteer --plugin /plugins/gone.py ..." in msg


def test_an_artifact_of_an_edited_plugin_loads_with_a_warning(no_loaded_plugins):
    from xlsteer.errors import XlsteerWarning

    with loading(PluginOrigin("/plugins/mine.py", "file", "ef" * 32)):
        pass
    with pytest.warns(XlsteerWarning, match=r"made with plugin /plugins/mine.py as it was then \(sha256 abababababab\)"):
        require_plugins([{"ref": "/plugins/mine.py", "kind": "file", "sha256": "ab" * 32}], "intervention file v")


def test_a_plugin_that_fails_to_load_is_not_counted_as_loaded(no_loaded_plugins):
    with pytest.raises(RuntimeError):
        with loading(PluginOrigin("/p.py", "file", "")):
            raise RuntimeError("boom")
    assert R.loaded_plugins() == []


def test_a_plugin_row_that_cannot_be_imported_names_the_plugin(no_loaded_plugins):
    reg = Registry("task")
    with loading(PluginOrigin("/plugins/p.py", "file", "")):
        reg.register("t", "no_such_module_for_xlsteer:SPEC")
    with pytest.raises(UsageError, match="task 't' of plugin /plugins/p.py names no_such_module_for_xlsteer:SPEC"):
        reg.get("t")


LAZY_CHECK = """
import json, sys
import xlsteer.interventions, xlsteer.evaluation.tasks, xlsteer.models.sites
from xlsteer.interventions import get_method, method_names
from xlsteer.evaluation.tasks import task_names
method_modules = ["vector", "learned", "incline", "clas", "neurons"]
task_modules = ["mgsm", "xcopa", "xnli", "xquad"]
def loaded():
    return ([m for m in method_modules if f"xlsteer.interventions.{m}" in sys.modules],
            [t for t in task_modules if f"xlsteer.evaluation.tasks.{t}" in sys.modules])
out = {"import": loaded(), "names": (method_names(), task_names())}
out["after_names"] = loaded()
get_method("clas")
out["after_clas"] = loaded()
print(json.dumps(out))
"""


def test_importing_the_package_or_listing_names_imports_no_method_or_task():
    proc = subprocess.run([sys.executable, "-c", LAZY_CHECK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["import"] == [[], []] and out["after_names"] == [[], []]
    assert out["names"][0][:6] == ["diffmean", "learned", "incline", "clas", "lape", "intmu"]
    assert out["names"][1][:4] == ["mgsm", "xcopa", "xnli", "xquad"]
    methods, tasks = out["after_clas"]  # CLAS's module (and what it imports itself), nothing else
    assert "clas" in methods and not {"learned", "incline", "neurons"} & set(methods) and tasks == []
