"""xlsteer drives lm-eval's evaluator: ``run_lm_eval``, what ``xlsteer lm-eval`` runs.

Why a module of its own: :mod:`.model` is the adapter (how lm-eval requests become engine calls,
and which language each task's requests get); this is the driver around it: it checks the task
names, puts the offline XCOPA configs (:mod:`.xcopa`) in front of lm-eval's hub-backed ones, and
runs lm-eval's ``simple_evaluate`` through :mod:`.harness` (global random state, network and
terminal untouched).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import UsageError
from . import harness


def run_lm_eval(
    model: Any,
    tasks: str | Sequence[str],
    *,
    intervention: Any = None,
    alpha: float | None = None,
    anchor: str | None = "en",
    lang: str | None = "task",
    positions: str | None = None,
    task_langs: str | dict[str, str] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    max_length: int = 2048,
    data_dir: Any = None,
    include_path: Sequence[Any] = (),
    log_samples: bool = True,
    bootstrap_iters: int = 100000,
    seed: int = 0,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` (an ``XlsteerLM``, a LoadedModel or a model name),
    with the offline XCOPA configs of :mod:`.xcopa` (they override lm-eval's hub ones).

    Returns lm-eval's results dict (``results``, ``groups``, ``configs``, ``n-samples``, per-item
    ``samples`` when ``log_samples``), with the adapter's identity in ``config``.
    """
    from .model import XlsteerLM
    from .xcopa import local_task_dir

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UsageError("no tasks given; pass e.g. --tasks xcopa_sw,xcopa_zh")
    if limit is not None and (isinstance(limit, bool) or not limit > 0):
        raise UsageError(f"limit must be a positive number of items per task (or a fraction below 1), got {limit!r}")
    if isinstance(model, XlsteerLM):
        if intervention is not None or alpha is not None:
            raise UsageError("give the intervention to XlsteerLM(...) when passing a ready XlsteerLM")
        lm = model
    else:
        lm = XlsteerLM(pretrained=model, batch_size=batch_size, max_length=max_length, intervention=intervention,
                       alpha=alpha, anchor=anchor, lang=lang, positions=positions, task_langs=task_langs)
    with local_task_dir(data_dir) as task_dir:
        tm = harness.task_manager(names, include_path, override_dir=task_dir)
        results = harness.simple_evaluate(
            lm, names, tm, num_fewshot=num_fewshot, limit=limit, log_samples=log_samples,
            bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise UsageError("lm-eval returned no results (not the main process)")
    return results
