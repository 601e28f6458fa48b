"""One entry point for every method: ``fit(method, lm, corpus, langs, anchor, ...)``.

It collects the statistics the method needs (``stats.collect`` over the parallel corpus, at
the sites and with the options the method's registry entry declares), optionally caches them in
a statistics file, calls the method's fit function, and records in ``meta`` the model
fingerprint, the data hash, the corpus rows used, the collection and fit times. This is what
``xlsteer fit`` calls. Every per-method choice comes from :mod:`xlsteer.interventions.registry`.

Defaults per method (every value used is recorded in the artifact; a test keeps this table equal
to :func:`~xlsteer.interventions.registry.method_table`):

========  ==========  ==========================  =====================================
method    site        layers (None)               statistics
========  ==========  ==========================  =====================================
diffmean  resid_post  the middle layer (L // 2)   item-level pooled means
learned   resid_post  the middle layer (L // 2)   none (trains on the corpus directly)
incline   mlp_out     every layer (as the paper)  per-item pooled vectors (keep_items)
clas      mlp_act     bridge layers (auto)        token-level means at every layer
lape      mlp_gate    every layer                 token-level P(act > 0) at every layer
intmu     mlp_gate    every layer                 P(act > 0) and means at every layer
========  ==========  ==========================  =====================================

``langs`` may include the anchor (it is dropped from the steered languages; CLAS, LAPE and
Int_mu still use its statistics).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError, UsageError
from ..models.sites import Site, num_layers
from ..stats import Statistics, collect
from ..settings import Settings
from ..validation import check_limit
from .base import Intervention
from .registry import FitJob, SteeringMethod, get_method


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


def _normalize(langs: Sequence[str] | str, anchor: str) -> tuple[list[str], str]:
    from ..data.langs import normalize_lang, normalize_langs

    codes = normalize_langs(langs)
    anchor_n = normalize_lang(anchor)
    return codes, anchor_n


def _job(spec: SteeringMethod, lm: Any, corpus: Any, langs: Sequence[str] | str, anchor: str,
         layers: Sequence[int] | int | None, site: str | None, params: dict[str, Any], limit: int | None,
         **settings: Any) -> FitJob:
    """The resolved inputs of one fit: languages, texts (checked and aligned), site, layers."""
    codes, anchor = _normalize(langs, anchor)
    targets = [c for c in codes if c != anchor]
    if not targets:
        raise UsageError("no target languages: --langs must name at least one language other than the anchor")
    n_layers = num_layers(lm.model)
    given = [layers] if isinstance(layers, int) else (list(layers) if layers is not None else None)
    job = FitJob(lm=lm, corpus=corpus, texts=_texts(corpus), targets=targets, anchor=anchor,
                 langs=[anchor, *targets], site=site or spec.site, n_layers=n_layers,
                 layers=given if given is not None else spec.layer_policy.fit_layers(n_layers), params=params,
                 **settings)
    if spec.prepare is not None:
        spec.prepare(job)
    missing = [lang for lang in job.langs if lang not in job.texts]
    if missing:
        raise DataError(f"the corpus has no text for {', '.join(missing)}; choose a corpus with these languages")
    texts = {lang: job.texts[lang] for lang in job.langs}
    if limit is not None:
        check_limit(limit)
        texts = {lang: t[:limit] for lang, t in texts.items()}
    if len({len(t) for t in texts.values()}) != 1:
        raise DataError("misaligned corpus: languages have different numbers of lines; align them")
    job.texts = texts
    return job


def _statistics(spec: SteeringMethod, job: FitJob, stats: Statistics | None, stats_cache: str | Path | None,
                data_hash: str) -> str:
    """Collect (or reuse) the statistics ``spec`` needs into ``job.stats``; returns where they came from."""
    need = spec.statistics
    lays = list(range(job.n_layers)) if need.every_layer else list(job.layers or [])
    sites = [Site(x, job.site) for x in lays]
    collect_texts, code_switch = need.collect_texts(job.texts, job.targets, job.anchor, job.params)
    stats_meta = {**job.meta, "code_switch": code_switch, "max_length": job.max_length, "exclude_bos": True}
    source = "given"
    if stats is None and stats_cache is not None and Path(stats_cache).is_file():
        cached = Statistics.load(stats_cache, fingerprint=job.lm.fingerprint)
        why = _covers(cached, job.langs, sites, need.keep_items, job.pooling)
        if why is None and cached.meta.get("data_hash") not in (None, data_hash):
            why = "they were collected on other text (data hash differs)"
        if why is None and bool(cached.meta.get("code_switch", False)) != code_switch:
            why = "their code switching differs"
        if why is None:
            stats, source = cached, f"cache {stats_cache}"
    if stats is None:
        stats = collect(job.lm, collect_texts, sites, pooling=job.pooling, keep_items=need.keep_items,
                        batch_size=job.batch_size, max_length=job.max_length, meta=stats_meta)
        source = "collected"
        if stats_cache is not None:
            stats.save(stats_cache)
    else:
        why = _covers(stats, job.langs, sites, need.keep_items, job.pooling)
        if why is not None:
            raise UsageError(f"the statistics cannot be used for {spec.name}: {why}; collect them again")
    job.stats = stats
    return source


@dataclass(frozen=True)
class FitConfig(Settings):
    """How a fit reads its statistics: ``stats`` already collected (skips collection), or
    ``stats_cache``, a statistics file reused when it covers what the method needs (checked
    against the model fingerprint) and written after collection otherwise; the first ``limit``
    rows of the corpus; the pooling, batch size and maximum length of the collection."""

    stats: Statistics | None = None
    stats_cache: str | Path | None = None
    pooling: str = "mean"
    batch_size: int = 8
    max_length: int = 128
    limit: int | None = None

    _what = "fit setting"


def fit(method: str, lm: Any, corpus: Any, langs: Sequence[str] | str, anchor: str = "en",
        layers: Sequence[int] | int | None = None, site: str | None = None, cfg: FitConfig | None = None,
        **params: Any) -> Intervention:
    """Fit ``method`` on ``corpus`` (ParallelCorpus or dict lang -> texts) for ``lm`` (LoadedModel).

    ``cfg`` (:class:`FitConfig`) says how the statistics are read; a keyword that names one of its
    fields (``stats_cache=``, ``limit=``...) overrides it. The other ``params`` go to the method's
    fit function (e.g. ``normalize`` for diffmean, ``ridge`` for incline).
    """
    cfg = FitConfig.of(cfg, **{k: params.pop(k) for k in FitConfig.field_names() if k in params})
    stats, stats_cache, limit = cfg.stats, cfg.stats_cache, cfg.limit
    pooling, batch_size, max_length = cfg.pooling, cfg.batch_size, cfg.max_length
    t0 = time.perf_counter()
    spec = get_method(method)
    job = _job(spec, lm, corpus, langs, anchor, layers, site, params, limit, pooling=pooling,
               batch_size=batch_size, max_length=max_length)
    data_hash, data_rec = _data_record(corpus, job.texts, job.langs)
    job.meta = {"model_fingerprint": lm.fingerprint, "data_hash": data_hash, "data": data_rec}
    collect_seconds = 0.0
    if spec.statistics.collect:
        spec.check_site(job.site)
        t_collect = time.perf_counter()
        source = _statistics(spec, job, stats, stats_cache, data_hash)
        collect_seconds = time.perf_counter() - t_collect
        job.meta = {**job.meta, "statistics_source": source, "max_length": max_length, "batch_size": batch_size}
    iv = spec.call(spec.fit, job)
    iv.params.update(job.recorded)
    iv.meta["collect_seconds"] = round(collect_seconds, 4)
    iv.meta["fit_seconds"] = round(time.perf_counter() - t0, 4)
    return iv
