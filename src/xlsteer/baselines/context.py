"""What every method of :mod:`xlsteer.baselines.methods` is given and returns.

:class:`RunContext` (the model, the items and the shared settings), :class:`MethodRun` (one
method's runner result and what it cost), :class:`MethodSpec` (how a method is run), and the
evaluation call every method shares (``_eval``). Kept apart from the method table so that the
steering and comparison modules can use them without importing the table.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import UsageError
from ..evaluation.tasks import get_task

FAMILIES = ("reference", "prompting", "fine-tuning", "combination", "translation", "steering", "decoding")
REFERENCE = "zero-shot"
NTREX_LANGS = ("en", "ar", "bn", "de", "el", "fr", "hi", "id", "it", "ja", "ko", "pt", "ro", "ru", "es", "sw",
               "te", "th", "tr", "vi", "zh")


@dataclass
class RunContext:
    """What every method needs: the model, the items, and the shared settings."""

    lm: Any
    task: str
    langs: list[str]
    split: str = "test"
    limit: int | None = None
    dev_limit: int | None = 100
    fit_limit: int = 200
    anchor: str = "en"
    data_dir: str | os.PathLike | None = None
    seed: int = 0
    batch_size: int = 8
    max_length: int = 2048
    n_boot: int = 2000
    cache_dir: str | os.PathLike | None = None
    calibrate: bool = False
    select: str = "global"
    select_rule: Any = None  # evaluation.evidence.SelectionRule; None: the default rule
    translation_cache: Any = True
    work_dir: str | os.PathLike | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    #: decoding changes (``EvalConfig.sampling``) and the quality guard (``EvalConfig.guard``) of every
    #: evaluation the methods run, so that all of them decode alike and all carry the guard
    sampling: Mapping[str, Any] = field(default_factory=dict)
    guard: bool | None = None
    #: the task template every method evaluates with (None: the task's default) and its options
    template: str | None = None
    template_options: Mapping[str, Any] = field(default_factory=dict)
    #: a scored task on which each steering row's selected intervention is also measured
    #: (:class:`~xlsteer.baselines.preserve.Preservation`; None: not measured)
    preserve: Any = None

    @classmethod
    def create(cls, lm: Any, task: str, langs: Sequence[str], **settings: Any) -> "RunContext":
        """The context of a comparison of ``task`` in ``langs``; ``settings`` are this record's other
        fields (unknown names: one line listing the known ones). The anchor and languages are
        normalised, and ``dev_limit`` is ``limit`` (else 100) when not given."""
        from ..data.langs import normalize_lang

        known = [f.name for f in dataclasses.fields(cls) if f.name not in ("lm", "task", "langs", "shared")]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(f"unknown comparison setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if settings.get("dev_limit") is None:
            settings["dev_limit"] = settings.get("limit") or 100
        settings["anchor"] = normalize_lang(settings.get("anchor") or "en")
        settings["options"] = {k: dict(v) for k, v in (settings.get("options") or {}).items()}
        settings["calibrate"] = bool(settings.get("calibrate", False))
        return cls(lm=lm, task=get_task(task).name, langs=list(dict.fromkeys(normalize_lang(x) for x in langs)),
                   **settings)

    def eval_kw(self) -> dict[str, Any]:
        return dict(anchor=self.anchor, data_dir=self.data_dir, seed=self.seed, batch_size=self.batch_size,
                    max_length=self.max_length, n_boot=self.n_boot, cache_dir=self.cache_dir)

    def eval_config(self, **changes: Any) -> Any:
        """The EvalConfig of the reported evaluations (split, limit, ...), with ``changes``."""
        from ..evaluation.config import EvalConfig

        cfg = EvalConfig(split=self.split, limit=self.limit, calibrate=self.calibrate, sampling=dict(self.sampling),
                         guard=self.guard, template=self.template, template_options=dict(self.template_options),
                         **self.eval_kw())
        if self.select_rule is not None:
            cfg = cfg.replace(select_rule=self.select_rule)
        return cfg.replace(**changes) if changes else cfg


@dataclass
class MethodRun:
    """One method's outcome: its runner result on ``split`` and what it cost."""

    name: str
    family: str
    results: dict[str, Any] | None
    params: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "params": self.params, "cost": self.cost,
                "selection": self.selection, "notes": self.notes, "skipped": self.skipped, "error": self.error,
                **self.extra}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "MethodRun":
        """A run written by :func:`compare_methods` (``runs/<method>.json``: results + ``method`` record)."""
        from ..io import read_json

        doc = read_json(path, "method run")
        if not isinstance(doc, Mapping):
            raise UsageError(f"{path} is not a method run written by xlsteer compare (not a JSON object)")
        doc = dict(doc)
        rec = doc.pop("method", None)
        if not isinstance(rec, Mapping) or "name" not in rec:
            raise UsageError(f"{path} is not a method run written by xlsteer compare (no 'method' record)")
        rec = dict(rec)
        known = {k: rec.pop(k, None) for k in ("name", "family", "params", "cost", "selection", "notes", "skipped",
                                                 "error")}
        return cls(known["name"], known["family"], doc, params=known["params"] or {}, cost=known["cost"] or {},
                   selection=known["selection"], notes=list(known["notes"] or []), skipped=dict(known["skipped"] or {}),
                   error=known["error"], extra=rec)


@dataclass(frozen=True)
class MethodSpec:
    """One ``compare`` row; ``params``: what ``-O NAME.KEY=VALUE`` may set, with types and ranges
    (:mod:`xlsteer.interventions.params`), checked before any model time."""

    name: str
    family: str
    description: str
    run: Callable[[RunContext, dict[str, Any]], MethodRun]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] | None = field(default_factory=dict)  # None: not declared, not checked


def _cost(**kw: Any) -> dict[str, Any]:
    base = {"fit_seconds": 0.0, "selection_seconds": 0.0, "eval_seconds": 0.0, "extra_tokens_per_item": 0.0,
            "trainable_parameters": 0, "fitted_parameters": 0, "external": None}
    base.update(kw)
    for k in ("fit_seconds", "selection_seconds", "eval_seconds", "extra_tokens_per_item"):
        base[k] = round(float(base[k]), 3)
    return base


def _eval(ctx: RunContext, lm: Any, langs: Sequence[str], **kw: Any) -> tuple[dict[str, Any], float]:
    from ..evaluation.runner import run_task

    t0 = time.perf_counter()
    res = run_task(lm, ctx.task, list(langs), None, ctx.eval_config(), **kw)
    return res, time.perf_counter() - t0


def _eval_items(ctx: RunContext, langs: Sequence[str]) -> list[Any]:
    mod = get_task(ctx.task)
    return [it for lang in langs for it in mod.load_items(ctx.data_dir, lang, ctx.split, ctx.limit)]
