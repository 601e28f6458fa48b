"""Residual-stream steering vectors (DiffMean and learned): ``h <- h + alpha * v[lang, layer]``.

``fit_diffmean`` computes the closed-form vector of METHODS.md section 1 from statistics;
``learned.fit_learned`` optimises one with the model frozen. Both produce a ``SteeringVector``.

Tensors: ``vectors@<layer>`` of shape (n_languages, d), one row per language in
``self.languages``. How the stored vector is scaled at application time is the parameter
``normalize``:

- ``none``      v as fitted (the raw mean difference; alpha = 1 moves the target mean onto the anchor mean)
- ``unit``      v / ||v||, so alpha is a norm in the residual stream's units (CLaS-Bench style)
- ``relative``  v / ||v|| * ref_norm[layer], so alpha is a fraction of that layer's typical
                token norm (comparable across models: Gemma's residual norm is ~7000, SmolLM2's ~130)

Positions: the vector is meant for every prompt and generated token (params["positions"] =
``all``, the policy callers pass to ``steer``); under the KV cache the engine steers each
token once, when it is computed. Every method stores its recommended policy the same way.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import ArtifactError, UsageError
from ..models.sites import Site
from ..provenance import now_utc
from . import params as P
from .base import Intervention, register_intervention
from .registry import LayerPolicy, StatisticsNeed, quartile_layers, register_method

if TYPE_CHECKING:
    from ..stats import Statistics


def vector_key(layer: int) -> str:
    return f"vectors@{layer}"


@register_intervention
class SteeringVector(Intervention):
    method = "vector"
    NORMALIZE = ("none", "unit", "relative")

    def validate(self) -> None:
        n = len(self.languages)
        for site in self.sites:
            t = self.tensors.get(vector_key(site.layer))
            if t is None or t.dim() != 2 or t.shape[0] != n:
                raise ArtifactError(
                    f"steering vector file lacks a ({n}, d) tensor '{vector_key(site.layer)}'; re-create it"
                )
        if self.params.get("normalize", "none") not in self.NORMALIZE:
            raise ArtifactError(f"unknown normalize mode {self.params.get('normalize')!r}")
        if self.params.get("normalize") == "relative":
            check_ref_norms(self.params.get("ref_norm"), self.layers, ArtifactError)

    def effective(self, layer: int) -> torch.Tensor:
        """The (n_languages, d) vectors as added at strength 1, in float32."""
        v = self.tensors[vector_key(layer)].float()
        mode = self.params.get("normalize", "none")
        if mode == "none":
            return v
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if mode == "unit":
            return unit
        ref = float(self.params["ref_norm"][str(layer)])
        return unit * ref

    def row_vectors(self, site: Site) -> torch.Tensor:
        """The hook engine's additive path adds ``strength * effective(layer)[row language]``."""
        return self.effective(site.layer)

    def select_layers(self, layers: Sequence[int]) -> "SteeringVector":
        """The same vectors at a subset of the layers (for a layer sweep over one fit)."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise UsageError(
                f"this steering vector has no layer(s) {missing} (it has {self.layers}); fit it at those layers"
            )
        keep = set(layers)
        sites = [s for s in self.sites if s.layer in keep]
        tensors = {vector_key(layer): self.tensors[vector_key(layer)] for layer in sorted(keep)}
        params = dict(self.params)
        if "ref_norm" in params:
            params["ref_norm"] = {k: v for k, v in params["ref_norm"].items() if int(k) in keep}
        return type(self)(
            sites=sites, tensors=tensors, params=params, languages=self.languages, anchor=self.anchor,
            strength=self.strength, meta=dict(self.meta),
        )


# ---- helpers shared by the fit functions of every method -------------------------------------


def check_ref_norms(ref: Any, layers: Sequence[int], error: type[Exception] = UsageError) -> dict[str, float]:
    """``ref_norm`` of a relative vector: a finite number > 0 for every layer (zero would erase the
    vector, a negative one reverse it, a missing one fail at the first forward pass)."""
    if ref is None:
        raise error("normalize is 'relative' but there is no ref_norm; give one per layer, or refit with "
                    "normalize=relative and no ref_norm (the statistics' token norm is used)")
    if not isinstance(ref, Mapping):
        raise error(f"ref_norm must be an object of one number per layer, got {type(ref).__name__}")
    out: dict[str, float] = {}
    for layer in layers:
        value = ref.get(str(layer), ref.get(layer))  # type: ignore[call-overload]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise error(f"ref_norm for layer {layer} must be a finite number > 0, got {str(value)[:40]}")
        out[str(layer)] = float(value)
    return out


def fit_metadata(stats: "Statistics | None", meta: Mapping[str, Any] | None, seconds: float) -> dict[str, Any]:
    """``meta`` of a fitted intervention: model fingerprint and data hash (from the statistics
    unless given), fit time and date. Given values win over the statistics' ones."""
    out: dict[str, Any] = {}
    if stats is not None:
        for key in ("model_fingerprint", "data_hash"):
            if key in stats.meta:
                out[key] = stats.meta[key]
        out["statistics"] = {
            "pooling": stats.pooling,
            "threshold": stats.threshold,
            "counts": {lang: stats.counts(lang, stats.sites[0])[0] for lang in stats.langs} if stats.sites else {},
        }
    out.update(dict(meta or {}))
    out.setdefault("fit_seconds", round(float(seconds), 4))
    out.setdefault("fitted_at", now_utc())
    return out


def check_targets(target_langs: Sequence[str] | str, anchor: str, what: str) -> list[str]:
    """Target languages as a list without duplicates; the anchor is never a target."""
    langs = [target_langs] if isinstance(target_langs, str) else list(target_langs)
    langs = list(dict.fromkeys(langs))
    if anchor in langs:
        raise UsageError(
            f"{what}: the anchor language '{anchor}' cannot also be a target (anchor rows are never steered); "
            "drop it from --langs"
        )
    if not langs:
        raise UsageError(f"{what}: no target languages; give --langs with at least one non-anchor language")
    return langs


def check_layers(layers: Sequence[int] | int, what: str) -> list[int]:
    out = [layers] if isinstance(layers, int) else list(layers)
    if not out:
        raise UsageError(f"{what}: no layers given; pass --layers, e.g. --layers 6")
    if any(not isinstance(x, int) or isinstance(x, bool) for x in out):
        raise UsageError(f"{what}: layers must be integers, got {out}")
    return sorted(set(out))


def token_rms_norm(stats: "Statistics", site: Site, langs: Sequence[str]) -> float:
    """sqrt(E ||h||^2) over every counted token of ``langs`` at ``site`` (BOS excluded by collect).

    The root-mean-square token norm: sqrt of the sum over dimensions of the token-level second
    moments, pooled over the languages. It is what ``normalize="relative"`` scales vectors by.
    """
    total, count = 0.0, 0
    for lang in langs:
        a = stats._get(lang, site)
        total += float(a.tok_sumsq.sum())
        count += a.n_tokens
    if count == 0:
        raise UsageError(f"no tokens at {site} in the statistics; cannot compute a reference norm")
    return math.sqrt(total / count)


@register_method(
    "diffmean", site="resid_post", statistics=StatisticsNeed("item-level pooled means"),
    layer_policy=LayerPolicy(compare=quartile_layers), alpha_grid=(0.5, 1.0, 2.0),
    description="the mean difference of anchor and target activations (closed form)",
    compare="DiffMean vector (NTREX), layer and alpha chosen on dev",
    params={"normalize": P.choice("none", "unit", "relative"), "ref_norm": P.per_layer(0, open_lo=True, optional=True)},
)
def fit_diffmean(
    stats: "Statistics",
    layers: Sequence[int] | int,
    target_langs: Sequence[str] | str,
    anchor: str = "en",
    site: str = "resid_post",
    normalize: str = "none",
    ref_norm: Mapping[int, float] | float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> SteeringVector:
    """DiffMean: ``v[t, l] = mean_items(h_anchor) - mean_items(h_t)`` at ``site`` of each layer.

    Item level: each text is pooled first (mean over its tokens or its last token: the
    statistics' pooling, recorded in params), then averaged over texts, so long texts do not
    weigh more. With ``normalize="none"`` and strength 1, adding v at every token moves the
    mean-pooled target mean exactly onto the anchor mean at that layer.

    ``normalize="relative"`` needs a reference norm per layer: by default the RMS token norm
    (:func:`token_rms_norm`, anchor and targets pooled, BOS excluded); pass ``ref_norm`` (one
    number or one per layer) to use a measured value instead. Either way it is recorded.
    """
    t0 = time.perf_counter()
    targets = check_targets(target_langs, anchor, "diffmean")
    layer_list = check_layers(layers, "diffmean")
    if normalize not in SteeringVector.NORMALIZE:
        raise UsageError(f"unknown normalize mode '{normalize}'; choose one of {', '.join(SteeringVector.NORMALIZE)}")
    tensors: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    for layer in layer_list:
        s = Site(layer, site)
        a = stats._get(anchor, s)
        anchor_mean = a.item_sum / a.n_items  # float64 accumulators: subtract before rounding
        rows = []
        for t in targets:
            b = stats._get(t, s)
            rows.append(anchor_mean - b.item_sum / b.n_items)
        tensors[vector_key(layer)] = torch.stack(rows).float()
        if normalize == "relative":
            if ref_norm is None:
                norms[str(layer)] = token_rms_norm(stats, s, [anchor, *targets])
            elif isinstance(ref_norm, Mapping):
                if layer not in ref_norm and str(layer) not in ref_norm:
                    raise UsageError(f"ref_norm has no value for layer {layer}; give one per layer")
                norms.update(check_ref_norms(ref_norm, [layer]))
            else:
                norms.update(check_ref_norms({str(layer): ref_norm}, [layer]))
    params: dict[str, Any] = {
        "fit": "diffmean",
        "normalize": normalize,
        "pooling": stats.pooling,
        "level": "item",
        "site": site,
        "positions": "all",
    }
    if normalize == "relative":
        params["ref_norm"] = norms
        params["ref_norm_source"] = "given" if ref_norm is not None else "stats_token_rms"
    return SteeringVector(
        sites=[Site(layer, site) for layer in layer_list],
        tensors=tensors,
        params=params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(stats, meta, time.perf_counter() - t0),
    )
