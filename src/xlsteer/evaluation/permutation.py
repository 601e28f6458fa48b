"""The paired permutation test: the p behind every verdict that is not McNemar's.

Why a module of its own: the bootstrap (significance.py) gives the confidence intervals, but its
p-value is anti-conservative at small n -- resampling four items that all gained never reaches
a difference of 0, so it reads "p < 0.001" where the exact answer is 2 / 2^4 = 0.125. Selection
on evidence, compare's per-language continuous scores and the average over languages all take
their p from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xlsteer.errors import DataError

from .significance import _CHUNK_CELLS, _strata, paired_stratified_bootstrap, verdict

__all__ = ["paired_permutation", "paired_stratified_test"]


def paired_permutation(groups_a: Any, groups_b: Any, n_perm: int = 2000, seed: int = 0,
                       stat: Callable[..., Any] = np.mean, exact_max: int = 12) -> dict[str, Any]:
    """Paired permutation test (approximate randomisation) of the difference of two averages over
    languages (b minus a), on the same items: two-sided p, exact at any n.

    Why not the bootstrap's p here: resampling 4 items that all gained gives a difference that never
    reaches 0, so its p is 0 -- "p < 0.001" from four items. Under the null hypothesis the two
    outputs of an item are exchangeable, so swapping them item by item (within its language) draws
    from the null distribution of the statistic (the unweighted mean over languages of ``stat``,
    which must take ``axis=1``). With at most ``exact_max`` items every one of the 2^n swaps is
    counted (the smallest possible p is 2 / 2^n when every item moves the same way); else
    ``n_perm`` random swaps, p = (hits + 1) / (n_perm + 1). Returns n, diff, p, test, exact.
    """
    ga = _strata(groups_a, "paired_permutation (a)")
    gb = _strata(groups_b, "paired_permutation (b)")
    if [g.size for g in ga] != [g.size for g in gb]:
        raise DataError("paired_permutation: the groups differ in size; pair them item by item per language")
    diff = float(np.mean([float(stat(g)) for g in gb]) - np.mean([float(stat(g)) for g in ga]))
    n = int(sum(g.size for g in ga))
    exact = n <= exact_max
    out = {"n": n, "diff": diff, "p": 1.0, "test": "stratified_paired_permutation", "exact": bool(exact)}
    if diff == 0:  # every swap is at least as extreme as no difference
        return out
    rows = 2 ** n if exact else int(n_perm)
    rng = np.random.default_rng(seed)
    tol = 1e-12 * max(1.0, abs(diff))
    hits = 0
    step = max(1, _CHUNK_CELLS // max(1, n))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        if exact:
            swap = ((np.arange(start, stop)[:, None] >> np.arange(n)) & 1).astype(bool)
        else:
            swap = rng.random((stop - start, n)) < 0.5
        t = np.zeros(stop - start)
        offset = 0
        for a, b in zip(ga, gb):
            m = swap[:, offset:offset + a.size]
            offset += a.size
            t += (np.asarray(stat(np.where(m, a, b), axis=1), dtype=np.float64)
                  - np.asarray(stat(np.where(m, b, a), axis=1), dtype=np.float64)) / len(ga)
        hits += int(np.sum(np.abs(t) >= abs(diff) - tol))
    out["p"] = float(min(1.0, hits / rows if exact else (hits + 1) / (rows + 1)))
    return out


def paired_stratified_test(groups_a: Any, groups_b: Any, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                           stat: Callable[..., Any] = np.mean) -> dict[str, Any]:
    """The paired test of a difference of averages over languages (b minus a, same items): the
    difference's CI and MDE from the paired bootstrap stratified by language
    (:func:`~xlsteer.evaluation.significance.paired_stratified_bootstrap`), p and the verdict from
    :func:`paired_permutation` stratified alike; the bootstrap's own p is kept as ``p_bootstrap``.
    """
    t = paired_stratified_bootstrap(groups_a, groups_b, n_boot=n_boot, seed=seed, alpha=alpha, stat=stat)
    perm = paired_permutation(groups_a, groups_b, n_perm=n_boot, seed=seed, stat=stat)
    t.update(p_bootstrap=t["p"], p=perm["p"], test=perm["test"], verdict=verdict(perm["p"], t["diff"], alpha, t["mde"]))
    return t
