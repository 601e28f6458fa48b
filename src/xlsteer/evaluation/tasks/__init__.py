"""Evaluation tasks: the :class:`TaskSpec` record, its registry, and the built-in benchmarks.

A task is declared once, as a :class:`TaskSpec` (see :mod:`.spec`); the built-ins (mgsm, xcopa,
xnli, xquad) are one module each. :func:`resolve_task` also accepts user benchmarks:
``lmeval:NAME[,NAME...]`` and the path of a JSONL task spec (``.yaml``).
"""

from .base import Item
from .spec import (BaselineHints, FewShot, Metric, Scored, TaskSource, TaskSpec, get_task, get_template,
                   register_task, register_task_source, resolve_task, task_names, unregister_task)

__all__ = ["BaselineHints", "FewShot", "Item", "Metric", "Scored", "TaskSource", "TaskSpec", "get_task",
           "get_template", "register_task", "register_task_source", "resolve_task", "task_names", "unregister_task"]
