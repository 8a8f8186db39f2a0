"""An empirical lower bound on ε from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries are each included in the training data independently with probability 1/2. After training,
the auditor scores every canary from what was released, guesses "included" for the k₊ highest scores and
"excluded" for the k₋ lowest (abstaining on the rest), and counts its v correct guesses out of r = k₊ + k₋.
If the training run is (ε, δ)-DP, each guess is right with probability at most e^ε/(1+e^ε), as for
randomized response, up to a δ-term: the paper's Theorem 5.2 bounds P[v correct] by a binomial tail plus
2mδ times the largest average of the binomial's mass just below v. An ε whose p-value falls below
1 − confidence is rejected; the audit's lower bound is the largest rejected ε (0 when none is).

This module is the statistics only; which canaries to plant and how to score them is the audit's
(`fedrec.audit_privacy`). With several (k₊, k₋) choices the confidence is split across them (Bonferroni),
so choosing the best one after seeing the scores stays valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

_EPS_MAX = 50.0
"""Upper end of the bisection: far beyond any ε an audit of m ≤ 10⁶ canaries can certify."""


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v of r guesses correct] under (ε, δ)-DP with m canaries (Steinke et al. 2023, Thm 5.2 / Alg. 2).

    q = e^ε/(1+e^ε) is the accuracy of ε-DP randomized response; the bound is P[Bin(r, q) ≥ v] plus
    2·m·δ·max_{1≤i≤v} P[v−i ≤ Bin(r, q) < v] / i, capped at 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v−1], P[Bin = v−2], ..., P[Bin = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that v correct out of r guesses (m canaries) reject at `confidence`; 0 if none.

    The p-value grows with ε (a looser null allows more right guesses), so the rejected ε form an interval
    [0, ε*); ε* is found by bisection.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) > level:
        return 0.0
    lo, hi = 0.0, _EPS_MAX
    if p_value(m, r, v, hi, delta) <= level:
        return hi
    for _ in range(100):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) <= level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class AuditResult:
    """What one audit found: the bound, and the guesses it came from."""

    epsilon_lower_bound: float
    canaries: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    confidence: float
    delta: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain form for `results.json`."""
        return dict(self.__dict__)


def audit_scores(scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray, *, delta: float,
                 confidence: float = 0.95, fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5)
                 ) -> AuditResult:
    """The best bound over guessing the top and bottom `fraction` of canaries (k₊ = k₋ = fraction·m / 2).

    Each fraction is tried at confidence 1 − (1 − confidence)/len(fractions) (Bonferroni), so the best of
    them is a valid bound at `confidence`. Ties in the scores are broken by a fixed shuffle (seeded).
    """
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    if s.shape != truth.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores {s.shape} and included {truth.shape} must be equal-length vectors")
    if not np.isfinite(s).all():
        raise ValueError("canary scores must be finite")
    m = len(s)
    shuffle = np.random.default_rng(0).permutation(m)
    order = shuffle[np.argsort(s[shuffle], kind="stable")]  # ascending score
    each = 1.0 - (1.0 - confidence) / len(fractions)
    best: AuditResult | None = None
    for fraction in fractions:
        k = max(1, int(fraction * m / 2))
        plus, minus = order[m - k:], order[:k]
        correct = int(truth[plus].sum() + (~truth[minus]).sum())
        eps = epsilon_lower_bound(m, 2 * k, correct, delta=delta, confidence=each)
        result = AuditResult(epsilon_lower_bound=eps, canaries=m, included=int(truth.sum()), guesses=2 * k,
                             correct=correct, k_plus=k, k_minus=k, confidence=confidence, delta=delta)
        if best is None or eps > best.epsilon_lower_bound:
            best = result
    assert best is not None
    return best
