"""Evaluation task items and splits (mgsm, xcopa, xnli, xquad); see :mod:`.base`."""

from .base import TASK_NAMES, TASKS, Item, get_task

__all__ = ["Item", "TASKS", "TASK_NAMES", "get_task"]
