"""Hand-computed and distributional cases for xlsteer.evaluation.significance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xlsteer.errors import DataError, UsageError
from xlsteer.evaluation.significance import (
    bootstrap_ci,
    compare,
    holm,
    mcnemar,
    mde_proportion,
    min_detectable_effect,
    paired_bootstrap,
    paired_stratified_bootstrap,
    regression,
    stratified_bootstrap_ci,
    summarize,
)

Z = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8}


def test_bootstrap_ci_basic_and_shrinks():
    rng = np.random.default_rng(123)
    small = rng.normal(0.5, 1.0, 50)
    large = rng.normal(0.5, 1.0, 2000)
    ps, ls, hs = bootstrap_ci(small, seed=1)
    pl, ll, hl = bootstrap_ci(large, seed=1)
    assert ps == float(np.mean(small)) and pl == float(np.mean(large))
    assert ls <= ps <= hs and ll <= pl <= hl
    # width ~ 2 * 1.96 * sd / sqrt(n): ratio sqrt(40) ~ 6.3
    assert (hl - ll) < (hs - ls) / 3
    assert (hs - ls) == pytest.approx(2 * 1.96 * np.std(small) / math.sqrt(50), rel=0.2)
    # deterministic given the seed, different for another seed
    assert bootstrap_ci(small, seed=1) == (ps, ls, hs)
    assert bootstrap_ci(small, seed=2) != (ps, ls, hs)


def test_bootstrap_ci_edges():
    assert bootstrap_ci([3.5]) == (3.5, 3.5, 3.5)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(DataError):
        bootstrap_ci([])
    with pytest.raises(DataError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(UsageError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    # a statistic without axis= support falls back to a loop with the same draws
    v = np.arange(20.0)
    assert bootstrap_ci(v, stat=lambda x: float(np.median(x)), seed=3) == bootstrap_ci(v, stat=np.median, seed=3)


def test_paired_bootstrap_identical_and_strong():
    a = np.random.default_rng(0).integers(0, 2, 200)
    res = paired_bootstrap(a, a.copy(), seed=5)
    assert res["p"] == 1.0 and res["diff"] == 0.0
    assert res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    b = np.ones(100)
    b[:20] = 0
    strong = paired_bootstrap(np.zeros(100), b, seed=5)
    assert strong["diff"] == pytest.approx(0.8)
    assert strong["p"] == 0.0
    assert strong["ci_low"] <= 0.8 <= strong["ci_high"]
    assert paired_bootstrap([0.0], [1.0])["p"] == 1.0
    assert paired_bootstrap(a, 1 - a, seed=9) == paired_bootstrap(a, 1 - a, seed=9)


def _mcnemar_arrays(b01, b10, both_right, both_wrong):
    a = [0] * b01 + [1] * b10 + [1] * both_right + [0] * both_wrong
    b = [1] * b01 + [0] * b10 + [1] * both_right + [0] * both_wrong
    return np.array(a), np.array(b)


def test_mcnemar_hand_computed():
    a, b = _mcnemar_arrays(8, 2, 5, 3)
    res = mcnemar(a, b)
    assert (res["b01"], res["b10"], res["n_discordant"], res["n"]) == (8, 2, 10, 18)
    # two-sided exact: 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert res["p"] == pytest.approx(112 / 1024, abs=1e-12)
    assert mcnemar([1, 0, 1], [1, 0, 1])["p"] == 1.0
    # 5 vs 0: 2 / 32
    a, b = _mcnemar_arrays(5, 0, 0, 0)
    assert mcnemar(a, b)["p"] == pytest.approx(1 / 16)
    with pytest.raises(DataError):
        mcnemar([0.5, 1], [1, 1])


def test_min_detectable_effect():
    # d = [1, 0, 0, 0]: sd (ddof=1) = 0.5, n = 4 -> Z * 0.5 / 2
    assert min_detectable_effect([0, 0, 0, 0], [1, 0, 0, 0]) == pytest.approx(Z * 0.25)
    # identical scores: paired sd 0 -> unpaired sd sqrt(1/3 + 1/3)
    assert min_detectable_effect([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(Z * math.sqrt(2 / 3) / 2)
    mdes = [min_detectable_effect(np.tile([0, 1, 1, 0, 1], k), np.tile([1, 1, 0, 0, 1], k)) for k in (4, 16, 64)]
    assert mdes[0] > mdes[1] > mdes[2]
    assert mdes[0] == pytest.approx(2 * mdes[1], rel=0.05)  # ~ 1/sqrt(n)
    assert min_detectable_effect([1.0], [2.0]) == math.inf
    assert mde_proportion(0.5, 100) == pytest.approx(Z * math.sqrt(0.005))
    assert mde_proportion(0.5, 400) < mde_proportion(0.5, 100)
    with pytest.raises(UsageError):
        mde_proportion(1.5, 10)


def test_summarize_and_compare():
    s = summarize([0, 1, 1, 1], seed=0)
    assert s["mean"] == 0.75 and s["n"] == 4 and s["ci_low"] <= 0.75 <= s["ci_high"]

    base, method = _mcnemar_arrays(30, 2, 50, 18)
    gain = compare(base, method, kind="binary", seed=0)
    assert gain["diff"] == pytest.approx(28 / 100)
    assert (gain["b01"], gain["b10"], gain["test"]) == (30, 2, "mcnemar")
    assert gain["p"] == gain["p_mcnemar"] < 0.05
    assert gain["verdict"] == "significant gain"
    assert compare(method, base, kind="binary", seed=0)["verdict"] == "significant loss"

    same = compare(base, base, kind="binary", seed=0)
    assert same["p"] == 1.0 and same["p_bootstrap"] == 1.0 and same["diff"] == 0.0
    assert same["verdict"] == f"no significant effect (MDE {same['mde']:.2f})"
    assert same["verdict"].startswith("no significant effect (MDE 0.")

    rng = np.random.default_rng(4)
    x = rng.random(300)
    cont = compare(x, x + 0.05 + rng.normal(0, 0.01, 300), kind="continuous", seed=0)
    assert cont["test"] == "paired_permutation" and cont["verdict"] == "significant gain"
    assert "p_mcnemar" not in cont
    assert compare(base, method, kind="binary", seed=7) == compare(base, method, kind="binary", seed=7)
    with pytest.raises(UsageError):
        compare(base, method, kind="ordinal")
    with pytest.raises(DataError):
        compare([0.3, 0.2], [0.1, 0.5], kind="binary")


def test_regression_recovers_slope():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 10, 200)
    y = 3.0 * x + 2.0 + rng.normal(0, 0.5, x.size)
    res = regression(x, y)
    assert abs(res["slope"] - 3.0) < 0.05 and abs(res["intercept"] - 2.0) < 0.2
    assert res["r"] > 0.99 and res["p"] < 1e-100 and res["n"] == 200
    exact = regression([0, 1, 2, 3], [1, 3, 5, 7])
    assert exact["slope"] == pytest.approx(2.0) and exact["intercept"] == pytest.approx(1.0)
    assert exact["r"] == pytest.approx(1.0)
    assert regression([1, 2, 3], [5, 5, 5]) == {"slope": 0.0, "intercept": 5.0, "r": 0.0, "p": 1.0, "n": 3}
    with pytest.raises(DataError):
        regression([1, 2], [1, 2])
    with pytest.raises(DataError):
        regression([1, 1, 1], [1, 2, 3])


def test_stratified_ci_of_one_group_is_the_ordinary_bootstrap():
    v = np.random.default_rng(1).random(57)
    assert stratified_bootstrap_ci([v], n_boot=500, seed=3) == bootstrap_ci(v, n_boot=500, seed=3)


def test_stratified_ci_contains_the_mean_of_means_and_shrinks_with_n():
    rng = np.random.default_rng(2)
    small = [rng.integers(0, 2, 40), rng.integers(0, 2, 10) * 0.5 + 0.2]
    point, lo, hi = stratified_bootstrap_ci(small, n_boot=1000)
    assert point == pytest.approx((small[0].mean() + small[1].mean()) / 2)  # unweighted: languages count alike
    assert lo <= point <= hi
    big = [np.tile(g, 20) for g in small]  # same means, 20x the items
    p2, lo2, hi2 = stratified_bootstrap_ci(big, n_boot=1000)
    assert p2 == pytest.approx(point) and (hi2 - lo2) < (hi - lo) / 3


def test_paired_stratified_bootstrap_identical_strong_and_one_group():
    rng = np.random.default_rng(4)
    a = [rng.integers(0, 2, 80).astype(float), rng.integers(0, 2, 30).astype(float)]
    same = paired_stratified_bootstrap(a, a, n_boot=500)
    assert same["diff"] == 0.0 and same["p"] == 1.0 and same["mde"] > 0
    assert same["verdict"].startswith("no significant effect")
    better = [np.ones_like(g) for g in a]
    strong = paired_stratified_bootstrap(a, better, n_boot=500)
    assert strong["p"] < 0.01 and strong["verdict"] == "significant gain"
    assert strong["diff_ci_low"] > 0 and strong["n"] == 110 and strong["n_groups"] == 2
    one = paired_stratified_bootstrap([a[0]], [better[0]], n_boot=500, seed=7)
    ref = paired_bootstrap(a[0], better[0], n_boot=500, seed=7)  # the same draws
    assert one["diff"] == pytest.approx(ref["diff"]) and one["p"] == ref["p"]
    assert (one["diff_ci_low"], one["diff_ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))
    with pytest.raises(DataError, match="differ in size"):
        paired_stratified_bootstrap(a, [a[0], a[1][:-1]])
    with pytest.raises(DataError, match="no groups"):
        stratified_bootstrap_ci([])


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06, 0.5 (kept non-decreasing)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.9]) == [0.8, 0.9]
    assert holm([1.0]) == [1.0]
    with pytest.raises(DataError):
        holm([1.5])


def test_the_paired_permutation_test_is_exact_on_small_samples_and_agrees_with_mcnemar():
    """Every swap counted for n <= 12: all of n items gaining gives 2 / 2^n (two-sided); on 0/1
    values in one language it is McNemar's exact test; Monte Carlo for larger n stays close."""
    from xlsteer.evaluation.permutation import paired_permutation
    from xlsteer.evaluation.significance import mcnemar

    for n in (1, 3, 5):
        t = paired_permutation([np.zeros(n)], [np.ones(n)])
        assert t["exact"] and t["p"] == pytest.approx(min(1.0, 2 / 2 ** n))
    assert paired_permutation([np.zeros(4)], [np.zeros(4)])["p"] == 1.0
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 12).astype(float), rng.integers(0, 2, 12).astype(float)
    assert paired_permutation([a], [b])["p"] == pytest.approx(mcnemar(a.astype(bool), b.astype(bool))["p"])
    # stratified: the statistic is the unweighted mean over languages of each language's mean
    big_a = [rng.normal(0, 1, 40), rng.normal(0, 1, 25)]
    big_b = [big_a[0] + 0.3 + rng.normal(0, 1, 40), big_a[1] + rng.normal(0, 1, 25)]
    mc = paired_permutation(big_a, big_b, n_perm=4000, seed=0)
    assert not mc["exact"] and mc["diff"] == pytest.approx((np.mean(big_b[0] - big_a[0]) + np.mean(big_b[1] - big_a[1])) / 2)
    assert 0 < mc["p"] < 1 and paired_permutation(big_a, big_b, n_perm=4000, seed=0)["p"] == mc["p"]
    with pytest.raises(DataError, match="differ in size"):
        paired_permutation([np.zeros(3)], [np.zeros(4)])
