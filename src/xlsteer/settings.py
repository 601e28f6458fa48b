"""Settings records: one frozen, typed record per kind of work instead of a long keyword list.

Why: a function whose result depends on a dozen settings (an evaluation, a fit, a prompt search,
an analysis) used to take them as a dozen keyword arguments, threaded through every caller and
easy to drop on the way. :class:`~xlsteer.evaluation.config.EvalConfig` set the pattern: one
record, checked once, passed whole, with :meth:`Settings.replace` for variants. A function then
takes ``cfg`` (a record, default settings when None) and, for convenience, single settings as
keywords that override the record's (:meth:`Settings.of`); an unknown name is a one-line error
that lists the known ones. The house rule that follows is checked by ``tests/test_house_rules.py``:
no public function has more than 8 parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

from .errors import UsageError

S = TypeVar("S", bound="Settings")


class Settings:
    """Base of the settings records (frozen dataclasses).

    ``_what`` names the record in error messages ("evaluation setting"). ``_none_is_a_value``: the
    settings whose None is a value (by default those whose default is None); for the others,
    a None given to :meth:`of` means "not given" (so a command line's unset option keeps the
    record's value).
    """

    _what: ClassVar[str] = "setting"
    _none_is_a_value: ClassVar[frozenset[str] | None] = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (unknown names: a one-line UsageError)."""
        known = self.field_names()
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise UsageError(f"unknown {self._what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def of(cls: type[S], cfg: S | None = None, **changes: Any) -> S:
        """``cfg`` (default settings when None) with ``changes``; a None change keeps the value of
        a setting whose None means nothing (see the class docstring)."""
        base = cfg if cfg is not None else cls()
        keep = cls._none_is_a_value
        if keep is None:
            keep = frozenset(f.name for f in dataclasses.fields(cls) if f.default is None)  # type: ignore[arg-type]
        return base.replace(**{k: v for k, v in changes.items() if v is not None or k in keep})


def _record_in(annotation: Any, namespace: dict[str, Any]) -> type[Settings] | None:
    """The Settings record an annotation names (``"LearnedConfig | None"`` included), if any."""
    import typing

    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 - an annotation of our own source
        except Exception:  # names imported only for type checking
            return None
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, Settings):
            return t
    return None


def parameters_of(fn: Callable[..., Any]) -> dict[str, str]:
    """Name -> annotation (as text) of everything ``fn`` takes by keyword: its own named parameters,
    with the parameter whose annotation is a :class:`Settings` record replaced by that record's
    fields (which ``fn`` also takes as keywords). What ``xlsteer fit --param`` may set."""
    import inspect

    out: dict[str, str] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        record = _record_in(p.annotation, getattr(fn, "__globals__", {}))
        if record is None:
            out[name] = str(p.annotation)
        else:
            out.update({f.name: str(f.type) for f in dataclasses.fields(record)})  # type: ignore[arg-type]
    return out
