"""The evaluation API: ``evaluate(lm, task, langs, interventions, cfg) -> EvalResult``.

Why a layer above the runner: "does this intervention help on this benchmark?" is always the
same three steps — evaluate the unsteered model, evaluate the steered one on the same items,
pair them item by item — and every caller (the CLI, a notebook, the baselines) should get
them together, from one call, with one typed settings record (:class:`EvalConfig`). The result
file is :meth:`EvalResult.to_json`: the steered run with the unsteered run (``baseline``) and
their paired tests (``comparison``: p, p_holm, MDE per language and on average).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .config import EvalConfig
from .tasks.spec import TaskSpec


@dataclass
class EvalResult:
    """One evaluation: ``run`` (steered, or the unsteered model when nothing was applied), and for
    a steered run the unsteered ``baseline`` on the same items and their paired ``comparison``.
    ``method``: the record of a baseline method (``xlsteer compare``'s row) when one produced ``run``."""

    run: dict[str, Any]
    baseline: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steered(self) -> bool:
        return self.comparison is not None

    def to_json(self) -> dict[str, Any]:
        """The results file: the run, with ``baseline`` and ``comparison`` when steered."""
        doc = dict(self.run)
        if self.method is not None:
            doc["method"] = self.method
        if self.baseline is not None:
            doc["baseline"] = self.baseline
        if self.comparison is not None:
            doc["comparison"] = self.comparison
        doc.update(self.extra)
        return doc

    def table(self, style: str = "text") -> str:
        """The same tables ``xlsteer table`` prints for the file."""
        from ..results.schema import validate
        from .tables import results_tables

        return results_tables(validate(self.to_json()), style=style)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the results file atomically (deterministic JSON)."""
        from .runner import write_results

        return write_results(path, self.to_json())


def evaluate(lm: Any, task: str | TaskSpec, langs: str | Sequence[str], interventions: Any = None,
             cfg: EvalConfig | None = None, *, alpha: float | None = None) -> EvalResult:
    """Evaluate ``lm`` on ``task``; with ``interventions`` also the unsteered model on the same
    items, and the paired comparison of the two (one engine, so the per-item cache is shared)."""
    from . import runner as R
    from .engine import Engine
    from .pairing import compare_runs

    cfg = cfg or EvalConfig()
    # loaded and checked against the model before any work, not after the unsteered run
    ivs = R.load_interventions(interventions, alpha, lm.fingerprint, model=lm)
    engine = Engine.for_config(lm, cfg)
    base = R.run_task(lm, task, langs, None, cfg, engine=engine)
    if not ivs:
        return EvalResult(base)
    steered = R.run_task(lm, task, langs, ivs, cfg, alpha=alpha, engine=engine)
    return EvalResult(steered, baseline=base, comparison=compare_runs(base, steered))


def evaluate_method(lm: Any, task: str | TaskSpec, langs: Sequence[str], method: str,
                    cfg: EvalConfig | None = None) -> EvalResult:
    """Run a baseline method of ``xlsteer compare`` (icl-en, prompt-opt, diffmean...) and pair it
    with the unsteered model on the same items."""
    from ..baselines.context import RunContext
    from ..baselines.methods import run_method
    from ..errors import UsageError
    from . import runner as R
    from .pairing import compare_runs

    cfg = cfg or EvalConfig()
    ctx = RunContext(lm=lm, task=task if isinstance(task, str) else task.name, langs=list(langs), split=cfg.split,
                     limit=cfg.limit, dev_limit=cfg.limit or 100, anchor=cfg.anchor, data_dir=cfg.data_dir,
                     seed=cfg.seed, batch_size=cfg.batch_size, max_length=cfg.max_length, cache_dir=cfg.cache_dir,
                     sampling=dict(cfg.sampling), guard=cfg.guard)
    run = run_method(method, ctx)
    if run.results is None:
        raise UsageError(f"method {method} produced no results: {run.error}")
    base = R.run_task(lm, task, run.results["langs"], None, cfg)
    return EvalResult(run.results, baseline=base, comparison=compare_runs(base, run.results), method=run.record())
