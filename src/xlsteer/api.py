"""High-level API: the functions the CLI calls, each recording where its result came from."""

from __future__ import annotations

from typing import Any, Sequence

from .models.sites import Site
from .stats import Pooling, Statistics, collect


def collect_statistics(
    lm: Any,
    *,
    langs: Sequence[str],
    sites: Sequence[Site],
    corpus: str = "ntrex",
    data_dir: str | None = None,
    split: str = "fit",
    limit: int | None = 200,
    pooling: Pooling = "mean",
    threshold: float = 0.0,
    keep_items: bool = False,
    batch_size: int = 8,
    max_length: int = 128,
) -> Statistics:
    """Load a parallel corpus and collect statistics on it, with full provenance in ``meta``."""
    from .data.corpora import load_corpus

    par = load_corpus(corpus, data_dir=data_dir, langs=list(langs), split=split, limit=limit)
    meta = {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "corpus": par.name,
        "split": split,
        "limit": limit,
        "data_hash": par.data_hash,
        "n_texts": len(par),
        "max_length": max_length,
        "batch_size": batch_size,
    }
    texts = {lang: par.texts[lang] for lang in par.langs}
    return collect(
        lm,
        texts,
        list(sites),
        pooling=pooling,
        threshold=threshold,
        keep_items=keep_items,
        batch_size=batch_size,
        max_length=max_length,
        meta=meta,
    )
