"""Named registries resolved on first use: one :class:`Registry` per kind of thing a user can add.

Why: a registry that is filled by importing the modules that register into it makes every lookup
import the whole package (``import xlsteer.interventions`` to learn the method names), and the
modules that register import the registry back: an import circle. Here each kind declares its
built-ins once, as a table ``name -> "module:attr"`` next to the registry (methods in
:mod:`xlsteer.interventions.registry`, intervention kinds in :mod:`xlsteer.interventions.base`,
tasks in :mod:`xlsteer.evaluation.tasks.spec`, sites in :mod:`xlsteer.models.sites`, architectures
in :mod:`xlsteer.models.archs`); a row is imported when it is first asked for, and plugins
(:mod:`xlsteer.plugins`) add rows when they load.

A module named by a row may register the very object the row names when it runs (a decorator on
a built-in fit function or intervention class): that replaces the row's placeholder and is not a
duplicate. Every other second registration of a name is refused unless ``replace`` is given.

While a plugin loads (:func:`loading`), each row it registers remembers that plugin
(:meth:`Registry.origin`), so an artifact made with it can say which plugin a later process must
load. Only the standard library and :mod:`xlsteer.errors` are imported here.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import UsageError, XlsteerWarning

T = TypeVar("T")


@dataclass(frozen=True)
class PluginOrigin:
    """The plugin a row came from: how to load it again and the sha256 of its source.

    ``kind`` is ``file`` (``ref`` is the absolute path of a Python file) or ``module`` (``ref`` is
    an importable module name; ``sha256`` of its source file when it has one, else "").
    """

    ref: str
    kind: str
    sha256: str

    def record(self) -> dict[str, str]:
        """The JSON form stored in artifacts (intervention files)."""
        return {"ref": self.ref, "kind": self.kind, "sha256": self.sha256}

    @property
    def option(self) -> str:
        """The command-line option that loads this plugin."""
        return f"--plugin {self.ref}"


_LOADING: list[PluginOrigin] = []  # the plugins being loaded now, innermost last (a plugin may load another)
_LOADED: list[PluginOrigin] = []  # the plugins this process has loaded, in order


@contextlib.contextmanager
def loading(origin: PluginOrigin) -> Iterator[PluginOrigin]:
    """While the block runs, rows registered anywhere are attributed to ``origin``; once it has
    run without error, ``origin`` counts as loaded (:func:`loaded_plugins`)."""
    _LOADING.append(origin)
    try:
        yield origin
    finally:
        _LOADING.pop()
    if origin not in _LOADED:
        _LOADED.append(origin)


def current_plugin() -> PluginOrigin | None:
    """The plugin being loaded right now (None outside plugin loading)."""
    return _LOADING[-1] if _LOADING else None


def loaded_plugins() -> list[PluginOrigin]:
    """The plugins loaded in this process, in order."""
    return list(_LOADED)


def require_plugins(records: Any, what: str) -> None:
    """Refuse, in one line, an artifact made with a plugin this process has not loaded.

    ``records``: the artifact's ``plugins`` list (:meth:`PluginOrigin.record`). A plugin counts as
    loaded when a loaded one has the same reference or the same source digest (a moved file); the
    same reference with another digest (an edited plugin) loads with a warning.
    """
    for rec in records or []:
        ref, digest = str(rec.get("ref", "")), str(rec.get("sha256", ""))
        same = [p for p in _LOADED if p.ref == ref or (digest and p.sha256 == digest)]
        if not same:
            raise UsageError(f"{what} was made with plugin {ref}; pass it before the command: "
                             f"xlsteer --plugin {ref} ... (or list it in XLSTEER_PLUGINS)")
        if digest and all(p.sha256 and p.sha256 != digest for p in same):
            warnings.warn(XlsteerWarning(f"{what} was made with plugin {ref} as it was then (sha256 {digest[:12]}); "
                                         f"it has changed since (now {same[0].sha256[:12]}), so results may differ"),
                          stacklevel=2)


class _Placeholder(str):
    """A row not imported yet: ``"module:attr"``."""

    def split_target(self) -> tuple[str, str]:
        module, sep, attr = self.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"a lazy registry row must read 'module:attr', got {str(self)!r}")
        return module, attr


def _qualified(obj: Any) -> str | None:
    """``module:qualname`` of a function or class (what a placeholder naming it reads)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}:{name}" if module and name else None


_REGISTRIES: list["Registry[Any]"] = []  # every registry, so a failed plugin's rows can be taken back


def snapshot() -> Any:
    """Every registry's rows and the loaded plugins now (for :func:`restore`)."""
    return [(r, dict(r._rows), dict(r._origins)) for r in _REGISTRIES], list(_LOADED)


def restore(saved: Any) -> None:
    """Put back what :func:`snapshot` saw (takes back the rows of a plugin that failed half-way)."""
    registries, loaded = saved
    for reg, rows, origins in registries:
        reg._rows, reg._origins = rows, origins
    _LOADED[:] = loaded


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Registries and loaded plugins as they were before the block, once it ends (tests, notebooks)."""
    saved = snapshot()
    try:
        yield
    finally:
        restore(saved)


class Registry(Generic[T]):
    """Rows ``name -> object``; built-in rows may be ``"module:attr"`` placeholders imported on first use.

    ``accept(name, obj)`` turns what a row names (or what is registered) into the registry's
    object and checks it (raise ``TypeError``/``ValueError`` with a message for a wrong one).
    ``key`` normalises names (tasks are case-insensitive). Names are listed built-ins first, in
    the table's order, then in registration order.
    """

    def __init__(self, kind: str, builtins: Mapping[str, Any] | None = None, *,
                 accept: Callable[[str, Any], T] | None = None, key: Callable[[str], str] | None = None):
        self.kind = kind
        self._key = key or (lambda name: str(name))
        self._accept = accept or (lambda name, obj: obj)
        self._rows: dict[str, Any] = {}
        self._origins: dict[str, PluginOrigin] = {}
        for name, row in (builtins or {}).items():
            self._rows[self._key(name)] = _Placeholder(row) if isinstance(row, str) else self._accept(name, row)
        self.builtins: tuple[str, ...] = tuple(self._rows)
        _REGISTRIES.append(self)

    # ---- adding rows

    def register(self, name: str, obj: Any, *, replace: bool = False, defined_by: Any = None) -> T:
        """Add row ``name``. ``obj`` may be a ``"module:attr"`` string (imported on first use).

        ``defined_by``: the function or class that declares ``obj`` (default: ``obj``); when a
        placeholder row names exactly it, this registration fills the placeholder.
        """
        key = self._key(name)
        if not key or any(c.isspace() for c in key):
            raise UsageError(f"{self.kind} name {name!r} must be non-empty and without spaces")
        current = self._rows.get(key)
        fills = isinstance(current, _Placeholder) and str(current) == _qualified(defined_by or obj)
        if current is not None and current is not obj and not (fills or replace):
            article = "an" if self.kind[:1] in "aeiou" else "a"
            if key in self.builtins and isinstance(current, _Placeholder):
                raise UsageError(f"{article} {self.kind} named {name!r} is already registered (built-in: {current}, "
                                 "whose module defines it without registering it); choose another name")
            raise UsageError(f"{article} {self.kind} named {name!r} is already registered; choose another name")
        value = _Placeholder(obj) if isinstance(obj, str) else self._accept(key, obj)
        self._rows[key] = value
        origin = None if fills else current_plugin()
        if origin is not None:
            self._origins[key] = origin
        elif not fills:
            self._origins.pop(key, None)
        return value

    def unregister(self, name: str) -> None:
        """Remove a row added at run time (a built-in row stays)."""
        key = self._key(name)
        if key in self.builtins:
            raise UsageError(f"the built-in {self.kind} {name!r} cannot be removed")
        self._rows.pop(key, None)
        self._origins.pop(key, None)

    @contextlib.contextmanager
    def temporarily(self, name: str, obj: Any, *, replace: bool = False) -> Iterator[T]:
        """Row ``name`` is ``obj`` while the block runs; the row before (or none) is restored after it."""
        key = self._key(name)
        before, origin = self._rows.get(key), self._origins.get(key)
        value = self.register(name, obj, replace=replace)
        try:
            yield value
        finally:
            if before is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = before
            self._origins.pop(key, None)
            if origin is not None:
                self._origins[key] = origin

    # ---- reading rows

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._rows

    def names(self) -> list[str]:
        """Every name: the built-ins in the table's order, then the others in registration order."""
        return list(self._rows)

    def find(self, name: str) -> T | None:
        """The object of row ``name`` (imported now if it is a placeholder), or None."""
        key = self._key(name)
        row = self._rows.get(key)
        if isinstance(row, _Placeholder):
            row = self._resolve(key, row)
        return row

    def get(self, name: str) -> T:
        """The object of row ``name``; a one-line error listing the names (with a close match) otherwise."""
        found = self.find(name)
        if found is None:
            raise UsageError(self.unknown(name))
        return found

    def unknown(self, name: str) -> str:
        """``unknown <kind> 'x' (did you mean 'y'?); choose one of a, b, c``."""
        close = difflib.get_close_matches(self._key(name), self.names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; choose one of {', '.join(self.names())}"

    def origin(self, name: str) -> PluginOrigin | None:
        """The plugin that registered row ``name`` (None for built-ins and rows registered in code)."""
        return self._origins.get(self._key(name))

    def _resolve(self, key: str, row: _Placeholder) -> T:
        module_name, attr = row.split_target()
        origin = self._origins.get(key)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            if origin is None:  # a built-in row: the package itself is broken
                raise
            raise UsageError(f"{self.kind} {key!r} of plugin {origin.ref} names {row}, which cannot be imported "
                             f"({e}); fix the plugin") from None
        current = self._rows.get(key)
        if current is not row and current is not None:  # the module registered the object itself
            return current
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise UsageError(f"{self.kind} {key!r} names {row}, but {module_name} has no attribute {attr!r}; "
                             "fix the row or the plugin that registered it") from None
        value = self._accept(key, obj)
        self._rows[key] = value
        return value
