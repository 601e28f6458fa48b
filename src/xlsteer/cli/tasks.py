"""``xlsteer tasks``: the benchmarks xlsteer knows, and what a user task spec declares.

Why a command: before spending model time on a user benchmark, a researcher wants to see that
xlsteer read it as intended — its languages, the item rule of each split, the metrics and which
one decides, and which baselines can run on it.
"""

from __future__ import annotations

import functools
from typing import Any

import click

from .options import data_dir_option, task_options


def _metrics(spec: Any) -> str:
    return ", ".join(f"{m.name}*" if m.name == spec.main else m.name for m in spec.metrics)


def _baselines(spec: Any) -> str:
    hints = spec.baselines
    can = ["zero-shot", "steering" if spec.dev_split else "steering (no dev split: fixed settings only)"]
    if hints.icl_split:
        can.append(f"icl ({hints.icl_split} exemplars)")
    if hints.instructions:
        can.append("prompt-opt")
    if hints.train_split and (spec.kind != "generate" or hints.answer_text):
        can.append(f"xlt/sft ({hints.train_split} items)")
    if hints.translate_fields:
        can.append("translate-test")
    if hints.english_reference is not None:
        can.append("translate-gmt")
    return ", ".join(can)


def tasks_table(specs: list[Any]) -> str:
    """One row per task: kind, languages, splits, metrics (main starred)."""
    from ..formats import table

    rows = [[s.name, s.kind, f"{len(s.langs)}: {' '.join(s.langs)}", ", ".join(s.splits), _metrics(s)] for s in specs]
    return table(["task", "kind", "languages", "splits", "metrics (* main)"], rows)


def describe(spec: Any) -> str:
    """Everything a task declares, one fact a line."""
    lines = [f"{spec.name}: {spec.description}", f"  kind: {spec.kind}", f"  languages: {' '.join(spec.langs)}"]
    lines += [f"  split {name}: {rule}" for name, rule in spec.splits.items()]
    lines.append(f"  selection (sweeps, prompt search) on: {spec.dev_split or 'none (no dev split)'}")
    lines.append(f"  metrics: {_metrics(spec)}; tie-break: {spec.tie_break or 'none'}")
    if spec.continuous:
        lines.append(f"  continuous scores: {', '.join(spec.continuous)}")
    lines.append(f"  templates: {', '.join(t.name for t in spec.templates)} (default {spec.templates[0].name})")
    lines.append(f"  baselines: {_baselines(spec)}")
    src = ", ".join(f"{k}={v}" for k, v in spec.source.items())
    lines.append(f"  source: {src}")
    return "\n".join(lines)


@click.command("tasks")
@data_dir_option
@functools.partial(task_options, required=False)
def tasks_cmd(**kw: Any) -> None:
    """List the built-in tasks, or describe one task (--task: a name, lmeval:NAME,... or a spec .yaml)."""
    from ..evaluation.tasks import get_task, task_names

    from .options import resolve_task_from

    if kw["task"] is None:
        click.echo(tasks_table([get_task(n) for n in task_names()]))
        return
    click.echo(describe(resolve_task_from(kw)))


COMMANDS = [tasks_cmd]
