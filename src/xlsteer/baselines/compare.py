"""``xlsteer compare``: run several methods on the same items, pair each with zero-shot item by
item, and write the comparison (JSON record and Markdown table). Resumes per method.

The method table lives in :mod:`xlsteer.baselines.methods`, which re-exports these functions; it
is read when a comparison runs (``run_method`` through the module, so it can be replaced).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UsageError, XlsteerError
from ..filenames import confined
from ..results import COMPARE, VERSION
from .context import REFERENCE, MethodRun, RunContext


def _cell(res: dict[str, Any], lang: str, main: str) -> dict[str, Any]:
    m = res["per_lang"][lang]["metrics"][main]
    return {"score": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}


def pair_with_reference(run: dict[str, Any], ref: dict[str, Any], langs: Sequence[str], anchor: str,
                        seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> dict[str, Any]:
    """Per language and on average over non-anchor languages: score [CI] and the paired test vs ``ref``.

    The tests are :func:`~xlsteer.evaluation.pairing.compare_runs`'s: per language McNemar (0/1
    scores) or the paired permutation test, with p Holm-adjusted over the non-anchor languages; for
    the average, the paired permutation test stratified by language (the difference's CI: the paired
    bootstrap stratified alike; the score's CI: the run's stratified interval).
    """
    from ..evaluation.pairing import compare_runs

    main = ref["metrics"]["main"]
    cmp = compare_runs(ref, run, n_boot=n_boot, seed=seed, alpha=alpha)
    per: dict[str, Any] = {}
    for lang in langs:
        if lang not in run["per_lang"]:
            continue
        c = cmp["per_lang"].get(lang)
        cell = _cell(run, lang, main)
        if c is not None:
            t = c["metrics"][main]
            cell.update({k: t[k] for k in ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "test", "verdict",
                                           "mde") if k in t}, prediction_changed=c["prediction_changed"])
        per[lang] = cell
    covered = [lang for lang in langs if lang != anchor and lang in per]
    avg: dict[str, Any] = {"langs": covered, "partial": len(covered) < len([x for x in langs if x != anchor])}
    test = cmp["average"]["tests"].get(main)
    if covered and test is not None and cmp["average"]["langs"] == covered:
        ci = run["average"].get("ci", {}).get(main, {})
        avg.update(score=float(np.mean([per[lang]["score"] for lang in covered])), ci_low=ci.get("ci_low"),
                   ci_high=ci.get("ci_high"), n=int(sum(per[lang]["n"] for lang in covered)))
        avg.update({k: test[k] for k in ("diff", "diff_ci_low", "diff_ci_high", "p", "test", "verdict", "mde")
                    if k in test})
    out = {"per_lang": per, "average": avg}
    guard = _guard_cells(run, cmp, per)
    if guard:
        out["guard"] = guard
    return out


def _guard_cells(run: dict[str, Any], cmp: dict[str, Any], per: dict[str, Any]) -> dict[str, Any]:
    """The quality guard beside the main metric: per guard score its average over the non-anchor
    languages (with CI and the stratified paired test) and, in each language's cell, its score and
    paired test; a pass-rate row never travels without what happened to the text."""
    from ..evaluation.tasks.spec import GUARD_CONTINUOUS

    keys = ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "test", "verdict", "mde")
    guard: dict[str, Any] = {}
    for name in [n for n in run["metrics"].get("continuous", []) if n in GUARD_CONTINUOUS]:
        value = run["average"].get("continuous", {}).get(name)
        if value is None:
            continue
        ci = run["average"].get("ci", {}).get(name, {})
        cell = {"score": float(value), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high")}
        test = cmp["average"]["tests"].get(name)
        cell.update({k: test[k] for k in keys if test is not None and k in test})
        guard[name] = cell
        for lang, lang_cell in per.items():
            s = run["per_lang"][lang]["continuous"][name]
            c = {"score": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"]}
            t = (cmp["per_lang"].get(lang) or {}).get("continuous", {}).get(name)
            c.update({k: t[k] for k in keys if t is not None and k in t})
            lang_cell.setdefault("guard", {})[name] = c
    return guard


def compare_methods(lm: Any, task: str, langs: Sequence[str], methods: Sequence[str], *,
                    out_dir: str | os.PathLike | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                    on_method: Callable[[str, MethodRun], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Run ``methods`` on the same items and pair each with zero-shot; returns the "compare" record.

    ``settings`` are the comparison's settings, the fields of :class:`~.context.RunContext` (split,
    limit, dev_limit -- default ``limit``, else 100 --, fit_limit, anchor, data_dir, seed,
    batch_size, max_length, n_boot, cache_dir, translation_cache, ``calibrate``: content-free
    calibration of label tasks for every model-scored method, ``select``: ``global`` or
    ``per-lang`` selection of steering settings on dev, the unsteered model included,
    ``select_rule``: the evidence a steered setting needs to replace the unsteered model, a
    :class:`~xlsteer.evaluation.evidence.SelectionRule` -- None: the default paired test --,
    ``template``: the task template every method uses (None: the task's default), ``preserve``: a
    :class:`~.preserve.Preservation` or ``"xquad:40"`` -- each steering row's selected intervention
    is also measured on that scored task, paired against the unsteered model --, ...).
    ``options``: per-method settings (``-O METHOD.KEY=V``). ``out_dir``: per-method runner results
    go to ``out_dir/runs/<method>.json`` (and adapters to ``out_dir/adapters``).
    """
    from ..evaluation.runner import write_results
    from . import methods as M

    METHODS, parse_methods = M.METHODS, M.parse_methods
    t_start = time.perf_counter()
    names = parse_methods(list(methods))
    added_reference = REFERENCE not in names
    if added_reference:
        names = [REFERENCE, *names]
    else:
        names = [REFERENCE, *[n for n in names if n != REFERENCE]]
    check_options(options or {}, names)
    if isinstance(settings.get("preserve"), str):
        settings["preserve"] = _preservation(settings["preserve"])
    ctx = RunContext.create(lm, task, langs, work_dir=out_dir, options=options, **settings)
    runs: dict[str, MethodRun] = {}
    files: dict[str, str] = {}
    for name in names:
        t0 = time.perf_counter()
        key = resume_key(ctx, name)
        path = None if out_dir is None else confined(Path(out_dir) / "runs", f"{name.replace('+', '_')}.json")
        run = _reusable(path, key)
        if run is None:
            try:
                run = M.run_method(name, ctx)
            except XlsteerError as e:
                if name == REFERENCE:
                    raise
                run = MethodRun(name, METHODS[name].family, None, error=" ".join(str(e).split()))
            run.cost["wall_seconds"] = round(time.perf_counter() - t0, 3)
            run.extra["resume_key"] = key
            if path is not None and run.results is not None:
                write_results(path, {**run.results, "method": run.record()})
        runs[name] = run
        if path is not None and path.is_file():
            files[name] = str(path.relative_to(out_dir))
        if on_method is not None:
            on_method(name, run)
    _preservation_rows(ctx, runs)
    ctx.shared.clear()
    return assemble_compare(ctx, names, runs, files, reference_added=added_reference,
                            wall_seconds=time.perf_counter() - t_start)


def _preservation(value: Any) -> Any:
    from .preserve import Preservation

    return Preservation.parse(value) if isinstance(value, str) or value is None else value


def _preservation_rows(ctx: RunContext, runs: Mapping[str, MethodRun]) -> None:
    """Every row says what it did to the preservation task: the reference's own scores, a steering
    row's measurement (made by the row), or why a method has none (prompts and decoding rules of
    the main task do not carry over to another task)."""
    if ctx.preserve is None:
        return
    from .preserve import main_average, not_applicable, reference

    for name, run in runs.items():
        if run.results is None or "preservation" in run.extra:
            continue
        if name == REFERENCE:
            ref = reference(ctx, ctx.preserve)
            targets = [lang for lang in ref["langs"] if lang != ctx.anchor]
            run.extra["preservation"] = {**ctx.preserve.describe(), "status": "reference",
                                         "main": ref["metrics"]["main"], "langs": ref["langs"],
                                         **pair_with_reference(ref, ref, ref["langs"], ctx.anchor, seed=ctx.seed,
                                                               n_boot=ctx.n_boot),
                                         "reference_average": main_average(ref, targets)}
        else:
            run.extra["preservation"] = not_applicable(ctx.preserve, f"{name} is not an intervention: it changes "
                                                       f"the prompt or decoding of {ctx.task}")


def resume_key(ctx: RunContext, name: str) -> str:
    """What a method's result depends on: a finished ``runs/<method>.json`` with this key is reused.

    Why: the per-item cache makes a re-run's evaluations instant, but fitting (LoRA training,
    statistics, prompt search) would run again; an interrupted compare resumes per method.
    """
    import hashlib

    from .. import __version__
    from ..io import dumps_json
    from .methods import METHODS

    spec = METHODS[name]
    params = {**dict(spec.defaults), **ctx.options.get(name, {})}
    body = {"method": name, "params": params, "task": ctx.task, "langs": ctx.langs, "split": ctx.split,
            "limit": ctx.limit, "dev_limit": ctx.dev_limit, "fit_limit": ctx.fit_limit, "anchor": ctx.anchor,
            "seed": ctx.seed, "max_length": ctx.max_length, "n_boot": ctx.n_boot,
            "calibrate": ctx.calibrate, "select": ctx.select,
            "select_rule": _rule_record(ctx.select_rule),
            "data_dir": str(Path(ctx.data_dir).resolve()) if ctx.data_dir else None,
            "model": getattr(ctx.lm, "fingerprint", None), "xlsteer": __version__}
    if ctx.sampling or ctx.guard is not None:  # absent when unset: earlier runs keep their keys
        body.update(sampling=dict(ctx.sampling), guard=ctx.guard)
    if ctx.template is not None or ctx.template_options:
        body.update(template=ctx.template, template_options=dict(ctx.template_options))
    if ctx.preserve is not None:
        body["preserve"] = ctx.preserve.describe()
    return hashlib.sha256(dumps_json(body).encode("utf-8")).hexdigest()


def _rule_record(rule: Any) -> dict[str, Any]:
    from ..evaluation.evidence import SelectionRule

    return (rule or SelectionRule()).record()


def _reusable(path: Path | None, key: str) -> MethodRun | None:
    if path is None or not path.is_file():
        return None
    try:
        run = MethodRun.from_file(path)
    except XlsteerError:
        return None
    if run.extra.get("resume_key") != key or run.results is None:
        return None
    run.notes = [*run.notes, f"reused from {path.name} (same settings; finished earlier)"]
    return run


def assemble_compare(ctx: RunContext, names: Sequence[str], runs: Mapping[str, MethodRun],
                     files: Mapping[str, str] | None = None, *, reference_added: bool = False,
                     wall_seconds: float | None = None) -> dict[str, Any]:
    """The "compare" record from finished method runs: each paired with zero-shot item by item."""
    from ..provenance import versions
    from .methods import METHODS

    seed, n_boot, lang_list, split, limit = ctx.seed, ctx.n_boot, ctx.langs, ctx.split, ctx.limit
    ref = runs[REFERENCE].results
    assert ref is not None
    main = ref["metrics"]["main"]
    rows: dict[str, Any] = {}
    for name in names:
        run = runs[name]
        row = {**run.record(), "description": METHODS[name].description}
        if run.results is not None:
            row.update(pair_with_reference(run.results, ref, lang_list, ctx.anchor, seed=seed, n_boot=n_boot))
            for lang in lang_list:
                if lang not in row["per_lang"]:
                    row["per_lang"][lang] = {"status": "n/a", "reason": run.skipped.get(lang, "not evaluated")}
            row["item_ids_sha256"] = run.results["item_ids"]["sha256"]
        else:
            row["per_lang"] = {lang: {"status": "failed", "reason": run.error} for lang in lang_list}
            row["average"] = {}
        rows[name] = row
    return {
        "format": COMPARE,
        "version": VERSION,
        "task": ctx.task,
        "split": split,
        "langs": lang_list,
        "anchor": ctx.anchor,
        "main": main,
        "metric_kind": ref["metrics"]["kinds"][main],
        "model": ref["model"],
        "template": ref["template"],
        "limit": limit,
        "dev_limit": ctx.dev_limit,
        "fit_limit": ctx.fit_limit,
        "seed": seed,
        "n_boot": n_boot,
        "alpha_level": 0.05,
        "select": ctx.select,
        "select_rule": _rule_record(ctx.select_rule),
        "reference": REFERENCE,
        "reference_added": reference_added,
        "item_ids": ref["item_ids"],
        "methods": list(names),
        "rows": rows,
        "runs": dict(files or {}),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "versions": versions(),
    }


def compare_markdown(record: Mapping[str, Any]) -> str:
    """One Markdown table: rows = methods, columns = languages + average (see evaluation.tables.methods_table)."""
    from ..evaluation.tables import methods_table
    from ..results.schema import validate

    return methods_table(validate(dict(record)))


def write_compare(out_dir: str | os.PathLike, record: Mapping[str, Any]) -> tuple[Path, Path]:
    """DIR/compare.json and DIR/compare.md (atomic writes)."""
    from ..io import atomic_write_json, atomic_write_text

    d = Path(out_dir)
    from ..results.read import check_readable

    j = atomic_write_json(d / "compare.json", dict(record), validate=check_readable)
    m = atomic_write_text(d / "compare.md", compare_markdown(record))
    return j, m


def load_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["sft.steps=20", "icl-en.k=2"]`` -> ``{"sft": {"steps": 20}, "icl-en": {"k": 2}}`` (values as JSON when they parse)."""
    from .methods import parse_methods

    out: dict[str, dict[str, Any]] = {}
    for item in pairs:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"option {item!r} must look like METHOD.KEY=VALUE, e.g. sft.steps=20")
        left, value = item.split("=", 1)
        method, key = left.rsplit(".", 1)
        method = parse_methods(method)[0]
        try:
            parsed: Any = json.loads(value)
        except ValueError:  # not JSON (plain text), or an integer of thousands of digits
            parsed = value
        key = key.strip()
        if key in out.get(method, {}):
            raise UsageError(f"option {method}.{key} is given twice; give it once")
        out.setdefault(method, {})[key] = check_option(method, key, parsed, value)
    return out


def check_option(method: str, key: str, value: Any, raw: str | None = None) -> Any:
    """One ``-O METHOD.KEY=VALUE`` against what the method declares (type and range), before any work."""
    from ..interventions.params import check_value
    from .methods import METHODS

    declared = METHODS[method].params
    if declared is None:  # a method registered without declarations: passed to it as given
        return value
    return check_value(method, key, value, declared, shown=raw)


def check_options(options: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> None:
    """Options only for methods that run (``sft`` also sets ``sft+steer``'s fine-tuning), each one
    declared by its method with a value of the right type and range."""
    from .methods import METHODS

    running = set(methods) | ({"sft"} if "sft+steer" in methods else set())
    for method, given in options.items():
        if method not in METHODS:
            raise UsageError(f"options given for unknown method {method}; choose among {', '.join(METHODS)}")
        if method not in running:
            raise UsageError(f"-O {method}.* is given, but {method} is not among the methods run "
                             f"({', '.join(dict.fromkeys(methods))}); add it to --methods or drop the option")
        for key, value in given.items():
            check_option(method, key, value)
