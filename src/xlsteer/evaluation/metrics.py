"""Task metrics for the multilingual evaluation harness (pure numpy, no model code).

Why these exist rather than a library's: scores must be identical for every language and
method, robust to digits in any script, and auditable. Every choice that changes a number is
documented at the function that makes it.

Contents
--------
* MGSM's number extraction and exact match: :mod:`.metrics_numeric`.
* XQuAD's SQuAD F1 and exact match (character-level for languages written without spaces):
  :mod:`.metrics_text`.
* Classification (XNLI): :func:`accuracy`, :func:`macro_f1`, :func:`confusion`, :func:`degenerate`.
* Multiple choice (XCOPA, XNLI by log-likelihood): :func:`choice_scores`.
* Cross-lingual consistency: :func:`agreement`, :func:`js_divergence`, :func:`mean_js_divergence`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from xlsteer.errors import DataError, UsageError

__all__ = [
    "accuracy",
    "macro_f1",
    "confusion",
    "choice_scores",
    "degenerate",
    "agreement",
    "js_divergence",
    "mean_js_divergence",
]


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _pair(pred: Sequence[Any], gold: Sequence[Any], what: str) -> tuple[list[Any], list[Any]]:
    p, g = list(pred), list(gold)
    if len(p) != len(g):
        raise DataError(f"{what}: {len(p)} predictions but {len(g)} gold labels; align them item by item")
    if not p:
        raise DataError(f"{what}: no items; evaluate at least one item")
    return p, g


def accuracy(pred: Sequence[Any], gold: Sequence[Any]) -> float:
    """Share of items whose prediction equals the gold label."""
    p, g = _pair(pred, gold, "accuracy")
    return float(np.mean([a == b for a, b in zip(p, g)]))


def _labels(gold: list[Any], labels: Sequence[Hashable] | None, what: str) -> list[Any]:
    if labels is None:
        return sorted(set(gold), key=repr)
    lab = list(labels)
    if len(set(lab)) != len(lab):
        raise UsageError(f"{what}: labels {lab!r} contain duplicates; list each label once")
    unknown = set(gold) - set(lab)
    if unknown:
        raise DataError(f"{what}: gold labels {sorted(unknown, key=repr)!r} are not in labels {lab!r}; add them")
    return lab


def confusion(pred: Sequence[Any], gold: Sequence[Any], labels: Sequence[Hashable] | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of items with gold ``labels[i]`` predicted as ``labels[j]`` (int64).

    Predictions outside ``labels`` (e.g. unparseable generations) are not in any column, so a
    row may sum to less than its gold count; they still count as errors in :func:`accuracy`
    and :func:`macro_f1`. ``labels=None`` uses the sorted gold labels.
    """
    p, g = _pair(pred, gold, "confusion")
    lab = _labels(g, labels, "confusion")
    index = {label: i for i, label in enumerate(lab)}
    mat = np.zeros((len(lab), len(lab)), dtype=np.int64)
    for a, b in zip(p, g):
        j = index.get(a)
        if j is not None:
            mat[index[b], j] += 1
    return mat


def macro_f1(pred: Sequence[Any], gold: Sequence[Any], labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean over labels of per-label F1 = 2TP / (2TP + FP + FN).

    A label that is neither predicted nor gold has no defined F1 and is left out of the mean
    (so it neither helps nor hurts). A label predicted but never gold has F1 0. Predictions
    outside ``labels`` count as false negatives of their gold label. ``labels=None`` uses the
    labels that occur in ``gold``.
    """
    p, g = _pair(pred, gold, "macro_f1")
    lab = _labels(g, labels, "macro_f1")
    f1s = []
    for label in lab:
        tp = sum(1 for a, b in zip(p, g) if a == label and b == label)
        fp = sum(1 for a, b in zip(p, g) if a == label and b != label)
        fn = sum(1 for a, b in zip(p, g) if a != label and b == label)
        denom = 2 * tp + fp + fn
        if denom == 0:
            continue
        f1s.append(2 * tp / denom)
    return float(np.mean(f1s))


def degenerate(pred: Sequence[Any], threshold: float = 0.9) -> dict[str, Any]:
    """Flag a predictor that (nearly) always outputs one label, e.g. after over-steering.

    ``degenerate`` is True when the most frequent label's share is >= ``threshold``. Ties for
    the majority go to the label seen first.
    """
    p = list(pred)
    if not p:
        raise DataError("degenerate: no predictions; evaluate at least one item")
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"degenerate: threshold {threshold} must lie in (0, 1]; e.g. 0.9")
    label, count = Counter(p).most_common(1)[0]
    share = count / len(p)
    return {"degenerate": bool(share >= threshold), "majority_label": label, "majority_share": float(share)}


# --------------------------------------------------------------------------------------------
# Multiple choice by log-likelihood
# --------------------------------------------------------------------------------------------


def choice_scores(logprobs: Any, gold: Any) -> dict[str, np.ndarray]:
    """Per-item scores from choice log-probabilities (``n_items x n_choices``) and gold indices.

    Returns arrays of length n: ``pred`` (argmax; ties go to the lowest index, as in lm-eval),
    ``correct`` (pred == gold), ``margin`` (log-prob of gold minus the best wrong choice; > 0
    iff gold is the unique maximum) and ``p_correct`` (softmax over the choices, mass on gold).
    ``-inf`` log-probs are allowed, NaN is not.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    gd = np.asarray(gold)
    if lp.ndim != 2 or lp.shape[1] < 2:
        raise DataError(f"choice_scores: logprobs must be n_items x n_choices with >= 2 choices, got shape {lp.shape}")
    n, c = lp.shape
    if n == 0:
        raise DataError("choice_scores: no items; score at least one item")
    if gd.shape != (n,) or not np.issubdtype(gd.dtype, np.integer):
        raise DataError(f"choice_scores: gold must be {n} integer choice indices, got shape {gd.shape} dtype {gd.dtype}")
    if gd.min() < 0 or gd.max() >= c:
        raise DataError(f"choice_scores: gold indices must lie in 0..{c - 1}; fix the labels")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise DataError("choice_scores: logprobs contain NaN or +inf; check the scoring run")
    if np.isneginf(lp).all(axis=1).any():
        raise DataError("choice_scores: an item has -inf log-prob for every choice; check the scoring run")
    rows = np.arange(n)
    pred = np.argmax(lp, axis=1)
    gold_lp = lp[rows, gd]
    wrong = lp.copy()
    wrong[rows, gd] = -np.inf
    margin = gold_lp - wrong.max(axis=1)
    mx = lp.max(axis=1, keepdims=True)
    logz = mx[:, 0] + np.log(np.exp(lp - mx).sum(axis=1))
    p_correct = np.exp(gold_lp - logz)
    return {"pred": pred, "correct": pred == gd, "margin": margin, "p_correct": p_correct}


# --------------------------------------------------------------------------------------------
# Cross-lingual consistency
# --------------------------------------------------------------------------------------------


def agreement(pred_a: Sequence[Any], pred_b: Sequence[Any]) -> float:
    """Share of items on which two prediction lists (e.g. two languages) agree."""
    a, b = _pair(pred_a, pred_b, "agreement")
    return float(np.mean([x == y for x, y in zip(a, b)]))


def _distributions(x: Any, what: str) -> np.ndarray:
    arr = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"{what}: expected rows of probabilities, got shape {np.shape(x)}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DataError(f"{what}: probabilities must be finite and non-negative")
    sums = arr.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise DataError(f"{what}: a row sums to 0; each row must be a distribution over the choices")
    return arr / sums


def js_divergence(p: Any, q: Any) -> np.ndarray:
    """Per-row Jensen-Shannon divergence in bits (base 2), in [0, 1].

    Rows are renormalised to sum to 1 (so counts work too); 0 * log 0 = 0. Identical rows give
    0, rows with disjoint support give 1. A 1-D input is one row.
    """
    pp, qq = _distributions(p, "js_divergence p"), _distributions(q, "js_divergence q")
    if pp.shape != qq.shape:
        raise DataError(f"js_divergence: shapes {pp.shape} and {qq.shape} differ; align items and choices")
    m = 0.5 * (pp + qq)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log2(a) - np.log2(m)), 0.0)
        return terms.sum(axis=1)

    return np.clip(0.5 * kl(pp) + 0.5 * kl(qq), 0.0, 1.0)


def mean_js_divergence(p: Any, q: Any) -> float:
    """Mean over items of :func:`js_divergence`."""
    return float(np.mean(js_divergence(p, q)))
