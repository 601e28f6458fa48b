"""Evaluation: tasks, the engine, the runner, sweeps and the statistics of every comparison.

The public API, imported on first use (so that ``import xlsteer.evaluation.tasks`` stays cheap)::

    from xlsteer.evaluation import EvalConfig, evaluate
    res = evaluate(lm, "xcopa", ["en", "sw"], "vector.safetensors", EvalConfig(limit=50))
    print(res.table()); res.write("results.json")

(``xlsteer.evaluation.sweep.sweep`` chooses layer and strength on the dev split, with the same
EvalConfig.)
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "EvalConfig": ".config",
    "EvalResult": ".api",
    "evaluate": ".api",
    "evaluate_method": ".api",
    "compare_runs": ".pairing",
    "TaskSpec": ".tasks",
    "register_task": ".tasks",
    "resolve_task": ".tasks",
    "get_task": ".tasks",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
