"""Every method a practitioner could use instead of (or with) steering, under one name each.

:data:`METHODS` maps a name to how it is run; :func:`run_method` runs one on a task's ``test``
split (or any split) and returns its runner result (:func:`xlsteer.evaluation.runner.run_task`
format, per-item records included) with what it cost; :func:`~xlsteer.baselines.compare.compare_methods`
runs several on the *same items* and pairs each with ``zero-shot`` item by item.

=============  ===========  ==============================================================
name           family       what
=============  ===========  ==============================================================
zero-shot      reference    the unsteered model, the task's default template
icl-en         prompting    k exemplars in English before every item (train split, else dev)
icl-native     prompting    k exemplars in the item's language
instruct       prompting    the task's explicit instruction (LCB: "Answer in German.") where it declares one
few-shot       prompting    the task's own few-shot prompt (LCB: upstream's 5-shot prompt) where it declares one
prompt-opt     prompting    an instruction searched on dev (seeds + the model's paraphrases)
xlt            fine-tuning  LoRA trained on English training data only (cross-lingual transfer)
sft            fine-tuning  LoRA trained on the training data of every evaluated language
sft+steer      combination  DiffMean fitted on the SFT model (NTREX), alpha/layer on dev
translate-test translation  apertium MT to English (languages with an apertium pair), unsteered
translate-self translation  the model translates the item to English itself, unsteered
translate-gmt  translation  XCOPA's Google-MT English (data-gmt), unsteered
script-gate    decoding     unsteered; only tokens of the wanted language's script (generation tasks)
diffmean       steering     DiffMean vector on NTREX (fit split); layer and alpha on dev
learned        steering     learned vector (align objective) on NTREX; alpha on dev
incline        steering     INCLINE maps on NTREX at every layer, last prompt token; sigma on dev
clas           steering     CLAS at its bridge layers (NTREX statistics); alpha on dev
intmu          steering     Int_mu: LAPE neurons set to the anchor's mean; strength on dev
=============  ===========  ==============================================================

The steering rows are the methods of the method registry (:mod:`xlsteer.interventions.registry`)
registered with a ``compare`` description, in registry order; their strength grids
(:data:`DEFAULT_ALPHAS`), fit layers, sweep layers and fit defaults come from there too, so a
method registered anywhere (a test, a plug-in module) is a row of its own.

Selection (layers, strengths, prompts, exemplars) uses only dev/train items; reported numbers
come from ``split`` (test). Steering methods choose layer and strength with
:func:`xlsteer.evaluation.sweep.sweep` on ``dev_limit`` dev items per language, the unsteered
model being one of the candidates: when it wins on dev the selection is "no steering"
(``selection.steer`` False) and the reported scores are the unsteered model's. ``select``
(``RunContext.select`` or ``-O METHOD.select=per-lang``) lets each language choose its own
configuration or none (:mod:`xlsteer.evaluation.selection`). INCLINE, CLAS and Int_mu sweep only
alpha, applied at every fitted layer together (all layers / all bridge layers, as in their
papers); DiffMean and the learned vector sweep each fitted layer alone.

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
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import UsageError
from ..evaluation.tasks import get_task
from ..interventions import params as P
from .context import REFERENCE, MethodRun, MethodSpec, RunContext, _cost, _eval, _eval_items
from .steering import steer_and_evaluate


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
    from .prompt_search import SearchConfig, run_prompt_search

    params = {"rounds": int(p.get("rounds", 2)), "per_round": int(p.get("per_round", 4)),
              "n_parents": int(p.get("n_parents", 2)), "dev_limit": p.get("dev_limit", ctx.dev_limit),
              "propose_tokens": int(p.get("propose_tokens", 40))}
    t0 = time.perf_counter()
    evaluation = ctx.eval_config(calibrate=False, sampling={}, guard=None)
    res = run_prompt_search(ctx.lm, ctx.task, ctx.langs, evaluation, SearchConfig(seeds=p.get("seeds"), **params))
    total = time.perf_counter() - t0
    rec = res.pop("prompt_search")
    best = rec["best"]["instruction"]
    extra = prefix_tokens(ctx.lm, best + get_task(ctx.task).baselines.instruction_separator) if best else 0
    sel = {"source": "dev", "instruction": best, "dev_score": rec["best"]["dev_score"],
           "candidates": [{k: c[k] for k in ("instruction", "source", "round", "dev_score", "dev_per_lang")}
                          for c in rec["candidates"]],
           "proposals": rec["proposals"], "budget": rec["budget"], "dev_limit": rec["dev_limit"],
           "rule": rec["selection_rule"], "evidence": rec["best"].get("evidence")}
    notes = []
    if not best:
        notes.append("no instruction beat the plain zero-shot prompt on dev beyond noise: the empty instruction "
                     "is used")
    return MethodRun("prompt-opt", "prompting", res, params,
                     _cost(fit_seconds=rec["search_seconds"], eval_seconds=total - rec["search_seconds"],
                           extra_tokens_per_item=extra), sel, notes,
                     extra={"search_proposal_tokens": rec["proposal_tokens"]})


def _task_prompt(name: str) -> Callable[[RunContext, dict[str, Any]], MethodRun]:
    def run(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
        from .task_prompts import run_prompt_baseline

        return run_prompt_baseline(ctx, name, p)

    return run


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
        ctx.shared[key] = finetune(ctx.lm, ctx.task, recipe, ctx.langs, _train_config(ctx, p), train_langs=train_langs,
                                   items_from=ctx.eval_config(), adapter_dir=adapter_dir)
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
        res = run_translate_test(ctx.lm, ctx.task, ctx.langs, kind, ctx.eval_config(calibrate=False, sampling={},
                                                                                  guard=None),
                                 cache=ctx.translation_cache, translator_options=opts)
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
# decoding


def _script_gate(ctx: RunContext, p: dict[str, Any]) -> MethodRun:
    """The unsteered model decoding only tokens of each item's wanted script (non-Latin targets)."""
    from ..evaluation.script_gate import gate_scope

    if get_task(ctx.task).kind != "generate":
        raise UsageError(f"script-gate restricts generated tokens; task {ctx.task} is not a generation task")
    res, secs = _eval(ctx, ctx.lm, ctx.langs, sampling={**dict(ctx.sampling), "gate": "script"})
    scope = {lang: gate_scope(lang) for lang in ctx.langs}
    return MethodRun("script-gate", "decoding", res, {"gate": "script"}, _cost(eval_seconds=secs),
                     {"source": "none (the wanted language's script is given)", "per_lang": scope},
                     [f"{lang}: {text}" for lang, text in scope.items() if text.startswith("unconstrained")])


# ---------------------------------------------------------------------------------------------
# steering


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


class _Table(Mapping[str, Any]):
    """A read-only mapping built when read, so the steering rows follow the method registry."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


_ICL = {"k": P.integer(1, optional=True), "seed": P.SEED}
_TRAIN = {"rank": P.integer(1), "lora_alpha": P.number(0, open_lo=True, optional=True), "dropout": P.number(0, 1, open_hi=True),
          "target_modules": P.words(), "steps": P.integer(1), "batch_size": P.integer(1),
          "lr": P.number(0, open_lo=True), "warmup_steps": P.integer(0), "weight_decay": P.number(0),
          "max_length": P.integer(8), "seed": P.SEED, "max_train_items": P.integer(1, optional=True),
          "train_langs": P.words(optional=True)}
_PROMPT_SEARCH = {"rounds": P.integer(1), "per_round": P.integer(1), "n_parents": P.integer(1),
                  "dev_limit": P.integer(1), "propose_tokens": P.integer(1), "seeds": P.words(optional=True)}


def steering_params(method: str) -> dict[str, Any]:
    """What ``-O`` may set on a steering row: the method's declared fit parameters and the row's
    own settings (strength grid, layers, corpus lines, dev items, site, selection rule)."""
    from ..evaluation.evidence import RULES
    from ..interventions.registry import get_method
    from ..models.sites import site_names

    spec = get_method(method)
    return {**spec.params, "alphas": P.numbers(), "layers": P.layers(), "fit_limit": P.integer(1),
            "corpus": P.text(), "dev_limit": P.integer(1), "site": P.choice(*(spec.sites or site_names())),
            "select": P.choice("global", "per-lang"), "select_rule": P.choice(*RULES),
            "select_level": P.number(0, 1, open_lo=True, open_hi=True)}


_FIXED: dict[str, MethodSpec] = {
    "zero-shot": MethodSpec("zero-shot", "reference", "the unsteered model with the task's default template",
                            _zero_shot),
    "icl-en": MethodSpec("icl-en", "prompting", "k English exemplars (train split, else dev) before each item",
                         _icl("en"), {"k": None}, _ICL),
    "icl-native": MethodSpec("icl-native", "prompting", "k exemplars in the item's language (same items as icl-en)",
                             _icl("native"), {"k": None}, _ICL),
    "instruct": MethodSpec("instruct", "prompting", "an explicit instruction the task declares (LCB: 'Answer in "
                           "German.' after the prompt)", _task_prompt("instruct"), params={}),
    "few-shot": MethodSpec("few-shot", "prompting", "the task's own few-shot prompt (LCB: upstream's 5-shot prompt, "
                           "the paper's mitigation)", _task_prompt("few-shot"), params={"k": P.integer(1)}),
    "prompt-opt": MethodSpec("prompt-opt", "prompting",
                             "instruction chosen on dev among seeds and the model's own paraphrases",
                             _prompt_opt, {"rounds": 2, "per_round": 4, "n_parents": 2}, _PROMPT_SEARCH),
    "xlt": MethodSpec("xlt", "fine-tuning", "LoRA on English training data only (cross-lingual transfer)",
                      _ft_run("xlt"), {"rank": 8, "steps": 40, "batch_size": 8, "lr": 5e-4}, _TRAIN),
    "sft": MethodSpec("sft", "fine-tuning", "LoRA on the training data of every evaluated language",
                      _ft_run("sft"), {"rank": 8, "steps": 40, "batch_size": 8, "lr": 5e-4}, _TRAIN),
    "sft+steer": MethodSpec("sft+steer", "combination", "DiffMean fitted and applied on the SFT model",
                            _sft_steer, {}, _Table(lambda: {**{f"sft_{k}": v for k, v in _TRAIN.items()},
                                                          **steering_params("diffmean")})),
    "translate-test": MethodSpec("translate-test", "translation", "apertium MT to English, then the unsteered model",
                                 _translate("apertium")),
    "translate-self": MethodSpec("translate-self", "translation",
                                 "the model translates the item to English, then answers it unsteered",
                                 _translate("self"), params={"max_new_tokens": P.integer(1), "prompt": P.text()}),
    "translate-gmt": MethodSpec("translate-gmt", "translation", "XCOPA's Google-MT English, unsteered",
                                _translate("gmt")),
    "script-gate": MethodSpec("script-gate", "decoding",
                              "unsteered; decoding keeps only tokens of the wanted language's script (non-Latin "
                              "targets; an oracle form of the Language Confusion Gate)", _script_gate),
}


def _steering_rows() -> dict[str, MethodSpec]:
    """One row per registered steering method with a ``compare`` description (registry order)."""
    from ..interventions.registry import get_method, method_names

    rows = {}
    for name in method_names():
        spec = get_method(name)
        if spec.compare is not None:
            declared = _Table(lambda name=name: steering_params(name)) if spec.params else None
            rows[name] = MethodSpec(name, "steering", spec.compare, _steer(name), dict(spec.compare_defaults),
                                    declared)  # type: ignore[arg-type]  (None: a method that declares none)
    return rows


#: Every method under its name: the fixed rows, then the registry's steering rows.
METHODS: Mapping[str, MethodSpec] = _Table(lambda: {**_FIXED, **_steering_rows()})
#: Strength grids searched on dev, per steering row (the registry's ``alpha_grid``).
DEFAULT_ALPHAS: Mapping[str, tuple[float, ...]] = _Table(
    lambda: {name: _registry_alpha_grid(name) for name in _steering_rows()})


def _registry_alpha_grid(name: str) -> tuple[float, ...]:
    from ..interventions.registry import get_method

    return get_method(name).alpha_grid


ALIASES = {"zeroshot": "zero-shot", "base": "zero-shot", "translate-apertium": "translate-test",
           "prompt-search": "prompt-opt", "sft-steer": "sft+steer"}


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
