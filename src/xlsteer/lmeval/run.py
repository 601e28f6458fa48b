"""xlsteer drives lm-eval's evaluator: ``run_lm_eval``, what ``xlsteer lm-eval`` runs.

Why a module of its own: :mod:`.model` is the adapter (how lm-eval requests become engine calls,
and which language each task's requests get); this is the driver around it: it checks the task
names, puts the offline XCOPA configs (:mod:`.xcopa`) in front of lm-eval's hub-backed ones, and
runs lm-eval's ``simple_evaluate`` through :mod:`.harness` (global random state, network and
terminal untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UsageError
from ..settings import Settings
from . import harness
from .model import AdapterSettings, XlsteerLM


@dataclass(frozen=True)
class LmEvalConfig(Settings):
    """How ``run_lm_eval`` runs lm-eval's evaluator: the first ``limit`` documents per task (a
    fraction below 1: that share), ``num_fewshot`` (None: the task's), the data dir of the offline
    XCOPA configs, more task folders (``include_path``), per-item records (``log_samples``),
    lm-eval's bootstrap iterations and its random seeds."""

    limit: int | float | None = None
    num_fewshot: int | None = None
    data_dir: Any = None
    include_path: Sequence[Any] = ()
    log_samples: bool = True
    bootstrap_iters: int = 100000
    seed: int = 0

    _what = "lm-eval setting"


def run_lm_eval(model: Any, tasks: str | Sequence[str], cfg: LmEvalConfig | None = None,
                adapter: AdapterSettings | None = None, **settings: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` (an ``XlsteerLM``, or a LoadedModel or model name
    built into one with ``adapter``), with the offline XCOPA configs of :mod:`.xcopa` (they
    override lm-eval's hub ones). ``cfg`` (:class:`LmEvalConfig`; keyword ``settings`` override
    its fields) says how.

    Returns lm-eval's results dict (``results``, ``groups``, ``configs``, ``n-samples``, per-item
    ``samples`` when ``log_samples``), with the adapter's identity in ``config``.
    """
    from .xcopa import local_task_dir

    cfg = LmEvalConfig.of(cfg, **settings)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UsageError("no tasks given; pass e.g. --tasks xcopa_sw,xcopa_zh")
    limit = cfg.limit
    if limit is not None and (isinstance(limit, bool) or not limit > 0):
        raise UsageError(f"limit must be a positive number of items per task (or a fraction below 1), got {limit!r}")
    if isinstance(model, XlsteerLM):
        if adapter is not None:
            raise UsageError("give the adapter settings to XlsteerLM(...) when passing a ready XlsteerLM")
        lm = model
    else:
        lm = XlsteerLM(pretrained=model, settings=adapter)
    with local_task_dir(cfg.data_dir) as task_dir:
        tm = harness.task_manager(names, cfg.include_path, override_dir=task_dir)
        results = harness.simple_evaluate(
            lm, names, tm, num_fewshot=cfg.num_fewshot, limit=limit, log_samples=cfg.log_samples,
            bootstrap_iters=cfg.bootstrap_iters, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise UsageError("lm-eval returned no results (not the main process)")
    return results
