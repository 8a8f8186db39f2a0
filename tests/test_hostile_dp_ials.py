"""A hostile coordinator and a hostile co-silo against DP iALS (`model=ials`, `privacy=user_dp`).

The coordinator chooses the run config (model kwargs α₀, λ, ν, dim; privacy.clip_norm, max_per_user; the
run name and the rounds) and every H it sends (finite float32 within ±`MAX_ABS_RECEIVED`, which the silo
checks). It reads every reply, every error, and may send evaluation messages as often as it likes (they are
not accounted). Each test plays one attack on `fedrec.statistics.dp_ials` and the silo around it; a co-silo
plays the last ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.flower.client_app import make_client_app
from fedrec.models import ModelSpec
from fedrec.models.ials import IALS
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import PrivacySettings, make_plan
from fedrec.settings import RunSettings
from fedrec.silo.round import evaluate_splits, solve_alone
from fedrec.statistics.dp_ials import NOISE_VAR, bounded_statistics, release, sensitivity
from fedrec.statistics.ials import FACTORS, ITEM_RHS, USER_GRAM, USERS
from fedrec.training import TrainConfig, initial_global_arrays
from fedrec.world import prepare_world
from tests.test_client_egress import instruction
from tests.test_dp_ials import weighted
from tests.test_hostile_coordinator import ctx, deployed, meta, run_config
from tests.test_hostile_coordinator import world as world

EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def silo_of(users: np.ndarray, items: np.ndarray, n_items: int, n_users: int | None = None,
            test: tuple[np.ndarray, np.ndarray] | None = None) -> SiloData:
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    test_part = EMPTY if test is None else (np.asarray(test[0], np.int64), np.asarray(test[1], np.int64),
                                            np.ones(len(test[0]), np.float32))
    return SiloData(region="eu", n_users=int(users.max()) + 1 if n_users is None else n_users, n_items=n_items,
                    explicit=False, train=(users, items, np.ones(len(users), np.float32)), valid=EMPTY,
                    test=test_part)


# ---- 1. a solve that fails only when some user has many of the coordinator's chosen items ---------------


PROBE_ITEMS = 400
PROBE = ModelSpec(name="ials", dim=8, kwargs={"alpha0": 1e-30, "lam": 1e-8, "nu": 0.0})
"""The smallest ridge `check_ridge` allows (λ(α₀·n)^ν = 1e-8), and almost no weight on unobserved pairs."""


def probe_silo(heavy: bool) -> tuple[SiloData, dict[str, np.ndarray]]:
    """Ten light users on items 0..99; with `heavy`, one more user with the 400 items the coordinator probes."""
    n_items = 100 + PROBE_ITEMS
    users, items = np.repeat(np.arange(10), 5), np.random.default_rng(0).integers(0, 100, 50)
    if heavy:
        users = np.concatenate([users, np.full(PROBE_ITEMS, 10)])
        items = np.concatenate([items, np.arange(100, n_items)])
    h = np.random.default_rng(1).normal(0, 0.5, (n_items, PROBE.dim)).astype(np.float32)
    h[100:] = 1e3  # the largest values a silo accepts, all along one direction
    silo = silo_of(users, items, n_items, n_users=11, test=(np.arange(10), np.full(10, 99)))
    return silo, {FACTORS: h}


@pytest.mark.parametrize("heavy", [False, True])
def test_whether_a_user_has_many_probed_items_does_not_decide_whether_the_silo_fails(heavy: bool) -> None:
    # The coordinator sends H with 400 rows of 1e3 along one direction, α₀ = 1e-30, λ = 1e-8, ν = 0: a user
    # with ≥ ~300 of those items gets a system whose ridge is below float64's resolution, and the batched
    # Cholesky raised. The error reply (fixed code, but an error) then said whether such a user is in the
    # silo: un-noised, and free through evaluation messages, which the ledger does not count.
    silo, arrays = probe_silo(heavy)

    # Execute / Assert: a release and an evaluation both complete, heavy user or not
    stats = bounded_statistics(silo, arrays, PROBE, clip_norm=1.0, max_per_user=16, noise=NoiseSource("seeded"))
    assert np.isfinite(stats[ITEM_RHS]).all()
    evaluate_splits(silo, PROBE, arrays, None, TrainConfig(), seed=0, splits=("test",))


@pytest.mark.parametrize("fans", [0, 300])
def test_whether_an_item_has_many_users_does_not_decide_whether_a_forked_regions_solve_fails(fans: int) -> None:
    # A region that forked solves its own line in the silo on every training message (`advance_fork` →
    # `solve_alone`), before any DP round and outside the ledger. With H = 3.5e-5 everywhere, α₀ = 1e-30,
    # λ = 1e-8, ν = 0, every user's factors are ~5e3 along one direction, and the item solve of an item with
    # ≥ ~100 users did not factor: the error reply said so, for free.
    users = np.concatenate([np.arange(10), 10 + np.arange(fans)])
    items = np.concatenate([np.arange(10), np.full(fans, 20)])
    silo = silo_of(users, items, 50, n_users=400)
    out = solve_alone(silo, PROBE, {FACTORS: np.full((50, PROBE.dim), 3.5e-5, np.float32)})
    assert set(out.global_after) == {FACTORS}


# ---- 2. factors in the subnormal range: a user's part beyond the sensitivity ------------------------------


def test_a_user_whose_factors_are_subnormal_still_moves_the_release_by_at_most_the_sensitivity() -> None:
    # The coordinator sets λ = 1e132 (no upper bound) and gives only TARGET a non-zero row, tiny but normal in
    # float32: users of TARGET get w = h/λ ≈ 1e-162, whose squares are subnormal in float64. Each
    # component whose square is below half the smallest subnormal counts 0 in ‖w‖, so w·C/‖w‖ was up to √(d/2)
    # times longer than C (5.5x at d = 64): the release's Δ, and so the silo's ε, did not hold for them.
    n_items, target, dim = 30, 7, 64
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(20), 5), rng.choice(np.delete(np.arange(n_items), target), 100)
    users, items = np.append(users, [20, 20, 20]), np.append(items, [target, 1, 2])
    h = np.zeros((n_items, dim), np.float32)
    h[target, 0], h[target, 1:] = 2.7e-30, 1.5e-30
    spec = ModelSpec(name="ials", dim=dim, kwargs={"alpha0": 0.3, "lam": 1e132, "nu": 0.0})
    RunSettings(model="ials", dim=dim, model_kwargs=json.dumps(spec.kwargs), privacy="user_dp")  # accepted

    def stats(keep: np.ndarray) -> np.ndarray:
        silo = silo_of(users[keep], items[keep], n_items, n_users=21)
        return weighted(bounded_statistics(silo, {FACTORS: h}, spec, clip_norm=1.0, max_per_user=16,
                                           noise=NoiseSource("seeded")), 1.0)

    moved = np.linalg.norm(stats(np.ones(len(users), bool)) - stats(users != 20))
    assert moved <= sensitivity(1.0, 16) * (1 + 1e-9)


# ---- 3. a clip norm whose noise underflows ----------------------------------------------------------------


def test_a_clip_norm_that_underflows_the_grams_noise_is_refused() -> None:
    # The Gram block's noise has standard deviation σΔ/ω = σ·C²·√(k·1.09 + 0.18)/0.3: for C = 1e-24 it is
    # ~1e-47, below float32's smallest subnormal, and rounds to exactly 0, while 3,000 users' Σ w̃w̃ᵀ (3e-45)
    # does not: the Gram left the silo as a deterministic function of the users (not DP). C = inf passed too.
    n = 3000
    silo = silo_of(np.arange(n), np.zeros(n), n_items=5)
    h = np.zeros((5, 4), np.float32)
    h[0, 0] = 1.0  # every user's factors point along e₁
    spec = ModelSpec(name="ials", dim=4, kwargs={})
    for clip in (1e-24, float("inf")):
        with pytest.raises(ConfigError, match="clip_norm"):
            make_plan(PrivacySettings(mode="user_dp", clip_norm=clip), budget=8.0, delta=1e-6, rounds=5, prior=[],
                      mechanism="dp_statistics")
    try:
        grams = [release(silo, {FACTORS: h}, spec, clip_norm=1e-24, max_per_user=16, noise_multiplier=1.0,
                         noise=NoiseSource("secure"))[USER_GRAM] for _ in range(3)]
    except ValueError:
        return  # refused before anything private is computed
    assert grams[0][0] > 0 and not all(np.array_equal(grams[0], g) for g in grams[1:])


# ---- 4. float32 noise: the output's low bits name the true sums ----------------------------------------


def test_where_noise_and_sums_cancel_the_output_does_not_fit_the_true_sums_exactly() -> None:
    # Noise drawn in float32 lies on float32's grid at its own magnitude. Where the noisy sum is much smaller
    # than the noise (x + n ≈ 0), the float32 output is finer than that grid, so out − x was exactly such a
    # float32 number (to the output's rounding) for the true sums x every time, and for any other candidate,
    # such as a neighbour's x' (one user less), only by chance: a coordinator who knows everyone else's data
    # tells which (Mironov, CCS 2012, for the same effect in the sampler). 957 of 957 such entries here.
    rng = np.random.default_rng(0)
    n_items, dim = 200, 8
    users = np.concatenate([np.zeros(100, np.int64), np.repeat(np.arange(1, 60), 6)])
    items = np.concatenate([np.arange(100), rng.integers(0, n_items, 59 * 6)])
    silo = silo_of(users, items, n_items, n_users=60)
    arrays = {FACTORS: rng.normal(0, 0.5, (n_items, dim)).astype(np.float32)}
    spec, cap = ModelSpec(name="ials", dim=dim, kwargs={}), 200
    x = bounded_statistics(silo, arrays, spec, clip_norm=1.0, max_per_user=cap, noise=NoiseSource("seeded"))[ITEM_RHS]
    noise = NoiseSource("seeded", seed=3)
    fits, events = 0, 0
    for _ in range(20):
        out = release(silo, arrays, spec, clip_norm=1.0, max_per_user=cap, noise_multiplier=0.02,
                      noise=noise)[ITEM_RHS]
        r = out.astype(np.float64) - x  # the noise, if x are the sums
        cancel = (x != 0) & (np.abs(out) < np.abs(r) / 8)
        fit = np.abs(r - r.astype(np.float32).astype(np.float64)) <= np.spacing(np.abs(out)).astype(np.float64) / 2
        events += int(cancel.sum())
        fits += int(fit[cancel].sum())
    assert events > 200
    assert fits < 0.5 * events, (fits, events)


# ---- 5. what still holds (regressions) -----------------------------------------------------------------


def test_a_user_with_repeated_pairs_moves_the_release_by_at_most_the_sensitivity() -> None:
    # The cap draws its keys over the user's distinct pairs (the binary history), not over raw interaction
    # rows: a pair kept three times would put 3C in one item's sum, beyond the √k·C of k distinct items.
    rng = np.random.default_rng(0)
    users = np.concatenate([np.repeat(np.arange(1, 20), 4), [0, 0, 0, 0, 0, 0]])
    items = np.concatenate([rng.integers(0, 12, 76), [3, 3, 3, 3, 5, 5]])
    arrays = {FACTORS: rng.normal(0, 0.5, (12, 4)).astype(np.float32)}
    spec = ModelSpec(name="ials", dim=4, kwargs={})

    def stats(keep: np.ndarray) -> np.ndarray:
        silo = silo_of(users[keep], items[keep], 12, n_users=20)
        return weighted(bounded_statistics(silo, arrays, spec, clip_norm=1.0, max_per_user=4,
                                           noise=NoiseSource("seeded")), 1.0)

    moved = np.linalg.norm(stats(np.ones(len(users), bool)) - stats(users != 0))
    assert moved <= sensitivity(1.0, 4) * (1 + 1e-9)


def test_a_users_factors_do_not_depend_on_another_users_history() -> None:
    # Each user's system is their own pairs plus α₀HᵀH and a ridge from their own count (H is public): one
    # user joining must leave every other user's factors, hence their part of the release, as they were.
    silo, arrays = probe_silo(heavy=True)
    spec = ModelSpec(name="ials", dim=PROBE.dim, kwargs={"alpha0": 0.3, "lam": 0.05, "nu": 1.0})

    def factors(keep: np.ndarray) -> np.ndarray:
        model = IALS(11, silo.n_items, spec.dim, **spec.kwargs)
        model.item.weight.copy_(torch.from_numpy(arrays[FACTORS]))
        model.attach_history(silo.train[0][keep], silo.train[1][keep])
        return model.user_factors().numpy()

    np.testing.assert_array_equal(factors(np.ones(len(silo.train[0]), bool))[:10], factors(silo.train[0] != 10)[:10])


def test_a_run_name_planned_for_dp_sgd_is_declined_for_a_statistics_release(world, tmp_path: Path) -> None:
    node = deployed(world, tmp_path)
    cfg = run_config(world, tmp_path, **{"run-name": "one-run"})
    arrays = initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0)
    assert "declined" not in meta(make_client_app()(instruction(MessageType.TRAIN, arrays, 1), ctx(node, cfg)))
    ials = {**cfg, "model": "ials", "dim": 4}
    h = initial_global_arrays(ModelSpec("ials", 4), n_items=world.n_items, seed=0)
    reply = make_client_app()(instruction(MessageType.TRAIN, h, 2), ctx(node, ials))
    assert "was planned for dp_sgd" in meta(reply)["declined"]


def test_a_replayed_ials_round_with_other_item_factors_is_no_second_release(world, tmp_path: Path) -> None:
    node = deployed(world, tmp_path)
    cfg = run_config(world, tmp_path, **{"run-name": "ials-run", "model": "ials", "dim": 4})
    h = initial_global_arrays(ModelSpec("ials", 4), n_items=world.n_items, seed=0)
    first = make_client_app()(instruction(MessageType.TRAIN, h, 1), ctx(node, cfg))
    other = {FACTORS: (h[FACTORS] * 2).astype(np.float32)}
    again = make_client_app()(instruction(MessageType.TRAIN, other, 1, version="55" * 32), ctx(node, cfg))
    assert set(first.content["arrays"]) >= {NOISE_VAR, USERS}
    assert "already released" in meta(again)["declined"] and "arrays" not in again.content


# ---- 6. a hostile co-silo ------------------------------------------------------------------------------


WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


def loud_noise_mod(msg: Message, context: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
    """apac declares a noise variance 1e12 times its real one (its DP report unchanged), every round."""
    reply = call_next(msg, context)
    meta_ = reply.content.config_records.get("meta")
    if msg.metadata.message_type != "train" or meta_ is None or meta_["region"] != "apac":
        return reply
    stats = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    stats[NOISE_VAR] = (stats[NOISE_VAR] * 1e12).astype(np.float32)
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in stats.items()})
    return reply


def test_a_co_silo_declaring_more_noise_than_its_dp_report_gives_is_left_out(tmp_path: Path) -> None:
    # The coordinator's solve adds NOISE_RIDGE·√(Σ noise_var) to every item's ridge: one silo's declared
    # variance, unchecked beyond > 0 and finite, shrank every item to ~0 for everyone. The reply's public DP
    # report (σ, C) and the run's cap give the variance an honest silo declares: (σ·Δ(C, k))².
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=2, min_nodes=3,
                    model="ials", dim=4, privacy="user_dp", privacy_epsilon=8.0)
    run_in_process(s, client_mods=[loud_noise_mod])
    log = json.loads((tmp_path / "out" / "federated_history.json").read_text())["round_log"]
    assert [e["participants"] for e in log] == [["eu", "na"], ["eu", "na"]], log
    assert all("noise" in e["rejected"]["apac"] for e in log), log
