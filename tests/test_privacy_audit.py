"""The empirical privacy audit: its statistics against closed forms and simulated randomized response, the
canaries it plants, and one run each way (a positive control without DP, a DP run that must not exceed its ε).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fakegrid import run_in_process

from fedrec.commands.audit import audit_main
from fedrec.config import experiment_from_dict
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.privacy.audit import audit_scores, epsilon_lower_bound, p_value
from fedrec.privacy_audit import CanaryPlan, plant_canaries, run_privacy_audit


@pytest.mark.parametrize(("r", "confidence"), [(10, 0.95), (100, 0.95), (1000, 0.99)])
def test_all_guesses_right_without_delta_is_randomized_response_s_closed_form(r: int, confidence: float) -> None:
    # r right of r: P[Bin(r, q) = r] = q^r = 1 - confidence at the bound, so q = (1-c)^(1/r), ε = log(q/(1-q))
    q = (1 - confidence) ** (1 / r)
    expected = math.log(q / (1 - q))
    assert epsilon_lower_bound(r, r, r, delta=0.0, confidence=confidence) == pytest.approx(expected, rel=1e-6)


def test_the_p_value_grows_with_epsilon_and_delta_only_weakens_the_bound() -> None:
    ps = [p_value(1000, 200, 150, eps, 1e-5) for eps in (0.0, 0.5, 1.0, 2.0)]
    assert ps == sorted(ps) and ps[0] < 1e-3 and ps[-1] > 0.5  # 150/200 right: far beyond chance, not beyond ε=2
    no_delta = epsilon_lower_bound(1000, 200, 150, delta=0.0)
    assert 0.5 < epsilon_lower_bound(1000, 200, 150, delta=1e-5) <= no_delta
    assert epsilon_lower_bound(1000, 200, 100, delta=0.0) == 0.0  # chance level certifies nothing
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(10, 20, 5, 1.0, 0.0)


def test_on_randomized_response_the_bound_rarely_exceeds_the_true_epsilon_and_finds_most_of_it() -> None:
    # An exactly ε-DP mechanism: every guess is right with probability e^ε/(1+e^ε), independently
    eps, m, trials = 1.0, 2000, 200
    rng = np.random.default_rng(7)
    right = rng.binomial(m, 1 / (1 + math.exp(-eps)), size=trials)
    bounds = np.array([epsilon_lower_bound(m, m, int(v), delta=0.0, confidence=0.95) for v in right])
    assert (bounds > eps).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert 0.7 < float(np.median(bounds)) <= eps


def test_scores_that_separate_the_canaries_give_a_positive_bound_and_random_ones_none() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    perfect = audit_scores(included.astype(float) + rng.normal(0, 0.01, 400), included, delta=0.0)
    assert perfect.correct == perfect.guesses and perfect.epsilon_lower_bound > 2.0
    noise = audit_scores(rng.normal(size=400), included, delta=0.0)
    assert noise.epsilon_lower_bound < 0.5
    with pytest.raises(ValueError, match="finite"):
        audit_scores([0.0, np.nan], [True, False], delta=0.0)


def test_planted_canaries_are_new_items_held_only_by_new_users_of_one_region() -> None:
    # Prepare
    data = generate_world(SyntheticWorldConfig(n_users=90, n_items=30, region_only_items=0,
                                               region_sizes=(1.0, 1.0, 1.0), min_interactions=3))

    # Execute
    planted, canaries = plant_canaries(data, CanaryPlan(region="na", canaries=40, interactions=3, seed=1))

    # Assert: the catalog grows by the canary items; each included canary's item has 3 interactions, all by
    # one new user in na; excluded canaries' items appear nowhere; the original rows are unchanged
    n = data.catalog.n_items
    assert planted.catalog.n_items == n + 40 and list(canaries.items) == list(range(n, n + 40))
    new = slice(len(data), None)
    assert np.array_equal(planted.item[: len(data)], data.item) and np.array_equal(planted.user[: len(data)],
                                                                                 data.user)
    assert set(np.asarray(planted.regions)[planted.region[new]]) == {"na"}
    assert set(planted.item[new]) == set(canaries.items[canaries.included])
    for item in canaries.items[canaries.included]:
        holders = planted.user[planted.item == item]
        assert len(holders) == 3 and len(set(holders)) == 1 and holders[0] > data.user.max()
    assert 10 < canaries.included.sum() < 30
    assert planted.catalog.features is not None and planted.catalog.features.shape == (n + 40, data.catalog.n_features)
    assert not planted.catalog.features[n:].any()  # canary items carry no public metadata
    with pytest.raises(ConfigError, match="not a region of this dataset"):
        plant_canaries(data, CanaryPlan(region="mars", canaries=40))


DATASET = {"name": "synthetic", "n_users": 600, "n_items": 150, "region_only_items": 8,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 3}


def audit(tmp_path: Path, privacy: dict | None) -> dict:  # type: ignore[type-arg]
    cfg = experiment_from_dict({"dataset": DATASET, "federation": {"rounds": 10}, "baselines": [], "bounds": [],
                                **({"privacy": privacy} if privacy else {})})
    return run_privacy_audit(cfg, tmp_path, CanaryPlan(region="eu", canaries=200), log=lambda *_: None,
                             engine=run_in_process)


def test_without_dp_the_audit_finds_the_canaries(tmp_path: Path) -> None:
    report = audit(tmp_path, None)
    assert not report["private"] and report["audit"]["delta"] == 0.0
    assert report["audit"]["correct"] == report["audit"]["guesses"]  # the attack works: the control is positive
    assert report["audit"]["epsilon_lower_bound"] > 2.0
    assert (tmp_path / "privacy_audit.json").is_file()


def test_under_dp_the_empirical_bound_stays_below_the_claimed_epsilon(tmp_path: Path) -> None:
    report = audit(tmp_path, {"name": "user_dp", "epsilon": 2.0})
    assert report["private"] and 1.9 < report["claimed_epsilon"] <= 2.0 and report["audit"]["delta"] > 0
    assert report["audit"]["epsilon_lower_bound"] <= report["claimed_epsilon"]


def test_the_command_refuses_a_region_the_world_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    code = audit_main(["privacy", "--region", "mars", "--canaries", "20", "--out", str(tmp_path),
                       "experiment=quick"])
    assert code == 2 and "not a region of this dataset" in capsys.readouterr().err
    code = audit_main(["privacy", "--region", "eu", "--out", str(tmp_path), "nosuchgroup=1"])
    assert code == 2 and "bad override" in capsys.readouterr().err


def test_the_audit_catches_a_dp_round_whose_noise_is_switched_off(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The same DP run with the Gaussian noise replaced by zeros: the accountant still claims ε = 2, the
    # mechanism is no longer private, and the audit must say so (a bound above the claim)
    import torch

    from fedrec.privacy.noise import NoiseSource

    monkeypatch.setattr(NoiseSource, "normal", lambda self, shape, std: torch.zeros(shape))
    report = audit(tmp_path, {"name": "user_dp", "epsilon": 2.0})
    assert report["audit"]["epsilon_lower_bound"] > report["claimed_epsilon"]


def test_the_final_model_alone_also_reveals_the_canaries_without_dp(tmp_path: Path) -> None:
    cfg = experiment_from_dict({"dataset": DATASET, "federation": {"rounds": 10}, "baselines": [], "bounds": []})
    report = run_privacy_audit(cfg, tmp_path, CanaryPlan(region="eu", canaries=200), observe="final",
                               log=lambda *_: None, engine=run_in_process)
    assert report["observe"] == "final" and report["audit"]["epsilon_lower_bound"] > 2.0


@pytest.mark.parametrize(("overrides", "observe", "match"), [
    ({}, "gradients", "choose one of releases, final"),
    ({"federation": {"secure_aggregation": "secaggplus"}}, "releases", "never sees one silo's release"),
    ({"model": {"name": "ease"}, "federation": {"rounds": 1}}, "final", "has neither; audit model=mf"),
])
def test_audits_that_cannot_work_are_refused_before_running(tmp_path: Path, overrides: dict, observe: str,
                                                            match: str) -> None:
    cfg = experiment_from_dict({"dataset": DATASET, "baselines": [], **overrides})
    with pytest.raises(ConfigError, match=match):
        run_privacy_audit(cfg, tmp_path, CanaryPlan(region="eu", canaries=20), observe=observe,
                          engine=run_in_process)


def ials_audit(tmp_path: Path, privacy: dict | None, observe: str = "releases") -> dict:  # type: ignore[type-arg]
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "ials", "dim": 8}, "federation": {"rounds": 2},
                                "baselines": [], "bounds": [], **({"privacy": privacy} if privacy else {})})
    return run_privacy_audit(cfg, tmp_path, CanaryPlan(region="eu", canaries=200), observe=observe,
                             log=lambda *_: None, engine=run_in_process)


@pytest.mark.parametrize("observe", ["releases", "final"])
def test_ials_without_dp_gives_its_canaries_away_in_the_counts_and_the_factors(tmp_path: Path, observe: str) -> None:
    report = ials_audit(tmp_path, None, observe)
    assert report["audit"]["correct"] == report["audit"]["guesses"] and report["audit"]["epsilon_lower_bound"] > 2.0


def test_dp_ials_stays_below_its_claim_and_is_caught_with_its_noise_off(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    report = ials_audit(tmp_path / "dp", {"name": "user_dp", "epsilon": 2.0})
    assert report["private"] and report["audit"]["epsilon_lower_bound"] <= report["claimed_epsilon"] <= 2.0
    import torch

    from fedrec.privacy.noise import NoiseSource

    monkeypatch.setattr(NoiseSource, "normal", lambda self, shape, std, **_: torch.zeros(shape, dtype=torch.float64))
    broken = ials_audit(tmp_path / "off", {"name": "user_dp", "epsilon": 2.0})
    assert broken["audit"]["epsilon_lower_bound"] > broken["claimed_epsilon"]
