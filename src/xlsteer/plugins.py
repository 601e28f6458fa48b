"""User plugins: Python files or modules that add steering methods, intervention kinds, tasks,
architectures and sites to every command, without editing xlsteer.

A plugin is ordinary Python that calls the register functions when it runs
(``register_method``, ``register_intervention``, ``register_task``, ``register_arch``,
``register_site``; docs/plugins.md has a worked example). The command line loads, in this order,
before the subcommand runs:

1. each ``xlsteer --plugin FILE_OR_MODULE`` (repeatable; a ``.py`` path or an importable module),
2. each entry of ``XLSTEER_PLUGINS`` (separated by ``os.pathsep``, ``:`` on Linux and macOS),
3. the entry points of group ``xlsteer.plugins`` of installed packages (an entry point names a
   module, imported, or a function, called once with no arguments).

The Python API loads nothing by itself: call :func:`load_plugins` (the same three sources) or
:func:`load_plugin`. Every row a plugin registers remembers it (:mod:`xlsteer.registry`), and an
intervention file made with it records its reference and the sha256 of its source, so a later
process either loads it or says in one line which plugin to pass. Loading a plugin twice is a
no-op; a plugin that fails is reported in one line naming it and the error, and the rows it had
registered before failing are taken back.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import PluginError, XlsteerError
from .registry import PluginOrigin, loaded_plugins, loading, restore, snapshot

ENV_VAR = "XLSTEER_PLUGINS"
ENTRY_POINT_GROUP = "xlsteer.plugins"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"syntax error at line {e.lineno}: {e.msg}"
    text = " ".join(str(e).split()) or "no message"
    return (text if isinstance(e, XlsteerError) else f"{type(e).__name__}: {text}")[:300]


def _already(origin: PluginOrigin) -> PluginOrigin | None:
    return next((p for p in loaded_plugins() if p.ref == origin.ref and p.kind == origin.kind), None)


def _run(origin: PluginOrigin, what: str, body: Callable[[], Any]) -> PluginOrigin:
    """Run a plugin's code with its rows attributed to it; on failure take them back, one line."""
    done = _already(origin)
    if done is not None:
        return done
    saved = snapshot()
    try:
        with loading(origin):
            body()
    except PluginError:
        restore(saved)
        raise
    except (Exception, SystemExit) as e:  # any error in user code is reported, never a traceback
        restore(saved)
        fix = "" if isinstance(e, XlsteerError) else "; fix the plugin (--debug shows the traceback)"
        raise PluginError(f"plugin {what} failed to load: {_one_line(e)}{fix}") from e
    return origin


def _load_file(path: Path) -> PluginOrigin:
    origin = PluginOrigin(str(path), "file", _sha256(path))
    name = f"xlsteer_plugin_{path.stem}_{origin.sha256[:12]}"

    def body() -> None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin {path} cannot be imported; give a Python (.py) file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so its classes and "module:attr" rows resolve like any module's
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise

    return _run(origin, str(path), body)


def _load_module(name: str) -> PluginOrigin:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise PluginError(f"plugin {name!r} is neither a Python file nor an importable module; "
                          "give the path of a .py file or an installed module name")
    source = Path(spec.origin) if spec.origin and os.path.isfile(spec.origin) else None
    origin = PluginOrigin(name, "module", _sha256(source) if source is not None else "")
    return _run(origin, name, lambda: importlib.import_module(name))


def load_plugin(ref: str | os.PathLike[str]) -> PluginOrigin:
    """Load one plugin: the path of a ``.py`` file, or an importable module name."""
    text = str(ref).strip()
    if not text:
        raise PluginError("empty plugin name; give the path of a .py file or an installed module name")
    path = Path(text).expanduser()
    if text.endswith(".py") or os.sep in text or path.is_file():
        if not path.is_file():
            raise PluginError(f"plugin file {text} not found; check the path")
        return _load_file(path.resolve())
    return _load_module(text)


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> PluginOrigin:
    source = importlib.util.find_spec(ep.module)
    path = Path(source.origin) if source is not None and source.origin and os.path.isfile(source.origin) else None
    origin = PluginOrigin(ep.module, "module", _sha256(path) if path is not None else "")
    dist = getattr(getattr(ep, "dist", None), "name", None)
    what = f"{ep.value} (entry point {ep.name!r}" + (f" of {dist})" if dist else ")")

    def body() -> None:
        obj = ep.load()
        if ep.attr and callable(obj):
            obj()

    return _run(origin, what, body)


@functools.lru_cache(maxsize=8)
def _entry_points(search_path: tuple[str, ...]) -> tuple[importlib.metadata.EntryPoint, ...]:
    """The group's entry points (scanning every installed distribution takes ~50 ms: once per sys.path)."""
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def env_plugins() -> list[str]:
    """The references in ``XLSTEER_PLUGINS`` (empty entries ignored)."""
    return [part.strip() for part in os.environ.get(ENV_VAR, "").split(os.pathsep) if part.strip()]


def load_plugins(refs: Iterable[str] = (), *, env: bool = True, entry_points: bool = True) -> list[PluginOrigin]:
    """Load ``refs``, then ``XLSTEER_PLUGINS`` (``env``), then the installed ``xlsteer.plugins``
    entry points (``entry_points``), in that order; returns every plugin loaded or already loaded."""
    out = [load_plugin(ref) for ref in refs]
    if env:
        out += [load_plugin(ref) for ref in env_plugins()]
    if entry_points:
        out += [_load_entry_point(ep) for ep in _entry_points(tuple(sys.path))]
    return out
