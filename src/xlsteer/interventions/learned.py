"""Learned steering vectors: v[t, l] optimised with the model frozen (METHODS.md section 1).

Two objectives (recorded in params["objective"]):

``align``  on parallel text, minimise the mean squared error between the *steered*
           target-language pooled state at ``target_layer`` (resid_post) and the *unsteered*
           anchor-language pooled state of the same item there:
           ``mean_items mean_dims (pool(f(x_t; v)) - pool(f(x_anchor)))^2``. Pooling is the mean
           over real tokens except BOS, or the last real token (params["pooling"]).
``task``   cross-entropy of the reference answer tokens given the prompt in the target
           language (teacher forcing), steered at every position as in generation with the
           ``all`` policy; mean over answer tokens.

Training goes through the hook engine: the vector is a leaf tensor inside a
:class:`TrainableSteeringVector` installed with ``steer()``, and gradients flow through the
engine's ``where(mask, new, act)``. Every model parameter has ``requires_grad`` set to False
for the duration (and restored afterwards). Items are split once into train/dev by a seeded
permutation; the dev loss is evaluated every ``eval_every`` steps (and before the first step)
and the vector with the lowest dev loss is returned, so the returned vector's dev objective is
never above the initial one. Training stops after ``patience`` evaluations without improvement.

Step size: ``lr`` is Adam's step as a fraction of the steered site's per-coordinate RMS
activation (measured on one training batch, recorded as params["lr_scale"]), so the same lr
works for models whose residual norms differ by 50x (Gemma-3 ~7000, SmolLM2 ~130).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import DataError, UsageError
from ..models.sites import Site, check_site, num_layers
from ..settings import Settings
from . import params as P
from .registry import NO_STATISTICS, FitJob, LayerPolicy, register_method
from .task_objective import as_task_examples
from .training import (TrainingRun, anchor_states_at, frozen, initial_vector, objective_loss, split_rows,
                       train_language)
from .vector import SteeringVector, check_layers, check_targets, fit_metadata, vector_key

__all__ = ["OBJECTIVES", "INITS", "fit_learned"]

OBJECTIVES = ("align", "task")
INITS = ("diffmean", "zero")


def _as_texts(data: Any, langs: Sequence[str]) -> dict[str, list[str]]:
    texts = getattr(data, "texts", data)
    if not isinstance(texts, Mapping):
        raise UsageError("parallel text must be a ParallelCorpus or a dict: language -> list of texts")
    out = {}
    for lang in langs:
        if lang not in texts:
            raise DataError(f"the parallel text has no language '{lang}'; give a corpus that includes it")
        out[lang] = list(texts[lang])
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise DataError("misaligned parallel text: languages have different numbers of lines; align them")
    return out


def _check_settings(objective: str, pooling: str, init: Any, steps: Any, batch_size: Any, eval_every: Any,
                    patience: Any, lr: Any) -> None:
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    if pooling not in ("mean", "last"):
        raise UsageError(f"unknown pooling '{pooling}'; choose mean or last")
    if not isinstance(init, SteeringVector) and init not in INITS:
        raise UsageError(f"unknown init '{init}'; choose one of {', '.join(INITS)} (or pass a fitted vector)")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every), ("patience", patience)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr must be a positive number, got {lr!r}")


def _training_data(data: Any, parallel: Any, objective: str, init: Any, anchor: str, targets: list[str]) -> tuple:
    """(parallel texts of the align objective, task examples, parallel texts for a DiffMean init, n items)."""
    if objective == "align":
        texts = _as_texts(data, [anchor, *targets])
        return texts, None, texts, len(texts[anchor])
    examples = as_task_examples(data, targets)
    parallel_texts = None
    if parallel is not None:
        parallel_texts = _as_texts(parallel, [anchor, *targets])
    if init == "diffmean" and parallel_texts is None:
        raise UsageError(
            "init='diffmean' with the task objective needs parallel text (parallel=corpus); "
            "or use init='zero' or pass a fitted vector"
        )
    return None, examples, parallel_texts, min(len(v) for v in examples.values())


def _sites(model: Any, layer_list: list[int], site: str, objective: str,
           target_layer: int | None) -> tuple[list[Site], int | None]:
    """The steered sites (checked against the model) and, for ``align``, the compared layer."""
    n_layers = num_layers(model)
    sites = [Site(layer, site) for layer in layer_list]
    for s in sites:
        check_site(model, s)
    if objective == "align":
        if target_layer is None:
            target_layer = min(max(layer_list) + 1, n_layers - 1)
        if not max(layer_list) <= target_layer < n_layers:
            raise UsageError(
                f"target_layer {target_layer} must be between the last steered layer ({max(layer_list)}) "
                f"and {n_layers - 1}; a vector after the compared layer cannot change the objective"
            )
    return sites, target_layer


def _call(fn: Any, job: FitJob) -> SteeringVector:
    """fit() trains the align objective on the corpus texts directly (no statistics)."""
    return fn(job.lm, job.texts, job.layers, job.targets, anchor=job.anchor, site=job.site, pooling=job.pooling,
              batch_size=job.batch_size, max_length=job.max_length, meta=job.meta, **job.params)


def _check_objective(params: Mapping[str, Any]) -> None:
    if params.get("objective", "align") != "align":
        raise UsageError("xlsteer fit learned trains the 'align' objective on parallel text; the 'task' objective "
                         "needs (prompt, answer) examples: use xlsteer.interventions.fit_learned from Python")


@dataclass(frozen=True)
class LearnedConfig(Settings):
    """The learned vector's settings (``-p KEY=V``): the ``objective`` (``align`` or ``task``), the
    ``init`` (``diffmean``, ``zero`` or a fitted SteeringVector), the ``target_layer`` of ``align``,
    the site and pooling, and the training: Adam for ``steps`` steps of ``batch_size`` rows at
    ``lr``, ``dev_fraction`` of the rows held out, the dev loss every ``eval_every`` steps with
    early stopping after ``patience`` checks without a ``min_delta`` gain, the ``seed``, the
    maximum length and whether BOS is left out of the pooled states."""

    objective: str = "align"
    init: str | SteeringVector = "diffmean"
    target_layer: int | None = None
    site: str = "resid_post"
    pooling: str = "mean"
    steps: int = 200
    lr: float = 0.02
    batch_size: int = 8
    dev_fraction: float = 0.2
    eval_every: int = 10
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    max_length: int = 128
    exclude_bos: bool = True

    _what = "learned-vector parameter"


@register_method(
    "learned", site="resid_post", statistics=NO_STATISTICS, layer_policy=LayerPolicy(), alpha_grid=(0.5, 1.0, 2.0),
    description="a vector trained with the model frozen to align target states with the anchor's",
    compare="learned vector (align objective, NTREX), alpha chosen on dev", compare_defaults={"steps": 100},
    trainable=True, call=_call, check_params=_check_objective,
    params={"objective": P.choice(*OBJECTIVES), "init": P.choice(*INITS), "target_layer": P.integer(0, optional=True),
            "steps": P.integer(1), "lr": P.number(0, open_lo=True), "dev_fraction": P.number(0, 1, open_lo=True,
                                                                                            open_hi=True),
            "eval_every": P.integer(1), "patience": P.integer(0), "min_delta": P.number(0), "seed": P.SEED,
            "exclude_bos": P.flag()},
)
def fit_learned(lm: Any, data: Any, layers: Sequence[int] | int, langs: Sequence[str] | str,
                cfg: LearnedConfig | None = None, *, anchor: str = "en", parallel: Any = None,
                meta: Mapping[str, Any] | None = None, **settings: Any) -> SteeringVector:
    """Optimise one vector per target language and layer with the model frozen (``cfg``:
    :class:`LearnedConfig`; keyword ``settings`` override its fields).

    ``data``: for ``align`` a ParallelCorpus (or dict lang -> texts) holding the anchor and every
    target language; for ``task`` a dict lang -> [(prompt, answer), ...] (a plain list when
    there is one language). ``init``: ``diffmean`` (on the training rows of the parallel text:
    ``data`` for align, ``parallel`` for task), ``zero``, or a fitted SteeringVector.
    ``target_layer`` (align only): where the states are compared (resid_post); default the layer
    after the last steered one (the last layer if that is the last). ``target_layer`` equal to
    the steered layer with ``pooling="last"`` is METHODS.md's ``||f_l(x_t) + v - f_l(x_en)||^2``
    at the last token (whose optimum is the last-token DiffMean of the training rows). The loss history, the split, the best
    step and whether training stopped early are recorded in params["history"].
    """
    cfg = LearnedConfig.of(cfg, **settings)
    objective, init, target_layer, site, pooling = cfg.objective, cfg.init, cfg.target_layer, cfg.site, cfg.pooling
    steps, lr, batch_size, dev_fraction, seed = cfg.steps, cfg.lr, cfg.batch_size, cfg.dev_fraction, cfg.seed
    eval_every, patience, min_delta = cfg.eval_every, cfg.patience, cfg.min_delta
    max_length, exclude_bos = cfg.max_length, cfg.exclude_bos
    t0 = time.perf_counter()
    targets = check_targets(langs, anchor, "learned vector")
    layer_list = check_layers(layers, "learned vector")
    _check_settings(objective, pooling, init, steps, batch_size, eval_every, patience, lr)
    model = lm.model
    sites, target_layer = _sites(model, layer_list, site, objective, target_layer)
    texts, examples, parallel_texts, n_items = _training_data(data, parallel, objective, init, anchor, targets)
    train_rows, dev_rows = split_rows(n_items, dev_fraction, seed)
    target_site = Site(target_layer, "resid_post") if objective == "align" else None
    run = TrainingRun(lm=lm, anchor=anchor, layer_list=layer_list, sites=sites, site=site, pooling=pooling,
                    max_length=max_length, exclude_bos=exclude_bos, batch_size=batch_size, steps=steps, lr=lr,
                    eval_every=eval_every, patience=patience, min_delta=min_delta, train_rows=train_rows,
                    dev_rows=dev_rows, gen=torch.Generator().manual_seed(seed))

    fitted: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    history: dict[str, Any] = {}
    scales: dict[str, float] = {}
    with frozen(model), torch.enable_grad():
        anchor_states = anchor_states_at(run, texts[anchor], target_site) if target_site is not None else None
        for lang in targets:
            loss_on, sample = objective_loss(run, lang, objective, texts, examples, target_site, anchor_states)
            start = initial_vector(run, init, lang, objective, parallel_texts)
            best_vec, history[lang], scales[lang] = train_language(run, lang, loss_on, sample, start)
            for layer in layer_list:
                fitted[layer].append(best_vec[layer].reshape(-1).float().cpu())

    out_params = {"fit": "learned", "normalize": "none", "objective": objective,
                  "init": "vector" if isinstance(init, SteeringVector) else init, "pooling": pooling, "site": site,
                  "positions": "all", "steps": steps, "lr": lr, "lr_scale": scales, "optimizer": "adam",
                  "batch_size": batch_size, "dev_fraction": dev_fraction, "eval_every": eval_every,
                  "patience": patience, "min_delta": min_delta, "seed": seed, "max_length": max_length,
                  "exclude_bos": exclude_bos, "n_train": len(train_rows), "n_dev": len(dev_rows),
                  "dev_rows": dev_rows, "history": history}
    if objective == "align":
        out_params.update(target_layer=target_layer, target_site=str(target_site),
                          loss="mse(pool(steered target), pool(anchor)) at target_site, mean over items and dims")
    else:
        out_params["loss"] = "cross-entropy of answer tokens, steered at all positions"
    meta_in = {"model_fingerprint": lm.fingerprint, **dict(meta or {})}
    return SteeringVector(sites=sites, tensors={vector_key(layer): torch.stack(fitted[layer]) for layer in layer_list},
                          params=out_params, languages=targets, anchor=anchor,
                          meta=fit_metadata(None, meta_in, time.perf_counter() - t0))
