"""CLAS — Cross-Lingual Activation Steering (METHODS.md section 2), at ``mlp_act`` of bridge layers.

Statistics: the token-level mean activation of every MLP neuron per language (Statistics at
``mlp_act``; BOS and padding excluded). A neuron is *active* for a language when that mean is
> T_act. Per layer every neuron falls in exactly one category: dead (active for no language),
language-specific (exactly one), partial-shared (more than one, not all), all-shared (all).

T_act (not given by the paper) defaults to 0.0: the gated activation ``act(gate) * up`` is
signed, so 0 is the one model-independent boundary between a neuron that on average pushes
its down-projection column forward and one that does not; it needs no per-model constant
(Gemma's and Llama's activation scales differ) and matches LAPE's "> 0" convention. The
quantile rule (``quantile=q``) instead sets T_act per layer to the q-quantile of all
languages' neuron means in that layer (scale-free too; q=0.5 makes half of the
(language, neuron) pairs active).

Bridge layers (:func:`select_bridge_layers`): the last two layers are never candidates. Rule
``margin`` (default): the shared share of a layer is partial% + all-shared%; choose every
candidate layer whose shared share is within ``margin`` percentage points of the best
candidate. Rule ``topk``: the ``k`` contiguous candidate layers with the highest mean shared
share. The rule string and the percentages are returned and recorded.

Application for rows not in the anchor language, with alpha = strength (may be negative):
    h1 = h * (1 + beta * M_partial);  h2 = h1 * (1 - gamma * M_spec[lang]);
    out = (1 - alpha) * h + alpha * h2  ==  h * (1 + alpha * (f - 1)),  f = (1+beta Mp)(1-gamma Ms)
computed in the second form (one multiply per element; alpha=0 gives h * 1 = h exactly).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import ArtifactError, UsageError
from ..hook_session import Rows
from ..models.sites import Site
from ..settings import Settings
from . import params as P
from .base import Intervention, check_width, register_intervention, row_table, scale_rows
from .registry import (ALL_TOGETHER, CHOSEN_BY_FIT, ExtraLanguages, FitJob, LayerPolicy, StatisticsNeed,
                       register_method)
from .vector import fit_metadata

if TYPE_CHECKING:
    from ..stats import Statistics

CATEGORIES = ("dead", "specific", "partial", "all")
DEFAULT_T_ACT = 0.0
BRIDGE_RULES = ("margin", "topk")


def partial_key(layer: int) -> str:
    return f"m_partial@{layer}"


def spec_key(layer: int) -> str:
    return f"m_spec@{layer}"


@register_intervention
class CLASIntervention(Intervention):
    method = "clas"

    def validate(self) -> None:
        n = len(self.languages)
        for site in self.sites:
            if site.name != "mlp_act":
                raise ArtifactError(f"CLAS acts at mlp_act, but the file has site {site}; re-create it")
            p = self.tensors.get(partial_key(site.layer))
            s = self.tensors.get(spec_key(site.layer))
            if p is None or p.dim() != 1:
                raise ArtifactError(f"CLAS file lacks a (d_ff,) tensor '{partial_key(site.layer)}'; re-create it")
            if s is None or s.dim() != 2 or s.shape != (n, p.shape[0]):
                raise ArtifactError(
                    f"CLAS file lacks a ({n}, {p.shape[0]}) tensor '{spec_key(site.layer)}'; re-create it"
                )
        for key in ("beta", "gamma"):
            if not isinstance(self.params.get(key), (int, float)):
                raise ArtifactError(f"CLAS file lacks the parameter '{key}'; re-create it")

    def factors(self, layer: int) -> torch.Tensor:
        """(n_languages, d_ff) float32: f = (1 + beta*M_partial) * (1 - gamma*M_spec[lang])."""
        beta, gamma = float(self.params["beta"]), float(self.params["gamma"])
        mp = self.tensors[partial_key(layer)].float()
        ms = self.tensors[spec_key(layer)].float()
        return (1 + beta * mp).unsqueeze(0) * (1 - gamma * ms)

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """``f - 1`` per language (float32), and a zero row for rows left alone (scale 1)."""
        f = self.factors(site.layer)
        return row_table(f - 1, torch.zeros(1, f.shape[1]), device)

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: torch.Tensor) -> torch.Tensor:
        """``act * (1 + alpha * (f[lang] - 1))``: alpha = 0 multiplies by exactly 1."""
        check_width(self, site, act, prepared.shape[-1])
        return scale_rows(act, rows, prepared)


def _means(stats: "Statistics", layer: int, langs: Sequence[str]) -> torch.Tensor:
    site = Site(layer, "mlp_act")
    return torch.stack([stats.mean(lang, site, level="token") for lang in langs])


def _check_langs(langs: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(langs))
    if len(out) < 2:
        raise UsageError(
            f"CLAS neuron categories need at least 2 languages, got {out}; give --langs with two or more"
        )
    return out


def neuron_categories(
    stats: "Statistics",
    layers: Sequence[int],
    langs: Sequence[str],
    threshold: float | None = None,
    quantile: float | None = None,
) -> dict[str, Any]:
    """Per-layer neuron categories at ``mlp_act``.

    Returns ``{"langs", "rule", "layers": {layer: {"dead", "specific", "partial", "all"
    (bool masks (d_ff,)), "active" (bool (n_langs, d_ff)), "threshold" (float),
    "percent" {category: float}}}}``. The four masks partition the neurons of each layer.
    """
    lang_list = _check_langs(langs)
    if threshold is not None and quantile is not None:
        raise UsageError("give either a threshold (T_act) or a quantile, not both")
    if quantile is not None and not 0.0 <= quantile <= 1.0:
        raise UsageError(f"quantile must be between 0 and 1, got {quantile}")
    if quantile is None:
        t_fixed = DEFAULT_T_ACT if threshold is None else float(threshold)
        rule = f"active: token-level mean activation > T_act = {t_fixed!r} (fixed)"
    else:
        t_fixed = None
        rule = f"active: token-level mean activation > T_act = per-layer {quantile!r}-quantile of all languages' neuron means"
    n = len(lang_list)
    out: dict[int, dict[str, Any]] = {}
    for layer in sorted(set(layers)):
        means = _means(stats, layer, lang_list)
        t = float(torch.quantile(means.double().flatten(), quantile)) if quantile is not None else t_fixed
        active = means > t
        count = active.sum(0)
        masks = {
            "dead": count == 0,
            "specific": count == 1,
            "partial": (count > 1) & (count < n),
            "all": count == n,
        }
        d_ff = means.shape[1]
        out[layer] = {
            **masks,
            "active": active,
            "threshold": float(t),  # type: ignore[arg-type]
            "percent": {k: 100.0 * float(m.sum()) / d_ff for k, m in masks.items()},
        }
    return {"langs": lang_list, "rule": rule, "layers": out}


def category_percentages(categories: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{str(layer): {category: percent}}`` (JSON-ready)."""
    return {str(layer): dict(c["percent"]) for layer, c in sorted(categories["layers"].items())}


def select_bridge_layers(
    categories: Mapping[str, Any],
    n_layers: int,
    rule: str = "margin",
    margin: float = 5.0,
    k: int = 2,
) -> dict[str, Any]:
    """Choose bridge layers from the category percentages; never the last two layers.

    Returns ``{"layers": [...], "rule": str, "shared_percent": {str(layer): partial+all %}}``.
    """
    if rule not in BRIDGE_RULES:
        raise UsageError(f"unknown bridge rule '{rule}'; choose one of {', '.join(BRIDGE_RULES)}")
    shared = {
        layer: c["percent"]["partial"] + c["percent"]["all"] for layer, c in sorted(categories["layers"].items())
    }
    candidates = {layer: s for layer, s in shared.items() if layer < n_layers - 2}
    if not candidates:
        raise UsageError(
            f"no candidate bridge layers: statistics cover layers {sorted(shared)} of {n_layers}, and the last two "
            "are excluded; collect mlp_act statistics at earlier layers"
        )
    if rule == "margin":
        if margin < 0:
            raise UsageError(f"margin must be >= 0 percentage points, got {margin}")
        best = max(candidates.values())
        chosen = [layer for layer, s in candidates.items() if s >= best - margin]
        text = (
            f"margin: layers < {n_layers - 2} whose shared share (partial + all-shared %) is >= "
            f"max over those layers ({best:.2f}) - {margin!r} points"
        )
    else:
        if not isinstance(k, int) or k < 1:
            raise UsageError(f"k must be a positive integer, got {k!r}")
        ordered = sorted(candidates)
        k_eff = min(k, len(ordered))
        windows = []
        for i in range(len(ordered) - k_eff + 1):
            win = ordered[i : i + k_eff]
            if win[-1] - win[0] != k_eff - 1:
                continue  # not contiguous (statistics skipped a layer)
            windows.append((sum(candidates[x] for x in win) / k_eff, -win[0], win))
        if not windows:
            raise UsageError(f"no {k_eff} contiguous candidate layers in the statistics; use rule 'margin'")
        chosen = max(windows)[2]
        text = f"topk: the {k_eff} contiguous layers < {n_layers - 2} with the highest mean shared share (partial + all-shared %)"
    return {"layers": chosen, "rule": text, "shared_percent": {str(x): s for x, s in shared.items()}}


def resolve_category_langs(category_langs: Sequence[str] | str | None, stats: "Statistics", anchor: str,
                           targets: Sequence[str]) -> list[str]:
    """The fixed category language set: given (list or comma-separated), else every statistics language."""
    from ..data.langs import normalize_langs

    if category_langs is None:
        chosen = list(stats.langs)
    else:
        raw = category_langs.split(",") if isinstance(category_langs, str) else list(category_langs)
        chosen = normalize_langs([x.strip() for x in raw if str(x).strip()])
    out = _check_langs(chosen)
    missing = [lang for lang in [anchor, *targets] if lang not in out]
    if missing:
        raise UsageError(f"category_langs ({', '.join(out)}) must include the anchor and every steered language; "
                         f"add {', '.join(missing)}")
    absent = [lang for lang in out if lang not in stats.langs]
    if absent:
        raise UsageError(f"the statistics lack category language(s) {', '.join(absent)}; collect them too")
    return out


def _stats_layers(stats: "Statistics") -> list[int]:
    return sorted({s.layer for s in stats.sites if s.name == "mlp_act"})


def _masks(all_cats: dict[str, Any], layers: Sequence[int], cat_langs: Sequence[str],
           targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """M_partial per layer and M_spec per layer and steered language (rows of the category set)."""
    tensors: dict[str, torch.Tensor] = {}
    rows = [list(cat_langs).index(t) for t in targets]
    for layer in layers:
        c = all_cats["layers"][layer]
        tensors[partial_key(layer)] = c["partial"].clone()
        spec = c["specific"].unsqueeze(0) & c["active"]  # (n_cat_langs, d_ff): the one active language
        tensors[spec_key(layer)] = spec[rows].clone()
    return tensors


#: categories are over a fixed language set: every corpus language unless ``category_langs`` names it
CATEGORY_LANGS = ExtraLanguages("category_langs")


def category_summary(params: Mapping[str, Any]) -> list[str]:
    """Per-layer neuron category percentages and the bridge-layer rule and selection of a CLAS fit
    (what ``xlsteer fit clas`` and ``xlsteer inspect`` print)."""
    percent = params.get("category_percent") or {}
    bridge = set(params.get("bridge_layers") or [])
    langs = params.get("category_langs") or []
    from ..formats import table

    rows = []
    for layer in sorted(percent, key=int):
        p = percent[layer]
        shared = p.get("partial", 0.0) + p.get("all", 0.0)
        rows.append([int(layer), *(f"{p.get(k, 0.0):.2f}" for k in ("dead", "specific", "partial", "all")),
                     f"{shared:.2f}", "<- bridge" if int(layer) in bridge else ""])
    grid = table(["layer", "dead", "specific", "partial", "all", "shared", ""], rows, style="text")
    lines = [f"CLAS neuron categories (% of mlp_act neurons; languages {', '.join(langs)}):",
             *("  " + line.rstrip() for line in grid.splitlines())]
    if params.get("threshold_rule"):
        lines.append(f"  {params['threshold_rule']}")
    chosen = ",".join(str(x) for x in sorted(bridge)) or "-"
    lines.append(f"bridge layers: {chosen} (rule: {params.get('bridge_rule', '?')})")
    if len(langs) == 2:
        lines.append("note: with 2 languages no neuron can be partial-shared, so only the language-specific "
                     "mask acts; fit with more --langs for the full rule")
    return lines


def _call(fn: Any, job: FitJob) -> "CLASIntervention":
    return fn(job.stats, [job.anchor, *job.targets], anchor=job.anchor, layers=job.layers, n_layers=job.n_layers,
              meta=job.meta, **job.params)


@dataclass(frozen=True)
class ClasConfig(Settings):
    """CLAS's settings (``-p KEY=V``): the rule's ``beta`` and ``gamma``; T_act as a ``threshold``
    or a per-layer ``quantile`` (default 0.0); the bridge-layer rule (``margin`` points, or the
    ``k`` best contiguous layers for ``topk``); the languages the categories are taken over."""

    beta: float = 0.4
    gamma: float = 0.2
    threshold: float | None = None
    quantile: float | None = None
    bridge_rule: str = "margin"
    margin: float = 5.0
    k: int = 2
    category_langs: Sequence[str] | str | None = None

    _what = "CLAS parameter"


@register_method(
    "clas", site="mlp_act", sites=("mlp_act",), statistics=StatisticsNeed("token-level means at every layer",
                                                                          every_layer=True),
    layer_policy=LayerPolicy(CHOSEN_BY_FIT, ALL_TOGETHER, text="bridge layers (auto)"),
    alpha_grid=(-0.5, 0.5, 1.0, 2.0),  # the CLAS paper tunes alpha on dev and allows it to be negative
    description="neuron steering at the bridge layers (CLAS: shared neurons up, language-specific down)",
    compare="CLAS neuron steering at bridge layers, alpha chosen on dev", call=_call,
    prepare=CATEGORY_LANGS.prepare, corpus_langs=CATEGORY_LANGS.corpus_langs, summary=category_summary,
    # rows are routed by their wanted language: a negative alpha strengthens its specific neurons
    # (toward it), a positive one weakens them; the dev grid holds both signs
    toward_wanted={},
    params={"beta": P.number(0), "gamma": P.number(0), "threshold": P.number(optional=True),
            "quantile": P.number(0, 1, optional=True), "bridge_rule": P.choice(*BRIDGE_RULES), "margin": P.number(0),
            "k": P.integer(1), "category_langs": P.words(optional=True)},
)
def fit_clas(stats: "Statistics", langs: Sequence[str], anchor: str = "en", layers: Sequence[int] | None = None,
             cfg: ClasConfig | None = None, *, n_layers: int | None = None, meta: Mapping[str, Any] | None = None,
             **settings: Any) -> CLASIntervention:
    """Fit CLAS from ``mlp_act`` statistics (``cfg``: :class:`ClasConfig`; keyword ``settings``
    override its fields).

    The intervention steers the non-anchor ``langs``. Categories (and so bridge layers and the
    masks) are computed over ``category_langs``, a fixed set independent of the steered languages
    as in the paper (12 languages there): default every language the statistics cover. With the
    categories taken over the steered languages only, one target gives n = 2 and the
    partial-shared category is empty by construction. The set must contain the anchor and every
    steered language (M_spec is "specific to the row's language within the set").
    ``layers=None`` chooses bridge layers with :func:`select_bridge_layers` among every layer
    with mlp_act statistics; ``n_layers`` (the model's depth, for excluding its last two layers)
    defaults to the statistics' model fingerprint, else the highest such layer + 1.
    """
    cfg = ClasConfig.of(cfg, **settings)
    beta, gamma, threshold, quantile, category_langs = cfg.beta, cfg.gamma, cfg.threshold, cfg.quantile, cfg.category_langs
    bridge_rule, margin, k = cfg.bridge_rule, cfg.margin, cfg.k
    t0 = time.perf_counter()
    targets = [lang for lang in dict.fromkeys(langs) if lang != anchor]
    cat_langs = resolve_category_langs(category_langs, stats, anchor, targets)
    available = _stats_layers(stats)
    if not available:
        raise UsageError("the statistics have no mlp_act site; collect them at mlp_act for CLAS")
    if n_layers is None:
        n_layers = int(stats.meta.get("model_fingerprint", {}).get("num_layers", max(available) + 1))
    if layers is not None:
        missing = sorted(set(layers) - set(available))
        if missing:
            raise UsageError(f"no mlp_act statistics at layer(s) {missing}; collect them there or drop them from --layers")
    all_cats = neuron_categories(stats, available, cat_langs, threshold, quantile)
    if layers is None:
        bridge = select_bridge_layers(all_cats, n_layers, bridge_rule, margin, k)
        chosen = bridge["layers"]
        bridge_text = bridge["rule"]
    else:
        chosen = sorted(set(layers))
        bridge_text = "given"
    tensors = _masks(all_cats, chosen, cat_langs, targets)
    percent = category_percentages(all_cats)
    params = {
        "beta": float(beta),
        "gamma": float(gamma),
        "statistic": "token-level mean activation at mlp_act (BOS and padding excluded)",
        "threshold_rule": all_cats["rule"],
        "T_act": {str(x): all_cats["layers"][x]["threshold"] for x in sorted(all_cats["layers"])},
        "quantile": quantile,
        "category_langs": cat_langs,
        "category_langs_rule": "given" if category_langs is not None else "every language of the statistics",
        "category_percent": percent,
        "bridge_rule": bridge_text,
        "bridge_margin": float(margin),
        "bridge_k": int(k),
        "bridge_layers": chosen,
        "positions": "all",
        "n_layers": n_layers,
        "formula": "out = (1-a)*h + a*h*(1+beta*M_partial)*(1-gamma*M_spec[lang]), a = strength",
    }
    return CLASIntervention(
        sites=[Site(layer, "mlp_act") for layer in chosen],
        tensors=tensors,
        params=params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(stats, meta, time.perf_counter() - t0),
    )
