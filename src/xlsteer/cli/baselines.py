"""``xlsteer compare``: every method on the same items, paired with zero-shot, as one table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .evaluate import lid_model_option, select_options, selection_rule, use_lid_model_from
from .guard import Output
from .options import (SEED, count, data_dir_option, langs_for, load_model_from, model_options, resolve_task_from,
                      spare_inputs, task_inputs, task_options)

COMPARE_WRITES = ("compare.json", "compare.md", "runs/*.json")
DEFAULT_METHODS = "zero-shot,icl-en,icl-native,prompt-opt,translate-self,diffmean"


@click.command("compare")
@model_options
@data_dir_option
@task_options
@click.option("--langs", default=None, help="Comma-separated languages, e.g. en,sw,zh,id,it, or 'all' (the task's; "
              "the default for a user task).")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated methods, or 'all': zero-shot, icl-en, icl-native, instruct, few-shot, prompt-opt, "
                   "xlt, sft, sft+steer, translate-test, translate-self, translate-gmt, script-gate, diffmean, learned, "
                   "incline, clas, lape, intmu, langvec (and methods registered by plugins).")
@click.option("--anchor", default="en", show_default=True, help="Anchor language (never steered).")
@click.option("--split", default="test", show_default=True, help="Split the reported numbers come from.")
@click.option("--limit", type=count(1), default=None, help="First N items per language (default: all).")
@click.option("--dev-limit", type=count(1), default=None,
              help="Dev items per language for selection (prompt search, sweeps); default: --limit, else 100.")
@click.option("--fit-limit", type=count(1), default=200, show_default=True,
              help="NTREX fit lines per language for steering methods.")
@click.option("--option", "-O", "options", multiple=True,
              help="Per-method setting METHOD.KEY=VALUE (repeatable), e.g. -O sft.steps=20 -O icl-en.k=2.")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(8), default=2048, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed (exemplars, training, bootstrap).")
@click.option("--cache-dir", default=None, type=Output(folder=True),
              help="Per-item evaluation cache (default: <xlsteer cache>/eval).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the evaluation and translation caches.")
@click.option("--translation-cache", default=None, type=Output(),
              help="Translation cache file (default: <xlsteer cache>/translations.json).")
@click.option("--calibrate", is_flag=True, help="Content-free calibration of label scores (xnli).")
@select_options
@click.option("--template", default=None, help="Prompt template every method uses (default: the task's; e.g. "
              "lcb-chat for an instruct model).")
@click.option("--preserve", default=None, metavar="TASK[:N]",
              help="Also measure each steering row's selected intervention on a scored task's test items (N per "
                   "language; default all), paired against the unsteered model, e.g. --preserve xquad:40.")
@lid_model_option
@click.option("--output", "-o", required=True, type=Output(folder=True, writes=COMPARE_WRITES), help="Output folder.")
def compare_cmd(**kw: Any) -> None:
    """Compare steering with what a practitioner would do instead, on the same test items.

    Writes DIR/compare.json (per method x language: score with 95% CI, paired p-value and verdict
    against zero-shot, cost), DIR/compare.md (the table, printed too) and DIR/runs/<method>.json
    (each method's per-item results). A method whose DIR/runs file was written with the same
    settings is reused, so an interrupted comparison resumes per method.
    """
    from ..baselines.compare import check_options, compare_markdown, compare_methods, load_options, write_compare
    from ..baselines.methods import parse_methods
    from ..io import check_writable

    t0 = time.perf_counter()
    out = Path(kw.pop("output"))
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; give a folder, e.g. -o results/compare")
    check_writable(out / "compare.json")
    from ..io import files_written_into

    spec = resolve_task_from(kw)
    spare_inputs([*files_written_into(out, COMPARE_WRITES), kw["translation_cache"]],
                 task_inputs(spec, kw), model=kw["model"], data_dir=kw["data_dir"])
    use_lid_model_from(kw)
    langs = langs_for(kw.pop("langs"), spec, kw["anchor"])
    from ..baselines.preserve import Preservation
    from ..evaluation.tasks import get_template

    preserve = Preservation.parse(kw["preserve"])
    if kw["template"] is not None:
        get_template(spec, kw["template"])  # an unknown name stops here, before the model loads
    methods = parse_methods(kw.pop("methods"))
    options = load_options(list(kw.pop("options")))
    check_options(options, ["zero-shot", *methods])  # types, ranges, methods that run: before the model loads
    no_cache = kw.pop("no_cache")
    cache_dir = kw.pop("cache_dir")
    tcache = kw.pop("translation_cache")
    if no_cache:
        cache_dir, translation_cache = None, False
    else:
        from ..models.shipped import cache_dir as root

        from .options import checked_cache_dir

        cache_dir = checked_cache_dir(cache_dir if cache_dir else root() / "eval")
        translation_cache = tcache if tcache else True
    from ..evaluation.config import EvalConfig
    from ..evaluation.runner import check_inputs

    # every input of the reported split read and hashed before any model time
    check_inputs(spec, langs, EvalConfig(split=kw["split"], limit=kw["limit"], anchor=kw["anchor"],
                                         data_dir=kw["data_dir"]))
    lm = load_model_from(kw)

    def report(name: str, run: Any) -> None:
        status = f"failed: {run.error}" if run.error else f"{run.cost.get('wall_seconds', 0):.1f} s"
        click.echo(f"[{name}] {status}", err=True)

    record = compare_methods(
        lm, spec.name, langs, methods, split=kw["split"], limit=kw["limit"], dev_limit=kw["dev_limit"],
        fit_limit=kw["fit_limit"], anchor=kw["anchor"], data_dir=kw["data_dir"], seed=kw["seed"],
        batch_size=kw["batch_size"], max_length=kw["max_length"], cache_dir=cache_dir,
        translation_cache=translation_cache, out_dir=out, options=options, on_method=report,
        calibrate=kw["calibrate"], select=kw["select"], select_rule=selection_rule(kw), template=kw["template"],
        preserve=preserve,
    )
    record["command_seconds"] = round(time.perf_counter() - t0, 3)
    json_path, md_path = write_compare(out, record)
    click.echo(compare_markdown(record))
    click.echo(f"wrote {json_path} and {md_path} in {time.perf_counter() - t0:.1f} s")


COMMANDS = [compare_cmd]
