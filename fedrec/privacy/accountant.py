"""A silo's privacy accountant: it records every DP release the silo makes and reports (ε, δ) for all of them.

Accounting is kept apart from the mechanism (as in Opacus' `accountants/` and Google's `dp_accounting`):
this class only records events — Poisson-subsampled Gaussian steps (sample rate q, noise multiplier σ,
number of steps) — and asks `dp_accounting` for the privacy loss of their composition. The default is the
privacy-loss-distribution (PLD) accountant, tighter than RDP for the same steps
(`tests/test_privacy_accounting.py` pins the gap). Events are plain data, so the accountant saves to /
restores from JSON (`state_dict`) and a restarted silo continues from exactly what it has spent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from fedrec.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp")
PLD_DISCRETIZATION = 1e-3
"""Grid step of the PLD: pessimistic (ε is rounded up); 1e-3 vs the library default 1e-4 changed ε by
< 0.01% at q=0.01, σ=0.74, 1,000 steps, and was 10x faster (0.07 s vs 0.66 s) on this machine."""


@dataclass(frozen=True)
class GaussianSteps:
    """`steps` steps of the subsampled Gaussian mechanism: Poisson sample rate q, noise multiplier σ."""

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate={self.sample_rate} must lie in (0, 1]")
        if self.noise_multiplier <= 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} must be > 0 (no noise is not DP)")
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")

    def dp_event(self) -> dp_accounting.DpEvent:
        """The event in dp_accounting's vocabulary."""
        step = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sample_rate < 1.0:
            step = dp_accounting.PoissonSampledDpEvent(self.sample_rate, step)
        return dp_accounting.SelfComposedDpEvent(step, self.steps)


def _new_accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    if kind == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    if kind == "rdp":
        return rdp.RdpAccountant()
    raise ValueError(f"accountant={kind!r} is unknown; choose one of {ACCOUNTANTS}")


def merge_events(events: list[GaussianSteps]) -> list[GaussianSteps]:
    """Events with equal (q, σ) merged into one (composition is commutative), in first-seen order.

    Twenty rounds of 50 steps and one run of 1,000 steps are the same mechanism; merging makes the
    accountant see the same event however it was recorded (so a plan calibrated for the whole run and the
    ledger that authorizes it round by round agree exactly), and composes once instead of per round.
    """
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        if e.steps > 0:
            key = (e.sample_rate, e.noise_multiplier)
            merged[key] = merged.get(key, 0) + e.steps
    return [GaussianSteps(q, sigma, steps) for (q, sigma), steps in merged.items()]


def epsilon_of(events: list[GaussianSteps], *, delta: float, kind: str = "pld") -> float:
    """ε at `delta` of the composition of `events` (0 for no events)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must lie in (0, 1)")
    events = merge_events(events)
    if not events:
        return 0.0
    acc = _new_accountant(kind)
    acc.compose(dp_accounting.ComposedDpEvent([e.dp_event() for e in events]))
    return float(acc.get_epsilon(delta))


class SiloAccountant:
    """Every release a silo has made, and what they cost together."""

    def __init__(self, *, delta: float, kind: str = "pld") -> None:
        _new_accountant(kind)  # validates the name
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta={delta} must lie in (0, 1)")
        self.delta = delta
        self.kind = kind
        self.events: list[GaussianSteps] = []

    def record(self, event: GaussianSteps) -> None:
        """Add a release that happened (or is about to: record before releasing)."""
        self.events.append(event)

    def epsilon(self) -> float:
        """ε spent so far at this accountant's δ."""
        return epsilon_of(self.events, delta=self.delta, kind=self.kind)

    def epsilon_if(self, event: GaussianSteps) -> float:
        """ε the silo would have spent after `event` (to decide before releasing)."""
        return epsilon_of([*self.events, event], delta=self.delta, kind=self.kind)

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready state."""
        return {"delta": self.delta, "kind": self.kind, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SiloAccountant:
        """Rebuild an accountant from `state_dict()`."""
        acc = cls(delta=float(state["delta"]), kind=str(state["kind"]))
        acc.events = [GaussianSteps(**e) for e in state["events"]]
        return acc


MIN_NOISE_MULTIPLIER = 0.2
"""The smallest σ the calibration considers: a budget only a smaller σ would spend is refused as meaningless."""


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               kind: str = "pld", prior: list[GaussianSteps] | None = None) -> float:
    """The smallest σ (to ~1e-3 relative) whose `steps` subsampled Gaussian steps stay within target ε.

    With `prior` (what the silo already released), the target is the total: ε(prior + new steps) ≤ target.
    The answer is checked with `epsilon_of`, the function the ledger authorizes with, so a plan that fits
    the budget is never declined in its last round by a rounding difference.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon={target_epsilon} must be > 0")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    prior = list(prior or [])
    if prior and epsilon_of(prior, delta=delta, kind=kind) >= target_epsilon:
        raise ValueError(f"the budget ε={target_epsilon} is already spent by earlier releases")

    def event(sigma: float) -> dp_accounting.DpEvent:
        return dp_accounting.ComposedDpEvent(
            [e.dp_event() for e in merge_events([*prior, GaussianSteps(sample_rate, sigma, steps)])])

    try:
        sigma = float(dp_accounting.calibrate_dp_mechanism(
            lambda: _new_accountant(kind), event, target_epsilon, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(MIN_NOISE_MULTIPLIER, 1.0), tol=1e-3))
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError as exc:
        # only what the run proposed is named: not the silo's budget, nor anything computed from its ledger
        raise ConfigError(f"the ε budget is more than {steps} steps at q={sample_rate:g} can spend even with noise "
                          f"multiplier σ={MIN_NOISE_MULTIPLIER}: a budget that large protects nothing; lower "
                          "privacy.epsilon or run privacy=none") from exc
    while epsilon_of([*prior, GaussianSteps(sample_rate, sigma, steps)], delta=delta, kind=kind) > target_epsilon:
        sigma *= 1.001
    return sigma
