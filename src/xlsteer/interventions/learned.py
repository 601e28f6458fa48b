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

import contextlib
import math
import time
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError, UsageError
from ..hooks import ForwardContext, record, steer
from ..models.sites import Site, check_site, num_layers, site_width
from ..progress import bar
from ..stats import positions_from_mask
from .registry import NO_STATISTICS, FitJob, LayerPolicy, register_method
from .task_objective import as_task_examples, task_loss
from .vector import SteeringVector, check_layers, check_targets, check_width, fit_metadata, vector_key

OBJECTIVES = ("align", "task")
INITS = ("diffmean", "zero")


class TrainableSteeringVector(SteeringVector):
    """A SteeringVector whose tensors may require grad: nothing is cached, the graph is rebuilt
    at every call (``prepare`` in the base class caches a detached cast once per install)."""

    def prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        return dtype

    def apply(self, site: Site, act: torch.Tensor, ctx: ForwardContext, prepared: Any) -> torch.Tensor:
        v = self.tensors[vector_key(site.layer)]
        check_width(self, site, act, v.shape[-1])
        table = torch.cat([v * self.strength, torch.zeros_like(v[:1])]).to(act.dtype)
        idx = self.language_index(ctx, act.device)
        return act + table[idx].unsqueeze(1)


class _Stop(Exception):
    """Raised by a reader to end a forward pass once the state it needs is captured."""


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter ``requires_grad=False`` inside the block; the previous flags are restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encode(tok: Any, texts: Sequence[str], max_length: int, device: torch.device, exclude_bos: bool):
    enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    count = mask.bool()
    bos = getattr(tok, "bos_token_id", None)
    if exclude_bos and bos is not None:
        count = count & (ids != bos)
    return ids, mask, count


def _pool(act: torch.Tensor, count: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) -> (B, d): mean over counted tokens, or the last counted token (as Statistics)."""
    x = act.float()
    m = count.to(device=x.device, dtype=x.dtype)
    if pooling == "mean":
        return torch.einsum("bt,btd->bd", m, x) / m.sum(1).clamp_min(1).unsqueeze(1)
    t = x.shape[1]
    last = torch.where(count.to(x.device), torch.arange(t, device=x.device), -1).max(1).values.clamp_min(0)
    return x[torch.arange(x.shape[0], device=x.device), last]


def _state_at(
    lm: Any,
    texts: Sequence[str],
    site: Site,
    pooling: str,
    max_length: int,
    exclude_bos: bool,
    intervention: Any = None,
    lang: str | None = None,
    anchor: str | None = None,
) -> torch.Tensor:
    """Pooled activation at ``site`` for one batch; the forward stops right after ``site``."""
    model, tok = lm.model, lm.tokenizer
    ids, mask, count = _encode(tok, texts, max_length, _device(model), exclude_bos)
    got: dict[str, torch.Tensor] = {}

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        got["act"] = act
        raise _Stop

    ctx = (
        steer(model, intervention, langs=lang, anchor=anchor, readers=[([site], reader)])
        if intervention is not None
        else record(model, [site], reader)
    )
    with ctx:
        try:
            model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
        except _Stop:
            pass
    if "act" not in got:
        raise UsageError(f"site {site} was never reached in the forward pass; check the layer")
    return _pool(got["act"], count, pooling)


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _split(n: int, dev_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0 < dev_fraction < 1:
        raise UsageError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if n < 2:
        raise DataError(f"need at least 2 training items to hold out a dev split, got {n}; give more items")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_dev = min(n - 1, max(1, round(n * dev_fraction)))
    return sorted(perm[n_dev:]), sorted(perm[:n_dev])


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


def _diffmean_init(
    lm: Any, texts: dict[str, list[str]], rows: list[int], lang: str, anchor: str, sites: list[Site],
    pooling: str, batch_size: int, max_length: int, exclude_bos: bool,
) -> dict[int, torch.Tensor]:
    """DiffMean on the training rows (same pooling as the objective)."""
    out = {}
    with torch.no_grad():
        for site in sites:
            sums = {}
            for which in (anchor, lang):
                total = None
                for b in _batches(len(rows), batch_size):
                    chunk = [texts[which][rows[i]] for i in b]
                    pooled = _state_at(lm, chunk, site, pooling, max_length, exclude_bos).double().sum(0)
                    total = pooled if total is None else total + pooled
                sums[which] = total / len(rows)
            out[site.layer] = (sums[anchor] - sums[lang]).float()
    return out


def _site_scale(lm: Any, texts: Sequence[str], sites: list[Site], max_length: int, exclude_bos: bool) -> float:
    """Per-coordinate RMS activation at the steered sites (mean over sites) on one batch."""
    model, tok = lm.model, lm.tokenizer
    ids, mask, count = _encode(tok, texts, max_length, _device(model), exclude_bos)
    vals: list[float] = []

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        x = act.float()[count]
        vals.append(float(x.pow(2).mean().sqrt()))

    with torch.no_grad(), record(model, sites, reader):
        model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
    return float(sum(vals) / max(len(vals), 1)) or 1.0


def _call(fn: Any, job: FitJob) -> SteeringVector:
    """fit() trains the align objective on the corpus texts directly (no statistics)."""
    return fn(job.lm, job.texts, job.layers, job.targets, anchor=job.anchor, site=job.site, pooling=job.pooling,
              batch_size=job.batch_size, max_length=job.max_length, meta=job.meta, **job.params)


def _check_objective(params: Mapping[str, Any]) -> None:
    if params.get("objective", "align") != "align":
        raise UsageError("xlsteer fit learned trains the 'align' objective on parallel text; the 'task' objective "
                         "needs (prompt, answer) examples: use xlsteer.interventions.fit_learned from Python")


@register_method(
    "learned", site="resid_post", statistics=NO_STATISTICS, layer_policy=LayerPolicy(), alpha_grid=(0.5, 1.0, 2.0),
    description="a vector trained with the model frozen to align target states with the anchor's",
    compare="learned vector (align objective, NTREX), alpha chosen on dev", compare_defaults={"steps": 100},
    trainable=True, call=_call, check_params=_check_objective,
)
def fit_learned(
    lm: Any,
    data: Any,
    layers: Sequence[int] | int,
    langs: Sequence[str] | str,
    *,
    anchor: str = "en",
    objective: str = "align",
    init: str | SteeringVector = "diffmean",
    target_layer: int | None = None,
    site: str = "resid_post",
    pooling: str = "mean",
    parallel: Any = None,
    steps: int = 200,
    lr: float = 0.02,
    batch_size: int = 8,
    dev_fraction: float = 0.2,
    eval_every: int = 10,
    patience: int = 5,
    min_delta: float = 0.0,
    seed: int = 0,
    max_length: int = 128,
    exclude_bos: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> SteeringVector:
    """Optimise one vector per target language and layer with the model frozen.

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
    t0 = time.perf_counter()
    targets = check_targets(langs, anchor, "learned vector")
    layer_list = check_layers(layers, "learned vector")
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
    model = lm.model
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
        texts = _as_texts(data, [anchor, *targets])
        n_items = len(texts[anchor])
        parallel_texts = texts
    else:
        examples = as_task_examples(data, targets)
        n_items = min(len(v) for v in examples.values())
        parallel_texts = None
        if parallel is not None:
            parallel_texts = _as_texts(parallel, [anchor, *targets])
        if init == "diffmean" and parallel_texts is None:
            raise UsageError(
                "init='diffmean' with the task objective needs parallel text (parallel=corpus); "
                "or use init='zero' or pass a fitted vector"
            )
    train_rows, dev_rows = _split(n_items, dev_fraction, seed)
    target_site = Site(target_layer, "resid_post") if objective == "align" else None

    fitted: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    history: dict[str, Any] = {}
    scales: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    with frozen(model), torch.enable_grad():
        if objective == "align":
            assert target_site is not None
            with torch.no_grad():  # the unsteered anchor states: the same for every target language
                anchor_states = torch.cat(
                    [
                        _state_at(lm, [texts[anchor][i] for i in b], target_site, pooling, max_length, exclude_bos)
                        for b in _batches(n_items, batch_size)
                    ]
                ).detach()
        for lang in targets:
            # --- data of this language
            if objective == "align":
                assert target_site is not None

                def loss_on(rows: list[int], iv: Any) -> torch.Tensor:
                    pooled = _state_at(
                        lm, [texts[lang][i] for i in rows], target_site, pooling, max_length, exclude_bos, iv, lang, anchor
                    )
                    return F.mse_loss(pooled, anchor_states[rows].to(pooled.device))

                sample = [texts[lang][i] for i in train_rows[:batch_size]]
            else:
                ex = examples[lang]

                def loss_on(rows: list[int], iv: Any) -> torch.Tensor:
                    return task_loss(lm, [ex[i] for i in rows], max_length, iv, lang, anchor)

                sample = [ex[i][0] for i in train_rows[:batch_size]]

            # --- initial vector
            if isinstance(init, SteeringVector):
                if lang not in init.languages:
                    raise UsageError(f"the init vector has no language '{lang}'; fit it for that language")
                start = {
                    layer: init.effective(layer)[init.languages.index(lang)] * init.strength for layer in layer_list
                }
            elif init == "diffmean":
                assert parallel_texts is not None
                rows_p = train_rows if objective == "align" else list(range(len(parallel_texts[anchor])))
                start = _diffmean_init(
                    lm, parallel_texts, rows_p, lang, anchor, sites, pooling, batch_size, max_length, exclude_bos
                )
            else:
                width = site_width(model, site)
                start = {layer: torch.zeros(width) for layer in layer_list}
            dev = _device(model)
            params = {layer: start[layer].detach().clone().float().reshape(1, -1).to(dev).requires_grad_(True)
                      for layer in layer_list}
            iv = TrainableSteeringVector(
                sites=sites,
                tensors={vector_key(layer): p for layer, p in params.items()},
                params={"normalize": "none"},
                languages=[lang],
                anchor=anchor,
            )
            scale = _site_scale(lm, sample, sites, max_length, exclude_bos)
            scales[lang] = scale
            opt = torch.optim.Adam(list(params.values()), lr=lr * scale)

            def dev_loss() -> float:
                with torch.no_grad():
                    total, count = 0.0, 0
                    for b in _batches(len(dev_rows), batch_size):
                        rows = [dev_rows[i] for i in b]
                        total += float(loss_on(rows, iv)) * len(rows)
                        count += len(rows)
                return total / count

            best = dev_loss()
            best_step = 0
            best_vec = {layer: p.detach().clone() for layer, p in params.items()}
            train_hist: list[float] = []
            dev_hist: list[list[float]] = [[0, best]]
            bad = 0
            stopped_early = False
            order: list[int] = []
            with bar(steps, f"learn {lang}", "step") as pbar:
                for step in range(1, steps + 1):
                    if len(order) < batch_size:
                        order += [train_rows[i] for i in torch.randperm(len(train_rows), generator=gen).tolist()]
                    rows, order = order[:batch_size], order[batch_size:]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_on(rows, iv)
                    loss.backward()
                    opt.step()
                    value_now = float(loss.detach())
                    train_hist.append(value_now)
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{value_now:.4g}", dev=f"{best:.4g}")
                    if step % eval_every == 0 or step == steps:
                        value = dev_loss()
                        dev_hist.append([step, value])
                        if value < best - min_delta:
                            best, best_step, bad = value, step, 0
                            best_vec = {layer: p.detach().clone() for layer, p in params.items()}
                        else:
                            bad += 1
                            if bad >= patience:
                                stopped_early = True
                                break
            for layer in layer_list:
                fitted[layer].append(best_vec[layer].reshape(-1).float().cpu())
            history[lang] = {
                "train": train_hist,
                "dev": dev_hist,
                "best_step": best_step,
                "best_dev": best,
                "initial_dev": dev_hist[0][1],
                "steps_run": len(train_hist),
                "stopped_early": stopped_early,
            }

    init_name = "vector" if isinstance(init, SteeringVector) else init
    out_params: dict[str, Any] = {
        "fit": "learned",
        "normalize": "none",
        "objective": objective,
        "init": init_name,
        "pooling": pooling,
        "site": site,
        "positions": "all",
        "steps": steps,
        "lr": lr,
        "lr_scale": scales,
        "optimizer": "adam",
        "batch_size": batch_size,
        "dev_fraction": dev_fraction,
        "eval_every": eval_every,
        "patience": patience,
        "min_delta": min_delta,
        "seed": seed,
        "max_length": max_length,
        "exclude_bos": exclude_bos,
        "n_train": len(train_rows),
        "n_dev": len(dev_rows),
        "dev_rows": dev_rows,
        "history": history,
    }
    if objective == "align":
        out_params["target_layer"] = target_layer
        out_params["target_site"] = str(target_site)
        out_params["loss"] = "mse(pool(steered target), pool(anchor)) at target_site, mean over items and dims"
    else:
        out_params["loss"] = "cross-entropy of answer tokens, steered at all positions"
    meta_in = {"model_fingerprint": lm.fingerprint, **dict(meta or {})}
    return SteeringVector(
        sites=sites,
        tensors={vector_key(layer): torch.stack(fitted[layer]) for layer in layer_list},
        params=out_params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(None, meta_in, time.perf_counter() - t0),
    )
