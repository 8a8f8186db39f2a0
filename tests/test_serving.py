"""A region's served model on real silo data: the silo-side hooks the ClientApp calls, driven round by round.

Global versions are real models: a sequence trained on the silo (so later ones are better) or a freshly
initialised one (worse). What the region serves is read back from its own record and re-evaluated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import AdoptionPolicy
from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.models import ModelSpec
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.review import advance_fork, review
from fedrec.silo.round import evaluate_round, train_round
from fedrec.silo.serving import FORK_PREFIX, RegionServing
from fedrec.training import Arrays, TrainConfig, initial_global_arrays
from fedrec.world import prepare_world

SPEC = ModelSpec(name="mf", dim=8)
CFG = TrainConfig(batch_size=64, n_negatives=16, lr=0.05)
WORLD = SyntheticWorldConfig(n_users=200, n_items=50, region_only_items=2, region_sizes=(1.0, 1.0),
                             mean_interactions=15.0, min_interactions=6)


@pytest.fixture(scope="module")
def silo(tmp_path_factory: pytest.TempPathFactory) -> SiloData:
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))
    return world.silos[world.regions[0]]


def vid(rnd: int) -> str:
    return hashlib.sha256(f"version {rnd}".encode()).hexdigest()


@pytest.fixture(scope="module")
def versions(silo: SiloData) -> list[tuple[str, Arrays]]:
    """v0 (initial) .. v4: each trained one more round on the silo, so each is a real, better model."""
    arrays = initial_global_arrays(SPEC, n_items=silo.n_items, seed=0)
    out: list[tuple[str, Arrays]] = [(vid(0), arrays)]
    local, opt = None, None
    for rnd in range(1, 5):
        o = train_round(silo, SPEC, arrays, local, CFG, seed=rnd, optimizer_state=opt)
        arrays, local, opt = o.global_after, o.local_after, o.optimizer_after
        out.append((vid(rnd), arrays))
    return out


def drive(tmp: Path, silo: SiloData, policy: AdoptionPolicy, versions: list[tuple[str, Arrays]],
          order: list[int] | None = None) -> tuple[RegionServing, list]:
    """Rounds 1..n: a training message carrying version r-1, then an evaluation of version r (by `order`)."""
    serving = RegionServing(tmp, policy)
    order = order or list(range(1, len(versions)))
    reviews, prev = [], 0
    for rnd, idx in enumerate(order, start=1):
        if policy.kind == "fork":
            advance_fork(serving, silo, SPEC, CFG, server_round=rnd, received_version=versions[prev][0],
                         received_arrays=versions[prev][1], local=None, seed=rnd)
        cand, arrays = versions[idx]
        test = evaluate_round(silo, SPEC, arrays, None, CFG, seed=rnd)
        reviews.append(review(serving, silo, SPEC, CFG, server_round=rnd, candidate=cand, candidate_arrays=arrays,
                              local=None, candidate_test=test, seed=rnd))
        prev = idx
    return serving, reviews


def test_always_serves_each_new_version_and_its_metrics_are_the_global_ones(tmp_path, silo, versions) -> None:
    """Unguarded (the guard, on by default, is tested in `test_defences.py`)."""
    serving, reviews = drive(tmp_path, silo, AdoptionPolicy(guard=False), versions)
    assert [r.decision.served_after for r in reviews] == [v for v, _ in versions[1:]]
    assert serving.record.served() == versions[-1][0]
    assert reviews[-1].served == evaluate_round(silo, SPEC, versions[-1][1], None, CFG, seed=4)


def test_a_forked_region_stops_following_and_serves_its_own_trained_line(tmp_path, silo, versions) -> None:
    serving, reviews = drive(tmp_path, silo, AdoptionPolicy.from_config("eu", {"fork": 1}), versions)
    # round 1 follows the federation; the fork starts from version 1 at round 2's training message
    assert reviews[0].decision.served_after == versions[1][0]
    assert [r.decision.served_after for r in reviews[1:]] == [FORK_PREFIX + versions[1][0]] * 3
    fork = serving.fork()
    assert fork is not None and fork.base == versions[1][0] and fork.rounds == 3
    # the fork's arrays moved away from its base by local training and are none of the global versions
    for _, arrays in versions:
        assert any(not np.array_equal(fork.global_arrays[k], arrays[k]) for k in arrays)
    # what is served is the fork, evaluated as such (not the candidate)
    global_last = evaluate_round(silo, SPEC, versions[-1][1], None, CFG, seed=4)
    assert reviews[-1].served is not None and reviews[-1].served.sums != global_last.sums
    starts = [d for d in serving.record.decisions() if d.reason.startswith("the fork starts")]
    assert len(starts) == 1 and starts[0].round == 1


def test_a_fork_is_rebased_when_its_policy_names_a_newer_version(tmp_path, silo, versions) -> None:
    serving, _ = drive(tmp_path, silo, AdoptionPolicy.from_config("eu", {"fork": versions[1][0]}), versions[:3])
    users_before = serving.fork().local  # type: ignore[union-attr]
    rebased = RegionServing(tmp_path, AdoptionPolicy.from_config("eu", {"fork": versions[3][0][:12]}))
    fork = advance_fork(rebased, silo, SPEC, CFG, server_round=4, received_version=versions[3][0],
                        received_arrays=versions[3][1], local=None, seed=4)
    assert fork is not None and fork.base == versions[3][0] and fork.rounds == 1 and fork.since_round == 3
    assert set(fork.local) == set(users_before)  # the fork keeps its own users
    assert rebased.record.decisions()[-1].reason == "rebased the fork onto this version"
    assert rebased.record.served() == FORK_PREFIX + versions[3][0]


def test_a_pinned_region_stays_on_its_version(tmp_path, silo, versions) -> None:
    pin = versions[2][0][:10]
    _, reviews = drive(tmp_path, silo, AdoptionPolicy.from_config("eu", {"pin": pin}), versions)
    assert [r.decision.served_after for r in reviews] == [None] + [versions[2][0]] * 3
    assert reviews[0].served is None  # nothing served before the pinned version arrived
    assert reviews[-1].served == evaluate_round(silo, SPEC, versions[2][1], None, CFG, seed=4)


def test_a_pinned_version_not_received_is_fetched_from_the_registry(tmp_path, silo, versions) -> None:
    serving = RegionServing(tmp_path, AdoptionPolicy.from_config("eu", {"pin": versions[1][0][:8]}))
    test = evaluate_round(silo, SPEC, versions[3][1], None, CFG, seed=1)
    rv = review(serving, silo, SPEC, CFG, server_round=1, candidate=versions[3][0], candidate_arrays=versions[3][1],
                local=None, candidate_test=test, seed=1, fetch=lambda v: versions[1] if versions[1][0].startswith(v)
                else None)
    assert rv.decision.served_after == versions[1][0] and "registry" in rv.decision.reason
    assert rv.served == evaluate_round(silo, SPEC, versions[1][1], None, CFG, seed=1)


def test_if_better_keeps_the_served_version_against_a_worse_one_and_adopts_a_better_one(tmp_path, silo,
                                                                                        versions) -> None:
    # served: v4 (trained 4 rounds); candidates: v0 (initial, worse) then... v4 again is "already served"
    policy = AdoptionPolicy.from_config("eu", {"adopt": "if_better", "metric": "ndcg@20", "guard": False})  # unguarded
    serving, reviews = drive(tmp_path, silo, policy, versions, order=[2, 0, 4])
    d = [r.decision for r in reviews]
    assert d[0].adopted and d[0].reason == "nothing served yet"
    assert not d[1].adopted and d[1].served_after == versions[2][0]
    assert d[1].evidence["candidate"] < d[1].evidence["served"]
    # evidence is the validation metric of each model, recomputed independently
    valid = {i: evaluate_round(silo, SPEC, versions[i][1], None, CFG, seed=s, split="valid").means()["ndcg@20"]
             for i, s in ((0, 2), (2, 2))}
    assert d[1].evidence == pytest.approx({"candidate": valid[0], "served": valid[2]})
    assert d[2].adopted == (d[2].evidence["candidate"] > d[2].evidence["served"])
    assert serving.record.served() == d[2].served_after
    assert [x.round for x in ServingRecord(serving.dir).decisions()] == [1, 2, 3]
