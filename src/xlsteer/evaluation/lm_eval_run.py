"""Running lm-evaluation-harness with the xlsteer model: ``run_lm_eval``, its result tables and JSON, lm-eval's CLI.

Why a module of its own: :mod:`xlsteer.evaluation.lm_eval_model` is the adapter (how lm-eval
requests become engine calls, and which language each task's requests get); this module is the
driver around it: it checks the task names, registers the offline XCOPA configs, keeps the global
random state and the network untouched by ``simple_evaluate``, and formats what comes back.
Its public names are importable from :mod:`xlsteer.evaluation.lm_eval_model` as well.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import UsageError


@contextlib.contextmanager
def _kept_random_state() -> Iterator[None]:
    """``simple_evaluate`` seeds Python's, NumPy's and torch's global generators; restore them after."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


@contextlib.contextmanager
def _no_download_counts() -> Iterator[None]:
    """Stop ``datasets.load_dataset`` from pinging S3 ("download counts") for local data files.

    Why: even the offline XCOPA configs (local JSON files) made it open a connection to
    s3.amazonaws.com unless HF_HUB_OFFLINE was set; a run on local data must not touch the network.
    """
    try:
        import datasets.config as cfg
    except ImportError:  # pragma: no cover
        yield
        return
    old = cfg.HF_UPDATE_DOWNLOAD_COUNTS
    cfg.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        cfg.HF_UPDATE_DOWNLOAD_COUNTS = old


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
    with the offline XCOPA configs of :mod:`.lm_eval_tasks` (they override lm-eval's hub ones).

    Returns lm-eval's results dict (``results``, ``groups``, ``configs``, ``n-samples``, per-item
    ``samples`` when ``log_samples``), with the adapter's identity in ``config``.
    """
    from lm_eval import simple_evaluate

    from .lm_eval_model import XlsteerLM  # here, not at the top: that module re-exports this one's names
    from .lm_eval_tasks import local_task_dir, task_manager

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
    from .lm_eval_quiet import quiet_lm_eval

    with local_task_dir(data_dir) as task_dir, _kept_random_state(), quiet_lm_eval():
        tm = task_manager(task_dir, names, include_path=list(include_path))
        unknown = [n for n in names if n not in set(tm.all_tasks) and not Path(n).is_file()]
        if unknown:
            import difflib

            close = sorted({m for n in unknown for m in difflib.get_close_matches(n, tm.all_tasks, n=3)})
            raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}; "
                             + (f"did you mean {', '.join(close)}? " if close else "")
                             + "see `lm-eval ls tasks` or pass --include-path DIR")
        with _no_download_counts():
            results = simple_evaluate(
                model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                log_samples=log_samples, bootstrap_iters=bootstrap_iters, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise UsageError("lm-eval returned no results (not the main process)")
    return results


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own markdown table(s) of a results dict."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def results_json(results: dict[str, Any]) -> str:
    """lm-eval's results as JSON (its own handling of numpy values and functions), sorted keys,
    stamped as an ``xlsteer.lm-eval`` result file."""
    import json

    from lm_eval.utils import handle_non_serializable

    from ..results import LM_EVAL, stamp

    return json.dumps(stamp(LM_EVAL, results), default=handle_non_serializable, ensure_ascii=False, indent=1,
                      sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line, with the ``xlsteer`` model registered (this module is imported)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
