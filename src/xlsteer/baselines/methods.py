"""Every method a practitioner could use instead of (or with) steering, under one name each.

:data:`METHODS` maps a name to how it is run; :func:`run_method` runs one on a task's ``test``
split (or any split) and returns its runner result (:func:`xlsteer.evaluation.runner.evaluate`
format, per-item records included) with what it cost; :func:`compare_methods` runs several on
the *same items* and pairs each with ``zero-shot`` item by item.

=============  ===========  ==============================================================
name           family       what
=============  ===========  ==============================================================
zero-shot      reference    the unsteered model, the task's default template
icl-en         prompting    k exemplars in English before every item (train split, else dev)
icl-native     prompting    k exemplars in the item's language
prompt-opt     prompting    an instruction searched on dev (seeds + the model's paraphrases)
xlt            fine-tuning  LoRA trained on English training data only (cross-lingual transfer)
sft            fine-tuning  LoRA trained on the training data of every evaluated language
sft+steer      combination  DiffMean fitted on the SFT model (NTREX), alpha/layer on dev
translate-test translation  apertium MT to English (languages with an apertium pair), unsteered
translate-self translation  the model translates the item to English itself, unsteered
translate-gmt  translation  XCOPA's Google-MT English (data-gmt), unsteered
diffmean       steering     DiffMean vector on NTREX (fit split); layer and alpha on dev
learned        steering     learned vector (align objective) on NTREX; alpha on dev
incline        steering     INCLINE maps on NTREX at every layer, last prompt token; sigma on dev
clas           steering     CLAS at its bridge layers (NTREX statistics); alpha on dev
=============  ===========  ==============================================================

Selection (layers, strengths, prompts, exemplars) uses only dev/train items; reported numbers
come from ``split`` (test). Steering methods choose layer and strength with
:func:`xlsteer.evaluation.sweep.sweep` on ``dev_limit`` dev items per language, the unsteered
model being one of the candidates: when it wins on dev the selection is "no steering"
(``selection.steer`` False) and the reported scores are the unsteered model's. ``select``
(``RunContext.select`` or ``-O METHOD.select=per-lang``) lets each language choose its own
configuration or none (:mod:`xlsteer.evaluation.selection`). INCLINE and CLAS sweep only alpha,
applied at every fitted layer together (all layers / all bridge layers, as in their papers).

Steering defaults (every value is recorded in the row's ``params`` and ``selection``): fit on the
first ``fit_limit`` (200) NTREX fit lines of the anchor and each target language; DiffMean
fitted at layers L/4, L/2 and 3L/4 (site resid_post, mean pooling, raw vector) and the sweep
picks one layer and alpha in (0.5, 1, 2); learned: the middle layer, ``align`` objective, 100
steps, alpha in (0.5, 1, 2); CLAS: bridge layers chosen by its fit (beta 0.4, gamma 0.2),
alpha in (-0.5, 0.5, 1, 2); Int_mu: LAPE neurons at mlp_gate, strength in (0.5, 1); INCLINE: every layer at mlp_out, last prompt token, relative ridge 0.1
(200 pairs are fewer than the residual width, so plain least squares is under-determined),
sigma in (0.25, 0.5, 1). Per-method settings override these (``options`` / ``-O METHOD.KEY=V``).

Cost, per method (``cost`` in every record): ``fit_seconds`` (training / fitting / search),
``selection_seconds`` (dev sweeps), ``eval_seconds`` (the reported evaluation itself),
``extra_tokens_per_item`` (model tokens added per evaluated item: exemplars, instruction,
self-translation prompt + output), ``trainable_parameters`` (parameters trained by gradient
descent) and ``fitted_parameters`` (numbers stored by the intervention), and ``external`` for
work done outside the model (apertium, Google MT).

A language a method cannot handle (no apertium pair, no NTREX text to fit a vector, no Google-MT
file) is left out of that method's row with the reason; a method that fails for a reason the
user can fix (an :class:`~xlsteer.errors.XlsteerError`) is recorded with its message and the
comparison goes on; any other exception propagates.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.langs import normalize_lang
from ..errors import LanguageError, UsageError, XlsteerError
from ..evaluation.tasks import get_task
from ..results import METHODS as METHODS_FORMAT, VERSION

FAMILIES = ("reference", "prompting", "fine-tuning", "combination", "translation", "steering")
REFERENCE = "zero-shot"
#: Strength grids searched on dev, per steering method.
DEFAULT_ALPHAS: dict[str, tuple[float, ...]] = {
    "diffmean": (0.5, 1.0, 2.0),
    "learned": (0.5, 1.0, 2.0),
    "clas": (-0.5, 0.5, 1.0, 2.0),  # the CLAS paper tunes alpha on dev and allows it to be negative
    "incline": (0.25, 0.5, 1.0),
    "intmu": (0.5, 1.0),
}
NTREX_LANGS = ("en", "ar", "bn", "de", "el", "fr", "hi", "id", "it", "ja", "ko", "pt", "ro", "ru", "es", "sw",
               "te", "th", "tr", "vi", "zh")


@dataclass
class RunContext:
    """What every method needs: the model, the items, and the shared settings."""

    lm: Any
    task: str
    langs: list[str]
    split: str = "test"
    limit: int | None = None
    dev_limit: int | None = 100
    fit_limit: int = 200
    anchor: str = "en"
    data_dir: str | os.PathLike | None = None
    seed: int = 0
    batch_size: int = 8
    max_length: int = 2048
    n_boot: int = 2000
    cache_dir: str | os.PathLike | None = None
    calibrate: bool = False
    select: str = "global"
    translation_cache: Any = True
    work_dir: str | os.PathLike | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    def eval_kw(self) -> dict[str, Any]:
        return dict(anchor=self.anchor, data_dir=self.data_dir, seed=self.seed, batch_size=self.batch_size,
                    max_length=self.max_length, n_boot=self.n_boot, cache_dir=self.cache_dir)


@dataclass
class MethodRun:
    """One method's outcome: its runner result on ``split`` and what it cost."""

    name: str
    family: str
    results: dict[str, Any] | None
    params: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "params": self.params, "cost": self.cost,
                "selection": self.selection, "notes": self.notes, "skipped": self.skipped, "error": self.error,
                **self.extra}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "MethodRun":
        """A run written by :func:`compare_methods` (``runs/<method>.json``: results + ``method`` record)."""
        from ..io import read_json

        doc = read_json(path, "method run")
        if not isinstance(doc, Mapping):
            raise UsageError(f"{path} is not a method run written by xlsteer compare (not a JSON object)")
        doc = dict(doc)
        rec = doc.pop("method", None)
        if not isinstance(rec, Mapping) or "name" not in rec:
            raise UsageError(f"{path} is not a method run written by xlsteer compare (no 'method' record)")
        rec = dict(rec)
        known = {k: rec.pop(k, None) for k in ("name", "family", "params", "cost", "selection", "notes", "skipped",
                                                 "error")}
        return cls(known["name"], known["family"], doc, params=known["params"] or {}, cost=known["cost"] or {},
                   selection=known["selection"], notes=list(known["notes"] or []), skipped=dict(known["skipped"] or {}),
                   error=known["error"], extra=rec)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    description: str
    run: Callable[[RunContext, dict[str, Any]], MethodRun]
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _cost(**kw: Any) -> dict[str, Any]:
    base = {"fit_seconds": 0.0, "selection_seconds": 0.0, "eval_seconds": 0.0, "extra_tokens_per_item": 0.0,
            "trainable_parameters": 0, "fitted_parameters": 0, "external": None}
    base.update(kw)
    for k in ("fit_seconds", "selection_seconds", "eval_seconds", "extra_tokens_per_item"):
        base[k] = round(float(base[k]), 3)
    return base


def _eval(ctx: RunContext, lm: Any, langs: Sequence[str], **kw: Any) -> tuple[dict[str, Any], float]:
    from ..evaluation.runner import evaluate

    t0 = time.perf_counter()
    args = {**ctx.eval_kw(), "calibrate": ctx.calibrate}
    args.update(kw)
    res = evaluate(lm, ctx.task, list(langs), split=ctx.split, limit=ctx.limit, **args)
    return res, time.perf_counter() - t0


def _eval_items(ctx: RunContext, langs: Sequence[str]) -> list[Any]:
    mod = get_task(ctx.task)
    return [it for lang in langs for it in mod.load_items(ctx.data_dir, lang, ctx.split, ctx.limit)]


# ---------------------------------------------------------------------------------------------
# reference and prompting


def _zero_shot(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
    res, secs = _eval(ctx, ctx.lm, ctx.langs)
    return MethodRun(REFERENCE, "reference", res, {}, _cost(eval_seconds=secs))


def _icl(variant: str) -> Callable[[RunContext, dict[str, Any]], MethodRun]:
    def run(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
        from .icl import exemplar_split, extra_tokens_per_item, icl_template

        k = p.get("k") or get_task(ctx.task).baselines.icl_k
        seed = int(p.get("seed", ctx.seed))
        tpl = icl_template(ctx.task, variant, k, seed, ctx.data_dir, None, ctx.langs)
        res, secs = _eval(ctx, ctx.lm, ctx.langs, template=tpl)
        extra = extra_tokens_per_item(ctx.lm, tpl, _eval_items(ctx, ctx.langs), ctx.data_dir)
        info = tpl.options["baseline"]
        sel = {"source": f"seeded draw from the {exemplar_split(ctx.task)} split", "exemplar_ids": info["exemplar_ids"],
               "spare_id": info["spare_id"], "seed": seed}
        return MethodRun(f"icl-{variant}", "prompting", res, {"k": k, "seed": seed, "variant": variant},
                         _cost(eval_seconds=secs, extra_tokens_per_item=extra), sel)

    return run


def _prompt_opt(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
    from .icl import prefix_tokens
    from .prompt_search import run_prompt_search

    params = {"rounds": int(p.get("rounds", 2)), "per_round": int(p.get("per_round", 4)),
              "n_parents": int(p.get("n_parents", 2)), "dev_limit": p.get("dev_limit", ctx.dev_limit),
              "propose_tokens": int(p.get("propose_tokens", 40))}
    t0 = time.perf_counter()
    kw = ctx.eval_kw()
    anchor, data_dir, seed = kw.pop("anchor"), kw.pop("data_dir"), kw.pop("seed")
    res = run_prompt_search(ctx.lm, ctx.task, ctx.langs, ctx.split, ctx.limit, anchor=anchor, data_dir=data_dir,
                            seed=seed, seeds=p.get("seeds"), **params, **kw)
    total = time.perf_counter() - t0
    rec = res.pop("prompt_search")
    best = rec["best"]["instruction"]
    extra = prefix_tokens(ctx.lm, best + get_task(ctx.task).baselines.instruction_separator) if best else 0
    sel = {"source": "dev", "instruction": best, "dev_score": rec["best"]["dev_score"],
           "candidates": [{k: c[k] for k in ("instruction", "source", "round", "dev_score", "dev_per_lang")}
                          for c in rec["candidates"]],
           "proposals": rec["proposals"], "budget": rec["budget"], "dev_limit": rec["dev_limit"]}
    notes = []
    if not best:
        notes.append("no instruction beat the plain zero-shot prompt on dev: the empty instruction won")
    return MethodRun("prompt-opt", "prompting", res, params,
                     _cost(fit_seconds=rec["search_seconds"], eval_seconds=total - rec["search_seconds"],
                           extra_tokens_per_item=extra), sel, notes,
                     extra={"search_proposal_tokens": rec["proposal_tokens"]})


# ---------------------------------------------------------------------------------------------
# fine-tuning


def _train_config(ctx: RunContext, p: dict[str, Any]) -> Any:
    from .finetune import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in p.items() if k in fields}
    kw.setdefault("seed", ctx.seed)
    kw.setdefault("max_length", min(ctx.max_length, 1024))
    return TrainConfig(**kw)


def _finetuned(ctx: RunContext, recipe: str, p: dict[str, Any]) -> Any:
    """The fine-tuned model of ``recipe`` (trained once per context and reused)."""
    from .finetune import finetune

    key = f"finetuned:{recipe}"
    if key not in ctx.shared:
        adapter_dir = Path(ctx.work_dir) / "adapters" / recipe if ctx.work_dir else None
        train_langs = p.get("train_langs")
        if isinstance(train_langs, str):
            train_langs = [x.strip() for x in train_langs.split(",") if x.strip()]
        ctx.shared[key] = finetune(ctx.lm, ctx.task, recipe, ctx.langs, anchor=ctx.anchor, train_langs=train_langs,
                                   config=_train_config(ctx, p), data_dir=ctx.data_dir, adapter_dir=adapter_dir)
    return ctx.shared[key]


def _ft_notes(rec: dict[str, Any]) -> list[str]:
    notes = [rec["train_note"]]
    if rec["train_split"] == "dev":
        notes.append("trained on dev items: dev is not held out for this model")
    return notes


def _ft_run(recipe: str) -> Callable[[RunContext, dict[str, Any]], MethodRun]:
    def run(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
        ft = _finetuned(ctx, recipe, p)
        rec = ft.record
        res, secs = _eval(ctx, ft.lm, ctx.langs)
        res["finetune"] = {k: v for k, v in rec.items() if k not in ("base_model",)}
        params = {"recipe": recipe, **rec["config"], "train_langs": rec["train_langs"],
                  "train_split": rec["train_split"]}
        out = MethodRun(recipe, "fine-tuning", res, params,
                        _cost(fit_seconds=rec["train_seconds"], eval_seconds=secs,
                              trainable_parameters=rec["trainable_parameters"]),
                        {"source": "fixed hyper-parameters (no selection)"}, _ft_notes(rec),
                        extra={"training": {"loss_first": rec["loss_first"], "loss_last": rec["loss_last"],
                                            "loss": rec["loss"], "n_examples": rec["n_examples"],
                                            "adapter_dir": str(ft.adapter_dir) if ft.adapter_dir else None,
                                            "adapter_sha256": rec["adapter_sha256"]}})
        if recipe == "xlt":  # not reused by another method: free the copy
            ctx.shared.pop("finetuned:xlt", None)
            gc.collect()
        return out

    return run


# ---------------------------------------------------------------------------------------------
# translate-test


def _translate(kind: str) -> Callable[[RunContext, dict[str, Any]], MethodRun]:
    name = {"apertium": "translate-test", "self": "translate-self", "gmt": "translate-gmt"}[kind]

    def run(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
        from .translate import run_translate_test

        opts = {}
        if kind == "self":
            opts = {k: p[k] for k in ("max_new_tokens", "prompt") if k in p}
            opts.setdefault("batch_size", ctx.batch_size)
        t0 = time.perf_counter()
        kw = ctx.eval_kw()
        anchor, data_dir, seed = kw.pop("anchor"), kw.pop("data_dir"), kw.pop("seed")
        res = run_translate_test(ctx.lm, ctx.task, ctx.langs, kind, ctx.split, ctx.limit, data_dir=data_dir,
                                 anchor=anchor, cache=ctx.translation_cache, translator_options=opts, seed=seed, **kw)
        total = time.perf_counter() - t0
        tr = res["translation"]
        external = {"apertium": "apertium rule-based MT (CPU)", "gmt": "Google MT (precomputed, shipped with XCOPA)",
                    "self": None}[kind]
        return MethodRun(name, "translation", res, {"translator": kind, **{k: v for k, v in opts.items()}},
                         _cost(eval_seconds=total - tr["seconds"], extra_tokens_per_item=tr["model_tokens_per_item"],
                               external=external, translation_seconds=tr["seconds"]),
                         {"source": "none (fixed prompt)", "translator_ids": tr["translator_ids"]},
                         [], dict(tr["skipped"]), extra={"translation_examples": tr["examples"],
                                                         "translation_cache": tr["cache"]})

    return run


# ---------------------------------------------------------------------------------------------
# steering


def _numel(iv: Any, layers: Sequence[int] | None = None) -> int:
    keep = None if layers is None else {f"@{x}" for x in layers}
    n = 0
    for key, t in iv.tensors.items():
        if keep is not None and "@" in key and key[key.rindex("@"):] not in keep:
            continue
        if t.is_floating_point():
            n += int(t.numel())
    return n


def _layers_param(value: Any, n_layers: int, default: list[int]) -> list[int]:
    if value is None or value == "auto":
        return default
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        from ..cli.options import parse_layers

        out = parse_layers(value, n_layers)
        return out if out is not None else default
    return [int(x) for x in value]


def steer_and_evaluate(ctx: RunContext, method: str, p: dict[str, Any], lm: Any = None,
                       name: str | None = None) -> MethodRun:
    """Fit ``method`` on NTREX (fit split), choose layer/strength on dev, evaluate on ``ctx.split``."""
    from ..data.corpora import load_corpus
    from ..interventions.fit import fit

    lm = lm or ctx.lm
    name = name or method
    family = "combination" if name != method else "steering"
    n_layers = int(lm.num_layers)
    targets = [lang for lang in ctx.langs if lang != ctx.anchor]
    skipped = {lang: "no NTREX parallel text to fit on (NTREX has " + " ".join(NTREX_LANGS) + ")"
               for lang in targets if lang not in NTREX_LANGS}
    use = [lang for lang in targets if lang in NTREX_LANGS]
    if not use:
        raise LanguageError(f"{name}: none of {', '.join(targets)} has NTREX text to fit a vector on")
    langs = ([ctx.anchor] if ctx.anchor in ctx.langs else []) + use
    fit_limit = int(p.get("fit_limit", ctx.fit_limit))
    corpus = load_corpus(p.get("corpus", "ntrex"), data_dir=ctx.data_dir, langs=_corpus_langs(ctx, method, p, use),
                         split="fit", limit=fit_limit)
    alphas = tuple(float(a) for a in p.get("alphas", DEFAULT_ALPHAS[method]))
    fit_kw: dict[str, Any] = {k: v for k, v in p.items()
                              if k not in ("alphas", "layers", "fit_limit", "corpus", "dev_limit", "site")}
    if method == "learned":
        fit_kw.setdefault("steps", 100)
        fit_kw.setdefault("seed", ctx.seed)
    mid = n_layers // 2
    if method == "diffmean":
        cand = _layers_param(p.get("layers"), n_layers, sorted({max(0, n_layers // 4), mid, min(n_layers - 1, (3 * n_layers) // 4)}))
        sweep_layers: list[int] | None = cand
        fit_layers: Any = cand
    elif method == "learned":
        fit_layers = _layers_param(p.get("layers"), n_layers, [mid])
        sweep_layers = list(fit_layers) if len(fit_layers) > 1 else None
    else:  # clas: bridge layers chosen by the fit; incline: every layer (the paper's setup)
        fit_layers = None if p.get("layers") in (None, "auto") else _layers_param(p.get("layers"), n_layers, [])
        sweep_layers = None
    t0 = time.perf_counter()
    iv = fit(method, lm, corpus, [ctx.anchor, *use], anchor=ctx.anchor, layers=fit_layers, site=p.get("site"),
             batch_size=ctx.batch_size, stats_cache=_stats_cache(ctx, lm, method, corpus, p.get("site")), **fit_kw)
    fit_seconds = time.perf_counter() - t0
    from ..evaluation import sweep as sweep_mod
    from ..evaluation.selection import evaluate_selection
    from ..interventions.base import default_positions

    positions = default_positions(iv)  # the policy the intervention stores (INCLINE: last prompt token)
    dev_limit = p.get("dev_limit", ctx.dev_limit)
    select = str(p.get("select", ctx.select))
    t1 = time.perf_counter()
    common = dict(split="dev", limit=dev_limit, anchor=ctx.anchor, data_dir=ctx.data_dir,
                  seed=ctx.seed, cache_dir=ctx.cache_dir, positions=positions, batch_size=ctx.batch_size,
                  max_length=ctx.max_length, calibrate=ctx.calibrate)
    grid = sweep_layers if sweep_layers is not None else [sweep_mod.ALL_LAYERS]
    rec = sweep_mod.sweep(lm, ctx.task, langs, intervention=iv, layers=grid, alphas=alphas, n_boot=200,
                          source={"kind": "baselines", "method": method, "layers": iv.layers,
                                  "note": "layer -1 = every fitted layer together"}, **common)

    def make(layer: int, alpha: float) -> Any:
        return sweep_mod.for_layer(iv, layer).with_strength(alpha)

    selection_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = evaluate_selection(lm, ctx.task, langs, make, rec, select, **{**ctx.eval_kw(), "split": ctx.split,
                                                                        "limit": ctx.limit, "positions": positions,
                                                                        "calibrate": ctx.calibrate})
    secs = time.perf_counter() - t2
    best = rec["best"]
    chosen = make(best["layer"], best["alpha"]) if best["steer"] else None
    used_layers = (iv.layers if best["layer"] == sweep_mod.ALL_LAYERS else [best["layer"]]) if best["steer"] else []
    selection = _selection_record(rec, res["selection"], dev_limit, select, used_layers)
    trainable = _numel(chosen, used_layers) if method == "learned" and chosen is not None else 0
    params = {"method": method, "fit_limit": fit_limit, "corpus": corpus.name, "corpus_split": "fit",
              "positions": positions, "sites": [str(s) for s in chosen.sites] if chosen is not None else [],
              **{k: v for k, v in fit_kw.items()}}
    notes = []
    if name != method:
        notes.append(f"{method} fitted on the fine-tuned model ({lm.name})")
    if not selection["steer"]:
        notes.append(f"{sweep_mod.NO_STEERING}: the {ctx.split} scores are the unsteered model's")
    return MethodRun(name, family, res, params,
                     _cost(fit_seconds=fit_seconds, selection_seconds=selection_seconds, eval_seconds=secs,
                           trainable_parameters=trainable,
                           fitted_parameters=_numel(chosen, used_layers) if chosen is not None else 0),
                     selection, notes, skipped, extra={"intervention": res.get("intervention")})


def _corpus_langs(ctx: RunContext, method: str, p: Mapping[str, Any], use: Sequence[str]) -> list[str] | None:
    """The corpus languages a fit needs; CLAS categorises neurons over a fixed language set (every
    corpus language, None here, unless ``category_langs`` is given)."""
    if method != "clas":
        return [ctx.anchor, *use]
    cats = p.get("category_langs")
    if cats is None:
        return None
    return list(dict.fromkeys([ctx.anchor, *use, *(cats.split(",") if isinstance(cats, str) else cats)]))


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
            "rule": rec["selection_rule"],
            "dev_scores": {UNSTEERED: rec["baseline"]["average"]["metrics"],
                           **{e["key"]: e["average"]["metrics"] for e in rec["results"]}}}


def _stats_cache(ctx: RunContext, lm: Any, method: str, corpus: Any, site: str | None) -> Path | None:
    """A statistics file in the evaluation cache, named by what the statistics depend on (fit() checks
    the model fingerprint and the data hash again when it reads it); None without a cache."""
    if ctx.cache_dir is None or method in ("learned",):
        return None
    import hashlib

    from ..io import dumps_json

    key = {"model": getattr(lm, "fingerprint", None), "corpus": corpus.name, "langs": list(corpus.langs),
           "n": len(corpus), "method": method, "site": site, "batch_size": ctx.batch_size}
    digest = hashlib.sha256(dumps_json(key).encode("utf-8")).hexdigest()[:20]
    return Path(ctx.cache_dir) / "statistics" / f"{method}-{digest}.safetensors"


def _steer(method: str) -> Callable[[RunContext, dict[str, Any]], MethodRun]:
    def run(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
        return steer_and_evaluate(ctx, method, p)

    return run


def _sft_steer(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
    ft_p = {k[4:]: v for k, v in p.items() if k.startswith("sft_")}
    st_p = {k: v for k, v in p.items() if not k.startswith("sft_")}
    sft_params = {**dict(METHODS["sft"].defaults), **ctx.options.get("sft", {}), **ft_p}
    ft = _finetuned(ctx, "sft", sft_params)
    out = steer_and_evaluate(ctx, "diffmean", st_p, lm=ft.lm, name="sft+steer")
    out.cost["fit_seconds"] = round(out.cost["fit_seconds"] + ft.record["train_seconds"], 3)
    out.cost["trainable_parameters"] = ft.record["trainable_parameters"]
    out.notes.extend(_ft_notes(ft.record))
    out.params["sft"] = {"recipe": "sft", **ft.record["config"], "train_langs": ft.record["train_langs"]}
    return out


METHODS: dict[str, MethodSpec] = {
    "zero-shot": MethodSpec("zero-shot", "reference", "the unsteered model with the task's default template",
                            _zero_shot),
    "icl-en": MethodSpec("icl-en", "prompting", "k English exemplars (train split, else dev) before each item",
                         _icl("en"), {"k": None}),
    "icl-native": MethodSpec("icl-native", "prompting", "k exemplars in the item's language (same items as icl-en)",
                             _icl("native"), {"k": None}),
    "prompt-opt": MethodSpec("prompt-opt", "prompting",
                             "instruction chosen on dev among seeds and the model's own paraphrases",
                             _prompt_opt, {"rounds": 2, "per_round": 4, "n_parents": 2}),
    "xlt": MethodSpec("xlt", "fine-tuning", "LoRA on English training data only (cross-lingual transfer)",
                      _ft_run("xlt"), {"rank": 8, "steps": 40, "batch_size": 8, "lr": 5e-4}),
    "sft": MethodSpec("sft", "fine-tuning", "LoRA on the training data of every evaluated language",
                      _ft_run("sft"), {"rank": 8, "steps": 40, "batch_size": 8, "lr": 5e-4}),
    "sft+steer": MethodSpec("sft+steer", "combination", "DiffMean fitted and applied on the SFT model",
                            _sft_steer, {}),
    "translate-test": MethodSpec("translate-test", "translation", "apertium MT to English, then the unsteered model",
                                 _translate("apertium")),
    "translate-self": MethodSpec("translate-self", "translation",
                                 "the model translates the item to English, then answers it unsteered",
                                 _translate("self")),
    "translate-gmt": MethodSpec("translate-gmt", "translation", "XCOPA's Google-MT English, unsteered",
                                _translate("gmt")),
    "diffmean": MethodSpec("diffmean", "steering", "DiffMean vector (NTREX), layer and alpha chosen on dev",
                           _steer("diffmean")),
    "learned": MethodSpec("learned", "steering", "learned vector (align objective, NTREX), alpha chosen on dev",
                          _steer("learned"), {"steps": 100}),
    "incline": MethodSpec("incline", "steering", "INCLINE linear maps (NTREX), every layer, sigma chosen on dev",
                          _steer("incline"), {"ridge": 0.1}),
    "clas": MethodSpec("clas", "steering", "CLAS neuron steering at bridge layers, alpha chosen on dev",
                       _steer("clas")),
    "intmu": MethodSpec("intmu", "steering", "Int_mu: LAPE neurons of the row's language set to the anchor's mean "
                        "(the CLAS paper's baseline), strength chosen on dev", _steer("intmu")),
}
ALIASES = {"zeroshot": "zero-shot", "base": "zero-shot", "translate-apertium": "translate-test",
           "prompt-search": "prompt-opt", "sft-steer": "sft+steer"}


def method_names() -> list[str]:
    return list(METHODS)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Comma-separated method names ('all' = every method), validated, without duplicates."""
    parts = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x and x.strip()]
    if not parts:
        raise UsageError(f"no methods given; choose among {', '.join(METHODS)} (or all)")
    out: list[str] = []
    for x in parts:
        if x == "all":
            out.extend(METHODS)
            continue
        key = ALIASES.get(x.lower(), x.lower())
        if key not in METHODS:
            raise UsageError(f"unknown method {x!r}; choose among {', '.join(METHODS)} (or all)")
        out.append(key)
    return list(dict.fromkeys(out))


def run_method(name: str, ctx: RunContext, **params: Any) -> MethodRun:
    """Run one method (defaults < ``ctx.options[name]`` < ``params``); records fit/eval cost."""
    key = parse_methods(name)[0]
    spec = METHODS[key]
    p = {**dict(spec.defaults), **ctx.options.get(key, {}), **params}
    p = {k: v for k, v in p.items() if v is not None}
    out = spec.run(ctx, p)
    out.extra.setdefault("description", spec.description)
    return out


# ---------------------------------------------------------------------------------------------
# comparison


def _cell(res: dict[str, Any], lang: str, main: str) -> dict[str, Any]:
    m = res["per_lang"][lang]["metrics"][main]
    return {"score": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}


def pair_with_reference(run: dict[str, Any], ref: dict[str, Any], langs: Sequence[str], anchor: str,
                        seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> dict[str, Any]:
    """Per language and on average over non-anchor languages: score [CI] and the paired test vs ``ref``.

    The tests are :func:`~xlsteer.evaluation.runner.compare_runs`'s: per language McNemar (0/1
    scores) or the paired bootstrap, with p Holm-adjusted over the non-anchor languages; for the
    average, the paired bootstrap stratified by language (its CI: the run's stratified interval).
    """
    from ..evaluation.runner import compare_runs

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
    return {"per_lang": per, "average": avg}


def compare_methods(
    lm: Any,
    task: str,
    langs: Sequence[str],
    methods: Sequence[str],
    *,
    split: str = "test",
    limit: int | None = None,
    dev_limit: int | None = None,
    fit_limit: int = 200,
    anchor: str = "en",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int = 2048,
    n_boot: int = 2000,
    cache_dir: str | os.PathLike | None = None,
    translation_cache: Any = True,
    out_dir: str | os.PathLike | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_method: Callable[[str, MethodRun], None] | None = None,
    calibrate: bool = False,
    select: str = "global",
) -> dict[str, Any]:
    """Run ``methods`` on the same items and pair each with zero-shot; returns the "compare" record.

    ``calibrate``: content-free calibration of label tasks (XNLI) for every model-scored method;
    ``select``: ``global`` or ``per-lang`` selection of steering settings on dev (unsteered included).

    ``out_dir``: per-method runner results go to ``out_dir/runs/<method>.json`` (and adapters to
    ``out_dir/adapters``). ``dev_limit`` defaults to ``limit`` (else 100).
    """
    from ..evaluation.runner import write_results

    t_start = time.perf_counter()
    task = get_task(task).name
    lang_list = list(dict.fromkeys(normalize_lang(x) for x in langs))
    names = parse_methods(list(methods))
    added_reference = REFERENCE not in names
    if added_reference:
        names = [REFERENCE, *names]
    else:
        names = [REFERENCE, *[n for n in names if n != REFERENCE]]
    unknown = {k for k in (options or {}) if k not in METHODS}
    if unknown:
        raise UsageError(f"options given for unknown method(s) {', '.join(sorted(unknown))}")
    ctx = RunContext(lm=lm, task=task, langs=lang_list, split=split, limit=limit,
                     dev_limit=dev_limit if dev_limit is not None else (limit or 100), fit_limit=fit_limit,
                     anchor=normalize_lang(anchor), data_dir=data_dir, seed=seed, batch_size=batch_size,
                     max_length=max_length, n_boot=n_boot, cache_dir=cache_dir, translation_cache=translation_cache,
                     work_dir=out_dir, options={k: dict(v) for k, v in (options or {}).items()},
                     calibrate=bool(calibrate), select=select)
    runs: dict[str, MethodRun] = {}
    files: dict[str, str] = {}
    for name in names:
        t0 = time.perf_counter()
        key = resume_key(ctx, name)
        path = None if out_dir is None else Path(out_dir) / "runs" / f"{name.replace('+', '_')}.json"
        run = _reusable(path, key)
        if run is None:
            try:
                run = run_method(name, ctx)
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
    ctx.shared.clear()
    return assemble_compare(ctx, names, runs, files, reference_added=added_reference,
                            wall_seconds=time.perf_counter() - t_start)


def resume_key(ctx: RunContext, name: str) -> str:
    """What a method's result depends on: a finished ``runs/<method>.json`` with this key is reused.

    Why: the per-item cache makes a re-run's evaluations instant, but fitting (LoRA training,
    statistics, prompt search) would run again; an interrupted compare resumes per method.
    """
    import hashlib

    from .. import __version__
    from ..io import dumps_json

    spec = METHODS[name]
    params = {**dict(spec.defaults), **ctx.options.get(name, {})}
    body = {"method": name, "params": params, "task": ctx.task, "langs": ctx.langs, "split": ctx.split,
            "limit": ctx.limit, "dev_limit": ctx.dev_limit, "fit_limit": ctx.fit_limit, "anchor": ctx.anchor,
            "seed": ctx.seed, "max_length": ctx.max_length, "n_boot": ctx.n_boot,
            "calibrate": ctx.calibrate, "select": ctx.select,
            "data_dir": str(Path(ctx.data_dir).resolve()) if ctx.data_dir else None,
            "model": getattr(ctx.lm, "fingerprint", None), "xlsteer": __version__}
    return hashlib.sha256(dumps_json(body).encode("utf-8")).hexdigest()


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
        "format": METHODS_FORMAT,
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
        "reference": REFERENCE,
        "reference_added": reference_added,
        "item_ids": ref["item_ids"],
        "methods": list(names),
        "rows": rows,
        "runs": dict(files or {}),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "versions": versions(),
    }


# ---------------------------------------------------------------------------------------------
# the table


def compare_markdown(record: Mapping[str, Any]) -> str:
    """One Markdown table: rows = methods, columns = languages + average (see evaluation.tables.methods_table)."""
    from ..evaluation.tables import methods_table
    from ..results.schema import validate

    return methods_table(validate(dict(record)))


def write_compare(out_dir: str | os.PathLike, record: Mapping[str, Any]) -> tuple[Path, Path]:
    """DIR/compare.json and DIR/compare.md (atomic writes)."""
    from ..io import atomic_write_json, atomic_write_text

    d = Path(out_dir)
    j = atomic_write_json(d / "compare.json", dict(record))
    m = atomic_write_text(d / "compare.md", compare_markdown(record))
    return j, m


def load_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["sft.steps=20", "icl-en.k=2"]`` -> ``{"sft": {"steps": 20}, "icl-en": {"k": 2}}`` (values as JSON when they parse)."""
    out: dict[str, dict[str, Any]] = {}
    for item in pairs:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"option {item!r} must look like METHOD.KEY=VALUE, e.g. sft.steps=20")
        left, value = item.split("=", 1)
        method, key = left.rsplit(".", 1)
        method = parse_methods(method)[0]
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[key.strip()] = parsed
    return out
