"""Steering rows of ``xlsteer compare``: fit a registered method on NTREX, choose its layer and
strength on dev (the unsteered model among the candidates), evaluate the choice on test.

Which layers are fitted and swept, the strength grid and the fit defaults come from the method's
registry entry (:mod:`xlsteer.interventions.registry`); nothing here names a method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import LanguageError, UsageError
from ..settings import parameters_of
from .context import NTREX_LANGS, MethodRun, RunContext, _cost


def _numel(iv: Any, layers: Sequence[int] | None = None) -> int:
    keep = None if layers is None else {f"@{x}" for x in layers}
    n = 0
    for key, t in iv.tensors.items():
        if keep is not None and "@" in key and key[key.rindex("@"):] not in keep:
            continue
        if t.is_floating_point():
            n += int(t.numel())
    return n


def _layers_param(value: Any, n_layers: int, default: list[int] | None) -> list[int] | None:
    if value is None or value == "auto":
        return default
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        from ..cli.options import parse_layers

        out = parse_layers(value, n_layers)
        return out if out is not None else default
    return [int(x) for x in value]


def _fit_languages(ctx: RunContext, name: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(skipped languages with the reason, the targets to fit, the languages to evaluate)."""
    targets = [lang for lang in ctx.langs if lang != ctx.anchor]
    skipped = {lang: "no NTREX parallel text to fit on (NTREX has " + " ".join(NTREX_LANGS) + ")"
               for lang in targets if lang not in NTREX_LANGS}
    use = [lang for lang in targets if lang in NTREX_LANGS]
    if not use:
        raise LanguageError(f"{name}: none of {', '.join(targets)} has NTREX text to fit a vector on")
    langs = ([ctx.anchor] if ctx.anchor in ctx.langs else []) + use
    return skipped, use, langs


@dataclass
class _Fitted:
    iv: Any
    corpus: Any
    fit_kw: dict[str, Any]
    fit_limit: int
    sweep_layers: list[int] | None  # each a candidate of its own; None: every fitted layer together
    fit_seconds: float


def _fit(ctx: RunContext, spec: Any, p: dict[str, Any], lm: Any, use: list[str]) -> _Fitted:
    """Fit the method on NTREX (fit split) at the layers its registry entry gives ``xlsteer compare``
    (its fit parameters: ``p`` over the entry's compare defaults, the run's seed for a seeded fit)."""
    from ..data.corpora import load_corpus
    from ..interventions.fit import fit

    method = spec.name
    n_layers = int(lm.num_layers)
    fit_limit = int(p.get("fit_limit", ctx.fit_limit))
    corpus = load_corpus(p.get("corpus", "ntrex"), data_dir=ctx.data_dir, langs=_corpus_langs(ctx, method, p, use),
                         split="fit", limit=fit_limit)
    fit_kw: dict[str, Any] = {k: v for k, v in p.items()
                              if k not in ("alphas", "layers", "fit_limit", "corpus", "dev_limit", "site", "select",
                                           "select_rule", "select_level", *spec.variant_keys)}
    for key, value in spec.compare_defaults.items():
        fit_kw.setdefault(key, value)
    if "seed" in parameters_of(spec.fit):
        fit_kw.setdefault("seed", ctx.seed)
    fit_layers = _layers_param(p.get("layers"), n_layers, spec.layer_policy.compare_layers(n_layers))
    t0 = time.perf_counter()
    iv = fit(method, lm, corpus, [ctx.anchor, *use], anchor=ctx.anchor, layers=fit_layers, site=p.get("site"),
             batch_size=ctx.batch_size, stats_cache=_stats_cache(ctx, lm, method, corpus, p.get("site")), **fit_kw)
    sweep_layers = None if spec.sweeps_together() else list(fit_layers if fit_layers is not None else iv.layers)
    return _Fitted(iv, corpus, fit_kw, fit_limit, sweep_layers, time.perf_counter() - t0)


def steer_and_evaluate(ctx: RunContext, method: str, p: dict[str, Any], lm: Any = None,
                       name: str | None = None) -> MethodRun:
    """Fit ``method`` on NTREX (fit split), choose layer/strength on dev, evaluate on ``ctx.split``.

    Everything method-specific (fit layers, the sweep's layers, the strength grid, defaults)
    comes from the method's registry entry (:mod:`xlsteer.interventions.registry`).
    """
    from ..interventions.registry import get_method

    spec = get_method(method)
    p = toward_goal(ctx, spec, p)
    lm = lm or ctx.lm
    name = name or method
    family = "combination" if name != method else "steering"
    skipped, use, langs = _fit_languages(ctx, name)
    alphas = tuple(float(a) for a in p.get("alphas", spec.alpha_grid))
    fitted = _fit(ctx, spec, p, lm, use)
    iv, corpus, fit_kw, fit_limit = fitted.iv, fitted.corpus, fitted.fit_kw, fitted.fit_limit
    fit_seconds = fitted.fit_seconds
    from ..evaluation import sweep as sweep_mod
    from ..evaluation.selection import evaluate_selection
    from ..interventions.base import default_positions

    positions = default_positions(iv)  # the policy the intervention stores (INCLINE: last prompt token)
    dev_limit = p.get("dev_limit", ctx.dev_limit)
    select = str(p.get("select", ctx.select))
    t1 = time.perf_counter()
    dev_cfg = ctx.eval_config(split="dev", limit=dev_limit, positions=positions, n_boot=200)
    dev_cfg = dev_cfg.replace(select_rule=_rule(p, dev_cfg.select_rule))
    rec, make, layers_of, variant_of = _dev_sweep(ctx, spec, fitted, p, lm, langs, alphas, dev_cfg)
    selection_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = evaluate_selection(lm, ctx.task, langs, make, rec, select, ctx.eval_config(positions=positions))
    secs = time.perf_counter() - t2
    best = rec["best"]
    chosen = make(best["layer"], best["alpha"]) if best["steer"] else None
    used_layers = layers_of(best["layer"]) if best["steer"] else []
    selection = _selection_record(rec, res["selection"], dev_limit, select, used_layers)
    if variant_of is not None and best["steer"]:
        selection["variant"] = variant_of(best["layer"])
    trainable = _numel(chosen, used_layers) if spec.trainable and chosen is not None else 0
    params = {"method": method, "fit_limit": fit_limit, "corpus": corpus.name, "corpus_split": "fit",
              "positions": positions, "sites": [str(s) for s in chosen.sites] if chosen is not None else [],
              **{k: v for k, v in fit_kw.items()}}
    notes = []
    if name != method:
        notes.append(f"{method} fitted on the fine-tuned model ({lm.name})")
    if not selection["steer"]:
        notes.append(f"{sweep_mod.NO_STEERING}: the {ctx.split} scores are the unsteered model's")
    extra = {"intervention": res.get("intervention")}
    if ctx.preserve is not None:
        from .preserve import measure

        t3 = time.perf_counter()
        extra["preservation"] = measure(ctx, ctx.preserve, make, rec, select, positions)
        extra["preservation"]["seconds"] = round(time.perf_counter() - t3, 3)
    return MethodRun(name, family, res, params,
                     _cost(fit_seconds=fit_seconds, selection_seconds=selection_seconds, eval_seconds=secs,
                           trainable_parameters=trainable,
                           fitted_parameters=_numel(chosen, used_layers) if chosen is not None else 0),
                     selection, notes, skipped, extra=extra)


def toward_goal(ctx: RunContext, spec: Any, p: Mapping[str, Any]) -> dict[str, Any]:
    """``p`` with the method's options for steering toward each row's own language when the task
    asks for that (``BaselineHints.steer_toward == "wanted"``, e.g. LCB); the user's ``-O`` settings
    still win. A method that can only move rows toward the anchor is refused with the reason."""
    from ..evaluation.tasks import get_task

    task = get_task(ctx.task)
    if task.baselines.steer_toward != "wanted":
        return dict(p)
    if spec.toward_wanted is None:
        raise UsageError(f"{spec.name} moves rows toward the anchor language, but task {task.name} wants each row "
                         "steered toward the language its answer is wanted in; drop it from --methods")
    return {**dict(p), **dict(spec.toward_wanted), **ctx.options.get(spec.name, {})}


def _dev_sweep(ctx: RunContext, spec: Any, fitted: _Fitted, p: Mapping[str, Any], lm: Any, langs: list[str],
               alphas: tuple[float, ...], dev_cfg: Any) -> tuple[dict[str, Any], Any, Any, Any]:
    """The dev sweep of a fitted method: ``(record, make(layer, alpha), layers_of(layer), variant_of)``.

    Without variants the grid is each fitted layer alone (or every layer together) x alphas. With
    the registry's variants (ReCoVeR: beta x layer range) each variant is a grid point of its own
    x alphas: the sweep's ``layer`` is the variant's index, its keys are the variant's label
    (``beta1-all@1``), and ``variant_of`` says which variant a choice is.
    """
    from ..evaluation import sweep as sweep_mod

    iv = fitted.iv
    variants = spec.variants(int(lm.num_layers), p) if spec.variants is not None else []
    if not variants:
        grid = fitted.sweep_layers if fitted.sweep_layers is not None else [sweep_mod.ALL_LAYERS]
        rec = sweep_mod.sweep(lm, ctx.task, langs, intervention=iv, layers=grid, alphas=alphas, cfg=dev_cfg,
                              source={"kind": "baselines", "method": spec.name, "layers": iv.layers,
                                      "note": "layer -1 = every fitted layer together"})
        return (rec, lambda layer, alpha: sweep_mod.for_layer(iv, layer).with_strength(alpha),
                lambda layer: iv.layers if layer == sweep_mod.ALL_LAYERS else [layer], None)
    ivs = [v.of(iv) for v in variants]
    rec = sweep_mod.sweep(lm, ctx.task, langs, lambda k, alpha: ivs[k].with_strength(alpha),
                          layers=list(range(len(ivs))), alphas=alphas, cfg=dev_cfg,
                          source={"kind": "baselines", "method": spec.name, "layers": iv.layers,
                                  "variants": [v.describe() for v in variants],
                                  "note": "layer = the index of the variant in 'variants'"})
    relabel = {f"L{k}@{a:g}": f"{v.label}@{a:g}" for k, v in enumerate(variants) for a in alphas}
    for entry in [*rec["results"], rec["best"], rec["best_steered"], *rec["best_per_lang"].values()]:
        entry["key"] = relabel.get(entry["key"], entry["key"])
    return (rec, lambda k, alpha: ivs[k].with_strength(alpha), lambda k: ivs[k].layers,
            lambda k: variants[k].describe())


def _rule(p: Mapping[str, Any], default: Any) -> Any:
    """The selection rule of a steering row: ``-O METHOD.select_rule=one-se`` / ``select_level=0.01``
    over the comparison's own."""
    from ..evaluation.evidence import SelectionRule

    if "select_rule" not in p and "select_level" not in p:
        return default
    return SelectionRule(str(p.get("select_rule", default.name)), float(p.get("select_level", default.level)))


def _corpus_langs(ctx: RunContext, method: str, p: Mapping[str, Any], use: Sequence[str]) -> list[str] | None:
    """The corpus languages a fit needs (the registry's hook: CLAS categorises neurons over a fixed
    language set, every corpus language, None, unless ``category_langs`` is given)."""
    from ..interventions.registry import get_method

    return get_method(method).corpus_langs(ctx.anchor, use, p)


def _selection_record(rec: Mapping[str, Any], chosen: Mapping[str, Any], dev_limit: Any, select: str,
                      used_layers: list[int]) -> dict[str, Any]:
    """What a steering row records about its dev selection (``rec``: the sweep; ``chosen``: its summary)."""
    from ..evaluation.sweep import UNSTEERED

    best = rec["best"]
    return {"source": "evaluation.sweep on dev", "split": "dev", "dev_limit": dev_limit, "select": select,
            "steer": chosen["steer"], "decision": chosen["decision"], "per_lang": chosen["per_lang"],
            "layers": used_layers, "alpha": best["alpha"], "grid": rec["grid"],
            "dev_main": best["main"], "dev_gain_over_unsteered": best.get("gain_over_baseline"),
            "dev_unsteered_main": best.get("baseline_main"), "best_steered": rec["best_steered"],
            "rule": rec["selection_rule"], "evidence": rec["best"].get("evidence"),
            "evidence_per_lang": {lang: b.get("evidence") for lang, b in rec["best_per_lang"].items()},
            "left_out": dict(rec.get("left_out") or {}),
            "dev_scores": {UNSTEERED: rec["baseline"]["average"]["metrics"],
                           **{e["key"]: e["average"]["metrics"] for e in rec["results"]}}}


def _stats_cache(ctx: RunContext, lm: Any, method: str, corpus: Any, site: str | None) -> Path | None:
    """A statistics file in the evaluation cache, named by what the statistics depend on (fit() checks
    the model fingerprint and the data hash again when it reads it); None without a cache."""
    from ..interventions.registry import get_method

    if ctx.cache_dir is None or not get_method(method).statistics.collect:
        return None
    import hashlib

    from ..io import dumps_json

    key = {"model": getattr(lm, "fingerprint", None), "corpus": corpus.name, "langs": list(corpus.langs),
           "n": len(corpus), "method": method, "site": site, "batch_size": ctx.batch_size}
    digest = hashlib.sha256(dumps_json(key).encode("utf-8")).hexdigest()[:20]
    from ..filenames import slug

    return Path(ctx.cache_dir) / "statistics" / f"{slug(method)}-{digest}.safetensors"
