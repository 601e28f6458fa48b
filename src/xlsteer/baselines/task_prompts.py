"""Prompt baselines a task declares itself: its default template with some options changed.

Why a task declares them: what a practitioner would try instead of steering is often specific to
the benchmark — on LCB, telling the model which language to answer in ("Answer in German.") or
upstream's own mitigation, its 5-shot prompt. The task's :class:`~xlsteer.evaluation.tasks.spec.
PromptBaseline` records hold the option changes; ``xlsteer compare`` runs each as the method of
the same name, on the same items and with the same decoding as every other method, and records
how many prompt tokens it adds per item. A task that declares no such prompt refuses the method
with one line (the comparison records it and goes on).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import UsageError
from ..evaluation.tasks import get_task, get_template
from .context import MethodRun, RunContext, _cost, _eval, _eval_items

#: The method names a task may declare prompt baselines under (``BaselineHints.prompt_baselines``).
PROMPT_METHODS = ("instruct", "few-shot")


def declared(task: str, name: str) -> Any:
    """The task's :class:`PromptBaseline` for method ``name``; UsageError when it declares none."""
    spec = get_task(task)
    table = spec.baselines.prompt_baselines
    if name not in table:
        have = ", ".join(table) or "none"
        raise UsageError(f"{name}: task {spec.name} declares no such prompt (its prompt baselines: {have}); "
                         f"drop {name} from --methods")
    return table[name]


def prompt_options(ctx: RunContext, name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The template options of prompt baseline ``name``: the run's options, the task's changes, then
    the user's ``-O NAME.KEY=V`` for the keys the baseline changes (e.g. ``-O few-shot.k=3``)."""
    base = declared(ctx.task, name)
    return {**dict(ctx.template_options), **dict(base.options),
            **{k: v for k, v in overrides.items() if k in base.options}}


def extra_prompt_tokens(lm: Any, task: str, template: str | None, options: Mapping[str, Any],
                        items: Sequence[Any], data_dir: Any = None,
                        base_options: Mapping[str, Any] | None = None) -> float:
    """Mean prompt tokens per item that ``options`` add over ``base_options`` (the run's)."""
    from ..evaluation.scoring import prompt_text

    if not items:
        return 0.0
    spec = get_task(task)
    plain = get_template(spec, template, **dict(base_options or {}))
    changed = get_template(spec, template, **dict(options))

    def text(tpl: Any, item: Any) -> str:
        ex = spec.few_shot.load(tpl, item.lang, data_dir)[0] if spec.few_shot is not None else []
        return prompt_text(lm.tokenizer, tpl.render(item, ex))

    total = 0
    for it in items:
        a, b = text(changed, it), text(plain, it)
        total += len(lm.tokenizer(a)["input_ids"]) - len(lm.tokenizer(b)["input_ids"])
    return total / len(items)


def run_prompt_baseline(ctx: RunContext, name: str, overrides: Mapping[str, Any]) -> MethodRun:
    """Evaluate the unsteered model with prompt baseline ``name`` of the task (no selection)."""
    options = prompt_options(ctx, name, overrides)
    res, secs = _eval(ctx, ctx.lm, ctx.langs, template_options=options)
    extra = extra_prompt_tokens(ctx.lm, ctx.task, ctx.template, options, _eval_items(ctx, ctx.langs), ctx.data_dir,
                                ctx.template_options)
    return MethodRun(name, "prompting", res, {"template_options": options},
                     _cost(eval_seconds=secs, extra_tokens_per_item=extra),
                     {"source": "none (a fixed prompt the task declares)",
                      "description": declared(ctx.task, name).description})
