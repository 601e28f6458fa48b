"""One entry point for every method: ``fit(method, lm, corpus, langs, anchor, ...)``.

It collects the statistics the method needs (``stats.collect`` over the parallel corpus, at
the sites and with the options the method needs), optionally caches them in a statistics file,
calls the method's fit function, and records in ``meta`` the model fingerprint, the data hash,
the corpus rows used, the collection and fit times. This is what ``xlsteer fit`` calls.

Defaults per method (every value used is recorded in the artifact):

=========  ==========  ==========================  ======================================
method     site        layers (None)               statistics
=========  ==========  ==========================  ======================================
diffmean   resid_post  the middle layer (L // 2)   item-level pooled means
learned    resid_post  the middle layer (L // 2)   none (trains on the corpus directly)
clas       mlp_act     bridge layers (auto)        token-level means at every layer
incline    mlp_out     every layer (as the paper)  per-item pooled vectors (keep_items)
lape       mlp_gate    every layer                 token-level P(act > 0) at every layer
intmu      mlp_gate    every layer                 P(act > 0) and means at every layer
=========  ==========  ==========================  ======================================

``langs`` may include the anchor (it is dropped from the steered languages; CLAS, LAPE and
Int_mu still use its statistics).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError, UsageError
from ..models.sites import Site, num_layers
from ..stats import Statistics, collect
from .base import Intervention

METHODS: tuple[str, ...] = ("diffmean", "learned", "clas", "incline", "lape", "intmu")
DEFAULT_SITE = {
    "diffmean": "resid_post",
    "learned": "resid_post",
    "clas": "mlp_act",
    "incline": "mlp_out",
    "lape": "mlp_gate",
    "intmu": "mlp_gate",
}


def _texts(corpus: Any) -> dict[str, list[str]]:
    texts = getattr(corpus, "texts", corpus)
    if not isinstance(texts, Mapping):
        raise UsageError("corpus must be a ParallelCorpus or a dict: language -> list of texts")
    return {str(k): list(v) for k, v in texts.items()}


def _data_record(corpus: Any, texts: Mapping[str, Sequence[str]], langs: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(data hash, description of the rows used). The hash is the corpus's file hash when it has
    one, combined with the row ids; else a hash of the texts themselves."""
    ids = list(getattr(corpus, "ids", []) or [])
    h = hashlib.sha256()
    base = getattr(corpus, "data_hash", "") or ""
    if base:
        h.update(base.encode())
        h.update(json.dumps(ids).encode())
    else:
        h.update(json.dumps({lang: list(texts[lang]) for lang in sorted(langs)}, ensure_ascii=False).encode("utf-8"))
    n = len(texts[langs[0]])
    record = {
        "corpus": getattr(corpus, "name", "texts"),
        "n_items": n,
        "langs": list(langs),
        "files_hash": base or None,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
    }
    return h.hexdigest(), record


def _covers(stats: Statistics, langs: Sequence[str], sites: Sequence[Site], keep_items: bool, pooling: str) -> str | None:
    """Why cached statistics cannot serve this fit (None when they can)."""
    missing_langs = [lang for lang in langs if lang not in stats.langs]
    if missing_langs:
        return f"they lack language(s) {', '.join(missing_langs)}"
    missing_sites = [str(s) for s in sites if s not in stats.sites]
    if missing_sites:
        return f"they lack site(s) {', '.join(missing_sites)}"
    if keep_items and not stats.keep_items:
        return "they have no per-item vectors (keep_items)"
    if stats.pooling != pooling:
        return f"their pooling is {stats.pooling}, not {pooling}"
    return None


def _category_langs(given: Any, texts: Mapping[str, Any], steered: Sequence[str]) -> list[str]:
    """CLAS's category language set: ``given`` (list or comma-separated), else every corpus language."""
    from ..data.langs import normalize_langs

    if given is None:
        return list(dict.fromkeys([*steered, *texts]))
    raw = given.split(",") if isinstance(given, str) else list(given)
    return normalize_langs([str(x).strip() for x in raw if str(x).strip()])


def _normalize(langs: Sequence[str] | str, anchor: str) -> tuple[list[str], str]:
    from ..data.langs import normalize_lang, normalize_langs

    codes = normalize_langs(langs)
    anchor_n = normalize_lang(anchor)
    return codes, anchor_n


def fit(
    method: str,
    lm: Any,
    corpus: Any,
    langs: Sequence[str] | str,
    anchor: str = "en",
    layers: Sequence[int] | int | None = None,
    site: str | None = None,
    *,
    stats: Statistics | None = None,
    stats_cache: str | Path | None = None,
    pooling: str = "mean",
    batch_size: int = 8,
    max_length: int = 128,
    limit: int | None = None,
    **params: Any,
) -> Intervention:
    """Fit ``method`` on ``corpus`` (ParallelCorpus or dict lang -> texts) for ``lm`` (LoadedModel).

    ``stats``: statistics already collected (skips collection); ``stats_cache``: a statistics
    file to reuse when it covers what the method needs (checked against the model fingerprint),
    else written after collection. ``limit``: use the first rows only. ``params`` go to the
    method's fit function (e.g. ``normalize`` for diffmean, ``ridge`` for incline).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    codes, anchor = _normalize(langs, anchor)
    targets = [c for c in codes if c != anchor]
    if not targets:
        raise UsageError("no target languages: --langs must name at least one language other than the anchor")
    all_langs = [anchor, *targets]
    texts = _texts(corpus)
    category_rule = "given" if params.get("category_langs") is not None else f"every language of the corpus " \
        f"({getattr(corpus, 'name', 'texts')})"
    if method == "clas":  # categories over a fixed language set (default: every corpus language)
        params["category_langs"] = _category_langs(params.get("category_langs"), texts, all_langs)
        all_langs = list(dict.fromkeys([*all_langs, *params["category_langs"]]))
    missing = [lang for lang in all_langs if lang not in texts]
    if missing:
        raise DataError(f"the corpus has no text for {', '.join(missing)}; choose a corpus with these languages")
    texts = {lang: texts[lang] for lang in all_langs}
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be a positive integer, got {limit!r}")
        texts = {lang: t[:limit] for lang, t in texts.items()}
    if len({len(t) for t in texts.values()}) != 1:
        raise DataError("misaligned corpus: languages have different numbers of lines; align them")
    site = site or DEFAULT_SITE[method]
    n_layers = num_layers(lm.model)
    if isinstance(layers, int):
        layers = [layers]
    data_hash, data_rec = _data_record(corpus, texts, all_langs)
    meta_base: dict[str, Any] = {"model_fingerprint": lm.fingerprint, "data_hash": data_hash, "data": data_rec}

    if method == "learned":
        from .learned import fit_learned

        lays = list(layers) if layers is not None else [n_layers // 2]
        iv = fit_learned(lm, texts, lays, targets, anchor=anchor, site=site, pooling=pooling,
                         batch_size=batch_size, max_length=max_length, meta=meta_base, **params)
        iv.meta["fit_seconds"] = round(time.perf_counter() - t0, 4)
        iv.meta["collect_seconds"] = 0.0
        return iv

    # ---- which statistics
    keep_items = method == "incline"
    code_switch = bool(params.get("code_switch", False)) if method == "incline" else False
    if method == "diffmean":
        lays = list(layers) if layers is not None else [n_layers // 2]
        sites = [Site(x, site) for x in lays]
    elif method == "incline":
        lays = list(layers) if layers is not None else list(range(n_layers))
        sites = [Site(x, site) for x in lays]
    else:
        allowed = ("mlp_act",) if method == "clas" else ("mlp_gate", "mlp_act")
        if site not in allowed:
            raise UsageError(f"{method} acts on MLP neurons (site {' or '.join(allowed)}), not {site}; drop --site")
        lays = list(range(n_layers))  # categories / LAPE compare all layers; layers picks where to act
        sites = [Site(x, site) for x in lays]
    collect_texts: dict[str, list[str]] = texts
    if method == "incline":
        from .incline import incline_texts

        collect_texts = incline_texts(texts, targets, anchor, code_switch=code_switch)
    stats_meta = {**meta_base, "code_switch": code_switch, "max_length": max_length, "exclude_bos": True}

    t_collect = time.perf_counter()
    source = "given"
    if stats is None and stats_cache is not None and Path(stats_cache).is_file():
        cached = Statistics.load(stats_cache, fingerprint=lm.fingerprint)
        why = _covers(cached, all_langs, sites, keep_items, pooling)
        if why is None and cached.meta.get("data_hash") not in (None, data_hash):
            why = "they were collected on other text (data hash differs)"
        if why is None and bool(cached.meta.get("code_switch", False)) != code_switch:
            why = "their code switching differs"
        if why is None:
            stats, source = cached, f"cache {stats_cache}"
    if stats is None:
        stats = collect(lm, collect_texts, sites, pooling=pooling, keep_items=keep_items,
                        batch_size=batch_size, max_length=max_length, meta=stats_meta)
        source = "collected"
        if stats_cache is not None:
            stats.save(stats_cache)
    else:
        why = _covers(stats, all_langs, sites, keep_items, pooling)
        if why is not None:
            raise UsageError(f"the statistics cannot be used for {method}: {why}; collect them again")
    collect_seconds = time.perf_counter() - t_collect
    meta = {**meta_base, "statistics_source": source, "max_length": max_length, "batch_size": batch_size}

    # ---- fit
    iv: Intervention
    if method == "diffmean":
        from .vector import fit_diffmean

        iv = fit_diffmean(stats, lays, targets, anchor=anchor, site=site, meta=meta, **params)
    elif method == "incline":
        from .incline import fit_incline

        iv = fit_incline(stats, lays, targets, anchor=anchor, site=site, meta=meta, **params)
    elif method == "clas":
        from .clas import fit_clas

        iv = fit_clas(stats, [anchor, *targets], anchor=anchor, layers=layers, n_layers=n_layers, meta=meta, **params)
        iv.params["category_langs_rule"] = category_rule
    elif method == "lape":
        from .neurons import fit_lape

        iv = fit_lape(stats, all_langs, anchor=anchor, layers=layers, meta=meta, site=site, **params)
    else:
        from .neurons import fit_intmu

        iv = fit_intmu(stats, all_langs, anchor=anchor, layers=layers, meta=meta, site=site, **params)
    iv.meta["collect_seconds"] = round(collect_seconds, 4)
    iv.meta["fit_seconds"] = round(time.perf_counter() - t0, 4)
    return iv
