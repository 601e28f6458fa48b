"""Streaming activation statistics per language, layer and site.

Accumulators are sums (float64) and counts, so memory does not grow with the number of items
(unless per-item pooled vectors are asked for) and two runs over disjoint shards merge exactly.

Two levels:
- token level (over every real token except BOS/padding): mean, variance, P(act > 0),
  P(act > threshold). CLAS and LAPE use these at ``mlp_act``.
- item level (one pooled vector per text: mean over its tokens, or its last token): mean,
  variance, and optionally the vectors themselves. DiffMean, INCLINE and projections use these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from .errors import ArtifactError, LanguageError, UsageError, XlsteerError
from .hook_session import ForwardContext
from .hooks import record
from .io import load_tensors, save_tensors
from .models.sites import Site, check_site
from .progress import bar
from .provenance import provenance
from .settings import Settings
from .validation import check_fields, dict_of, finite, integer, list_of, obj, one_of, optional, text

# the JSON types of a statistics file's metadata
_METADATA = {
    "format": text, "langs": list_of(text, min_len=1, unique=True), "sites": list_of(text, min_len=1),
    "widths": dict_of(integer(1, 1 << 24)), "pooling": one_of("mean", "last"), "threshold": finite,
    "counts": dict_of(list_of(integer(0), min_len=2, max_len=2)), "keep_items": optional(one_of(True, False)),
    "model_fingerprint": optional(obj), "provenance": optional(obj),
}

Pooling = Literal["mean", "last"]
_TOKEN_KEYS = ("tok_sum", "tok_sumsq", "tok_pos", "tok_thr")
_ITEM_KEYS = ("item_sum", "item_sumsq")


@dataclass
class _Acc:
    """Accumulators of one (language, site)."""

    width: int
    tok_sum: torch.Tensor = None  # type: ignore[assignment]
    tok_sumsq: torch.Tensor = None  # type: ignore[assignment]
    tok_pos: torch.Tensor = None  # type: ignore[assignment]
    tok_thr: torch.Tensor = None  # type: ignore[assignment]
    item_sum: torch.Tensor = None  # type: ignore[assignment]
    item_sumsq: torch.Tensor = None  # type: ignore[assignment]
    n_tokens: int = 0
    n_items: int = 0
    items: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in _TOKEN_KEYS + _ITEM_KEYS:
            if getattr(self, key) is None:
                setattr(self, key, torch.zeros(self.width, dtype=torch.float64))


class Statistics:
    """Per-language, per-site activation statistics (the file ``xlsteer collect`` writes)."""

    def __init__(
        self,
        langs: Sequence[str],
        sites: Sequence[Site],
        widths: dict[str, int],
        pooling: Pooling = "mean",
        threshold: float = 0.0,
        keep_items: bool = False,
        meta: dict[str, Any] | None = None,
    ):
        if pooling not in ("mean", "last"):
            raise UsageError(f"unknown pooling '{pooling}'; choose mean or last")
        self.langs = list(langs)
        self.sites = sorted(sites)
        self.widths = dict(widths)
        self.pooling = pooling
        self.threshold = float(threshold)
        if not math.isfinite(self.threshold):
            raise UsageError(f"threshold must be a finite number, got {threshold!r}")
        self.keep_items = keep_items
        self.meta = dict(meta or {})
        self.acc: dict[tuple[str, Site], _Acc] = {
            (lang, site): _Acc(self.widths[site.name]) for lang in self.langs for site in self.sites
        }

    # ---- accumulation ------------------------------------------------------------------
    def update(self, lang: str, site: Site, act: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one batch: ``act`` (B, T, d), ``mask`` (B, T) bool of tokens to count."""
        a = self.acc[(lang, site)]
        x = act.detach().float()
        m = mask.to(device=x.device, dtype=x.dtype)
        rows = m.sum(1)
        keep = rows > 0
        a.tok_sum += torch.einsum("bt,btd->d", m, x).double().cpu()
        a.tok_sumsq += torch.einsum("bt,btd->d", m, x * x).double().cpu()
        a.tok_pos += torch.einsum("bt,btd->d", m, (x > 0).to(x.dtype)).double().cpu()
        a.tok_thr += torch.einsum("bt,btd->d", m, (x > self.threshold).to(x.dtype)).double().cpu()
        a.n_tokens += int(rows.sum().item())
        if self.pooling == "mean":
            pooled = torch.einsum("bt,btd->bd", m, x) / rows.clamp_min(1).unsqueeze(1)
        else:
            t = x.shape[1]
            last = torch.where(mask.to(x.device), torch.arange(t, device=x.device), -1).max(1).values.clamp_min(0)
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        pooled = pooled[keep].double().cpu()
        a.item_sum += pooled.sum(0)
        a.item_sumsq += (pooled * pooled).sum(0)
        a.n_items += int(keep.sum().item())
        if self.keep_items:
            a.items.append(pooled.float())

    def merge(self, other: "Statistics") -> "Statistics":
        """Add another run over disjoint items (data-parallel shards); exact."""
        if (other.langs, other.sites, other.pooling, other.threshold) != (
            self.langs,
            self.sites,
            self.pooling,
            self.threshold,
        ):
            raise UsageError("cannot merge statistics with different languages, sites, pooling or threshold")
        for key, a in self.acc.items():
            b = other.acc[key]
            for name in _TOKEN_KEYS + _ITEM_KEYS:
                setattr(a, name, getattr(a, name) + getattr(b, name))
            a.n_tokens += b.n_tokens
            a.n_items += b.n_items
            a.items.extend(b.items)
        return self

    # ---- read-out ----------------------------------------------------------------------
    def _get(self, lang: str, site: Site) -> _Acc:
        if lang not in self.langs:
            raise LanguageError(
                f"no statistics for language '{lang}' (have {', '.join(self.langs)}); collect with --langs including it"
            )
        if site not in self.sites:
            raise UsageError(
                f"no statistics for site {site} (have {', '.join(map(str, self.sites))}); collect at that site"
            )
        return self._checked(self.acc[(lang, site)], lang, site)

    @staticmethod
    def _checked(a: _Acc, lang: str, site: Site) -> _Acc:
        if a.n_items == 0:
            raise ArtifactError(f"statistics for {lang} at {site} are empty (no items were collected)")
        return a

    def mean(self, lang: str, site: Site, level: Literal["item", "token"] = "item") -> torch.Tensor:
        a = self._get(lang, site)
        if level == "token":
            return (a.tok_sum / max(a.n_tokens, 1)).float()
        return (a.item_sum / a.n_items).float()

    def var(self, lang: str, site: Site, level: Literal["item", "token"] = "item") -> torch.Tensor:
        a = self._get(lang, site)
        if level == "token":
            n, s, ss = max(a.n_tokens, 1), a.tok_sum, a.tok_sumsq
        else:
            n, s, ss = a.n_items, a.item_sum, a.item_sumsq
        mu = s / n
        return (ss / n - mu * mu).clamp_min(0).float()

    def prob_active(self, lang: str, site: Site, above: Literal["zero", "threshold"] = "zero") -> torch.Tensor:
        a = self._get(lang, site)
        num = a.tok_pos if above == "zero" else a.tok_thr
        return (num / max(a.n_tokens, 1)).float()

    def items(self, lang: str, site: Site) -> torch.Tensor:
        a = self._get(lang, site)
        if not a.items:
            raise UsageError("per-item vectors were not kept; collect with --keep-items")
        return torch.cat(a.items)

    def counts(self, lang: str, site: Site) -> tuple[int, int]:
        a = self.acc[(lang, site)]
        return a.n_items, a.n_tokens

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        counts: dict[str, list[int]] = {}
        for (lang, site), a in self.acc.items():
            for name in _TOKEN_KEYS + _ITEM_KEYS:
                tensors[f"{lang}|{site}|{name}"] = getattr(a, name)
            if a.items:
                tensors[f"{lang}|{site}|items"] = torch.cat(a.items)
            counts[f"{lang}|{site}"] = [a.n_items, a.n_tokens]
        meta = {
            "format": "xlsteer.statistics",
            "langs": self.langs,
            "sites": [str(s) for s in self.sites],
            "widths": self.widths,
            "pooling": self.pooling,
            "threshold": self.threshold,
            "keep_items": self.keep_items,
            "counts": counts,
            **self.meta,
        }
        meta.setdefault("provenance", provenance())
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, fingerprint: dict[str, Any] | None = None) -> "Statistics":
        tensors, meta = load_tensors(path, what="statistics file")
        required = ("format", "langs", "sites", "widths", "pooling", "threshold", "counts")
        missing = [k for k in required if k not in meta]
        if missing or meta.get("format") != "xlsteer.statistics":
            raise ArtifactError(
                f"statistics file {path} lacks field(s) {', '.join(missing) or 'format'}; re-create it with `xlsteer collect`"
            )
        fix = "re-create it with `xlsteer collect`"
        check_fields(meta, _METADATA, what=f"statistics file {path}", fix=fix, required=required)
        if fingerprint is not None and isinstance(meta.get("model_fingerprint"), dict):
            from .models.fingerprint import check_fingerprint

            check_fingerprint(meta["model_fingerprint"], fingerprint, what=f"statistics file {path}")
        try:
            sites = [Site.parse(s) for s in meta["sites"]]
        except XlsteerError as e:
            raise ArtifactError(f"statistics file {path} has an invalid site ({e}); {fix}") from None
        absent = sorted({s.name for s in sites} - set(meta["widths"]))
        if absent:
            raise ArtifactError(f"statistics file {path}: field 'widths' lacks {', '.join(absent)}; {fix}")
        extra = {k: v for k, v in meta.items() if k not in required and k != "keep_items"}
        stats = cls(meta["langs"], sites, meta["widths"], meta["pooling"], meta["threshold"],
                    bool(meta.get("keep_items")), extra)
        for (lang, site), a in stats.acc.items():
            _fill(a, tensors, meta["counts"], lang, site, f"statistics file {path}", fix)
        return stats


def _fill(a: _Acc, tensors: dict[str, torch.Tensor], counts: dict[str, Any], lang: str, site: Site,
          what: str, fix: str) -> None:
    """Load one (language, site)'s accumulators, checking their shapes against the site's width."""
    prefix = f"{lang}|{site}|"
    try:
        for name in _TOKEN_KEYS + _ITEM_KEYS:
            setattr(a, name, tensors[prefix + name].double())
        a.n_items, a.n_tokens = counts[f"{lang}|{site}"]
    except KeyError:
        raise ArtifactError(f"{what} lacks tensors for {lang} at {site}; {fix}") from None
    bad = [name for name in _TOKEN_KEYS + _ITEM_KEYS if tuple(getattr(a, name).shape) != (a.width,)]
    if bad:
        raise ArtifactError(f"{what}: tensor {prefix + bad[0]} is not a ({a.width},) vector; {fix}")
    if prefix + "items" in tensors:
        items = tensors[prefix + "items"]
        if items.dim() != 2 or items.shape[1] != a.width or items.shape[0] != a.n_items:
            raise ArtifactError(f"{what}: tensor {prefix}items is not ({a.n_items}, {a.width}); {fix}")
        a.items = [items]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left- or right-padded batch (padding rows get position 0)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass(frozen=True)
class CollectConfig(Settings):
    """How activations are read: ``pooling`` of a text's tokens into its item vector (``mean`` or
    ``last``), the ``threshold`` of P(act > threshold), whether the per-item vectors are kept,
    the batch size and maximum length, and whether BOS is left out of the statistics."""

    pooling: Pooling = "mean"
    threshold: float = 0.0
    keep_items: bool = False
    batch_size: int = 8
    max_length: int = 128
    exclude_bos: bool = True

    _what = "statistics setting"


class _AllSitesRead(Exception):
    """Raised by :func:`collect`'s reader once every site of a batch is read, to end the forward
    early: statistics at layer 4 of 18 cost a quarter of a full forward."""


def collect(lm: Any, texts: dict[str, Sequence[str]], sites: Sequence[Site], cfg: CollectConfig | None = None, *,
            meta: dict[str, Any] | None = None, on_batch: Callable[[str, int], None] | None = None,
            **settings: Any) -> Statistics:
    """Run every language's texts through ``lm`` and accumulate statistics at ``sites``.

    ``lm`` is a ``LoadedModel`` (model + tokenizer). Texts are batched per language, so each
    batch is one language; BOS and padding never enter the statistics. ``cfg``
    (:class:`CollectConfig`; keyword ``settings`` override its fields) says how.
    """
    cfg = CollectConfig.of(cfg, **settings)
    pooling, threshold, keep_items = cfg.pooling, cfg.threshold, cfg.keep_items
    batch_size, max_length, exclude_bos = cfg.batch_size, cfg.max_length, cfg.exclude_bos
    from .models.sites import site_width

    model, tok = lm.model, lm.tokenizer
    if batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size}")
    if not sites:
        from .models.sites import get_layers

        get_layers(model)  # an architecture without decoder layers says so first
        raise UsageError("no sites to collect statistics at; give at least one layer and site")
    for site in sites:
        check_site(model, site)
    for lang, items in texts.items():
        if len(items) == 0:
            raise UsageError(f"no texts for language '{lang}'; give a non-empty parallel corpus")
    widths = {s.name: site_width(model, s.name) for s in sites}
    stats = Statistics(list(texts), sites, widths, pooling, threshold, keep_items, meta)
    state: dict[str, Any] = {}

    n_sites = len(set(sites))

    def reader(site: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        stats.update(state["lang"], site, act, state["mask"])
        state["read"].add(site)
        if len(state["read"]) == n_sites:
            raise _AllSitesRead  # nothing deeper is read: the rest of the forward would be wasted

    from .distributed import current as current_dist
    from .models.placement import module_placement

    dist = current_dist()
    # the batches a single process forms, numbered across languages; this process runs batch k
    # when k % world == rank (data-parallel launch; every batch in a single process)
    batches = [(lang, start) for lang, items in texts.items() for start in range(0, len(items), batch_size)]
    mine = [(k, lang, start) for k, (lang, start) in enumerate(batches) if dist.owns(k)]
    total = sum(min(batch_size, len(texts[lang]) - start) for _, lang, start in mine)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = module_placement(emb)[0] if emb is not None else next(model.parameters()).device
    bos = getattr(tok, "bos_token_id", None)
    with record(model, sites, reader), torch.inference_mode(), bar(total, "collect", "text") as pbar:
        for _, lang, start in mine:
            items = texts[lang]
            state["lang"] = lang
            chunk = list(items[start : start + batch_size])
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            count_mask = mask.bool()
            if exclude_bos and bos is not None:
                count_mask = count_mask & (ids != bos)
            state["mask"] = count_mask
            state["read"] = set()
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1,
                      use_cache=False)
            except _AllSitesRead:
                pass
            pbar.update(len(chunk))
            if on_batch is not None:
                on_batch(lang, len(chunk))
    if dist.active:
        stats = merge_shards(dist.gather(stats), [lang for lang, _ in batches], dist.world)
    return stats


def collect_statistics(lm: Any, *, langs: Sequence[str], sites: Sequence[Site], corpus: str = "ntrex",
                       data_dir: str | None = None, split: str = "fit", limit: int | None = 200,
                       cfg: CollectConfig | None = None, **settings: Any) -> Statistics:
    """Load a parallel corpus and collect statistics on it (:func:`collect`), with full
    provenance in ``meta``."""
    from .data.corpora import load_corpus

    cfg = CollectConfig.of(cfg, **settings)
    par = load_corpus(corpus, data_dir=data_dir, langs=list(langs), split=split, limit=limit)
    meta = {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "corpus": par.name,
        "split": split,
        "limit": limit,
        "data_hash": par.data_hash,
        "n_texts": len(par),
        "max_length": cfg.max_length,
        "batch_size": cfg.batch_size,
    }
    return collect(lm, {lang: par.texts[lang] for lang in par.langs}, list(sites), cfg, meta=meta)


def merge_shards(shards: Sequence[Statistics], batch_langs: Sequence[str], world: int) -> Statistics:
    """Merge per-process statistics of a data-parallel ``collect`` into what one process gives.

    ``shards[r]`` holds the batches ``k`` with ``k % world == r``; ``batch_langs[k]`` is the
    language of batch ``k``. Sums and counts add (float64 sums: equal to the single-process ones
    up to float64 rounding of the order of additions, ~1e-16 relative, which vanishes in the
    float32 read-outs in practice; counts are exact). Kept per-item vectors are put back in
    single-process order (each process appended one tensor per batch and site).
    """
    first = shards[0]
    out = Statistics(first.langs, first.sites, first.widths, first.pooling, first.threshold, first.keep_items,
                     first.meta)
    for shard in shards:
        out.merge(shard)
    if out.keep_items:
        for key, a in out.acc.items():
            lang = key[0]
            queues = [list(shard.acc[key].items) for shard in shards]
            a.items = [queues[k % world].pop(0) for k, b_lang in enumerate(batch_langs) if b_lang == lang]
    return out
