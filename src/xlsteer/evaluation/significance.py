"""Confidence intervals, paired tests and power for comparing a method with the unsteered model.

Why: METHODS.md section 4 asks for a 95% bootstrap CI on every score and a paired test of each
method against the unsteered model on the same items. Everything here is deterministic given
``seed`` (numpy ``Generator``), so a report can be regenerated bit for bit.

Conventions: ``a``/``base`` is the reference (unsteered), ``b``/``method`` the method; a
positive difference means the method scores higher. All returned numbers are Python floats or
ints (JSON-ready).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as _st

from xlsteer.errors import DataError, UsageError

__all__ = [
    "bootstrap_ci",
    "paired_bootstrap",
    "mcnemar",
    "min_detectable_effect",
    "mde_proportion",
    "summarize",
    "compare",
    "stratified_bootstrap_ci",
    "paired_stratified_bootstrap",
    "holm",
    "verdict",
    "regression",
]

# Largest number of resampled values held in memory at once (rows x items).
_CHUNK_CELLS = 2_000_000


def _values(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{what}: expected a 1-D list of per-item values, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{what}: no values; evaluate at least one item")
    if not np.isfinite(arr).all():
        raise DataError(f"{what}: values contain NaN or inf; drop or fix those items first")
    return arr


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise UsageError(f"n_boot={n_boot} must be a positive integer; e.g. 2000")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha={alpha} must lie in (0, 1); e.g. 0.05")


def _boot_stats(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, stat: Callable[..., Any]
) -> np.ndarray:
    """``stat`` of ``n_boot`` resamples with replacement, drawn in memory-bounded chunks.

    ``stat`` is called with ``axis=1`` on a chunk when it accepts that (np.mean, np.median...),
    else once per resample. The random draws are the same either way.
    """
    n = values.size
    rows = max(1, _CHUNK_CELLS // n)
    out = np.empty(n_boot, dtype=np.float64)
    vectorised = True
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        sample = values[rng.integers(0, n, size=(stop - start, n))]
        res = None
        if vectorised:
            try:
                res = np.asarray(stat(sample, axis=1), dtype=np.float64)
                if res.shape != (stop - start,):
                    res = None
            except TypeError:
                res = None
            if res is None:
                vectorised = False
        if res is None:
            res = np.array([float(stat(row)) for row in sample], dtype=np.float64)
        out[start:stop] = res
    return out


def bootstrap_ci(
    values: Any,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable[..., Any] = np.mean,
) -> tuple[float, float, float]:
    """(point, lo, hi): ``stat(values)`` and its percentile-bootstrap ``1 - alpha`` interval.

    One value gives (v, v, v): there is nothing to resample. The percentile interval is not
    forced to contain the point estimate (for the mean it does in practice).
    """
    _check_boot(n_boot, alpha)
    v = _values(values, "bootstrap_ci")
    point = float(stat(v))
    if v.size == 1:
        return point, point, point
    boot = _boot_stats(v, int(n_boot), np.random.default_rng(seed), stat)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def _paired(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    aa, bb = _values(a, f"{what} (a)"), _values(b, f"{what} (b)")
    if aa.shape != bb.shape:
        raise DataError(f"{what}: {aa.size} vs {bb.size} values; pair them item by item (same items, same order)")
    return aa, bb


def paired_bootstrap(
    a: Any, b: Any, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Paired bootstrap of ``mean(b) - mean(a)`` over items.

    Items are resampled jointly (the same indices for a and b). The two-sided p-value is the
    share of resampled mean differences that, once centred on the observed difference, are at
    least as far from 0 as the observed difference: ``mean(|d* - d| >= |d|)``. Identical
    inputs give diff 0 and p = 1.0 exactly. The resolution is 1/n_boot, and p can be 0.0 (read
    it as p < 1/n_boot). One pair gives p = 1.0 (no test is possible). For small n this test
    is anti-conservative; for 0/1 scores prefer :func:`mcnemar` (``compare`` does).
    Returns diff, ci_low, ci_high, p, n.
    """
    _check_boot(n_boot, alpha)
    aa, bb = _paired(a, b, "paired_bootstrap")
    d = bb - aa
    diff = float(d.mean())
    n = int(d.size)
    if n == 1:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": 1.0, "n": n}
    boot = _boot_stats(d, int(n_boot), np.random.default_rng(seed), np.mean)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    tol = 1e-12 * max(1.0, abs(diff))  # float noise must not decide "at least as extreme"
    p = float(np.mean(np.abs(boot - diff) >= abs(diff) - tol))
    return {"diff": diff, "ci_low": float(lo), "ci_high": float(hi), "p": p, "n": n}


def _binary(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{what}: expected a non-empty 1-D list of per-item 0/1 correctness, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, [0, 1]).all():
            raise DataError(f"{what}: values must be 0/1 (or bool) correctness; use kind='continuous' for scores")
        arr = arr.astype(bool)
    return arr


def mcnemar(correct_a: Any, correct_b: Any) -> dict[str, float | int]:
    """Exact McNemar test on paired 0/1 correctness (two-sided binomial test on discordant pairs).

    ``b01``: items a gets wrong and b gets right; ``b10``: a right, b wrong. Under H0 each
    discordant pair is equally likely either way, so p = binomtest(b01, b01 + b10, 0.5). No
    discordant pairs gives p = 1.0. Returns b01, b10, n_discordant, n, p.
    """
    aa, bb = _binary(correct_a, "mcnemar (a)"), _binary(correct_b, "mcnemar (b)")
    if aa.shape != bb.shape:
        raise DataError(f"mcnemar: {aa.size} vs {bb.size} items; pair them item by item")
    b01 = int(np.sum(~aa & bb))
    b10 = int(np.sum(aa & ~bb))
    nd = b01 + b10
    p = 1.0 if nd == 0 else float(min(1.0, _st.binomtest(b01, nd, 0.5, alternative="two-sided").pvalue))
    return {"b01": b01, "b10": b10, "n_discordant": nd, "n": int(aa.size), "p": p}


def _z(alpha: float, power: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha={alpha} must lie in (0, 1); e.g. 0.05")
    if not 0.0 < power < 1.0:
        raise UsageError(f"power={power} must lie in (0, 1); e.g. 0.8")
    return float(_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power))


def min_detectable_effect(values_a: Any, values_b: Any, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a paired test would detect: (z_{1-a/2} + z_power) sd(d)/sqrt(n).

    ``d = b - a`` per item, sd with ddof=1 (normal approximation). For 0/1 accuracy this is the
    sd of the paired differences too, i.e. it uses the observed discordance. When the paired
    differences have zero spread (e.g. identical predictions) the paired sd says nothing about
    other methods, so the unpaired sd sqrt(var(a) + var(b)) is used instead (independence:
    conservative when scores are positively correlated). Fewer than 2 items gives inf.
    """
    z = _z(alpha, power)
    aa, bb = _paired(values_a, values_b, "min_detectable_effect")
    n = aa.size
    if n < 2:
        return math.inf
    sd = float(np.std(bb - aa, ddof=1))
    if sd == 0.0:
        sd = float(math.sqrt(np.var(aa, ddof=1) + np.var(bb, ddof=1)))
    return z * sd / math.sqrt(n)


def mde_proportion(p: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Planning guess: MDE between two independent accuracies near ``p`` with ``n`` items each.

    (z_{1-a/2} + z_power) * sqrt(2 p (1 - p) / n). Paired designs on the same items usually do
    better; use :func:`min_detectable_effect` once both runs exist.
    """
    z = _z(alpha, power)
    if not 0.0 <= p <= 1.0:
        raise UsageError(f"p={p} must be a proportion in [0, 1]")
    if int(n) != n or n < 1:
        raise UsageError(f"n={n} must be a positive integer number of items")
    return z * math.sqrt(2 * p * (1 - p) / n)


def summarize(values: Any, seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> dict[str, float | int]:
    """mean, ci_low, ci_high (percentile bootstrap) and n of per-item scores."""
    mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(np.asarray(values).size)}


def compare(
    base_values: Any,
    method_values: Any,
    kind: str = "binary",
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Everything needed to report a method against the unsteered baseline on the same items.

    Keys: n, base_mean, method_mean, diff (method - base), diff_ci_low/high (paired bootstrap),
    p_bootstrap, for ``kind="binary"`` also b01, b10 and p_mcnemar, then p (the one the verdict
    uses: exact McNemar for binary, the paired permutation test for continuous -- exact up to 12
    items, where the bootstrap's p is anti-conservative), test (its name), mde
    (:func:`min_detectable_effect`, power 0.8) and verdict: "significant gain",
    "significant loss" or "no significant effect (MDE x.xx)" at level ``alpha``.
    """
    if kind not in ("binary", "continuous"):
        raise UsageError(f"kind={kind!r} must be 'binary' (0/1 correctness) or 'continuous' (e.g. F1)")
    if kind == "binary":
        a = _binary(base_values, "compare (base)").astype(np.float64)
        b = _binary(method_values, "compare (method)").astype(np.float64)
    else:
        a, b = np.asarray(base_values, dtype=np.float64), np.asarray(method_values, dtype=np.float64)
    pb = paired_bootstrap(a, b, n_boot=n_boot, seed=seed, alpha=alpha)
    out: dict[str, Any] = {
        "n": pb["n"],
        "base_mean": float(np.mean(a)),
        "method_mean": float(np.mean(b)),
        "diff": pb["diff"],
        "diff_ci_low": pb["ci_low"],
        "diff_ci_high": pb["ci_high"],
        "p_bootstrap": pb["p"],
    }
    if kind == "binary":
        mc = mcnemar(a, b)
        out.update(b01=mc["b01"], b10=mc["b10"], p_mcnemar=mc["p"], p=mc["p"], test="mcnemar")
    else:
        from .permutation import paired_permutation

        perm = paired_permutation([a], [b], n_perm=n_boot, seed=seed)
        out.update(p=perm["p"], test="paired_permutation")
    mde = min_detectable_effect(a, b, alpha=alpha, power=0.8)
    out["mde"] = mde
    out["verdict"] = verdict(out["p"], out["diff"], alpha, mde)
    return out


def verdict(p: float, diff: float, alpha: float = 0.05, mde: float | None = None) -> str:
    """"significant gain" / "significant loss" at level ``alpha``, else "no significant effect"
    (with the MDE when known, so that "no effect" and "too few items to tell" read apart)."""
    if p < alpha and diff > 0:
        return "significant gain"
    if p < alpha and diff < 0:
        return "significant loss"
    return "no significant effect" + (f" (MDE {mde:.2f})" if mde is not None else "")


def _strata(groups: Any, what: str) -> list[np.ndarray]:
    out = [_values(g, f"{what} (group {k})") for k, g in enumerate(groups)]
    if not out:
        raise DataError(f"{what}: no groups; give one list of per-item values per language")
    return out


def _stratified_boot(groups_a: list[np.ndarray], groups_b: list[np.ndarray] | None, n_boot: int, seed: int,
                     stat: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per resample, the unweighted mean over groups of ``stat`` of each group resampled on its own.

    With ``groups_b``, a and b are resampled with the same indices (paired). ``stat`` must take
    ``axis=1`` (np.mean, a vectorised macro F1).
    """
    rng = np.random.default_rng(seed)
    boot_a = np.zeros(n_boot)
    boot_b = np.zeros(n_boot) if groups_b is not None else None
    for k, a in enumerate(groups_a):
        n = a.size
        rows = max(1, _CHUNK_CELLS // n)
        for start in range(0, n_boot, rows):
            stop = min(n_boot, start + rows)
            idx = rng.integers(0, n, size=(stop - start, n))
            boot_a[start:stop] += np.asarray(stat(a[idx], axis=1), dtype=np.float64) / len(groups_a)
            if boot_b is not None:
                b = groups_b[k]  # type: ignore[index]
                boot_b[start:stop] += np.asarray(stat(b[idx], axis=1), dtype=np.float64) / len(groups_a)
    return boot_a, boot_b


def stratified_bootstrap_ci(groups: Any, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                            stat: Callable[..., Any] = np.mean) -> tuple[float, float, float]:
    """(point, lo, hi) of the unweighted mean over groups (languages) of ``stat(group)``.

    Why stratified: the average over languages is a mean of per-language scores, so items are
    resampled within their own language (each language keeps its n), not pooled.
    """
    _check_boot(n_boot, alpha)
    gs = _strata(groups, "stratified_bootstrap_ci")
    point = float(np.mean([float(stat(g)) for g in gs]))
    if all(g.size == 1 for g in gs):
        return point, point, point
    boot, _ = _stratified_boot(gs, None, int(n_boot), seed, stat)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def paired_stratified_bootstrap(groups_a: Any, groups_b: Any, n_boot: int = 2000, seed: int = 0,
                                alpha: float = 0.05, power: float = 0.8,
                                stat: Callable[..., Any] = np.mean) -> dict[str, Any]:
    """Paired test of the difference of two averages over languages (b minus a), on the same items.

    Items are resampled within each language with the same indices for a and b; the p-value is
    the centred rule of :func:`paired_bootstrap`. ``mde`` is (z_{1-a/2} + z_power) times the
    bootstrap standard error of the difference. Returns n (items), n_groups, base_mean,
    method_mean, diff, diff_ci_low, diff_ci_high, p, test, mde and verdict.
    """
    _check_boot(n_boot, alpha)
    ga, gb = _strata(groups_a, "paired_stratified_bootstrap (a)"), _strata(groups_b, "paired_stratified_bootstrap (b)")
    if [g.size for g in ga] != [g.size for g in gb]:
        raise DataError("paired_stratified_bootstrap: the groups differ in size; pair them item by item per language")
    base = float(np.mean([float(stat(g)) for g in ga]))
    method = float(np.mean([float(stat(g)) for g in gb]))
    diff = method - base
    out: dict[str, Any] = {"n": int(sum(g.size for g in ga)), "n_groups": len(ga), "base_mean": base,
                           "method_mean": method, "diff": diff, "test": "stratified_paired_bootstrap"}
    if all(g.size == 1 for g in ga):
        out.update(diff_ci_low=diff, diff_ci_high=diff, p=1.0, mde=math.inf)
    else:
        boot_a, boot_b = _stratified_boot(ga, gb, int(n_boot), seed, stat)
        d = boot_b - boot_a  # type: ignore[operator]
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        tol = 1e-12 * max(1.0, abs(diff))
        p = float(np.mean(np.abs(d - diff) >= abs(diff) - tol))
        se = float(np.std(d, ddof=1))
        if se == 0.0:  # identical runs: as min_detectable_effect, fall back to the unpaired spread
            se = float(math.sqrt(np.var(boot_a, ddof=1) + np.var(boot_b, ddof=1)))  # type: ignore[arg-type]
        out.update(diff_ci_low=float(lo), diff_ci_high=float(hi), p=p, mde=_z(alpha, power) * se)
    out["verdict"] = verdict(out["p"], diff, alpha, out["mde"])
    return out


def holm(p_values: Any) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the input order.

    Why: a per-language table runs one test per language; at 0.05, one "significant" language
    in twenty is expected by chance. Sorted ascending, p_(i) is multiplied by (m - i), made
    non-decreasing, and capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise DataError("holm: expected a 1-D list of p-values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return [float(x) for x in out]


def regression(x: Any, y: Any) -> dict[str, float | int]:
    """Least-squares line y = slope * x + intercept with Pearson r and the two-sided p of slope 0.

    Needs at least 3 points (with 2 the fit is exact and p is meaningless) and x not constant.
    A constant y gives slope 0, r 0 and p 1 (r is undefined there; NaN would break JSON).
    """
    xx, yy = _paired(x, y, "regression")
    if xx.size < 3:
        raise DataError(f"regression: {xx.size} points; need at least 3 for a p-value")
    if np.all(xx == xx[0]):
        raise DataError("regression: all x values are identical; vary x to fit a slope")
    res = _st.linregress(xx, yy)
    if np.all(yy == yy[0]):  # r is undefined (0/0); report no association rather than NaN
        return {"slope": 0.0, "intercept": float(yy[0]), "r": 0.0, "p": 1.0, "n": int(xx.size)}
    r = float(res.rvalue)
    p = float(res.pvalue)
    return {"slope": float(res.slope), "intercept": float(res.intercept), "r": r, "p": p, "n": int(xx.size)}
