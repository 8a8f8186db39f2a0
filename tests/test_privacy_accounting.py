"""Privacy accounting and the silo's budget ledger, pinned to published formulas, not to our own output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedrec.errors import ConfigError
from fedrec.privacy.accountant import (
    GaussianSteps,
    SiloAccountant,
    calibrate_noise_multiplier,
    epsilon_of,
)
from fedrec.privacy.ledger import BudgetLedger, Decline, Release


def analytic_gaussian_delta(eps: float, sigma: float) -> float:
    """Exact δ(ε) of one Gaussian mechanism with sensitivity 1 and noise σ (Balle & Wang 2018, Thm. 8)."""
    return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0, 5.0])
def test_single_gaussian_matches_the_analytic_gaussian_mechanism(sigma: float) -> None:
    # Prepare: the exact ε at δ=1e-5 from the closed form
    delta = 1e-5
    exact = brentq(lambda e: analytic_gaussian_delta(e, sigma) - delta, 1e-6, 50)

    # Execute
    eps = epsilon_of([GaussianSteps(sample_rate=1.0, noise_multiplier=sigma, steps=1)], delta=delta)

    # Assert: PLD is pessimistic (never below the truth) and tight (within 1%)
    assert exact <= eps <= exact * 1.01


def test_k_gaussian_steps_equal_one_gaussian_with_sigma_over_root_k() -> None:
    # k compositions of N(0, σ²) with sensitivity 1 are exactly one Gaussian with σ/√k (Dong et al. 2019, GDP)
    sigma, k, delta = 4.0, 16, 1e-5
    exact = brentq(lambda e: analytic_gaussian_delta(e, sigma / math.sqrt(k)) - delta, 1e-6, 50)
    eps = epsilon_of([GaussianSteps(1.0, sigma, k)], delta=delta)
    assert exact <= eps <= exact * 1.02


def test_pld_is_tighter_than_rdp_for_subsampled_gaussian() -> None:
    events = [GaussianSteps(0.01, 1.0, 1000)]
    pld_eps = epsilon_of(events, delta=1e-5, kind="pld")
    rdp_eps = epsilon_of(events, delta=1e-5, kind="rdp")
    assert pld_eps < rdp_eps
    assert 0.80 < pld_eps / rdp_eps < 0.95  # the 8-16% gap measured for this regime


def test_subsampling_amplifies_and_more_steps_cost_more() -> None:
    full = epsilon_of([GaussianSteps(1.0, 1.0, 100)], delta=1e-5)
    sampled = epsilon_of([GaussianSteps(0.01, 1.0, 100)], delta=1e-5)
    longer = epsilon_of([GaussianSteps(0.01, 1.0, 1000)], delta=1e-5)
    assert sampled < full
    assert sampled < longer


def test_accountant_composes_across_records_and_roundtrips_its_state() -> None:
    # Prepare: two rounds recorded separately must cost what one composed event costs
    acc = SiloAccountant(delta=1e-5)
    acc.record(GaussianSteps(0.02, 1.2, 50))
    acc.record(GaussianSteps(0.02, 1.2, 50))

    # Execute
    restored = SiloAccountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))

    # Assert
    assert acc.epsilon() == pytest.approx(epsilon_of([GaussianSteps(0.02, 1.2, 100)], delta=1e-5), rel=1e-6)
    assert restored.epsilon() == acc.epsilon()
    assert acc.epsilon_if(GaussianSteps(0.02, 1.2, 50)) > acc.epsilon()


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_calibrated_noise_meets_the_target_without_overshooting(target: float) -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=0.01, steps=500)
    achieved = epsilon_of([GaussianSteps(0.01, sigma, 500)], delta=1e-5)
    assert 0.98 * target <= achieved <= target


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sample_rate": 0.0, "noise_multiplier": 1.0, "steps": 1}, "sample_rate"),
    ({"sample_rate": 0.1, "noise_multiplier": 0.0, "steps": 1}, "noise_multiplier"),
    ({"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": -1}, "steps"),
])
def test_invalid_events_are_rejected_naming_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianSteps(**kwargs)


# ---- the silo's ledger ------------------------------------------------------------------------------------

STEP = GaussianSteps(0.05, 1.0, 20)


def test_ledger_survives_a_restart(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state" / "privacy-ledger.json"
    ledger = BudgetLedger(path, budget_epsilon=8.0, delta=1e-5)
    first = ledger.authorize(run_id="r1", server_round=1, event=STEP)

    # Execute: the silo restarts
    reopened = BudgetLedger(path, budget_epsilon=8.0, delta=1e-5)

    # Assert: it remembers what it spent
    assert isinstance(first, Release)
    assert reopened.epsilon_spent() == pytest.approx(first.epsilon_after)
    assert [r.server_round for r in reopened.releases] == [1]


def test_the_same_round_is_never_released_twice(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    BudgetLedger(path, budget_epsilon=8.0, delta=1e-5).authorize(run_id="r1", server_round=3, event=STEP)

    # a restarted coordinator asks again for round 3
    again = BudgetLedger(path, budget_epsilon=8.0, delta=1e-5).authorize(run_id="r1", server_round=3, event=STEP)

    assert isinstance(again, Decline)
    assert "already released" in again.reason


def test_a_release_over_budget_is_declined_and_not_recorded(tmp_path: Path) -> None:
    # Prepare: a budget that fits one release but not two
    one = epsilon_of([STEP], delta=1e-5)
    two = epsilon_of([STEP, STEP], delta=1e-5)
    ledger = BudgetLedger(tmp_path / "l.json", budget_epsilon=(one + two) / 2, delta=1e-5)

    # Execute
    ok = ledger.authorize(run_id="r", server_round=1, event=STEP)
    refused = ledger.authorize(run_id="r", server_round=2, event=STEP)

    # Assert
    assert isinstance(ok, Release)
    assert isinstance(refused, Decline)
    assert "budget exhausted" in refused.reason
    assert BudgetLedger(tmp_path / "l.json", budget_epsilon=10.0, delta=1e-5).epsilon_spent() == pytest.approx(one)


def test_a_crash_mid_write_leaves_the_previous_ledger(tmp_path: Path) -> None:
    # Prepare: one release on disk, then a crash that left a half-written temp file
    path = tmp_path / "ledger.json"
    BudgetLedger(path, budget_epsilon=8.0, delta=1e-5).authorize(run_id="r", server_round=1, event=STEP)
    (tmp_path / "ledger.json.tmp").write_text('{"accountant": {"delta": 1e-05, "ki')

    # Execute
    reopened = BudgetLedger(path, budget_epsilon=8.0, delta=1e-5)

    # Assert
    assert [r.server_round for r in reopened.releases] == [1]


def test_an_unreadable_ledger_is_a_clear_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"unreadable.*never delete it"):
        BudgetLedger(path, budget_epsilon=8.0, delta=1e-5)


def test_a_ledger_keeps_one_delta(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    BudgetLedger(path, budget_epsilon=8.0, delta=1e-5).authorize(run_id="r", server_round=1, event=STEP)
    with pytest.raises(ConfigError, match="one delta"):
        BudgetLedger(path, budget_epsilon=8.0, delta=1e-6)


# TensorFlow Privacy's MNIST DP-SGD table (tutorials/README.md): N=60,000, batch 256, δ=1e-5, moments
# accountant (RDP over orders 1.1..10.9 and 12..63, classic conversion ε = RDP(α) + log(1/δ)/(α-1)).
PUBLISHED_MNIST = [(1.3, 15, 1.19), (1.1, 60, 3.01), (0.7, 45, 7.10)]


@pytest.mark.parametrize(("sigma", "epochs", "published"), PUBLISHED_MNIST)
def test_rdp_curve_reproduces_published_dp_sgd_epsilons(sigma: float, epochs: int, published: float) -> None:
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian

    # Prepare: the published setting, in our event vocabulary
    q, steps = 256 / 60_000, math.ceil(epochs * 60_000 / 256)
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))

    # Execute: the library's RDP curve with the classic conversion, and our accountants
    rdp = steps * _compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)
    classic = min(r + math.log(1 / 1e-5) / (a - 1) for a, r in zip(orders, rdp, strict=True))
    ours_rdp = epsilon_of([GaussianSteps(q, sigma, steps)], delta=1e-5, kind="rdp")
    ours_pld = epsilon_of([GaussianSteps(q, sigma, steps)], delta=1e-5, kind="pld")

    # Assert: the published value to its two decimals; the tighter conversions only ever lower it
    assert classic == pytest.approx(published, abs=0.005)
    assert ours_pld < ours_rdp < published
