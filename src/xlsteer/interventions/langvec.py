"""Language vectors (ReCoVeR; Sterz, Schmidt, Glavaš, Vulić, Findings of EMNLP 2025, arXiv 2509.14814).

Steering *toward* the language the answer is wanted in, as the authors' code does
(github.com/hSterz/recover: ``collect_language_vectors/collect.py``, ``recover/steering.py``,
``recover/prediction_utils.py``):

Fit. At every layer l (site ``resid_post``, the decoder layer's output), the mean hidden state
of each language: each text's tokens are averaged (the first token, BOS, left out), then the
texts (``collect.py``'s ``_aggregate`` and its sum over samples). The language vector is that
mean minus the mean over all languages of the set (``remove_content`` in ``steering.py``):
``V[lang, l] = mean(h_lang, l) - mean_over_langs(mean(h_lang', l))``. The set is every language
of the parallel corpus (NTREX: 21; the authors collect 21 FLORES+ languages), or ``mean_langs``.

Apply (``naive_steer`` with ``scaling_mode="norm"``, ``restore_norm``), at every steered layer,
to each row steered toward its wanted language t (the row's language) from source s::

    v   = V[t, l] - beta * V[s, l]          (v = V[t, l] when there is no source)
    h'  = h + alpha * v / ||v||
    h'  = h' / ||h'|| * ||h||               (restore_norm, default on)

every position, except each row's first prompt token, which is left as it is (the authors reset
``out[:, :1]``). alpha is the intervention's strength; defaults alpha = 1, beta = 1, every layer.
``scaling="relative"`` (the authors' ``relative_norm``) adds ``alpha * ||h|| * v / ||v||`` instead:
alpha is then a fraction of each token's norm, comparable across models.

Dev grid (``xlsteer compare``): ``scaling="relative"`` and alpha in {0.0025, 0.005, 0.01} (the
registry's grid; the paper's setting is ``-O langvec.scaling=norm -O langvec.alphas=[1]``) x the
registry's variants, beta in {0, 1} x layer ranges ``all`` and ``upper`` (:func:`dev_variants`;
``-O langvec.betas=[...]``, ``-O langvec.layer_ranges=[...]``), the unsteered model among the
candidates.

Source (what the authors' ``Evaluator.predict`` passes). Cross-lingual prompts (English, "reply
in Japanese"): ``set_lang(target, anchor=source_language)``, the prompt's language, English. Their
monolingual prompts (the prompt is in the wanted language): ``anchor=None``, no source term.
Here ``source="anchor"`` (default) takes the anchor language (English) as every row's source:
xlsteer routes rows by the wanted language and the anchor is the prompt language of LCB's
cross-lingual prompts; ``source="none"`` is the authors' monolingual setting, and beta = 0 gives
it too (v = V[t]), so a dev grid over beta in {0, ..., 1} contains both conventions. A named
language may be given as the source. Rows wanted in the anchor language are never steered.

Where xlsteer departs from the code (docs/methods.md): the last layer's vector is the mean at the
last decoder layer's output (the authors take ``hidden_states[-1]``, which transformers returns
after the final norm, and add it before the norm); the first token is left exactly as it is (the
authors rescale it by restore_norm, a float-rounding change); the authors' collection script
over-counts the last batch and drops up to 20 trailing items, the means here are exact.
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
from .base import Intervention, check_width, register_intervention, row_table
from .registry import (ALL_TOGETHER, EVERY_LAYER, ExtraLanguages, LayerPolicy, StatisticsNeed, Variant,
                       register_method)
from .vector import check_layers, check_targets, fit_metadata

if TYPE_CHECKING:
    from ..stats import Statistics

SOURCES = ("anchor", "none")
#: ``norm``: alpha is the added norm (the authors' default ``scaling_mode="norm"``); ``relative``: alpha
#: times each token's norm (their ``relative_norm``), comparable across models whose residual norms
#: differ by orders of magnitude (Gemma-3-270M: about 140 at layer 0, 37,000 at layer 17).
SCALINGS = ("norm", "relative")
#: What ``with_params`` may change without a refit.
SETTINGS = ("beta", "source", "restore_norm", "skip_first", "scaling")


def langvec_key(layer: int) -> str:
    return f"langvec@{layer}"


@register_intervention
class LanguageVectors(Intervention):
    """ReCoVeR's language vectors; strength = alpha (0 is the identity)."""

    method = "langvec"

    def validate(self) -> None:
        if self.params.get("scaling", "norm") not in SCALINGS:
            raise ArtifactError(f"unknown langvec scaling {self.params.get('scaling')!r}; re-create the file")
        vlangs = self.params.get("vector_langs")
        if not isinstance(vlangs, list) or not vlangs:
            raise ArtifactError("language-vector file lacks params.vector_langs; re-create it")
        for site in self.sites:
            t = self.tensors.get(langvec_key(site.layer))
            if t is None or t.dim() != 2 or t.shape[0] != len(vlangs):
                raise ArtifactError(f"language-vector file lacks a ({len(vlangs)}, d) tensor "
                                    f"'{langvec_key(site.layer)}'; re-create it")
        missing = [x for x in [*self.languages, self.source_lang()] if x is not None and x not in vlangs]
        if missing:
            raise ArtifactError(f"language-vector file has no vector for {', '.join(missing)}; re-create it")

    def source_lang(self) -> str | None:
        source = self.params.get("source", "anchor")
        return None if source == "none" else self.anchor if source == "anchor" else str(source)

    def directions(self, layer: int) -> torch.Tensor:
        """(n_languages, d) float32: ``unit(V[t] - beta * V[s])`` per steered language t (zero when v = 0)."""
        vlangs: list[str] = self.params["vector_langs"]
        table = self.tensors[langvec_key(layer)].double()
        beta = float(self.params.get("beta", 1.0))
        src = self.source_lang()
        rows = []
        for lang in self.languages:
            v = table[vlangs.index(lang)]
            if src is not None:
                v = v - beta * table[vlangs.index(src)]
            rows.append(v / v.norm() if float(v.norm()) > 0 else v)
        return torch.stack(rows).float()

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """The unit directions per steered language, then a zero row for rows left alone (index -1)."""
        dirs = self.directions(site.layer)
        return row_table(dirs, torch.zeros(1, dirs.shape[1]), device)

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: torch.Tensor) -> torch.Tensor:
        """``h + alpha * u[row]`` (relative: times ``||h||``), the norm restored, each row's first
        token left alone: tensor operations only (traceable); the options are fixed per file."""
        check_width(self, site, act, prepared.shape[-1])
        h = act.float()
        relative = self.params.get("scaling", "norm") == "relative"
        restore = self.params.get("restore_norm", True)
        norm = h.norm(dim=-1, keepdim=True) if relative or restore else None  # each token's norm, once
        add = (rows.strength * prepared[rows.index]).unsqueeze(1)
        if relative:  # alpha * ||h||: a fraction of each token's norm
            add = add * norm
        out = h + add
        if restore:
            out = out * (norm / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        if self.params.get("skip_first", True) and rows.first is not None:
            out = torch.where(rows.first.unsqueeze(-1), h, out)  # each row's first real token (uncached call)
        return out.to(act.dtype)

    def with_params(self, **changes: Any) -> "LanguageVectors":
        """A copy (tensors shared) with ``beta``, ``source``, ``restore_norm`` or ``skip_first`` changed."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise UsageError(f"langvec has no setting(s) {', '.join(unknown)}; it has {', '.join(SETTINGS)}")
        out = self._shallow_copy()
        out.params.update(changes)
        out.validate()
        return out  # type: ignore[return-value]


def language_vectors(stats: "Statistics", site: Site, langs: Sequence[str]) -> torch.Tensor:
    """(len(langs), d) float64: each language's item-level mean minus the mean over ``langs``."""
    means = torch.stack([stats._get(lang, site).item_sum / stats._get(lang, site).n_items for lang in langs]).double()
    return means - means.mean(dim=0, keepdim=True)


#: the languages averaged over (with the anchor and the targets): every corpus language unless
#: ``mean_langs`` names them
MEAN_LANGS = ExtraLanguages("mean_langs", with_targets=True)

#: The dev grid besides alpha (``xlsteer compare``; ``-O langvec.betas=[...]``, ``-O langvec.layer_ranges=[...]``):
#: beta 0 is the authors' monolingual setting (no source term), beta 1 their cross-lingual default.
DEFAULT_BETAS = (0.0, 1.0)
#: ``all``: every layer (the paper); ``upper``: the second half (L // 2 .. L - 1); ``middle``:
#: L // 4 .. 3L // 4 - 1; or ``A-B`` (inclusive).
DEFAULT_RANGES = ("all", "upper")


def layer_range(name: str, n_layers: int) -> tuple[int, ...] | None:
    """The layers of a named range (None: every fitted layer)."""
    name = str(name).strip()
    if name == "all":
        return None
    if name == "upper":
        return tuple(range(n_layers // 2, n_layers))
    if name == "middle":
        return tuple(range(n_layers // 4, (3 * n_layers) // 4))
    lo, sep, hi = name.partition("-")
    if sep and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi) < n_layers:
        return tuple(range(int(lo), int(hi) + 1))
    raise UsageError(f"langvec: unknown layer range {name!r}; use all, upper, middle or A-B with 0 <= A <= B < {n_layers}")


def dev_variants(n_layers: int, options: Mapping[str, Any]) -> list[Variant]:
    """ReCoVeR's dev grid besides alpha: every beta x every layer range (registry ``variants``)."""
    betas = options.get("betas", DEFAULT_BETAS)
    ranges = options.get("layer_ranges", DEFAULT_RANGES)
    betas = [betas] if isinstance(betas, (int, float)) else list(betas)
    ranges = [ranges] if isinstance(ranges, str) else list(ranges)
    return [Variant(f"beta{float(b):g}-{r}", layer_range(r, n_layers), {"beta": float(b)})
            for r in ranges for b in betas]


def _check_params(params: Mapping[str, Any]) -> None:
    source = params.get("source", "anchor")
    if not isinstance(source, str) or not source:
        raise UsageError("langvec: source must be 'anchor', 'none' or a language code")
    try:
        float(params.get("beta", 1.0))
    except (TypeError, ValueError):
        raise UsageError(f"langvec: beta must be a number, got {params.get('beta')!r}") from None


@dataclass(frozen=True)
class LangvecConfig(Settings):
    """langvec's settings (``-p KEY=V``), the authors' defaults: ``beta`` and ``source`` of the source
    term, ``restore_norm``, ``skip_first`` (the first prompt token unsteered), ``scaling`` (norm:
    absolute alpha; relative: alpha times each token's norm), the languages of the mean
    (``mean_langs``; None: every corpus language the fit was given) and the ``site``."""

    site: str = "resid_post"
    beta: float = 1.0
    source: str = "anchor"
    restore_norm: bool = True
    skip_first: bool = True
    scaling: str = "norm"
    mean_langs: Sequence[str] | None = None

    _what = "langvec parameter"


@register_method(
    "langvec", site="resid_post", sites=("resid_post",),
    statistics=StatisticsNeed("item-level pooled means, every layer and language", every_layer=True),
    layer_policy=LayerPolicy(EVERY_LAYER, ALL_TOGETHER, text="every layer (as the paper)"),
    # the compare grid is in the authors' relative_norm units (alpha x each token's norm): the paper's
    # absolute alpha = 1 leaves Gemma-3-270M's output unchanged (its residual norms are 140-37,000),
    # while relative alpha 0.01 at every layer already turns English prompts' continuations Chinese
    alpha_grid=(0.0025, 0.005, 0.01), description="ReCoVeR language vectors toward the wanted language (mean "
    "minus the mean over languages), every layer, unit norm, norm restored",
    compare="ReCoVeR language vectors toward each item's wanted language (relative scaling); alpha, beta and "
            "layer range chosen on dev",
    compare_defaults={"scaling": "relative"},
    params={"beta": P.number(), "source": P.text(), "restore_norm": P.flag(), "skip_first": P.flag(),
            "scaling": P.choice(*SCALINGS), "mean_langs": P.words(optional=True),
            "betas": P.numbers(help="the dev grid of beta"), "layer_ranges": P.words(help="the dev grid of layer ranges")},
    prepare=MEAN_LANGS.prepare, corpus_langs=MEAN_LANGS.corpus_langs, check_params=_check_params, variants=dev_variants,
    variant_keys=("betas", "layer_ranges"), toward_wanted={},
)
def fit_langvec(stats: "Statistics", layers: Sequence[int] | int, target_langs: Sequence[str] | str,
                anchor: str = "en", cfg: LangvecConfig | None = None, *, meta: Mapping[str, Any] | None = None,
                **settings: Any) -> LanguageVectors:
    """Language vectors of ``mean_langs`` (default: anchor + targets) at ``site`` of each layer
    (``cfg``: :class:`LangvecConfig`; keyword ``settings`` override its fields).

    Rows wanted in a target language are steered toward it (module docstring); ``beta`` and
    ``source`` set the source term, ``restore_norm`` and ``skip_first`` as in the authors' code.
    """
    cfg = LangvecConfig.of(cfg, **settings)
    site, beta, source, scaling, mean_langs = cfg.site, cfg.beta, cfg.source, cfg.scaling, cfg.mean_langs
    restore_norm, skip_first = cfg.restore_norm, cfg.skip_first
    t0 = time.perf_counter()
    targets = check_targets(target_langs, anchor, "langvec")
    layer_list = check_layers(layers, "langvec")
    vlangs = list(dict.fromkeys([anchor, *targets, *(mean_langs or [])]))
    if scaling not in SCALINGS:
        raise UsageError(f"langvec: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if len(vlangs) < 2:
        raise UsageError("langvec: the mean over languages needs at least 2 languages; give more --langs")
    if source not in SOURCES and source not in vlangs:
        raise UsageError(f"langvec: source '{source}' has no statistics; choose anchor, none or one of {', '.join(vlangs)}")
    tensors = {langvec_key(layer): language_vectors(stats, Site(layer, site), vlangs).float() for layer in layer_list}
    params = {"fit": "langvec", "beta": float(beta), "source": source, "restore_norm": bool(restore_norm),
              "skip_first": bool(skip_first), "vector_langs": vlangs, "scaling": scaling, "site": site,
              "positions": "all", "pooling": stats.pooling, "level": "item",
              "formula": "h' = h + alpha * unit(V[t] - beta * V[s]) (relative: times ||h||); restore_norm: "
                         "h' * ||h|| / ||h'||; "
                         "V[lang] = mean(h_lang) - mean over vector_langs"}
    return LanguageVectors(sites=[Site(layer, site) for layer in layer_list], tensors=tensors, params=params,
                           languages=targets, anchor=anchor, meta=fit_metadata(stats, meta, time.perf_counter() - t0))
