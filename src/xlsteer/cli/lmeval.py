"""``xlsteer lm-eval``: run lm-evaluation-harness tasks through xlsteer's engine, steered or not.

lm-eval's own CLI only knows models that are already imported, so this command registers the
``xlsteer`` model (and writes the offline XCOPA task configs) before calling
``lm_eval.simple_evaluate``.
"""

from __future__ import annotations

import time
from typing import Any

import click

from ..errors import UsageError
from .guard import Input, Output
from .options import MAX_COUNT, SEED, count, data_dir_option, load_model_from, model_options, parse_float, spare_inputs

_POSITIONS = ["all", "prompt", "generated", "last_prompt"]


def _limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--limit must be a number of items per task (or a fraction below 1), got {text!r}") from None
    if not 0 < value <= MAX_COUNT:
        raise UsageError(f"--limit must be a positive finite number, got {text!r}; omit it for all items")
    return int(value) if value >= 1 and value == int(value) else value


def _refuse_existing_configs(folder: str, force: bool) -> None:
    """Task configs already in ``folder`` are the user's: replaced only with --force."""
    from pathlib import Path

    from ..lmeval.xcopa import local_names

    there = sorted(n for n in [*(f"{t}.yaml" for t in local_names() if t != "xcopa"), "_xcopa.yaml", "utils.py"]
                   if (Path(folder) / n).exists())
    if there and not force:
        more = f" and {len(there) - 3} more" if len(there) > 3 else ""
        raise UsageError(f"{folder} already holds {', '.join(there[:3])}{more}; pass --force to replace them, "
                         "or write the task configs into an empty folder")


@click.command("lm-eval")
@model_options
@data_dir_option
@click.option("--tasks", default=None,
              help="Comma-separated lm-eval tasks, e.g. xcopa_sw,xcopa_zh (XCOPA runs offline from the data dir).")
@click.option("--intervention", default=None, type=Input(dir_okay=False),
              help="Intervention file (.safetensors) to steer with.")
@click.option("--alpha", default=None, help="Strength of the intervention (default: as saved).")
@click.option("--anchor", default="en", show_default=True, help="Anchor language (never steered); 'none' steers all.")
@click.option("--lang", default="task", show_default=True,
              help="Language of the requests: 'task' (from each task's name, e.g. xcopa_sw -> sw) or a code.")
@click.option("--task-langs", default=None, help="Languages of tasks whose names carry none, e.g. 'copa:en;mytask:de'.")
@click.option("--positions", type=click.Choice(_POSITIONS), default=None,
              help="Which token positions the intervention edits (default: the policy the intervention stores, "
                   "e.g. last_prompt for INCLINE, else all).")
@click.option("--limit", default=None, help="First N documents per task (or a fraction below 1).")
@click.option("--num-fewshot", type=count(0), default=None, help="Few-shot examples (default: the task's).")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(8), default=2048, show_default=True)
@click.option("--include-path", multiple=True, type=Input(file_okay=False),
              help="More lm-eval task config directories (repeatable).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="lm-eval's random seeds (few-shot sampling).")
@click.option("--no-log-samples", is_flag=True, help="Leave the per-item records out of the output file.")
@click.option("--write-tasks", default=None, type=Output(folder=True, writes=("*.yaml", "utils.py")),
              help="Only write the offline XCOPA task configs into this directory (for lm-eval's --include_path).")
@click.option("--force", is_flag=True, help="With --write-tasks: replace task configs already in the folder.")
@click.option("--output", "-o", default=None, type=Output(), help="Results file (.json).")
def lmeval_cmd(**kw: Any) -> None:
    """Evaluate with lm-evaluation-harness tasks, scored (and steered per language) by xlsteer.

    \b
    xlsteer lm-eval --model gemma3-270m --tasks xcopa_sw,xcopa_zh --limit 50
    xlsteer lm-eval --tasks xcopa --intervention iv.safetensors --alpha 2 -o out.json
    xlsteer lm-eval --write-tasks ./xcopa_tasks   # then: python -m xlsteer.lmeval
                                                  #   --model xlsteer --include_path ./xcopa_tasks ...
    """
    from ..io import atomic_write_text, check_writable

    t0 = time.perf_counter()
    if kw["write_tasks"] is not None:
        from ..lmeval.xcopa import write_xcopa_tasks
        from ..io import files_written_into

        spare_inputs(files_written_into(kw["write_tasks"], ["*.yaml", "utils.py"]), [], data_dir=kw["data_dir"])
        _refuse_existing_configs(kw["write_tasks"], kw["force"])
        names = write_xcopa_tasks(kw["write_tasks"], kw["data_dir"])
        click.echo(f"wrote {len(names)} task configs ({', '.join(names)}) to {kw['write_tasks']}; "
                   f"pass --include_path {kw['write_tasks']} to lm-eval")
        return
    if not kw["tasks"]:
        raise UsageError("no tasks given; pass e.g. --tasks xcopa_sw,xcopa_zh")
    out = check_writable(kw["output"]) if kw["output"] else None
    spare_inputs([out], [kw["intervention"], *kw["include_path"]], model=kw["model"], data_dir=kw["data_dir"])
    alpha = parse_float(kw["alpha"], "--alpha") if kw["alpha"] is not None else None
    if alpha is not None and kw["intervention"] is None:
        raise UsageError("--alpha needs --intervention FILE")
    limit = _limit(kw["limit"])
    from ..lmeval.harness import results_json, results_table
    from ..lmeval.model import XlsteerLM
    from ..lmeval.model import AdapterSettings
    from ..lmeval.run import LmEvalConfig, run_lm_eval

    loaded = load_model_from(kw)
    lm = XlsteerLM(pretrained=loaded, settings=AdapterSettings(
        batch_size=kw["batch_size"], max_length=kw["max_length"], intervention=kw["intervention"], alpha=alpha,
        anchor=kw["anchor"], lang=kw["lang"], positions=kw["positions"], task_langs=kw["task_langs"]))
    cfg = LmEvalConfig(limit=limit, num_fewshot=kw["num_fewshot"], data_dir=kw["data_dir"],
                       include_path=kw["include_path"], log_samples=not kw["no_log_samples"], seed=kw["seed"])
    try:
        results = run_lm_eval(lm, kw["tasks"], cfg)
    except ValueError as e:  # lm-eval's own refusals (e.g. more few-shot examples than docs)
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise UsageError(f"lm-eval refused the run ({why}); check --tasks, --num-fewshot and --limit") from None
    click.echo(results_table(results))
    if out is not None:
        atomic_write_text(out, results_json(results))
        click.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


COMMANDS = [lmeval_cmd]
