"""INCLINE: per layer and language, a linear map of pooled states toward the anchor's
(METHODS.md section 3; arXiv 2410.12462), applied as ``h + sigma * sign * (h W_l)``.

Fit: X = per-item pooled states of the source language at ``site`` (default ``mlp_out``, mean
pooled over real tokens, as the authors' code), Y = the anchor's states of the same items
(row i of X and Y are one parallel pair). Closed-form least squares, no bias.

What W fits (params["target"]):

``delta`` (default)  X W ≈ Y − X.  Then ``h + 1 * h W ≈ y``: at sigma = 1 a source state is
                     mapped onto the anchor-language state, sigma = 0 leaves it unchanged, and
                     sigma interpolates (or extrapolates) between the two. This is the
                     reading of "h + sigma * (h W)" under which sigma has a meaning.
``anchor``           X W ≈ Y, the authors' code: then ``h + sigma * h W`` at sigma = 1 is
                     ``h + ŷ`` (source state plus its mapped anchor state), as they apply it;
                     offered for faithful reproduction.

``ridge`` is relative: lambda = ridge * trace(XᵀX) / d (a fraction of the mean eigenvalue of
XᵀX), so one value means the same on models whose activation scales differ. With ridge = 0
the map is the plain least-squares solution, which needs at least d pairs.

Application: the authors patch every layer's MLP output at the last prompt token only; the
recommended position policy is stored in params["positions"] (``last_prompt``) for callers
of ``steer(..., positions=...)``. Anchor rows are never touched (the engine routes rows).

Code switching (``code_switch=True``, the authors' setup): for the second half of the pairs
the source text is ``source + " " + anchor`` and the anchor text ``anchor + " " + anchor``;
:func:`incline_texts` builds these texts for ``stats.collect``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import ArtifactError, DataError, UsageError
from ..hook_session import POSITION_POLICIES, Rows
from ..models.sites import Site
from ..settings import Settings
from . import params as P
from .base import Intervention, check_width, register_intervention
from .registry import ALL_TOGETHER, EVERY_LAYER, LayerPolicy, StatisticsNeed, register_method
from .vector import check_layers, check_targets, fit_metadata

if TYPE_CHECKING:
    from ..stats import Statistics

TARGETS = ("delta", "anchor")


def map_key(layer: int) -> str:
    return f"W@{layer}"


@register_intervention
class InclineIntervention(Intervention):
    method = "incline"

    def validate(self) -> None:
        n = len(self.languages)
        for site in self.sites:
            w = self.tensors.get(map_key(site.layer))
            if w is None or w.dim() != 3 or w.shape[0] != n or w.shape[1] != w.shape[2]:
                raise ArtifactError(f"INCLINE file lacks a ({n}, d, d) tensor '{map_key(site.layer)}'; re-create it")
        if self.params.get("sign") not in (1, -1):
            raise ArtifactError(f"INCLINE sign must be +1 or -1, got {self.params.get('sign')!r}; re-create the file")

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """``sign * W`` per language, in the module's dtype: ``(n_languages, d, d)``."""
        w = self.tensors[map_key(site.layer)].float() * int(self.params["sign"])
        return w.to(device=device, dtype=dtype)

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: torch.Tensor) -> torch.Tensor:
        """``h + s * (h @ W[lang])`` per row; rows with index -1 unchanged.

        One traced path for any mix of row languages: every language's map is applied to the
        whole batch and each row keeps its own (n maps; one when the intervention has one language).
        """
        check_width(self, site, act, prepared.shape[-1])
        if prepared.shape[0] == 1:  # a shape, fixed per intervention: not a per-call branch
            delta = act @ prepared[0]
        else:
            every = torch.einsum("btd,nde->nbte", act, prepared)
            delta = every[rows.index.clamp_min(0), torch.arange(act.shape[0], device=act.device)]
        out = act + delta * rows.strength.to(act.dtype)
        return torch.where((rows.index >= 0).view(-1, 1, 1), out, act)


def incline_texts(
    corpus: Any, langs: Sequence[str], anchor: str = "en", code_switch: bool = False
) -> dict[str, list[str]]:
    """The texts to collect INCLINE statistics on: ``{anchor: Y texts, lang: X texts}``.

    Without code switching these are the corpus rows. With it, rows ``i >= n // 2`` become
    ``x_i + " " + y_i`` (source) and ``y_i + " " + y_i`` (anchor); rows stay aligned.
    """
    texts = getattr(corpus, "texts", corpus)
    out: dict[str, list[str]] = {}
    for lang in [anchor, *langs]:
        if lang not in texts:
            raise DataError(f"the parallel text has no language '{lang}'; give a corpus that includes it")
        out[lang] = list(texts[lang])
    if code_switch:
        y = out[anchor]
        half = len(y) // 2
        for lang in langs:
            out[lang] = out[lang][:half] + [f"{x} {a}" for x, a in zip(out[lang][half:], y[half:])]
        out[anchor] = y[:half] + [f"{a} {a}" for a in y[half:]]
    return out


def solve_map(
    x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0, target: str = "delta", what: str = "INCLINE"
) -> tuple[torch.Tensor, dict[str, float]]:
    """W (d, d) minimising ||X W - T||² + lambda ||W||², T = Y - X (delta) or Y (anchor); float64."""
    if target not in TARGETS:
        raise UsageError(f"unknown INCLINE target '{target}'; choose one of {', '.join(TARGETS)}")
    if ridge < 0:
        raise UsageError(f"--ridge must be >= 0, got {ridge}")
    if x.shape != y.shape or x.dim() != 2:
        raise DataError(f"{what}: source and anchor states differ in shape ({tuple(x.shape)} vs {tuple(y.shape)}); align the pairs")
    n, d = x.shape
    X = x.double()
    T = y.double() - X if target == "delta" else y.double()
    if ridge == 0:
        if n < d:
            raise UsageError(
                f"{what}: {n} pairs for width {d}: plain least squares is underdetermined; "
                f"pass --ridge (e.g. --ridge 0.01) or give at least {d} parallel pairs"
            )
        sol = torch.linalg.lstsq(X, T, driver="gelsd")
        w = sol.solution
        lam = 0.0
    else:
        g = X.T @ X
        lam = float(ridge) * float(torch.trace(g)) / d
        w = torch.linalg.solve(g + lam * torch.eye(d, dtype=g.dtype), X.T @ T)
    resid = X @ w - T
    var = (T - T.mean(0)).pow(2).sum()
    r2 = 1.0 - float(resid.pow(2).sum() / var) if float(var) > 0 else 1.0
    if not torch.isfinite(w).all():
        raise DataError(f"{what}: the least-squares map is not finite; pass --ridge (e.g. 0.01)")
    return w.float(), {"lambda": lam, "r2": r2, "n_pairs": n}


def _matrices(source: Any, lang: str, layer: int, site: str) -> torch.Tensor:
    if isinstance(source, Mapping):
        if lang not in source:
            raise DataError(f"no pooled states for language '{lang}'; include it")
        per = source[lang]
        if layer not in per:
            raise DataError(f"no pooled states for '{lang}' at layer {layer}; include that layer")
        return torch.as_tensor(per[layer]).float()
    return source.items(lang, Site(layer, site))


def _collection(texts: Mapping[str, list[str]], targets: list[str], anchor: str,
                params: Mapping[str, Any]) -> tuple[dict[str, list[str]], bool]:
    """fit() collects INCLINE statistics on :func:`incline_texts` (code-switched when asked)."""
    code_switch = bool(params.get("code_switch", False))
    return incline_texts(texts, targets, anchor, code_switch=code_switch), code_switch


def _check_pairs(lm: Any, site: str, n_pairs: int, params: Mapping[str, Any]) -> None:
    """xlsteer fit: plain least squares (ridge 0) needs at least as many pairs as the site's width."""
    from ..models.sites import site_width

    if float(params.get("ridge", 0.0)) != 0.0:
        return
    width = site_width(lm.model, site)
    n = n_pairs if params.get("max_pairs") is None else min(n_pairs, int(params["max_pairs"]))
    if n < width:
        raise UsageError(
            f"INCLINE with ridge=0 needs at least {width} parallel pairs (the width of "
            f"{site}), got {n}; pass --param ridge=0.01, or --limit {width} or more"
        )


@dataclass(frozen=True)
class InclineConfig(Settings):
    """INCLINE's settings (``-p KEY=V``): the relative ``ridge``; the map's ``target`` (``delta``:
    ``XW ~ Y - X``, or ``anchor``: ``XW ~ Y``, the authors'); the ``sign`` of the edit; whether
    half of the pairs are ``code_switch``-ed; the first ``max_pairs`` pairs (None: all); the
    position policy stored in the intervention."""

    ridge: float = 0.0
    target: str = "delta"
    sign: int = 1
    code_switch: bool = False
    max_pairs: int | None = None
    positions: str = "last_prompt"

    _what = "INCLINE parameter"


@register_method(
    "incline", site="mlp_out",
    statistics=StatisticsNeed("per-item pooled vectors (keep_items)", keep_items=True, texts=_collection),
    layer_policy=LayerPolicy(EVERY_LAYER, ALL_TOGETHER, text="every layer (as the paper)"),
    alpha_grid=(0.25, 0.5, 1.0), description="per-layer linear maps of target states toward the anchor's (INCLINE)",
    compare="INCLINE linear maps (NTREX), every layer, sigma chosen on dev", compare_defaults={"ridge": 0.1},
    check_inputs=_check_pairs,
    params={"ridge": P.number(0), "target": P.choice(*TARGETS), "sign": P.choice(1, -1), "code_switch": P.flag(),
            "max_pairs": P.integer(1, optional=True), "positions": P.choice("all", "prompt", "generated", "last_prompt")},
)
def fit_incline(source: "Statistics | Mapping[str, Mapping[int, torch.Tensor]]", layers: Sequence[int] | int,
                langs: Sequence[str] | str, anchor: str = "en", site: str = "mlp_out",
                cfg: InclineConfig | None = None, *, meta: Mapping[str, Any] | None = None,
                **settings: Any) -> InclineIntervention:
    """Fit one map per (target language, layer) from pooled parallel states (``cfg``:
    :class:`InclineConfig`; keyword ``settings`` override its fields).

    ``source``: Statistics collected with ``keep_items=True`` (items aligned across languages in
    corpus order), or ``{lang: {layer: (n, d) tensor}}`` including the anchor. ``max_pairs``
    keeps the first pairs (the paper uses up to 500); None uses all.
    """
    cfg = InclineConfig.of(cfg, **settings)
    ridge, target, sign, code_switch, max_pairs, positions = (cfg.ridge, cfg.target, cfg.sign, cfg.code_switch,
                                                              cfg.max_pairs, cfg.positions)
    t0 = time.perf_counter()
    targets = check_targets(langs, anchor, "INCLINE")
    layer_list = check_layers(layers, "INCLINE")
    if sign not in (1, -1):
        raise UsageError(f"sign must be +1 or -1, got {sign!r}")
    if positions not in POSITION_POLICIES:
        raise UsageError(f"unknown position policy '{positions}'; choose one of {', '.join(POSITION_POLICIES)}")
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
        raise UsageError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    stats = None if isinstance(source, Mapping) else source
    if stats is not None:
        if code_switch and not stats.meta.get("code_switch"):
            raise UsageError(
                "code_switch=True needs statistics collected on code-switched texts "
                "(incline_texts(..., code_switch=True), meta={'code_switch': True}); re-collect them"
            )
        if not code_switch and stats.meta.get("code_switch"):
            code_switch = True  # the statistics decide what the map was fitted on
    tensors: dict[str, torch.Tensor] = {}
    diag: dict[str, dict[str, dict[str, float]]] = {}
    for layer in layer_list:
        y = _matrices(source, anchor, layer, site)
        maps = []
        for lang in targets:
            x = _matrices(source, lang, layer, site)
            if x.shape[0] != y.shape[0]:
                raise DataError(
                    f"INCLINE: {x.shape[0]} items for {lang} but {y.shape[0]} for {anchor} at layer {layer}; "
                    "collect the same parallel rows for every language"
                )
            if max_pairs is not None:
                x, yy = x[:max_pairs], y[:max_pairs]
            else:
                yy = y
            w, info = solve_map(x, yy, ridge, target, what=f"INCLINE {lang} layer {layer}")
            maps.append(w)
            diag.setdefault(lang, {})[str(layer)] = info
        tensors[map_key(layer)] = torch.stack(maps)
    params: dict[str, Any] = {
        "site": site,
        "target": target,
        "sign": int(sign),
        "ridge": float(ridge),
        "ridge_scale": "lambda = ridge * trace(X^T X) / d",
        "bias": False,
        "code_switch": bool(code_switch),
        "max_pairs": max_pairs,
        "positions": positions,
        "pooling": stats.pooling if stats is not None else "given",
        "fit": diag,
        "formula": "out = h + strength * sign * (h @ W[lang, layer])",
    }
    return InclineIntervention(
        sites=[Site(layer, site) for layer in layer_list],
        tensors=tensors,
        params=params,
        languages=targets,
        anchor=anchor,
        meta=fit_metadata(stats, meta, time.perf_counter() - t0),
    )
