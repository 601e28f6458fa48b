"""How close each language's representations are to the anchor's, layer by layer.

Why: the residual-stream paper claims steering moves non-English inputs toward the English
region; the CLAS paper finds the opposite for its gains (cosine similarity to English goes
*down* after steering). Both claims are measured the same way here, on parallel items:

* ``paired``  mean over items of cos(x_i^lang, x_i^anchor): item i in both languages is the
  same sentence, so this compares translations one by one;
* ``means``   cos(mean_i x_i^lang, mean_i x_i^anchor): the language centroids only.

``separation`` says how well languages form clusters at a layer: the silhouette score with
cosine distance (sklearn; in [-1, 1], higher = better separated) and the between/within
variance ratio ``sum_k n_k ||mu_k - mu||^2 / sum_k sum_i ||x_i - mu_k||^2`` (Euclidean, no
degrees-of-freedom correction; 0 = no language structure).

Items are pooled ``resid_post`` vectors, one per text (mean over its real tokens, or its last
token; BOS and padding excluded), captured with :func:`xlsteer.hooks.steer`'s readers, so the
"after" vectors are those of the steered forward pass (a reader at a steered site sees the
edited activation). The anchor is never steered, so its vectors are the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import DataError, LanguageError, UsageError
from ..hook_session import ForwardContext
from ..hooks import steer
from ..models.sites import Site, check_site
from ..progress import bar
from ..settings import Settings

POOLINGS = ("mean", "last")

ItemsByLang = Mapping[str, Any]  # lang -> (n_items, d) array-like
ItemsByLayer = Mapping[int, ItemsByLang]  # layer -> lang -> (n_items, d)


# --------------------------------------------------------------------------------------------
# Pure functions on item vectors
# --------------------------------------------------------------------------------------------


def _matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DataError(f"{what}: expected a non-empty (n_items, d) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{what}: vectors contain NaN or inf; check the model's activations")
    return arr


def cosine_rows(a: Any, b: Any) -> np.ndarray:
    """cos(a_i, b_i) for each row i (zero vectors give 0)."""
    x, y = _matrix(a, "cosine_rows (a)"), _matrix(b, "cosine_rows (b)")
    if x.shape != y.shape:
        raise DataError(f"cosine_rows: shapes {x.shape} and {y.shape} differ; pair the items one to one")
    num = np.einsum("nd,nd->n", x, y)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def paired_similarity(x_lang: Any, x_anchor: Any) -> float:
    """Mean over parallel items of cos(x_i^lang, x_i^anchor)."""
    return float(cosine_rows(x_lang, x_anchor).mean())


def mean_similarity(x_lang: Any, x_anchor: Any) -> float:
    """Cosine between the two languages' mean vectors."""
    a = _matrix(x_lang, "mean_similarity (lang)").mean(0)
    b = _matrix(x_anchor, "mean_similarity (anchor)").mean(0)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else 0.0


def similarity_to_anchor(items_by_lang: ItemsByLang, anchor: str = "en") -> dict[str, dict[str, float]]:
    """Per non-anchor language: ``paired`` (and its ``paired_sd`` over items) and ``means``."""
    if anchor not in items_by_lang:
        raise LanguageError(
            f"no items for the anchor language '{anchor}' (have {', '.join(items_by_lang)}); include it in the texts"
        )
    ref = _matrix(items_by_lang[anchor], f"items of {anchor}")
    out: dict[str, dict[str, float]] = {}
    for lang, x in items_by_lang.items():
        if lang == anchor:
            continue
        cos = cosine_rows(_matrix(x, f"items of {lang}"), ref)
        out[lang] = {
            "paired": float(cos.mean()),
            "paired_sd": float(cos.std(ddof=1)) if cos.size > 1 else 0.0,
            "means": mean_similarity(x, ref),
        }
    return out


def _stack(items_by_lang: ItemsByLang) -> tuple[np.ndarray, np.ndarray]:
    xs, labels = [], []
    for k, (lang, x) in enumerate(items_by_lang.items()):
        m = _matrix(x, f"items of {lang}")
        xs.append(m)
        labels.append(np.full(m.shape[0], k))
    if len({m.shape[1] for m in xs}) > 1:
        raise DataError("separation: languages have vectors of different widths; use one layer and one site")
    return np.concatenate(xs), np.concatenate(labels)


def variance_ratio(items_by_lang: ItemsByLang) -> float:
    """Between-language over within-language scatter (see the module doc); inf if within is 0."""
    x, labels = _stack(items_by_lang)
    mu = x.mean(0)
    between = within = 0.0
    for k in np.unique(labels):
        xk = x[labels == k]
        mk = xk.mean(0)
        between += xk.shape[0] * float(((mk - mu) ** 2).sum())
        within += float(((xk - mk) ** 2).sum())
    if within == 0.0:
        return float("inf") if between > 0 else 0.0
    return between / within


def silhouette(items_by_lang: ItemsByLang) -> float | None:
    """Mean silhouette with cosine distance; None when undefined (< 2 languages or 1 item each)."""
    from sklearn.metrics import silhouette_score

    x, labels = _stack(items_by_lang)
    n_labels = len(np.unique(labels))
    if n_labels < 2 or x.shape[0] <= n_labels:
        return None
    return float(silhouette_score(x, labels, metric="cosine"))


def separation(items_by_lang: Mapping[Any, Any]) -> dict[Any, Any]:
    """Silhouette (cosine) and between/within variance ratio of the languages' item vectors.

    ``items_by_lang`` maps language -> (n_items, d) for one layer, and the result is
    ``{"silhouette": s, "variance_ratio": r}``; or it maps layer -> {language -> (n, d)} and the
    result is ``{layer: {"silhouette": ..., "variance_ratio": ...}}``.
    """
    if not items_by_lang:
        raise DataError("separation: no items; give at least two languages")
    first = next(iter(items_by_lang.values()))
    if isinstance(first, Mapping):
        return {layer: separation(by_lang) for layer, by_lang in items_by_lang.items()}
    return {"silhouette": silhouette(items_by_lang), "variance_ratio": variance_ratio(items_by_lang)}


def similarity_from_items(
    before: ItemsByLayer,
    after: ItemsByLayer | None = None,
    anchor: str = "en",
    meta: Mapping[str, Any] | None = None,
    steered_langs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Similarity to the anchor and separation per layer, before and (optionally) after steering.

    ``before``/``after`` map layer -> language -> (n_items, d); ``delta`` covers
    ``steered_langs`` (default: every non-anchor language in ``after``). Result (layer keys are ints;
    JSON turns them into strings, and every reader here accepts both)::

        {"anchor", "layers", "langs", "n_items", "steered_langs",
         "before": {"similarity": {lang: {layer: {paired, paired_sd, means}}},
                    "separation": {layer: {silhouette, variance_ratio}}},
         "after":  same or None,
         "delta":  {lang: {layer: {paired, means}}} (after - before) or None}
    """
    layers = sorted(before)
    if not layers:
        raise UsageError("no layers to analyse; give at least one layer")

    def one(items: ItemsByLayer) -> dict[str, Any]:
        sim: dict[str, dict[int, Any]] = {}
        for layer in sorted(items):
            for lang, vals in similarity_to_anchor(items[layer], anchor).items():
                sim.setdefault(lang, {})[layer] = vals
        return {"similarity": sim, "separation": {layer: separation(items[layer]) for layer in sorted(items)}}

    langs = list(before[layers[0]])
    out: dict[str, Any] = {
        "anchor": anchor,
        "layers": layers,
        "langs": langs,
        "n_items": int(np.asarray(before[layers[0]][anchor]).shape[0]) if anchor in before[layers[0]] else 0,
        **dict(meta or {}),
        "before": one(before),
        "after": None,
        "delta": None,
        "steered_langs": [],
    }
    if after is not None:
        a = one(after)
        out["after"] = a
        delta: dict[str, dict[int, dict[str, float]]] = {}
        steered = set(steered_langs) if steered_langs is not None else set(a["similarity"])
        for lang, per_layer in a["similarity"].items():
            if lang not in steered:
                continue
            for layer, vals in per_layer.items():
                b = out["before"]["similarity"].get(lang, {}).get(layer)
                if b is None:
                    continue
                delta.setdefault(lang, {})[layer] = {k: vals[k] - b[k] for k in ("paired", "means")}
        out["delta"] = delta
        out["steered_langs"] = sorted(delta)
    return out


# --------------------------------------------------------------------------------------------
# Capturing pooled item vectors from a model
# --------------------------------------------------------------------------------------------


def _as_list(interventions: Any) -> list[Any]:
    if interventions is None:
        return []
    if isinstance(interventions, Mapping):
        raise UsageError(
            "give one intervention or a list (applied together); to analyse several named ones separately "
            "use xlsteer.analysis.run.analyze"
        )
    if isinstance(interventions, (list, tuple)):
        return list(interventions)
    return [interventions]


def steer_policies(interventions: Any, positions: str | Sequence[str] | None = None) -> list[str]:
    """Position policy per intervention: ``positions`` if given, else its ``params["positions"]``, else all."""
    ivs = _as_list(interventions)
    if positions is None:
        return [str((getattr(iv, "params", None) or {}).get("positions", "all")) for iv in ivs]
    return [positions] * len(ivs) if isinstance(positions, str) else list(positions)


def covered_langs(interventions: Any, langs: Sequence[str], anchor: str = "en") -> list[str]:
    """The languages every intervention can steer (the anchor always counts as covered)."""
    ivs = _as_list(interventions)
    out = []
    for lang in langs:
        if lang == anchor or all(not getattr(iv, "languages", None) or lang in iv.languages for iv in ivs):
            out.append(lang)
    return out


def check_parallel(texts_by_lang: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Same number of texts per language; drops rows that are empty in any language."""
    if not texts_by_lang:
        raise UsageError("no texts; give parallel texts for the anchor and at least one other language")
    lengths = {lang: len(t) for lang, t in texts_by_lang.items()}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise DataError(f"texts are not parallel ({detail}); give the same items in every language")
    n = next(iter(lengths.values()))
    keep = [i for i in range(n) if all(str(t[i]).strip() for t in texts_by_lang.values())]
    if not keep:
        raise DataError("every parallel row has an empty text in some language; give non-empty texts")
    return {lang: [str(t[i]) for i in keep] for lang, t in texts_by_lang.items()}


def _pool(x: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    m = mask.to(device=x.device, dtype=x.dtype)
    if pooling == "mean":
        return torch.einsum("bt,btd->bd", m, x) / m.sum(1).clamp_min(1).unsqueeze(1)
    t = x.shape[1]
    last = torch.where(mask.to(x.device), torch.arange(t, device=x.device), -1).max(1).values.clamp_min(0)
    return x[torch.arange(x.shape[0], device=x.device), last]


def forward_texts(lm: Any, texts: Sequence[str], batch_size: int, max_length: int,
                  state: dict[str, Any]) -> Iterator[int]:
    """Run ``texts`` through the model in padded batches for hook readers; yields each batch's size.

    Readers find the batch's real-token mask (BOS and padding excluded) in ``state["mask"]``.
    Only the last position's logits are computed: readers want activations, not 262k-wide logits.
    """
    from ..stats import positions_from_mask

    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        state["mask"] = token_mask(tok, ids, mask)
        model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
        yield len(chunk)


def token_mask(tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens that represent the text: not padding, not BOS."""
    mask = attention_mask.bool()
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        mask = mask & (input_ids != bos)
    return mask


@dataclass(frozen=True)
class ForwardConfig(Settings):
    """How the analyses run the model over texts: the anchor language (never steered), the batch
    size and the maximum length in tokens."""

    anchor: str = "en"
    batch_size: int = 8
    max_length: int = 128

    _what = "analysis forward setting"


def pooled_items(lm: Any, texts_by_lang: Mapping[str, Sequence[str]], layers: Sequence[int], *,
                 pooling: str = "mean", interventions: Any = None, positions: str | Sequence[str] | None = None,
                 site: str = "resid_post", cfg: ForwardConfig | None = None,
                 **settings: Any) -> dict[int, dict[str, np.ndarray]]:
    """One pooled vector per text at each layer: ``{layer: {lang: (n_items, d) float32}}``.

    With ``interventions``, each language's texts run under ``steer(..., langs=lang,
    anchor=anchor)`` and the vectors are read from the steered forward. ``positions`` is the
    steering position policy (default: each intervention's ``params["positions"]``, else all).
    ``cfg`` (:class:`ForwardConfig`; keyword ``settings`` override its fields): anchor, batch size,
    maximum length.
    """
    return pooled_states(lm, texts_by_lang, layers, poolings=(pooling,), interventions=interventions,
                         positions=positions, site=site, cfg=ForwardConfig.of(cfg, **settings))[pooling]


def pooled_states(lm: Any, texts_by_lang: Mapping[str, Sequence[str]], layers: Sequence[int], *,
                  poolings: Sequence[str] = ("mean",), interventions: Any = None,
                  positions: str | Sequence[str] | None = None, site: str = "resid_post",
                  cfg: ForwardConfig | None = None, **settings: Any) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """:func:`pooled_items` for several poolings from one forward: ``{pooling: {layer: {lang: array}}}``.

    Why: the analysis needs mean-pooled states (similarity) and last-token states (logit lens)
    of the same texts; reading both in one pass halves its forwards.
    """
    cfg = ForwardConfig.of(cfg, **settings)
    anchor, batch_size, max_length = cfg.anchor, cfg.batch_size, cfg.max_length
    poolings = tuple(dict.fromkeys(poolings))
    bad = [p for p in poolings if p not in POOLINGS]
    if bad or not poolings:
        raise UsageError(f"unknown pooling '{bad[0] if bad else ''}'; choose mean or last")
    if batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size}")
    model = lm.model
    sites = [Site(int(layer), site) for layer in sorted(set(layers))]
    if not sites:
        raise UsageError("no layers given; pass at least one layer")
    for s in sites:
        check_site(model, s)
    ivs = _as_list(interventions)
    missing = [lang for lang in texts_by_lang if lang not in covered_langs(ivs, [lang], anchor)]
    if missing:
        raise LanguageError(
            f"the intervention(s) cannot steer {', '.join(missing)}; leave those languages out or fit for them"
        )
    policies = steer_policies(ivs, positions)

    out: dict[str, dict[int, dict[str, list[torch.Tensor]]]] = {
        p: {s.layer: {lang: [] for lang in texts_by_lang} for s in sites} for p in poolings
    }
    state: dict[str, Any] = {}

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        x = act.detach().float()
        for p in poolings:
            out[p][s.layer][state["lang"]].append(_pool(x, state["mask"], p).cpu())

    total = sum(len(v) for v in texts_by_lang.values())
    with (
        steer(model, ivs, anchor=anchor, positions=policies, readers=[(sites, reader)]) as session,
        torch.inference_mode(),
        bar(total, "pooled items", "text") as pbar,
    ):
        for lang, items in texts_by_lang.items():
            state["lang"] = lang
            session.set_langs(lang)
            for n in forward_texts(lm, items, batch_size, max_length, state):
                pbar.update(n)
    return {
        p: {layer: {lang: torch.cat(chunks).numpy() for lang, chunks in by_lang.items()}
            for layer, by_lang in by_layer.items()}
        for p, by_layer in out.items()
    }


def layer_similarity(
    lm: Any,
    texts_by_lang: Mapping[str, Sequence[str]],
    layers: Sequence[int],
    interventions: Any = None,
    anchor: str = "en",
    pooling: str = "mean",
    *,
    batch_size: int = 8,
    max_length: int = 128,
) -> dict[str, Any]:
    """Similarity to the anchor and separation per layer for ``lm`` on parallel texts.

    Without ``interventions`` only ``before`` is filled. With them, ``after`` and ``delta`` cover
    the languages the interventions can steer (``steered_langs``); see
    :func:`similarity_from_items` for the result's layout.
    """
    texts = check_parallel(texts_by_lang)
    if anchor not in texts:
        raise LanguageError(f"no texts for the anchor language '{anchor}'; include it in texts_by_lang")
    kw = dict(anchor=anchor, pooling=pooling, batch_size=batch_size, max_length=max_length)
    before = pooled_items(lm, texts, layers, **kw)
    after = None
    if _as_list(interventions):
        langs = covered_langs(interventions, list(texts), anchor)
        steered = {lang: texts[lang] for lang in langs if lang != anchor}
        if steered:
            got = pooled_items(lm, steered, layers, interventions=interventions, **kw)
            # languages the interventions do not cover keep their unsteered vectors
            after = {layer: {lang: got[layer].get(lang, before[layer][lang]) for lang in texts} for layer in got}
    meta = {"pooling": pooling, "site": "resid_post", "model": getattr(lm, "name", None)}
    return similarity_from_items(before, after, anchor, meta, steered_langs=sorted(steered) if after else None)
