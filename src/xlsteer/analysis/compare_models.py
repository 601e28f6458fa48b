"""Base vs instruction-tuned: how SFT/RLHF change the alignment of languages with the anchor.

Why: the residual-stream paper asks how fine-tuning changes the way non-English inputs are
represented layer by layer. Here: for two models of one family (same number of layers), the
per-layer cosine similarity of each non-anchor language's pooled ``resid_post`` vectors to
the anchor's on the same parallel items (paired over items by default, see
:mod:`xlsteer.analysis.similarity`), and the difference ``second - first`` per layer.
Positive difference = the second model (e.g. instruct) keeps that language closer to the anchor.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import UsageError
from .similarity import ForwardConfig, check_parallel, pooled_items, similarity_from_items


def compare_models(
    lm_a: Any,
    lm_b: Any,
    texts_by_lang: Mapping[str, Sequence[str]],
    layers: Sequence[int] | None = None,
    *,
    pooling: str = "mean",
    labels: tuple[str, str] = ("base", "instruct"),
    key: str = "paired",
    cfg: ForwardConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Per-layer similarity to the anchor in both models and their difference (b - a).

    Result: ``{"anchor", "labels", "models", "layers", "langs", "key", "similarity": {label:
    {lang: {layer: cos}}}, "difference": {lang: {layer: b - a}}, "separation": {label:
    {layer: {silhouette, variance_ratio}}}, "summary": {lang: {mean_difference,
    max_abs_layer, max_abs_difference}}}``. ``cfg`` (:class:`~.similarity.ForwardConfig`; keyword
    ``settings`` override its fields): anchor, batch size, maximum length.
    """
    cfg = ForwardConfig.of(cfg, **settings)
    anchor = cfg.anchor
    if len(labels) != 2 or labels[0] == labels[1]:
        raise UsageError(f"give two different labels for the models, got {labels!r}")
    if key not in ("paired", "means"):
        raise UsageError(f"unknown similarity '{key}'; choose paired or means")
    n_a, n_b = lm_a.num_layers, lm_b.num_layers
    if n_a != n_b:
        raise UsageError(
            f"the models have {n_a} and {n_b} layers; compare two models of one family (same depth)"
        )
    texts = check_parallel(texts_by_lang)
    if anchor not in texts:
        raise UsageError(f"no texts for the anchor language '{anchor}'; include it in texts_by_lang")
    layers = list(range(n_a)) if layers is None else sorted(set(int(x) for x in layers))
    kw = dict(pooling=pooling, cfg=cfg)
    results = {
        label: similarity_from_items(pooled_items(lm, texts, layers, **kw), anchor=anchor)
        for label, lm in zip(labels, (lm_a, lm_b))
    }
    a, b = labels
    sim = {
        label: {lang: {layer: v[key] for layer, v in per.items()} for lang, per in res["before"]["similarity"].items()}
        for label, res in results.items()
    }
    diff = {lang: {layer: sim[b][lang][layer] - sim[a][lang][layer] for layer in layers} for lang in sim[a]}
    summary = {}
    for lang, per in diff.items():
        worst = max(per, key=lambda layer: abs(per[layer]))
        summary[lang] = {
            "mean_difference": sum(per.values()) / len(per),
            "max_abs_layer": worst,
            "max_abs_difference": per[worst],
        }
    return {
        "anchor": anchor,
        "labels": [a, b],
        "models": {a: getattr(lm_a, "name", a), b: getattr(lm_b, "name", b)},
        "fingerprints": {a: getattr(lm_a, "fingerprint", None), b: getattr(lm_b, "fingerprint", None)},
        "layers": layers,
        "langs": list(sim[a]),
        "key": key,
        "pooling": pooling,
        "n_items": len(next(iter(texts.values()))),
        "similarity": sim,
        "difference": diff,
        "separation": {label: res["before"]["separation"] for label, res in results.items()},
        "summary": summary,
    }


def plot(result: Mapping[str, Any]) -> Any:
    """Both models' curves and the difference (see :func:`xlsteer.analysis.plots.plot_compare_models`)."""
    from .plots import plot_compare_models

    return plot_compare_models(result)
