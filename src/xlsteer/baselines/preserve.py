"""Task preservation: the intervention a steering row selected, evaluated on another, scored task.

Why: a steering method that makes the model answer in the wanted language (LCB) could do so by
damaging what the model knows; a pass rate and the guard (fluency, repetition) of its own
outputs cannot show that. So ``xlsteer compare --preserve xquad`` takes each steering row's
*selected* configuration (the one dev chose, per language or global, "no steering" included)
and evaluates it on the test items of a task with a score (XQuAD F1, XNLI accuracy, ...), in
the languages both tasks have, paired item by item against the unsteered model on the same
items (per-language McNemar or paired permutation test, Holm; the stratified test of the average).
Nothing is chosen here: the configuration is the row's; the preservation task only measures.

The preservation task is evaluated with its own template and decoding (the main task's
template, its options and sampling settings do not apply to it). The unsteered reference is
evaluated once per comparison and shared by the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import UsageError
from .context import RunContext


@dataclass(frozen=True)
class Preservation:
    """Which task measures preservation and on how many test items per language (None: all)."""

    task: str
    limit: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Preservation | None":
        """``xquad`` or ``xquad:40`` (the first 40 test items per language); None/'' for none."""
        if not text:
            return None
        from ..evaluation.tasks import get_task

        name, _, n = str(text).partition(":")
        if n and (not n.isdigit() or int(n) < 1):
            raise UsageError(f"--preserve {text}: give TASK or TASK:N with N a positive number of items, e.g. xquad:40")
        spec = get_task(name.strip())
        if "test" not in spec.splits:
            raise UsageError(f"--preserve {name}: the task has no test split to measure on; choose e.g. xquad or xnli")
        return cls(spec.name, int(n) if n else None)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "split": "test", "limit": self.limit}


def _langs(ctx: RunContext, task: Any) -> list[str]:
    return [lang for lang in ctx.langs if lang in task.langs]


def _config(ctx: RunContext, pres: Preservation) -> Any:
    from ..evaluation.config import EvalConfig

    return EvalConfig(split="test", limit=pres.limit, anchor=ctx.anchor, data_dir=ctx.data_dir, seed=ctx.seed,
                      n_boot=ctx.n_boot, cache_dir=ctx.cache_dir, batch_size=ctx.batch_size,
                      max_length=ctx.max_length)


def reference(ctx: RunContext, pres: Preservation) -> dict[str, Any]:
    """The unsteered model on the preservation task (evaluated once per comparison)."""
    from ..evaluation.runner import run_task
    from ..evaluation.tasks import get_task

    key = f"preserve-reference:{pres.task}:{pres.limit}"
    if key not in ctx.shared:
        task = get_task(pres.task)
        ctx.shared[key] = run_task(ctx.lm, task, _langs(ctx, task), None, _config(ctx, pres))
    return ctx.shared[key]


def not_applicable(pres: Preservation, reason: str) -> dict[str, Any]:
    return {**pres.describe(), "status": "n/a", "reason": reason}


def measure(ctx: RunContext, pres: Preservation, make: Callable[[int, float], Any], record: Mapping[str, Any],
            select: str, positions: str | None) -> dict[str, Any]:
    """The selected configuration of one steering row (``record``: its dev sweep; ``make``: its
    intervention builder) on the preservation task, paired against the unsteered model."""
    from ..evaluation.selection import evaluate_selection
    from ..evaluation.tasks import get_task
    from .compare import pair_with_reference

    task = get_task(pres.task)
    langs = _langs(ctx, task)
    targets = [lang for lang in langs if lang != ctx.anchor]
    if not targets:
        return not_applicable(pres, f"none of {', '.join(ctx.langs)} is a language of {task.name}")
    ref = reference(ctx, pres)
    run = evaluate_selection(ctx.lm, task.name, langs, make, dict(record), select,
                             _config(ctx, pres).replace(positions=positions))
    paired = pair_with_reference(run, ref, langs, ctx.anchor, seed=ctx.seed, n_boot=ctx.n_boot)
    return {**pres.describe(), "status": "ok", "main": ref["metrics"]["main"], "langs": langs,
            "template": ref["template"], "reference_average": main_average(ref, targets), **paired,
            "item_ids_sha256": ref["item_ids"]["sha256"]}


def main_average(res: Mapping[str, Any], targets: Sequence[str]) -> float | None:
    """The unweighted mean over ``targets`` of a result's main score (None: no target language)."""
    main = res["metrics"]["main"]
    import numpy as np

    vals = [res["per_lang"][lang]["metrics"][main]["mean"] for lang in targets]
    return float(np.mean(vals)) if vals else None
