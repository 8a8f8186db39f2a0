"""iALS under user-level DP (`fedrec.statistics.dp_ials`): one user's bounded part, the noise, the solve, the plan.

The sensitivity is checked by brute force (the release's weighted sums with and without each user), the noise
against its declared scale, the accounting against the analytic Gaussian mechanism (Balle & Wang, ICML 2018),
the coordinator's solve against a direct per-item solve, and a silo through the real ClientApp: its release
is in the ledger before the reply, and only the DP release's names leave.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import MessageType
from scipy.stats import norm

from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.client_app import make_client_app
from fedrec.models import ModelSpec
from fedrec.models.ials import unpack
from fedrec.privacy.accountant import GaussianSteps, epsilon_of
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import DEFAULT_MAX_PER_USER, PrivacySettings, make_plan
from fedrec.silo.egress import EgressViolation, check_reply, statistics_reply
from fedrec.statistics import statistics_family, sum_statistics
from fedrec.statistics.dp_ials import (
    COUNT_WEIGHT,
    DP_RELEASE,
    GRAM_WEIGHT,
    NOISE_RIDGE,
    NOISE_VAR,
    USERS_WEIGHT,
    DpIalsStatistics,
    bounded_statistics,
    release,
    sensitivity,
)
from fedrec.statistics.ials import ITEM_GRAM, ITEM_RHS, ITEM_USERS, USER_GRAM, USERS
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction
from tests.test_private_silo import context, ledger, settings

SPEC = ModelSpec(name="ials", dim=4, kwargs={"alpha0": 0.1, "lam": 0.05, "nu": 1.0})
WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def factors(n_items: int, seed: int = 0, dim: int = SPEC.dim) -> dict[str, np.ndarray]:
    return {"item.weight": np.random.default_rng(seed).normal(0, 0.5, (n_items, dim)).astype(np.float32)}


def without_user(silo: SiloData, user: int) -> SiloData:
    keep = silo.train[0] != user
    return replace(silo, train=tuple(a[keep] for a in silo.train))  # type: ignore[arg-type]


def weighted(stats: dict[str, np.ndarray], clip: float) -> np.ndarray:
    """The concatenation the Gaussian mechanism noises: each block times its weight."""
    w = {ITEM_RHS: 1.0, ITEM_USERS: COUNT_WEIGHT * clip, USER_GRAM: GRAM_WEIGHT / clip, USERS: USERS_WEIGHT * clip}
    return np.concatenate([np.ravel(stats[k]) * w[k] for k in sorted(w)])


class PrefixKeys(NoiseSource):
    """Keys for the cap that are a fixed array's prefix: the same pair gets the same key with or without a last
    user (a coupling of the two neighbouring runs; the silo draws fresh keys from its CSPRNG)."""

    def __init__(self, n: int) -> None:
        super().__init__("seeded")
        self.keys = np.random.default_rng(7).random(n)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.keys[:n])


def as_last(silo: SiloData, user: int) -> SiloData:
    """The same silo with `user` and the last user's ids swapped (pairs are keyed in user order)."""
    last = silo.n_users - 1
    ids = np.where(silo.train[0] == user, last, np.where(silo.train[0] == last, user, silo.train[0]))
    return replace(silo, train=(ids, *silo.train[1:]))  # type: ignore[arg-type]


@pytest.mark.parametrize(("clip", "cap"), [(1.0, 4), (0.3, 16)])
def test_one_user_moves_the_release_by_at_most_the_sensitivity_and_by_it_when_capped(world, clip, cap) -> None:
    # Prepare: the biggest silo, at given item factors
    silo = world.silos["eu"]
    arrays = factors(silo.n_items)
    keys = PrefixKeys(len(silo.train[0]))

    def stats(s: SiloData) -> np.ndarray:
        return weighted(bounded_statistics(s, arrays, SPEC, clip_norm=clip, max_per_user=cap, noise=keys), clip)

    # Execute: brute force over users: each one made the last user, then removed
    moved = []
    for u in np.unique(silo.train[0]):
        mine = as_last(silo, int(u))
        moved.append(np.linalg.norm(stats(mine) - stats(without_user(mine, silo.n_users - 1))))

    # Assert: never beyond Δ; a user with at least `cap` distinct items reaches it
    distinct = np.array([len(np.unique(silo.train[1][silo.train[0] == u])) for u in np.unique(silo.train[0])])
    bound = sensitivity(clip, cap)
    assert max(moved) <= bound * (1 + 1e-9)
    # (not exactly: the packed Gram counts each off-diagonal entry once, below ‖w̃ w̃ᵀ‖_F)
    assert bool((distinct >= cap).any()) and max(moved) == pytest.approx(bound, rel=1e-3)


def test_every_user_is_scaled_to_the_clip_norm_and_each_keeps_at_most_the_cap(world) -> None:
    silo = world.silos["na"]
    stats = bounded_statistics(silo, factors(silo.n_items), SPEC, clip_norm=0.5, max_per_user=3,
                               noise=NoiseSource("seeded", seed=1))
    users = len(np.unique(silo.train[0]))
    assert stats[USERS][0] == users
    assert unpack(torch.from_numpy(stats[USER_GRAM]), SPEC.dim).numpy().trace() == pytest.approx(
        users * 0.25)  # Σ ‖w̃_u‖² = |U| C²
    assert stats[ITEM_USERS].sum() == sum(min(3, len(np.unique(silo.train[1][silo.train[0] == u])))
                                          for u in range(silo.n_users))


def test_the_noise_has_the_declared_scale_per_block() -> None:
    # Prepare: a large catalog so each block's empirical std is precise; no user (the sums are zero)
    silo = SiloData(region="eu", n_users=1, n_items=20_000, explicit=False,
                    train=(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)),
                    valid=(np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),),  # type: ignore[arg-type]
                    test=(np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),))  # type: ignore[arg-type]
    spec = replace(SPEC, dim=40)
    out = release(silo, factors(silo.n_items, dim=40), spec, clip_norm=0.5, max_per_user=9, noise_multiplier=2.0,
                  noise=NoiseSource("seeded", seed=0))
    std = 2.0 * sensitivity(0.5, 9)
    assert set(out) == DP_RELEASE
    assert out[NOISE_VAR][0] == pytest.approx(std**2, rel=1e-6)
    assert out[ITEM_RHS].std() == pytest.approx(std, rel=0.02)
    assert out[ITEM_USERS].std() == pytest.approx(std / (COUNT_WEIGHT * 0.5), rel=0.05)
    assert out[USER_GRAM].std() == pytest.approx(std / (GRAM_WEIGHT / 0.5), rel=0.1)


def test_a_release_refuses_no_noise() -> None:
    with pytest.raises(ValueError, match="no noise is not DP"):
        release(None, {}, SPEC, clip_norm=1.0, max_per_user=4, noise_multiplier=0.0,  # type: ignore[arg-type]
                noise=NoiseSource("seeded"))


def test_the_solve_is_each_items_ridge_regression_on_the_approximate_gram(world) -> None:
    # Prepare: the silos' noise-free statistics, summed, with a declared noise variance
    family = DpIalsStatistics()
    arrays = factors(world.n_items)
    summed = sum_statistics(family.local_statistics(s, arrays, SPEC) for s in world.silos.values())
    summed[NOISE_VAR] = np.array([4.0])

    # Execute
    h = family.solve(summed, arrays, SPEC, world.n_items)["item.weight"]

    # Assert: item by item, (( |U_i|/|U| + α₀) G + (λ(|U_i| + α₀|U|) + NOISE_RIDGE·2) I) h_i = b_i
    g = unpack(torch.from_numpy(summed[USER_GRAM]), SPEC.dim).numpy()
    users, a0, lam = summed[USERS][0], 0.1, 0.05
    for i in range(world.n_items):
        c = summed[ITEM_USERS][i]
        system = (c / users + a0) * g + (lam * (c + a0 * users) + NOISE_RIDGE * 2.0) * np.eye(SPEC.dim)
        np.testing.assert_allclose(h[i], np.linalg.solve(system, summed[ITEM_RHS][i]), rtol=1e-4, atol=1e-6)


def test_noise_that_makes_the_gram_indefinite_or_counts_negative_still_solves() -> None:
    family = DpIalsStatistics()
    rng = np.random.default_rng(0)
    summed = {ITEM_RHS: rng.normal(size=(30, SPEC.dim)), ITEM_USERS: rng.normal(size=30) * 5,
              USER_GRAM: rng.normal(size=10) * 3, USERS: np.array([-2.0]), NOISE_VAR: np.array([1.0])}
    h = family.solve(summed, {}, SPEC, 30)["item.weight"]
    assert h.shape == (30, SPEC.dim) and np.isfinite(h).all()


def test_a_dp_statistics_plan_is_one_gaussian_release_per_round_as_the_analytic_gaussian_mechanism() -> None:
    # Prepare: the analytic Gaussian mechanism's δ(ε) for sensitivity 1 and noise σ (Balle & Wang 2018, Thm 8)
    def delta(eps: float, sigma: float) -> float:
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)

    p = PrivacySettings(mode="user_dp", epsilon=4.0, sample_rate=0.05, steps_per_round=77)

    # Execute: 5 rounds of releases
    plan = make_plan(p, budget=4.0, delta=1e-6, rounds=5, prior=[], mechanism="dp_statistics")

    # Assert: rate 1, one step a round, the statistics cap; 5 releases at σ = one release at σ/√5, whose ε at
    # δ = 1e-6 (the accountant's) matches the analytic mechanism's
    cap = DEFAULT_MAX_PER_USER["dp_statistics"]
    assert (plan.sample_rate, plan.steps_per_round, plan.max_per_user) == (1.0, 1, cap)
    assert plan.event() == GaussianSteps(1.0, plan.noise_multiplier, 1)
    eps = epsilon_of([plan.event()] * 5, delta=1e-6)
    assert eps == pytest.approx(4.0, abs=0.01)
    assert delta(eps, plan.noise_multiplier / math.sqrt(5)) == pytest.approx(1e-6, rel=0.05)
    assert make_plan(p, budget=4.0, delta=1e-6, rounds=5, prior=[]).max_per_user == DEFAULT_MAX_PER_USER["dp_sgd"]


def test_egress_lets_out_only_the_dp_release_with_the_silos_report() -> None:
    report = {"epsilon": 1.0, "delta": 1e-6, "noise_multiplier": 2.0, "sample_rate": 1.0, "steps": 1.0,
              "release_steps": 1.0, "clip_norm": 1.0, "budget_epsilon": 8.0}
    dp = {k: np.zeros(2, np.float32) for k in DP_RELEASE}
    content = statistics_reply(dp, region="eu", server_round=1, privacy=report)
    assert check_reply(content, private=True) is content
    with pytest.raises(EgressViolation, match="only a DP release"):  # the same arrays without the report
        check_reply(statistics_reply(dp, region="eu", server_round=1), private=True)
    with pytest.raises(EgressViolation, match="only a DP release"):  # exact per-item Grams, even with a report
        statistics_reply({**dp, ITEM_GRAM: np.zeros(2, np.float32)}, region="eu", server_round=1, privacy=report)


def test_a_silo_releases_dp_statistics_after_its_ledger_records_them(world, tmp_path) -> None:
    # Prepare: a private iALS run through the real ClientApp
    s = settings(world, tmp_path, model="ials", dim=4, privacy_max_per_user=0)
    app, ctx = make_client_app(s), context()
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)

    # Execute: round 1, and round 1 again (a restarted coordinator)
    first = app(instruction(MessageType.TRAIN, arrays, 1), ctx)
    again = app(instruction(MessageType.TRAIN, arrays, 1), ctx)

    # Assert: the DP release's names and shapes, one release in the ledger with the plan's event, the report
    # says rate 1 and one step; the repeat is the same reply, not a second release
    sent = {k: v.numpy() for k, v in first.content.array_records["arrays"].items()}
    assert set(sent) == DP_RELEASE
    assert sent[ITEM_RHS].shape == (world.n_items, 4)
    on_disk = ledger(s, world, tmp_path)
    assert [(r.server_round, r.event.sample_rate, r.event.steps) for r in on_disk.releases] == [(1, 1.0, 1)]
    meta = first.content["meta"]
    assert meta["dp-sample-rate"] == 1.0 and meta["dp-epsilon"] == pytest.approx(on_disk.epsilon_spent())
    assert sent[NOISE_VAR][0] == pytest.approx((meta["dp-noise-multiplier"] * sensitivity(
        1.0, DEFAULT_MAX_PER_USER["dp_statistics"]))**2, rel=1e-5)
    assert np.array_equal(again.content.array_records["arrays"][ITEM_RHS].numpy(), sent[ITEM_RHS])
    assert len(ledger(s, world, tmp_path).releases) == 1


def test_the_coordinator_screens_a_private_ials_round_with_the_dp_family() -> None:
    family = statistics_family(SPEC, private=True)
    assert isinstance(family, DpIalsStatistics)
    assert set(family.statistic_shapes(10, SPEC)) == DP_RELEASE
    stats = {k: np.zeros(s, np.float32) for k, (s, _) in family.statistic_shapes(10, SPEC).items()}
    assert "declares the variance" in (family.check(stats, SPEC) or "")
    stats[NOISE_VAR][0] = 1.0
    assert family.check(stats, SPEC) is None
    with pytest.raises(Exception, match="no user-level DP release"):
        statistics_family(replace(SPEC, name="ease", kwargs={}), private=True)


def test_a_private_ials_run_ignores_the_sgd_loss_that_dp_sgd_would_refuse() -> None:
    from fedrec.errors import ConfigError
    from fedrec.settings import RunSettings

    RunSettings(model="ials", privacy="user_dp", loss="full_softmax")  # e.g. experiment=ml100k model=ials
    with pytest.raises(ConfigError, match="full_softmax"):
        RunSettings(model="mf", privacy="user_dp", loss="full_softmax")
