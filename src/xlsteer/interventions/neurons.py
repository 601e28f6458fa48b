"""Language neurons at ``mlp_gate`` (default) or ``mlp_act``: LAPE selection (Tang et al., arXiv 2402.16438) and two
interventions on selected neurons, LAPE deactivate/amplify and Int_mu (Mondal et al.,
arXiv 2503.17456). METHODS.md section 3.

LAPE selection (:func:`lape_neurons`), as in the authors' algorithm, over all chosen layers
jointly:

1. P[l, i, lang] = P(act > 0) per neuron and language (token level, BOS/padding excluded).
   "act" is the ``mlp_gate`` site, ``act(gate_proj(x))``, as the authors threshold it
   (``site="mlp_act"``, the product ``act(gate) * up``, stays available: its sign also carries
   the sign of ``up``, which can wash out the per-language differences the entropy relies on).
2. Normalise P across languages; entropy H = -sum p log p (0 log 0 = 0).
3. Filter: the bar is the ``filter_quantile`` (0.95) quantile of all P values (all layers,
   neurons, languages; ``kthvalue(round(N * q))`` as in the authors' code); a neuron whose P
   exceeds the bar in no language is dropped.
4. Keep the ``top_fraction`` (1%) of all neurons with the lowest entropy among those left.
5. Assignment: a kept neuron belongs to every language whose P exceeds the same bar (the
   authors' ``activation_bar_ratio`` = 0.95); every kept neuron has at least one language
   (step 3), and may have several.

Interventions (both route rows by language; anchor rows are never touched):

``LapeIntervention``  scale the selected neurons: ``deactivate`` h * (1 - strength * m)
                      (strength 1 sets them to 0), ``amplify`` h * (1 + strength * m). The
                      neurons are those of each row's own language, or of one chosen language
                      (params["neuron_lang"]) for every steered row.
``IntMuIntervention`` overwrite the selected neurons with a stored mean activation:
                      ``where(m, (1 - s) * h + s * mu, h)``; s = strength (1: exactly mu, 0: h).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import ArtifactError, DataError, UsageError
from ..hook_session import Rows
from ..models.sites import Site
from ..settings import Settings
from . import params as P
from .base import Intervention, check_width, register_intervention, row_table, scale_rows
from .registry import ALL_TOGETHER, CHOSEN_BY_FIT, FitJob, LayerPolicy, StatisticsNeed, register_method
from .vector import fit_metadata

if TYPE_CHECKING:
    from ..stats import Statistics

LAPE_MODES = ("deactivate", "amplify")
#: Sites LAPE and Int_mu may select and act on; the first is the default (Tang et al.'s statistic).
NEURON_SITES = ("mlp_gate", "mlp_act")
MEAN_OF = ("anchor", "target")
NEURONS_OF = ("target", "anchor", "union")


def mask_key(layer: int) -> str:
    return f"mask@{layer}"


def mu_key(layer: int) -> str:
    return f"mu@{layer}"


def _kth_quantile(values: torch.Tensor, q: float) -> float:
    """The authors' percentile: ``kthvalue(round(N * q))`` of the flattened values."""
    flat = values.flatten()
    k = min(max(1, round(flat.numel() * q)), flat.numel())
    return float(flat.kthvalue(k).values)


def lape_selection(
    stats: "Statistics",
    site_layers: Sequence[int],
    langs: Sequence[str],
    top_fraction: float = 0.01,
    filter_quantile: float = 0.95,
    site: str = NEURON_SITES[0],
) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, Any]]:
    """LAPE neurons and what decided them (bar value, counts, entropy cut-off), from P(act > 0) at ``site``."""
    check_neuron_site(site)
    lang_list = list(dict.fromkeys(langs))
    if len(lang_list) < 2:
        raise UsageError(f"LAPE needs at least 2 languages to compare, got {lang_list}; give more --langs")
    if not 0 < top_fraction <= 1:
        raise UsageError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if not 0 < filter_quantile < 1:
        raise UsageError(f"filter_quantile must be in (0, 1), got {filter_quantile}")
    layers = sorted(set(site_layers))
    if not layers:
        raise UsageError("LAPE: no layers given; pass --layers or collect mlp_act statistics")
    probs = torch.stack(
        [
            torch.stack([stats.prob_active(lang, Site(layer, site), "zero") for lang in lang_list], dim=-1)
            for layer in layers
        ]
    ).double()  # (n_layers, d_ff, n_langs)
    d_ff = probs.shape[1]
    normed = probs / probs.sum(-1, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logp = torch.where(normed > 0, normed.clamp_min(1e-300).log(), torch.zeros_like(normed))
    entropy = -(normed * logp).sum(-1)  # (n_layers, d_ff)
    bar = _kth_quantile(probs, filter_quantile)
    passes = (probs > bar).any(-1)
    entropy = torch.where(passes, entropy, torch.full_like(entropy, float("inf")))
    n_keep = max(1, round(entropy.numel() * top_fraction))
    n_keep = min(n_keep, int(passes.sum()))
    flat = entropy.flatten()
    order = torch.argsort(flat, stable=True)[:n_keep]
    out: dict[str, dict[int, torch.Tensor]] = {lang: {} for lang in lang_list}
    sel_probs = probs.reshape(-1, len(lang_list))[order]  # (n_keep, n_langs)
    for j, lang in enumerate(lang_list):
        chosen = order[sel_probs[:, j] > bar]
        for li, layer in enumerate(layers):
            in_layer = chosen[(chosen // d_ff) == li] % d_ff
            out[lang][layer] = torch.sort(in_layer).values.long()
    info = {
        "bar": bar,
        "n_selected": int(n_keep),
        "n_neurons": int(entropy.numel()),
        "n_passing_filter": int(passes.sum()),
        "max_entropy_selected": float(flat[order[-1]]) if n_keep else None,
        "per_lang": {lang: sum(int(v.numel()) for v in out[lang].values()) for lang in lang_list},
        "langs": lang_list,
        "layers": layers,
        "top_fraction": top_fraction,
        "filter_quantile": filter_quantile,
        "assignment": "languages whose P(act>0) exceeds the filter bar",
        "site": site,
    }
    return out, info


def lape_neurons(
    stats: "Statistics",
    site_layers: Sequence[int],
    langs: Sequence[str],
    top_fraction: float = 0.01,
    filter_quantile: float = 0.95,
    site: str = NEURON_SITES[0],
) -> dict[str, dict[int, torch.Tensor]]:
    """``{lang: {layer: sorted neuron indices}}`` of LAPE language-specific neurons (see module doc)."""
    return lape_selection(stats, site_layers, langs, top_fraction, filter_quantile, site)[0]


def check_neuron_site(site: str) -> str:
    if site not in NEURON_SITES:
        raise UsageError(f"LAPE and Int_mu act on MLP neurons: site must be one of {', '.join(NEURON_SITES)}, "
                         f"not {site}")
    return site


def _masks_from(neurons: Mapping[str, Mapping[int, torch.Tensor]], langs: Sequence[str], layer: int, d_ff: int) -> torch.Tensor:
    m = torch.zeros(len(langs), d_ff, dtype=torch.bool)
    for i, lang in enumerate(langs):
        idx = neurons.get(lang, {}).get(layer)
        if idx is not None and len(idx):
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            if int(idx_t.max()) >= d_ff or int(idx_t.min()) < 0:
                raise DataError(f"neuron index out of range for width {d_ff} at layer {layer} ({lang})")
            m[i, idx_t] = True
    return m


def _validate_masks(iv: Intervention, rows: int, extra: str | None = None) -> None:
    for site in iv.sites:
        if site.name not in NEURON_SITES:
            raise ArtifactError(f"{iv.method} acts at {' or '.join(NEURON_SITES)}, but the file has site {site}; "
                                "re-create it")
        m = iv.tensors.get(mask_key(site.layer))
        if m is None or m.dim() != 2 or m.shape[0] != rows or m.dtype != torch.bool:
            raise ArtifactError(f"{iv.method} file lacks a ({rows}, d_ff) bool tensor '{mask_key(site.layer)}'; re-create it")
        if extra is not None:
            t = iv.tensors.get(extra.format(layer=site.layer))
            if t is None or t.shape != m.shape:
                raise ArtifactError(
                    f"{iv.method} file lacks a {tuple(m.shape)} tensor '{extra.format(layer=site.layer)}'; re-create it"
                )


@register_intervention
class LapeIntervention(Intervention):
    method = "lape"

    def validate(self) -> None:
        sets = self.params.get("neuron_langs")
        if not isinstance(sets, list) or not sets:
            raise ArtifactError("LAPE file lacks params.neuron_langs; re-create it")
        _validate_masks(self, len(sets))
        if self.params.get("mode") not in LAPE_MODES:
            raise ArtifactError(f"unknown LAPE mode {self.params.get('mode')!r}; re-create the file")
        chosen = self.params.get("neuron_lang")
        if chosen is not None and chosen not in sets:
            raise ArtifactError(f"LAPE neuron_lang {chosen!r} has no neuron set in the file; re-create it")

    def row_masks(self, layer: int) -> torch.Tensor:
        """(n_languages, d_ff) bool: the neurons acted on for rows of each steered language."""
        sets: list[str] = self.params["neuron_langs"]
        m = self.tensors[mask_key(layer)]
        chosen = self.params.get("neuron_lang")
        rows = []
        for lang in self.languages:
            key = chosen if chosen is not None else lang
            rows.append(m[sets.index(key)] if key in sets else torch.zeros(m.shape[1], dtype=torch.bool))
        return torch.stack(rows)

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """``-m`` (deactivate) or ``+m`` (amplify) per language (float32), a zero row for index -1."""
        m = self.row_masks(site.layer).float()
        sign = -1.0 if self.params["mode"] == "deactivate" else 1.0
        return row_table(sign * m, torch.zeros(1, m.shape[1]), device)

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: torch.Tensor) -> torch.Tensor:
        """``act * (1 -/+ s * m[lang])``: the row's language's neurons scaled, others times exactly 1."""
        check_width(self, site, act, prepared.shape[-1])
        return scale_rows(act, rows, prepared)


@register_intervention
class IntMuIntervention(Intervention):
    method = "intmu"

    def validate(self) -> None:
        _validate_masks(self, len(self.languages), extra="mu@{layer}")
        if self.params.get("mean_of") is None:
            raise ArtifactError("Int_mu file lacks params.mean_of; re-create it")

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """(neuron mask per language + an all-False row, means per language + a zero row, in ``dtype``)."""
        m = self.tensors[mask_key(site.layer)]
        mu = self.tensors[mu_key(site.layer)].float()
        m = torch.cat([m, torch.zeros(1, m.shape[1], dtype=torch.bool)]).to(device)
        mu = torch.cat([mu, torch.zeros(1, mu.shape[1])]).to(device=device, dtype=dtype)
        return m, mu

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: Any) -> torch.Tensor:
        """The row's neurons moved to ``lerp(h, mu, s)`` (exactly ``mu`` at s = 1, ``h`` at s = 0)."""
        m, mu = prepared
        check_width(self, site, act, mu.shape[-1])
        target = mu[rows.index].unsqueeze(1).float()
        blended = torch.lerp(act.float(), target, rows.strength).to(act.dtype)
        return torch.where(m[rows.index].unsqueeze(1), blended, act)


def _mlp_layers(stats: "Statistics", site: str) -> list[int]:
    return sorted({s.layer for s in stats.sites if s.name == site})


def _lape_langs(langs: Sequence[str], anchor: str) -> tuple[list[str], list[str]]:
    all_langs = list(dict.fromkeys([*langs, anchor]))
    targets = [lang for lang in all_langs if lang != anchor]
    if not targets:
        raise UsageError("no target languages; give --langs with at least one non-anchor language")
    return all_langs, targets


def _jsonable(neurons: Mapping[str, Mapping[int, torch.Tensor]]) -> dict[str, dict[str, list[int]]]:
    return {lang: {str(layer): [int(i) for i in idx] for layer, idx in sorted(d.items()) if len(idx)}
            for lang, d in neurons.items()}


def _call(fn: Any, job: FitJob) -> Intervention:
    """LAPE and Int_mu select neurons over every language of the fit, the anchor included."""
    return fn(job.stats, job.langs, anchor=job.anchor, layers=job.layers, meta=job.meta, site=job.site, **job.params)


# neurons are compared across every layer; given layers only choose where to act
_NEURON_LAYERS = LayerPolicy(CHOSEN_BY_FIT, ALL_TOGETHER, text="every layer")


@dataclass(frozen=True)
class NeuronSelection(Settings):
    """LAPE's selection of language-specific neurons: the lowest-entropy ``top_fraction`` of all
    neurons whose P(act > 0) passes the ``filter_quantile`` of all P in some language."""

    top_fraction: float = 0.01
    filter_quantile: float = 0.95

    _what = "LAPE parameter"


@dataclass(frozen=True)
class LapeConfig(NeuronSelection):
    """LAPE's settings (``-p KEY=V``): the selection, and the ``mode`` (``deactivate`` or
    ``amplify``) applied to the row's language's neurons, or to ``neuron_lang``'s for every row."""

    mode: str = "deactivate"
    neuron_lang: str | None = None


@dataclass(frozen=True)
class IntMuConfig(NeuronSelection):
    """Int_mu's settings (``-p KEY=V``): the selection, whose neurons are overwritten
    (``neurons_of``) and whose mean activation is written there (``mean_of``)."""

    mean_of: str = "anchor"
    neurons_of: str = "target"

    _what = "Int_mu parameter"


@register_method(
    "lape", site=NEURON_SITES[0], sites=NEURON_SITES, statistics=StatisticsNeed(
        "token-level P(act > 0) at every layer", every_layer=True), layer_policy=_NEURON_LAYERS,
    alpha_grid=(0.5, 1.0), description="language-specific neurons (LAPE) deactivated or amplified", call=_call,
    params={"mode": P.choice(*LAPE_MODES), "neuron_lang": P.text(optional=True), "top_fraction": P.FRACTION,
            "filter_quantile": P.QUANTILE},
)
def fit_lape(stats: "Statistics", langs: Sequence[str], anchor: str = "en", layers: Sequence[int] | None = None,
             cfg: LapeConfig | None = None, *, neurons: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
             site: str = NEURON_SITES[0], meta: Mapping[str, Any] | None = None, **settings: Any) -> LapeIntervention:
    """LAPE intervention steering the non-anchor ``langs`` (``cfg``: :class:`LapeConfig`; keyword
    ``settings`` override its fields).

    Neurons are selected over ``langs`` plus the anchor (or given as ``neurons``). Each steered
    row acts on its own language's neurons, or on ``neuron_lang``'s for every steered row. Only
    layers with at least one such neuron get a hook.
    """
    cfg = LapeConfig.of(cfg, **settings)
    mode, neuron_lang, top_fraction, filter_quantile = cfg.mode, cfg.neuron_lang, cfg.top_fraction, cfg.filter_quantile
    t0 = time.perf_counter()
    if mode not in LAPE_MODES:
        raise UsageError(f"unknown LAPE mode '{mode}'; choose one of {', '.join(LAPE_MODES)}")
    all_langs, targets = _lape_langs(langs, anchor)
    check_neuron_site(site)
    layer_list = sorted(set(layers)) if layers is not None else _mlp_layers(stats, site)
    info: dict[str, Any] = {"given": True}
    if neurons is None:
        neurons, info = lape_selection(stats, layer_list, all_langs, top_fraction, filter_quantile, site)
    if neuron_lang is not None and neuron_lang not in neurons:
        raise UsageError(f"no LAPE neurons for language '{neuron_lang}'; choose one of {', '.join(neurons)}")
    used = [neuron_lang] if neuron_lang is not None else targets
    sets = [lang for lang in all_langs if lang in neurons] if neuron_lang is None else [neuron_lang]
    tensors: dict[str, torch.Tensor] = {}
    d_ff = int(stats.widths[site])
    for layer in layer_list:
        if not any(len(neurons.get(lang, {}).get(layer, ())) for lang in used):
            continue
        tensors[mask_key(layer)] = _masks_from(neurons, sets, layer, d_ff)
    if not tensors:
        raise DataError(
            f"LAPE found no neurons for {', '.join(used)} at layers {layer_list}; "
            "use more text, more layers or a larger top_fraction"
        )
    params = {
        "mode": mode,
        "neuron_lang": neuron_lang,
        "neuron_langs": sets,
        "selection": info,
        "neurons": _jsonable({lang: neurons[lang] for lang in sets}),
        "formula": "deactivate: h*(1-s*m); amplify: h*(1+s*m); s = strength",
        "positions": "all",
        "site": site,
    }
    layers_used = sorted(int(k.split("@")[1]) for k in tensors)
    return LapeIntervention(
        sites=[Site(layer, site) for layer in layers_used],
        tensors=tensors,
        params=params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(stats, meta, time.perf_counter() - t0),
    )


@register_method(
    "intmu", site=NEURON_SITES[0], sites=NEURON_SITES, statistics=StatisticsNeed(
        "P(act > 0) and means at every layer", every_layer=True), layer_policy=_NEURON_LAYERS,
    alpha_grid=(0.5, 1.0), description="LAPE neurons set to the anchor's mean activation (Int_mu)", call=_call,
    compare="Int_mu: LAPE neurons of the row's language set to the anchor's mean (the CLAS paper's baseline), "
            "strength chosen on dev",
    params={"mean_of": P.choice(*MEAN_OF), "neurons_of": P.choice(*NEURONS_OF), "top_fraction": P.FRACTION,
            "filter_quantile": P.QUANTILE},
)
def fit_intmu(stats: "Statistics", langs: Sequence[str], anchor: str = "en", layers: Sequence[int] | None = None,
              cfg: IntMuConfig | None = None, *, neurons: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
              site: str = NEURON_SITES[0], meta: Mapping[str, Any] | None = None, **settings: Any) -> IntMuIntervention:
    """Int_mu: for rows of each steered language, overwrite its selected neurons with a mean
    (``cfg``: :class:`IntMuConfig`; keyword ``settings`` override its fields).

    ``neurons_of``: whose LAPE neurons are overwritten — the row's language (``target``,
    default), the anchor's, or their union. ``mean_of``: the token-level mean activation written
    there — of the ``anchor`` (default: push the row toward anchor-language processing), of the
    row's own language (``target``), or of a named language.
    """
    cfg = IntMuConfig.of(cfg, **settings)
    mean_of, neurons_of, top_fraction, filter_quantile = cfg.mean_of, cfg.neurons_of, cfg.top_fraction, cfg.filter_quantile
    t0 = time.perf_counter()
    if neurons_of not in NEURONS_OF:
        raise UsageError(f"unknown neurons_of '{neurons_of}'; choose one of {', '.join(NEURONS_OF)}")
    all_langs, targets = _lape_langs(langs, anchor)
    if mean_of not in MEAN_OF and mean_of not in stats.langs:
        raise UsageError(f"mean_of must be anchor, target or a language in the statistics, got '{mean_of}'")
    check_neuron_site(site)
    layer_list = sorted(set(layers)) if layers is not None else _mlp_layers(stats, site)
    info: dict[str, Any] = {"given": True}
    if neurons is None:
        neurons, info = lape_selection(stats, layer_list, all_langs, top_fraction, filter_quantile, site)
    d_ff = int(stats.widths[site])
    tensors: dict[str, torch.Tensor] = {}
    for layer in layer_list:
        own = _masks_from(neurons, targets, layer, d_ff)
        anc = _masks_from(neurons, [anchor], layer, d_ff).expand_as(own)
        mask = {"target": own, "anchor": anc.clone(), "union": own | anc}[neurons_of]
        if not bool(mask.any()):
            continue
        rows = []
        for lang in targets:
            src = anchor if mean_of == "anchor" else lang if mean_of == "target" else mean_of
            rows.append(stats.mean(src, Site(layer, site), level="token"))
        tensors[mask_key(layer)] = mask.contiguous()
        tensors[mu_key(layer)] = torch.stack(rows).float()
    if not tensors:
        raise DataError(
            f"Int_mu found no {neurons_of} neurons at layers {layer_list}; "
            "use more text, more layers or a larger top_fraction"
        )
    params = {
        "mean_of": mean_of,
        "neurons_of": neurons_of,
        "mean": f"token-level mean activation at {site} (BOS and padding excluded)",
        "selection": info,
        "neurons": _jsonable(neurons),
        "formula": "where(m, (1-s)*h + s*mu, h); s = strength",
        "positions": "all",
        "site": site,
    }
    layers_used = sorted(int(k.split("@")[1]) for k in tensors if k.startswith("mask@"))
    return IntMuIntervention(
        sites=[Site(layer, site) for layer in layers_used],
        tensors=tensors,
        params=params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(stats, meta, time.perf_counter() - t0),
    )
