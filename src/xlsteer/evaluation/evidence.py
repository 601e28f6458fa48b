"""Selection on evidence: the one rule that decides whether a steering setting replaces "no steering".

Why: a dev sweep picks the best of K settings by their dev score, and the best of K noisy scores
beats the unsteered model by chance alone: on 180 dev items a gain of one or two items is noise,
yet a "maximum on dev" rule carries it to test. Every place that selects (``xlsteer sweep``, the
steering rows of ``xlsteer compare``, the demo's dev choice) therefore asks this module, and a
steered setting replaces the unsteered model only when its dev gain is distinguishable from noise:

``test`` (default)
    a paired test of the best steered setting against the unsteered model on the same dev items
    — exact McNemar for a 0/1 main metric in one language, else a paired permutation test, for
    several languages stratified by language (the selection maximises the unweighted mean over
    languages, so that is the quantity tested; exact at any n, where a bootstrap p-value from 4
    items that all gained would read "p < 0.001") — must give a
    positive gain with p below ``level`` after Bonferroni's correction over the K settings tried
    (the winner of K is tested, so its raw p overstates the evidence K-fold at worst).
``one-se``
    the one-standard-error rule (Breiman et al., 1984): the simplest candidate, the unsteered
    model, is kept unless the best steered setting beats it by more than one standard error of
    the paired dev difference. Lenient (roughly a one-sided z > 1, no correction for K): use it to
    explore, not to claim.

Either way near-ties go to no steering; the rule, the dev gain with its 95% CI, p and the standard
error are recorded and printed (:func:`evidence_text`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UsageError
from ..formats import p_inline

RULES = ("test", "one-se")


@dataclass(frozen=True)
class SelectionRule:
    """Which rule decides (``test`` or ``one-se``) and, for ``test``, the level of the paired test."""

    name: str = "test"
    level: float = 0.05

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise UsageError(f"unknown selection rule {self.name!r}; choose one of {', '.join(RULES)}")
        if not isinstance(self.level, (int, float)) or isinstance(self.level, bool) or not 0 < self.level < 1:
            raise UsageError(f"the selection level must lie in (0, 1), e.g. 0.05; got {self.level!r}")

    def describe(self) -> str:
        """The rule in words (results record it; tables and the report print it)."""
        if self.name == "one-se":
            return ("one-standard-error rule: a steered setting replaces the unsteered model only when its dev gain "
                    "exceeds one standard error of the paired dev difference")
        return (f"paired test on dev: a steered setting replaces the unsteered model only when its dev gain is "
                f"positive with p < {self.level:g} after Bonferroni over the settings tried (McNemar for a 0/1 "
                "metric in one language, else a paired permutation test, stratified by language for several)")

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "level": float(self.level)}


def _paired_se(groups_a: Sequence[Any], groups_b: Sequence[Any]) -> float:
    """Standard error of the unweighted mean over groups of the per-item paired differences."""
    import numpy as np

    var = 0.0
    for a, b in zip(groups_a, groups_b):
        d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
        if d.size > 1:
            var += float(np.var(d, ddof=1)) / d.size
    return math.sqrt(var) / len(groups_a)


def gain_evidence(metric: Any, base: dict[str, list[dict]], steered: dict[str, list[dict]], langs: Sequence[str],
                  seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """The dev gain of ``steered`` over ``base`` (per-item records by language, same items in the
    same order) on the unweighted mean of ``metric`` over ``langs``: gain, its 95% CI, p, test, se, n."""
    from . import significance as S
    from .permutation import paired_stratified_test
    from .summary import metric_groups

    (ga, gb), stat = metric_groups([metric], metric.name, [base, steered], langs)
    if len(langs) == 1 and metric.kind == "binary":
        t = S.paired_stratified_bootstrap(ga, gb, n_boot=n_boot, seed=seed, stat=stat)  # the gain's CI
        p, test = S.mcnemar(ga[0], gb[0])["p"], "mcnemar"  # exact
    else:  # CI from the bootstrap; p exact at any n, unlike the bootstrap's (see permutation.paired_permutation)
        t = paired_stratified_test(ga, gb, n_boot=n_boot, seed=seed, stat=stat)
        p, test = t["p"], t["test"]
    if metric.kind == "macro_f1":  # no per-item values: the bootstrap's spread (MDE / z) is the standard error
        se = float(t["mde"]) / _z_mde()
    else:
        se = _paired_se(ga, gb)
    return {"gain": float(t["diff"]), "ci_low": float(t["diff_ci_low"]), "ci_high": float(t["diff_ci_high"]),
            "p": float(p), "test": test, "se": float(se), "n": int(t["n"]), "langs": list(langs)}


def _z_mde() -> float:
    from scipy import stats as st

    return float(st.norm.ppf(0.975) + st.norm.ppf(0.8))


def decide(rule: SelectionRule, evidence: dict[str, Any] | None, n_settings: int) -> dict[str, Any]:
    """Whether the best steered setting (its ``evidence`` against the unsteered model; None: there is
    none) replaces the unsteered model under ``rule``; the evidence with the rule's verdict added."""
    if evidence is None:
        return {"rule": rule.name, "steer": False, "why": "no steered setting was evaluated: no steering"}
    out = {**evidence, "rule": rule.name, "n_settings": int(n_settings)}
    gain = evidence["gain"]
    if rule.name == "one-se":
        steer = gain > 0 and gain > evidence["se"] * (1 + 1e-9)
        out["why"] = (f"gain {'exceeds' if steer else 'within'} one standard error ({evidence['se']:.3f}): "
                      f"{'steer' if steer else 'no steering'}")
    else:
        p_adj = min(1.0, evidence["p"] * max(1, n_settings))
        steer = gain > 0 and p_adj < rule.level
        out.update(level=float(rule.level), p_adjusted=p_adj)
        out["why"] = (f"Bonferroni over {n_settings} setting{'s' if n_settings != 1 else ''}: {p_inline(p_adj)} "
                      f"{'<' if steer else '>='} {rule.level:g}: {'steer' if steer else 'no steering'}"
                      if gain > 0 else "gain not positive: no steering")
    out["steer"] = bool(steer)
    return out


def evidence_text(ev: dict[str, Any] | None) -> str:
    """One line: the best steered setting's dev gain [95% CI], p (test), n and the rule's verdict."""
    if not ev or "gain" not in ev:
        return (ev or {}).get("why", "")
    return (f"dev gain {ev['gain']:+.3f} [{ev['ci_low']:+.3f}, {ev['ci_high']:+.3f}], {p_inline(ev['p'])} ({ev['test']}), "
            f"n {ev['n']}; {ev['why']}")
