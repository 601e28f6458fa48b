"""EvalConfig: every setting of one evaluation, in one typed record.

Why: an evaluation has a dozen settings (split, limit, anchor, template, seed, cache, batch
size...) that used to be threaded as keyword arguments through the runner, the sweep, the
selection and every baseline; one frozen record passes them whole, checks them once, and
``replace`` derives the variants a sweep needs (the dev split, a smaller bootstrap).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UsageError
from .evidence import SelectionRule

POSITIONS = ("all", "prompt", "generated", "last_prompt")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate (not what: the model, task, languages and interventions are arguments).

    ``limit``: the first N items per language; ``template`` (a name or Template) and
    ``template_options`` (e.g. ``k`` for MGSM); ``seed`` and ``n_boot`` for the bootstrap CIs;
    ``cache_dir``: the per-item cache (None: no cache); ``calibrate``: content-free calibration
    of label tasks; ``positions``: which token positions an intervention edits (None: the policy
    the intervention stores); ``sampling``: decoding changes for generation tasks (e.g.
    ``{"temperature": 0}`` for greedy, ``{"gate": "script"}`` for the script gate); ``select_rule``:
    how a sweep decides whether a steered setting replaces the unsteered model (:class:`~.evidence.SelectionRule`; evaluations ignore it).
    """

    split: str = "test"
    limit: int | None = None
    anchor: str = "en"
    data_dir: str | os.PathLike | None = None
    template: Any = None
    template_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_boot: int = 2000
    cache_dir: str | os.PathLike | None = None
    calibrate: bool = False
    positions: str | None = None
    batch_size: int = 8
    max_length: int = 2048
    select_rule: SelectionRule = field(default_factory=SelectionRule)
    #: changes to the generation template's decoding settings (:class:`~.sampling.Sampling` fields:
    #: temperature, top_p, seed, gate); empty: decode as the template says (greedy for most tasks)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    #: the quality guard (fluency, degeneration) of generation tasks: None as the task declares it
    guard: bool | None = None

    def __post_init__(self) -> None:
        from .sampling import Sampling
        from .tasks.base import check_limit

        check_limit(self.limit)
        if not isinstance(self.sampling, Mapping):
            raise UsageError(f"sampling must be a mapping of Sampling fields, got {type(self.sampling).__name__}")
        Sampling.of(None, self.sampling)  # the names and values are checked once, here
        if self.positions is not None and self.positions not in POSITIONS:
            raise UsageError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        for name in ("batch_size", "max_length", "n_boot"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.select_rule, SelectionRule):
            raise UsageError(f"select_rule must be a SelectionRule, got {self.select_rule!r}")

    def replace(self, **changes: Any) -> "EvalConfig":
        """A copy with ``changes`` (unknown names: a one-line UsageError)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UsageError(f"unknown evaluation setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, cfg: "EvalConfig | None" = None, **changes: Any) -> "EvalConfig":
        """``cfg`` (default settings when None) with ``changes``; None values mean "keep"
        for the settings whose None is not meaningful."""
        base = cfg if cfg is not None else cls()
        keep_none = {"limit", "data_dir", "template", "cache_dir", "positions", "anchor"}
        return base.replace(**{k: v for k, v in changes.items() if v is not None or k in keep_none})
