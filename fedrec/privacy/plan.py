"""A silo's privacy plan for one run: its budget, δ, and the noise σ calibrated before the first release.

The run config says what every silo agrees on in public (mechanism, clip norm C, sample rate q, steps per
round, accountant). Each silo then fixes, on its own side and before it releases anything, its budget
(the jurisdiction's node config may only lower the run's), its δ and the σ that makes the run's planned
releases, composed with everything its ledger has already spent, fit the budget. The plan is stored in the
ledger, so a restarted silo keeps the σ it started the run with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedrec.errors import ConfigError
from fedrec.privacy.accountant import ACCOUNTANTS, GaussianSteps, calibrate_noise_multiplier, epsilon_of

PRIVACY_MODES = ("none", "user_dp")


DEFAULT_DELTA = 1e-6
"""The δ a run proposes unless told otherwise: a public policy value, never derived from a silo's data."""

DEFAULT_MAX_DELTA = 1e-5
"""The largest δ a silo accepts when its jurisdiction sets none (node config `max-delta`)."""

MECHANISMS = ("dp_sgd", "dp_statistics")
"""How a silo releases: noised clipped gradient steps (mf, twotower) or one noised statistics release per round
(iALS, `fedrec.statistics.dp_ials`)."""

DEFAULT_MAX_PER_USER = {"dp_sgd": 64, "dp_statistics": 16}
"""`privacy.max_per_user` when the run leaves it unset (0): a DP-SGD step samples a user's interactions for its
gradient; a statistics release adds each kept pair to a sum, so its noise grows with √k and a cap near a
typical user's history (about 15 on `experiment=sovereign_dp`) spends the budget better (simulations/README.md)."""


STATISTICS_CLIP_RANGE = (1e-6, 1e6)
"""The clip norms C a `dp_statistics` release accepts. Its blocks scale as C (sums of factors), 1 (counts) and C²
(the users' Gram, and that block's noise: σ·Δ·C/0.3); outside this range float32 loses the Gram's noise
(C = 1e-24: exactly 0, leaving the Gram a deterministic function of the users) or every block overflows."""


@dataclass(frozen=True)
class PrivacySettings:
    """The public, run-wide DP settings (`privacy=user_dp`); every field is validated with its fix."""

    mode: str = "none"
    epsilon: float = 8.0
    region_epsilon: dict[str, float] = field(default_factory=dict)
    delta: float = DEFAULT_DELTA
    clip_norm: float = 1.0
    sample_rate: float = 0.1
    steps_per_round: int = 50
    max_per_user: int = 0
    normaliser: float = 100.0
    accountant: str = "pld"

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, value: Any, what: str) -> None:
            if not ok:
                raise ConfigError(f"privacy.{key}={value!r} is invalid: must be {what}")

        need(self.mode in PRIVACY_MODES, "name", self.mode, f"one of {PRIVACY_MODES}")
        need(self.epsilon > 0, "epsilon", self.epsilon, "> 0 (use privacy=none for no DP)")
        for region, eps in self.region_epsilon.items():
            need(isinstance(eps, int | float) and eps > 0, f"region_epsilon.{region}", eps, "a number > 0")
        need(0 < self.delta < 1, "delta", self.delta,
             "in (0, 1): a public policy value such as 1e-6, or 1/(10·N) for a published bound N on the users")
        need(self.clip_norm > 0, "clip_norm", self.clip_norm, "> 0")
        need(0 < self.sample_rate <= 1, "sample_rate", self.sample_rate, "in (0, 1]")
        need(self.steps_per_round >= 0, "steps_per_round", self.steps_per_round, ">= 0 (0 = 1/sample_rate)")
        need(self.max_per_user >= 0, "max_per_user", self.max_per_user,
             f">= 1 (or unset: {DEFAULT_MAX_PER_USER} by mechanism)")
        need(self.normaliser > 0, "normaliser", self.normaliser, "> 0 (a public constant: q x a typical silo's users)")
        need(self.accountant in ACCOUNTANTS, "accountant", self.accountant, f"one of {ACCOUNTANTS}")

    @property
    def enabled(self) -> bool:
        """True when releases must be user-level DP."""
        return self.mode == "user_dp"

    @property
    def steps(self) -> int:
        """DP steps per round: as configured, else one expected pass over the users (⌈1/q⌉)."""
        return self.steps_per_round or math.ceil(1.0 / self.sample_rate)

    def cap(self, mechanism: str) -> int:
        """Interactions per user a release may use: as configured, else the mechanism's default."""
        return self.max_per_user or DEFAULT_MAX_PER_USER[mechanism]

    def budget_for(self, region: str, node_budget: float | None = None) -> float:
        """The region's ε budget: its entry in `region_epsilon`, else `epsilon`.

        A jurisdiction's own node config (`epsilon-budget`) can only lower it: the coordinator's run config
        cannot raise a silo's budget.
        """
        budget = float(self.region_epsilon.get(region, self.epsilon))
        return min(budget, node_budget) if node_budget is not None else budget

    def to_json_regions(self) -> str:
        """`region_epsilon` as the JSON string Flower's flat run config carries."""
        return json.dumps(self.region_epsilon, sort_keys=True)


@dataclass(frozen=True)
class PrivacyPlan:
    """What a silo committed to for one run (public: it goes out with every release)."""

    budget_epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    clip_norm: float
    max_per_user: int
    rounds: int
    accountant: str
    normaliser: float = PrivacySettings.normaliser
    mechanism: str = "dp_sgd"

    def event(self) -> GaussianSteps:
        """The cost of one round's release."""
        return GaussianSteps(self.sample_rate, self.noise_multiplier, self.steps_per_round)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the ledger)."""
        return asdict(self)


class BudgetSpent(Exception):
    """The silo's budget leaves no room for this run."""


def make_plan(p: PrivacySettings, *, budget: float, delta: float, rounds: int,
              prior: list[GaussianSteps], mechanism: str = "dp_sgd") -> PrivacyPlan:
    """Calibrate σ so that `prior` + `rounds` rounds spend at most `budget` at `delta`.

    A `dp_sgd` round is `p.steps` Poisson-sampled steps at rate `p.sample_rate`; a `dp_statistics` round is
    one Gaussian release over every user (rate 1, one step), whatever `sample_rate` and `steps_per_round` say.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism={mechanism!r} is unknown; choose one of {MECHANISMS}")
    low, high = STATISTICS_CLIP_RANGE
    if mechanism == "dp_statistics" and not low <= p.clip_norm <= high:
        raise ConfigError(f"privacy.clip_norm={p.clip_norm!r} is invalid for a statistics release: must lie in "
                          f"[{low:g}, {high:g}] (the noise on its Gram scales as C² and would leave float32)")
    spent = epsilon_of(prior, delta=delta, kind=p.accountant)
    if spent >= budget:
        raise BudgetSpent(f"budget exhausted before this run: spent ε={spent:.3f} of ε={budget:g} (δ={delta:g})")
    rate, steps = (p.sample_rate, p.steps) if mechanism == "dp_sgd" else (1.0, 1)
    sigma = calibrate_noise_multiplier(target_epsilon=budget, delta=delta, sample_rate=rate,
                                       steps=steps * rounds, kind=p.accountant, prior=prior)
    return PrivacyPlan(budget_epsilon=budget, delta=delta, noise_multiplier=sigma, sample_rate=rate,
                       steps_per_round=steps, clip_norm=p.clip_norm, max_per_user=p.cap(mechanism),
                       normaliser=p.normaliser, rounds=rounds, accountant=p.accountant, mechanism=mechanism)
