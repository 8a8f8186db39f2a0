"""`adopt: adapt` in one silo, driven hook by hook on real silo data: the own line, the adapted candidates, the
validation-best decision and its evidence, replays, and iALS's MAP item solve against a direct computation.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fedrec.adaptation import adapt_ials
from fedrec.config import AdoptionPolicy
from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.evaluation import SiloEvaluation
from fedrec.models import ModelSpec
from fedrec.silo.adaptation import (
    ADAPTED_PREFIX,
    OWN_PREFIX,
    advance_own_line,
    choose,
    choose_confident,
    evaluate_served,
    paired_p_value,
    review_adapted,
    served_kind,
)
from fedrec.silo.round import evaluate_splits, silo_seed, solve_alone, train_round
from fedrec.silo.serving import OWN_FILE, RegionServing
from fedrec.statistics import solve_silos
from fedrec.training import Arrays, TrainConfig, initial_global_arrays
from fedrec.world import prepare_world
from tests.test_ials import reference_half_step

MF = ModelSpec(name="mf", dim=8)
CFG = TrainConfig(batch_size=64, n_negatives=16, lr=0.05)
KW = {"alpha0": 0.3, "lam": 0.05, "nu": 1.0}
IALS = ModelSpec(name="ials", dim=6, kwargs=KW)
WORLD = SyntheticWorldConfig(n_users=240, n_items=50, region_only_items=3, region_sizes=(2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
POLICY = AdoptionPolicy.from_config("eu", {"adopt": "adapt", "adapt_rounds": 2, "confidence": 0})
"""The plain validation-best rule (the paired-test rule is tested with its own policy below)."""


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiloData]:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).silos


@pytest.fixture(scope="module")
def silo(silos: dict[str, SiloData]) -> SiloData:
    return silos[sorted(silos)[0]]


def vid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def same(a: Arrays, b: Arrays) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


# --- the own line ----------------------------------------------------------------------------------------------


def test_the_own_line_is_local_only_training_once_per_training_message(tmp_path: Path, silo: SiloData) -> None:
    # Prepare: version 0 and a later, different version the federation sends in round 2
    v0 = initial_global_arrays(MF, n_items=silo.n_items, seed=0)
    v1 = train_round(silo, MF, v0, None, CFG, seed=99).global_after
    serving = RegionServing(tmp_path, POLICY)

    def advance(rnd: int, version: str, arrays: Arrays, run: str = "run-a"):  # type: ignore[no-untyped-def]
        return advance_own_line(serving, silo, MF, CFG, server_round=rnd, received_version=version,
                                received_arrays=arrays, seed=10 + rnd, run_id=run)

    # Execute: round 1 (version 0), a replay of it, round 2 (version 1), then a replay of round 1 again
    first = advance(1, vid("v0"), v0)
    bytes_after_1 = (serving.dir / OWN_FILE).read_bytes()
    again = advance(1, vid("v0"), v0)
    assert (serving.dir / OWN_FILE).read_bytes() == bytes_after_1 and again.rounds == 1
    second = advance(2, vid("v1"), v1)
    bytes_after_2 = (serving.dir / OWN_FILE).read_bytes()
    advance(1, vid("v0"), v0)

    # Assert: exactly two local rounds from version 0, computed directly; version 1 never entered it
    one = train_round(silo, MF, v0, None, CFG, seed=11)
    two = train_round(silo, MF, one.global_after, one.local_after, CFG, seed=12, optimizer_state=one.optimizer_after)
    assert same(first.global_arrays, one.global_after)
    assert (second.base, second.rounds, second.since_round) == (vid("v0"), 2, 0)
    assert same(second.global_arrays, two.global_after)
    assert (serving.dir / OWN_FILE).read_bytes() == bytes_after_2
    # a new run starts a new line from its first version
    restarted = advance(1, vid("v1"), v1, run="run-b")
    assert (restarted.base, restarted.rounds) == (vid("v1"), 1)


def test_an_ials_own_line_takes_adapt_rounds_local_sweeps_per_training_message(tmp_path: Path,
                                                                             silo: SiloData) -> None:
    v0 = initial_global_arrays(IALS, n_items=silo.n_items, seed=0)
    serving = RegionServing(tmp_path, AdoptionPolicy.from_config("eu", {"adopt": "adapt", "adapt_rounds": 3}))
    line = advance_own_line(serving, silo, IALS, CFG, server_round=1, received_version=vid("v0"),
                            received_arrays=v0, seed=11, run_id="run-a")
    local = v0
    for _ in range(3):
        local = solve_alone(silo, IALS, local).global_after
    assert line.rounds == 3 and same(line.global_arrays, local)


# --- choosing ----------------------------------------------------------------------------------------------


def test_choose_serves_the_best_and_gives_ties_and_the_margin_to_the_simpler() -> None:
    assert choose([("global", 0.30), ("adapted", 0.30), ("own", 0.30)]) == "global"
    assert choose([("global", 0.30), ("adapted", 0.32), ("own", 0.32)]) == "adapted"
    assert choose([("global", 0.30), ("adapted", 0.31), ("own", 0.33)]) == "own"
    assert choose([("global", 0.30), ("adapted", 0.31), ("own", 0.33)], margin=0.05) == "global"
    assert choose([("global", 0.30), ("adapted", 0.32), ("own", 0.33)], margin=0.015) == "adapted"
    assert choose([("global", math.nan), ("own", 0.1)]) == "own"
    assert choose([("global", 0.2), ("own", math.nan)]) == "global"


def per_user(scores: list[float], users: list[int] | None = None) -> SiloEvaluation:
    """An evaluation holding only per-user NDCG@20 (what the paired test reads)."""
    users_ = np.arange(len(scores)) if users is None else np.asarray(users)
    return SiloEvaluation(sums={"ndcg@20": float(sum(scores))}, n_users=len(scores),
                          per_user={"users": users_, "ndcg@20": np.asarray(scores, dtype=np.float32)})


def test_the_paired_p_value_is_a_one_sided_t_test_over_the_same_users() -> None:
    rng = np.random.default_rng(7)
    own = rng.uniform(0, 1, 60)
    better, noisy = own + rng.normal(0.05, 0.05, 60), own + rng.normal(0.002, 0.2, 60)
    p = paired_p_value(per_user(list(better)), per_user(list(own)), "ndcg@20")
    assert p == pytest.approx(stats.ttest_rel(better.astype(np.float32), own.astype(np.float32),
                                              alternative="greater").pvalue, rel=1e-6)
    assert p < 1e-6
    assert paired_p_value(per_user(list(noisy)), per_user(list(own)), "ndcg@20") > 0.1  # a mean win, not evidence
    assert paired_p_value(per_user(list(own)), per_user(list(better)), "ndcg@20") > 0.99  # worse: one-sided
    # no evidence at all: identical scores, other users, one user, no per-user values
    assert paired_p_value(per_user(list(own)), per_user(list(own)), "ndcg@20") == 1.0
    assert paired_p_value(per_user([0.5, 0.9]), per_user([0.1, 0.2], users=[3, 4]), "ndcg@20") == 1.0
    assert paired_p_value(per_user([0.9]), per_user([0.1]), "ndcg@20") == 1.0
    assert paired_p_value(SiloEvaluation(sums={"ndcg@20": 9.0}, n_users=2), per_user([0.1, 0.2]), "ndcg@20") == 1.0
    # every user gains the same: certain
    assert paired_p_value(per_user([0.3, 0.4]), per_user([0.2, 0.3]), "ndcg@20") == 0.0


def test_choose_confident_keeps_the_own_line_unless_an_option_passes_the_bonferroni_level() -> None:
    scores = [("global", 0.30), ("adapted", 0.34), ("own", 0.31)]
    # two others at confidence 0.95: each must reach p < 0.025
    assert choose_confident(scores, {"global": 0.3, "adapted": 0.03}, own="own", confidence=0.95) == "own"
    assert choose_confident(scores, {"global": 0.3, "adapted": 0.02}, own="own", confidence=0.95) == "adapted"
    assert choose_confident(scores, {"global": 0.001, "adapted": 0.3}, own="own", confidence=0.95) == "global"
    # both pass: the validation-best of them, the margin and ties going to the simpler as in `choose`
    both = {"global": 0.001, "adapted": 0.001}
    assert choose_confident(scores, both, own="own", confidence=0.95) == "adapted"
    assert choose_confident(scores, both, own="own", confidence=0.95, margin=0.05) == "global"
    assert choose_confident(scores, {}, own="own", confidence=0.95) == "own"  # no p-value: no evidence


def test_served_kinds_are_named_from_the_serving_pointer() -> None:
    assert [served_kind(x) for x in (vid("v"), ADAPTED_PREFIX + "mu=1:" + vid("v"), OWN_PREFIX + vid("v"),
                                     "fork:" + vid("v"), None)] == ["global", "adapted", "own line", "fork", "-"]


# --- the review ------------------------------------------------------------------------------------------------


def review_round(serving: RegionServing, silo: SiloData, spec: ModelSpec, candidate: str, arrays: Arrays,
                 rnd: int = 3):  # type: ignore[no-untyped-def]
    evals = evaluate_splits(silo, spec, arrays, None, CFG, seed=rnd, splits=("valid", "test"))
    return review_adapted(serving, silo, spec, CFG, server_round=rnd, candidate=candidate, candidate_arrays=arrays,
                          local=None, candidate_valid=evals["valid"], candidate_test=evals["test"], seed=rnd,
                          adapt_seed=100 + rnd, run_id="run-a")


@pytest.fixture
def trained_line(tmp_path: Path, silo: SiloData) -> RegionServing:
    """A region whose own line trained three rounds from version 0."""
    serving = RegionServing(tmp_path, POLICY)
    v0 = initial_global_arrays(MF, n_items=silo.n_items, seed=0)
    for rnd in (1, 2, 3):
        advance_own_line(serving, silo, MF, CFG, server_round=rnd, received_version=vid("v0"), received_arrays=v0,
                         seed=rnd, run_id="run-a")
    return serving


def test_the_review_serves_the_validation_best_and_records_every_score(trained_line: RegionServing,
                                                                       silo: SiloData) -> None:
    # Prepare: the candidate is the untrained version 0, far worse than three local rounds
    serving, v0 = trained_line, initial_global_arrays(MF, n_items=silo.n_items, seed=0)

    # Execute
    rv = review_round(serving, silo, MF, vid("v0"), v0)

    # Assert: every option's validation score, each recomputed here; the best is served, evaluated on test
    d = rv.decision
    assert list(d.evidence) == ["global", "adapted:rounds=1", "adapted:rounds=2", "own"]
    own = serving.line(OWN_FILE)
    assert own is not None
    direct = {"global": evaluate_splits(silo, MF, v0, None, CFG, seed=3, splits=("valid",))["valid"],
              "own": evaluate_splits(silo, MF, own.global_arrays, own.local, CFG, seed=3, splits=("valid",))["valid"]}
    for name, ev in direct.items():
        assert d.evidence[name] == pytest.approx(ev.means()["ndcg@20"], abs=1e-12)
    best = max(d.evidence, key=lambda k: d.evidence[k])
    assert best != "global"  # a local option beats the untrained version here: not decided by a tie-break
    label = OWN_PREFIX + vid("v0") if best == "own" else f"{best}:{vid('v0')}"
    assert d.served_after == label and d.adopted == (best != "own") and d.reason.endswith("serves " + best)
    # the chosen model, rebuilt here: its validation score is the evidence, its test metrics what is served
    arrays, users = own.global_arrays, own.local
    if best != "own":
        arrays, users, opt = v0, None, None
        for k in range(1, int(best.rsplit("=", 1)[1]) + 1):
            step = train_round(silo, MF, arrays, users, CFG, seed=silo_seed(103, "adapt", k), optimizer_state=opt)
            arrays, users, opt = step.global_after, step.local_after, step.optimizer_after
    direct_best = evaluate_splits(silo, MF, arrays, users, CFG, seed=3, splits=("valid", "test"))
    assert d.evidence[best] == pytest.approx(direct_best["valid"].means()["ndcg@20"], abs=1e-12)
    assert rv.served == direct_best["test"]
    assert serving.record.decisions() == [d] and serving.record.served() == d.served_after
    # what it serves is kept: a restarted silo (a new object on the same dir) serves and scores the same model
    restarted = RegionServing(serving.dir.parent, POLICY)
    assert restarted.served_model() is not None and restarted.served_model()[0] == d.served_after  # type: ignore[index]
    assert evaluate_served(restarted, silo, MF, CFG, local=None, seed=3) == rv.served


def test_a_replayed_evaluation_message_changes_nothing(trained_line: RegionServing, silo: SiloData) -> None:
    serving, v0 = trained_line, initial_global_arrays(MF, n_items=silo.n_items, seed=0)
    first = review_round(serving, silo, MF, vid("v0"), v0)
    stored = [(p.name, p.read_bytes()) for p in sorted(serving.dir.iterdir())]
    again = review_round(serving, silo, MF, vid("v0"), v0)
    assert again == first
    assert [(p.name, p.read_bytes()) for p in sorted(serving.dir.iterdir())] == stored


def test_a_variant_equal_to_the_candidate_never_displaces_it(tmp_path: Path, silos: dict[str, SiloData],
                                                            silo: SiloData) -> None:
    # Prepare: iALS; the region's own line is one sweep from version 0, the candidate is pooled iALS of 3 sweeps
    policy = AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": [1e12], "confidence": 0})
    serving = RegionServing(tmp_path, policy)
    v0 = initial_global_arrays(IALS, n_items=silo.n_items, seed=0)
    advance_own_line(serving, silo, IALS, CFG, server_round=1, received_version=vid("v0"), received_arrays=v0,
                     seed=1, run_id="run-a")
    pooled = solve_silos(IALS, list(silos.values()), n_items=silo.n_items, seed=0, rounds=3)

    # Execute
    rv = review_round(serving, silo, IALS, vid("pooled"), pooled)

    # Assert: μ = 1e12 scores as the candidate (a tie), and the candidate, better than the own line, is served
    ev = rv.decision.evidence
    assert sorted(ev) == ["adapted:mu=1e+12", "global", "own"]
    assert ev["adapted:mu=1e+12"] == ev["global"] > ev["own"]
    assert rv.decision.served_after == vid("pooled") and rv.decision.adopted
    assert rv.served == evaluate_splits(silo, IALS, pooled, None, CFG, seed=3, splits=("test",))["test"]
    assert served_kind(serving.record.served()) == "global"


CONFIDENT = AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": [1e12]})  # the default confidence, 0.95


def test_with_confidence_a_clear_win_is_served_and_a_tie_with_the_own_line_is_not(tmp_path: Path,
                                                                                  silos: dict[str, SiloData],
                                                                                  silo: SiloData) -> None:
    assert CONFIDENT.confidence == 0.95
    v0 = initial_global_arrays(IALS, n_items=silo.n_items, seed=0)
    pooled = solve_silos(IALS, list(silos.values()), n_items=silo.n_items, seed=0, rounds=8)

    def region(name: str) -> RegionServing:
        serving = RegionServing(tmp_path / name, CONFIDENT)
        advance_own_line(serving, silo, IALS, CFG, server_round=1, received_version=vid("v0"), received_arrays=v0,
                         seed=1, run_id="run-a")
        return serving

    # Execute: the pooled model (8 sweeps over every silo) against an own line of one local sweep; then a
    # candidate that is the own line itself
    clear = review_round(region("clear"), silo, IALS, vid("pooled"), pooled)
    own_line = region("tie")
    line = own_line.line(OWN_FILE)
    assert line is not None
    tie = review_round(own_line, silo, IALS, vid("own-copy"), line.global_arrays)

    # Assert: the p-values are the paired test on the validation users' own scores, recomputed here
    valid = {name: evaluate_splits(silo, IALS, arrays, None, CFG, seed=3, splits=("valid",))["valid"]
             for name, arrays in (("pooled", pooled), ("own", line.global_arrays))}
    direct_p = paired_p_value(valid["pooled"], valid["own"], "ndcg@20")
    assert clear.decision.evidence["p:global"] == pytest.approx(direct_p, abs=1e-12) and direct_p < 0.05 / 2
    assert clear.decision.served_after == vid("pooled") and "one-sided paired p" in clear.decision.reason
    # a candidate that scores exactly as the own line is no evidence: the own line stays served (the plain rule
    # would give the tie to the simpler global version)
    assert tie.decision.evidence["global"] == tie.decision.evidence["own"]
    assert tie.decision.evidence["p:global"] == 1.0
    assert served_kind(tie.decision.served_after) == "own line" and not tie.decision.adopted
    assert choose([(k, v) for k, v in tie.decision.evidence.items() if not k.startswith("p:")]) == "global"
    # the own line's test metrics come with every review, served or not
    assert clear.own_line == evaluate_splits(silo, IALS, line.global_arrays, None, CFG, seed=3,
                                             splits=("test",))["test"]


# --- iALS: the MAP item solve ----------------------------------------------------------------------------------


def direct_map_solve(silo: SiloData, h: np.ndarray, mu: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Each item's argmin of the silo's own iALS objective (users solved against h) + μ‖h_i − prior_i‖² (prior:
    h itself unless given), from dense matrices."""
    a0, lam, nu = KW["alpha0"], KW["lam"], KW["nu"]
    x = np.zeros((silo.n_users, silo.n_items))
    x[silo.train[0], silo.train[1]] = 1.0
    w = reference_half_step(x, h.astype(np.float64), a0, lam, nu)
    users = int((x.sum(1) > 0).sum())
    out = np.zeros_like(h, dtype=np.float64)
    for i in range(silo.n_items):
        seen = w[x[:, i] > 0]
        system = seen.T @ seen + a0 * w.T @ w + (lam * (x[:, i].sum() + a0 * users) ** nu + mu) * np.eye(h.shape[1])
        out[i] = np.linalg.solve(system, seen.sum(0) + mu * (h if prior is None else prior)[i])
    return out


def test_adapted_ials_is_the_candidate_at_mu_inf_and_the_local_solve_from_its_user_factors_at_mu_0(
        silos: dict[str, SiloData], silo: SiloData) -> None:
    # Prepare: a candidate the federation could send (two pooled sweeps)
    cand = solve_silos(IALS, list(silos.values()), n_items=silo.n_items, seed=0, rounds=2)
    h = cand["item.weight"]

    # Execute
    variants = adapt_ials(silo, cand, IALS, [math.inf, 0.0, 5.0])

    # Assert: μ=∞ is the candidate; μ=0 the silo's own solve from it; both μ against a direct computation
    assert same(variants[math.inf], cand)
    assert same(variants[0.0], solve_alone(silo, IALS, cand).global_after)
    for mu in (0.0, 5.0):
        np.testing.assert_allclose(variants[mu]["item.weight"], direct_map_solve(silo, h, mu), rtol=1e-4, atol=1e-6)
    # the prior pulls towards the candidate: μ=5 lies closer to it than the local solve does
    dist = {mu: float(np.linalg.norm(variants[mu]["item.weight"] - h)) for mu in (0.0, 5.0)}
    assert 0 < dist[5.0] < dist[0.0]


def test_adapted_ials_sweeps_alternate_users_and_the_map_item_solve_towards_the_candidate(
        silos: dict[str, SiloData], silo: SiloData) -> None:
    # Prepare
    cand = solve_silos(IALS, list(silos.values()), n_items=silo.n_items, seed=0, rounds=2)
    h = cand["item.weight"]

    # Execute: three sweeps
    variants = adapt_ials(silo, cand, IALS, [0.0, 5.0], sweeps=3)

    # Assert: μ=0 is three local solves from the candidate; μ=5 re-solves the users against its own last item
    # factors each sweep, with the candidate (not the last sweep) as the prior
    local = cand
    for _ in range(3):
        local = solve_alone(silo, IALS, local).global_after
    assert same(variants[0.0], local)
    step = h
    for _ in range(3):
        step = direct_map_solve(silo, step, 5.0, prior=h)
    np.testing.assert_allclose(variants[5.0]["item.weight"], step, rtol=1e-3, atol=1e-5)
    assert not same(variants[5.0], adapt_ials(silo, cand, IALS, [5.0])[5.0])


def test_an_adapted_solve_that_fails_is_left_out_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             silo: SiloData) -> None:
    # Prepare: the μ=0 system "does not factor" (as crafted arrays can make it, depending on the silo's data)
    import fedrec.adaptation as adaptation

    real = adaptation.map_item_solve

    def failing(own, spec, prior, mu):  # type: ignore[no-untyped-def]
        if mu == 0:
            raise torch.linalg.LinAlgError("not positive definite")
        return real(own, spec, prior, mu)

    monkeypatch.setattr(adaptation, "map_item_solve", failing)
    serving = RegionServing(tmp_path, AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": [0, 1]}))
    cand = initial_global_arrays(IALS, n_items=silo.n_items, seed=0)

    # Execute
    rv = review_round(serving, silo, IALS, vid("v0"), cand)

    # Assert: the review goes on without it; nothing raised, so the evaluation reply is unchanged
    assert sorted(rv.decision.evidence) == ["adapted:mu=1", "global"]
    assert rv.served is not None
