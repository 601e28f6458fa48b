"""Choose the layer and strength of an intervention on dev items only; never on test.

:func:`sweep` evaluates every (layer, alpha) of a grid on the ``dev`` split (or ``train``; the
``test`` split is refused) and selects the best configuration per language and globally:

    highest main metric (acc / EM / F1), ties broken by the task's continuous score (mean
    margin for choice tasks, EM for XQuAD), then by the smaller |alpha|, then the lower layer.

The global choice maximises the unweighted mean over the non-anchor languages. The unsteered
model is always evaluated on the same dev items (``baseline``) and is itself a candidate (key
``unsteered``, alpha 0, which wins every tie): when no steered configuration beats it on dev,
the selection is "no steering" (``best["steer"]`` is False) — a tool that can only say "steer
this much" would carry a setting that hurts on dev over to test. ``best_steered`` keeps the best
steered configuration for inspection. The same holds per language (``best_per_lang``).
Configurations come from:

- ``intervention``, a callable ``(layer, alpha)`` returning an intervention; or
- ``intervention``, an intervention, + ``layers``: that intervention restricted to one layer's sites, strength
  set to alpha (for vectors, CLAS masks, ... fitted at several layers at once); layer
  :data:`ALL_LAYERS` (-1) is the intervention at every layer it was fitted at, as INCLINE (all
  layers) and CLAS (all bridge layers) are applied in their papers; or
- :func:`diffmean_from_statistics`: DiffMean vectors fitted per layer from a Statistics file
  (layers among those the statistics hold), alpha scaling the vector.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError
from ..results import SWEEP, VERSION
from . import runner as R
from .config import EvalConfig

SELECTION_RULE = (
    "max main metric on the dev split over the steered configurations and the unsteered model (alpha 0); "
    "ties: max tie-break score (mean margin for choice tasks, EM for xquad), then smaller |alpha| (so the "
    "unsteered model wins ties), then lower layer; global = mean over non-anchor languages"
)
UNSTEERED = "unsteered"
#: Layer value meaning "every layer the intervention was fitted at, together".
ALL_LAYERS = -1
NO_STEERING = "no steering: the unsteered model is best on dev"
SELECT_MODES = ("global", "per-lang")


def restrict_layers(intervention: Any, layers: Sequence[int]) -> Any:
    """A shallow copy of ``intervention`` acting only at ``layers`` (``Intervention.at_layers``)."""
    return intervention.at_layers(layers)


def diffmean_from_statistics(stats: Any, langs: Sequence[str], anchor: str = "en", site: str | None = None,
                             normalize: str = "none") -> tuple[Callable[[int, float], Any], list[int]]:
    """``(make_intervention, layers)``: DiffMean at one layer of ``stats``, strength alpha.

    ``langs`` are the evaluated languages; the anchor and languages the statistics lack are
    left out of the targets (the anchor is never steered; a missing language raises when it is
    evaluated). Vectors are fitted once per layer and rescaled per alpha (no refit).
    """
    from ..interventions.vector import fit_diffmean

    names = sorted({s.name for s in stats.sites})
    if site is None:
        site = "resid_post" if "resid_post" in names else names[0]
    layers = sorted({s.layer for s in stats.sites if s.name == site})
    if not layers:
        raise UsageError(f"the statistics hold no site named {site} (they have {', '.join(names)}); "
                         "collect at that site or choose another")
    if anchor not in stats.langs:
        raise UsageError(f"the statistics lack the anchor language {anchor}; collect with --langs including it")
    targets = [lang for lang in langs if lang != anchor]
    missing = [lang for lang in targets if lang not in stats.langs]
    if missing:
        raise UsageError(f"the statistics lack language(s) {', '.join(missing)} (they have {', '.join(stats.langs)}); "
                         "collect with --langs including them")
    if not targets:
        raise UsageError("no language to steer: every evaluated language is the anchor; add target languages")
    fitted: dict[int, Any] = {}

    def make(layer: int, alpha: float) -> Any:
        if layer not in layers:
            raise UsageError(f"the statistics hold layers {layers} at {site}, not layer {layer}; choose among them")
        if layer not in fitted:
            fitted[layer] = fit_diffmean(stats, [layer], targets, anchor=anchor, site=site, normalize=normalize)
        return fitted[layer].with_strength(alpha)

    return make, layers


def _key(layer: int, alpha: float) -> str:
    return f"all@{alpha:g}" if layer == ALL_LAYERS else f"L{layer}@{alpha:g}"


def for_layer(intervention: Any, layer: int) -> Any:
    """``intervention`` at one of its layers, or at all of them for :data:`ALL_LAYERS`."""
    return intervention.at_layers(intervention.layers if layer == ALL_LAYERS else [layer])


def _score(per_lang: dict, langs: Sequence[str], main: str, tie: str | None) -> tuple[float, float]:
    def get(lang: str, name: str | None) -> float:
        if name is None:
            return 0.0
        d = per_lang[lang]
        src = d["metrics"] if name in d["metrics"] else d["continuous"]
        return float(src[name]["mean"])

    return (float(np.mean([get(lang, main) for lang in langs])), float(np.mean([get(lang, tie) for lang in langs])))


def _best(entries: list[dict], langs: Sequence[str], main: str, tie: str | None) -> dict[str, Any]:
    def rank(e: dict) -> tuple:
        m, t = _score(e["per_lang"], langs, main, tie)
        steer = e.get("key") != UNSTEERED
        return (-m, -t, abs(e["alpha"]) if steer else -1.0, e["layer"] if steer else -2, e["alpha"])

    best = min(entries, key=rank)
    m, t = _score(best["per_lang"], langs, main, tie)
    steer = best.get("key") != UNSTEERED
    out = {"layer": best["layer"], "alpha": best["alpha"], "key": best["key"], "main": m, "tie_break": t,
           "steer": steer}
    if not steer:
        out["decision"] = NO_STEERING
    return out


def _unsteered_entry(baseline: dict[str, Any]) -> dict[str, Any]:
    return {"layer": None, "alpha": 0.0, "key": UNSTEERED, "intervention": None,
            "per_lang": baseline["per_lang"], "average": baseline["average"]}


def _grid(lm: Any, intervention: Any, layers: Sequence[int] | None, source: dict[str, Any] | None
          ) -> tuple[Callable[[int, float], Any], list[int], dict[str, Any] | None]:
    """(make_intervention, layers to try, source record) from either way of giving the grid: an
    intervention (or its file) or a callable ``(layer, alpha) -> intervention``."""
    from ..interventions.base import Intervention

    if intervention is None:
        raise UsageError("give the intervention to sweep (or a function (layer, alpha) -> intervention)")
    if isinstance(intervention, (str, os.PathLike, Intervention)) or not callable(intervention):
        iv0 = Intervention.load(intervention) if isinstance(intervention, (str, os.PathLike)) else intervention
        iv0.check_model(lm.fingerprint)
        grid_layers = list(layers) if layers is not None else iv0.layers

        def make_intervention(layer: int, alpha: float) -> Any:  # noqa: F811 - the given intervention, per layer
            return for_layer(iv0, layer).with_strength(alpha)

        if source is None:
            source = {"kind": "intervention", "method": iv0.method, "layers": iv0.layers}
    else:
        if layers is None:
            raise UsageError("give the layers to sweep (e.g. layers=[4, 6, 8])")
        make_intervention = intervention
        grid_layers = list(layers)
    if not grid_layers:
        raise UsageError("no layers to sweep; give at least one layer")
    return make_intervention, grid_layers, source


def sweep_config(task: Any, cfg: EvalConfig | None = None, **settings: Any) -> EvalConfig:
    """The settings of a sweep: the task's dev split unless another non-test split is given."""
    from .tasks.spec import get_task

    spec = get_task(task)
    split = settings.pop("split", None) or (cfg.split if cfg is not None and cfg.split != "test" else None)
    if split == "test":
        raise UsageError("a sweep selects hyper-parameters and must not see test items; use --split dev")
    if spec.dev_split is None and split != "train":
        raise UsageError(f"task {spec.name} has no dev split, so it cannot be swept without seeing test items; "
                         "declare one (splits: {dev: \"0-49\", test: \"50-\"} in a JSONL task spec, or a "
                         "validation_split besides test_split in an lm-eval task) or evaluate without a sweep")
    split = split or spec.dev_split
    return EvalConfig.of(cfg, split=split, **settings)


def _selection(baseline: dict, entries: list[dict], lang_list: list[str], anchor: str, main: str,
               tie: str | None) -> dict[str, Any]:
    non_anchor = [lang for lang in lang_list if lang != anchor] or lang_list
    candidates = [_unsteered_entry(baseline), *entries]
    best = _best(candidates, non_anchor, main, tie)
    b_main, _ = _score(baseline["per_lang"], non_anchor, main, tie)
    best["baseline_main"] = b_main
    best["gain_over_baseline"] = best["main"] - b_main
    return {"best": best, "best_steered": _best(entries, non_anchor, main, tie),
            "best_per_lang": {lang: _best(candidates, [lang], main, tie) for lang in lang_list if lang != anchor}}


def sweep(lm: Any, task: Any, langs: str | Sequence[str], intervention: Any = None, *,
          layers: Sequence[int] | None = None, alphas: Sequence[float] = (0.5, 1.0, 2.0), cfg: EvalConfig | None = None,
          source: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """Evaluate a layers x alphas grid and the unsteered model on the dev split; select the best
    (possibly "no steering", see the module docstring).

    ``intervention``: an intervention (or its file), swept at ``layers`` (default: its own), or a
    function ``(layer, alpha) -> intervention`` (``layers`` needed). ``cfg``/``settings``: as for
    :func:`~xlsteer.evaluation.runner.run_task` (the split defaults to the task's dev split)."""
    from ..interventions.base import default_positions
    from .engine import Engine

    cfg = sweep_config(task, cfg, **settings)
    make_intervention, grid_layers, source = _grid(lm, intervention, layers, source)
    cfg = cfg.replace(positions=default_positions(make_intervention(grid_layers[0], 1.0), cfg.positions))
    alpha_list = [float(a) for a in alphas]
    if not alpha_list:
        raise UsageError("no alphas to sweep; give at least one, e.g. 0.5,1,2")
    lang_list = R.parse_langs(langs)
    engine = Engine.for_config(lm, cfg, progress_desc="sweep")
    baseline = R.run_task(lm, task, lang_list, cfg=cfg, engine=engine)
    entries: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for layer in grid_layers:
        for alpha in alpha_list:
            res = R.run_task(lm, task, lang_list, make_intervention(layer, alpha), cfg, engine=engine)
            if not info:
                info = {k: res[k] for k in ("task", "split", "template", "model", "data", "item_ids", "metrics")}
            entries.append({"layer": layer, "alpha": alpha, "key": _key(layer, alpha),
                            "intervention": res["intervention"], "per_lang": res["per_lang"],
                            "average": res["average"]})
    chosen = _selection(baseline, entries, lang_list, cfg.anchor, info["metrics"]["main"],
                        info["metrics"]["tie_break"])
    return {
        "format": SWEEP, "version": VERSION, **info, "langs": lang_list, "anchor": cfg.anchor, "split": cfg.split,
        "selected_on_split": cfg.split, "limit": cfg.limit, "seed": cfg.seed, "positions": cfg.positions,
        "calibrate": bool(cfg.calibrate), "source": source or {"kind": "callable"},
        "grid": {"layers": grid_layers, "alphas": alpha_list}, "selection_rule": SELECTION_RULE,
        "results": entries, **chosen,
        "baseline": {"per_lang": baseline["per_lang"], "average": baseline["average"]},
        "versions": R.versions(),
    }


def chosen_intervention(make_intervention: Callable[[int, float], Any], choice: dict[str, Any]) -> Any:
    """The intervention a sweep selected (``best`` or one ``best_per_lang`` entry); None for "no steering"."""
    if not choice.get("steer", True):
        return None
    return make_intervention(int(choice["layer"]), float(choice["alpha"]))
