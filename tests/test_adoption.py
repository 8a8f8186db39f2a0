"""Adoption policies on constructed cases, and the silo-side serving record."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.config import AdoptionPolicy
from fedrec.errors import ConfigError
from fedrec.silo.adoption import ServingRecord, decide

VERSIONS = ["a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32]


def follow(policy: AdoptionPolicy, scores: list[float] | None = None) -> list[str | None]:
    """Serve through a sequence of new global versions; returns what is served after each."""
    served, served_score, out = None, None, []
    for rnd, v in enumerate(VERSIONS, start=1):
        score = scores[rnd - 1] if scores else None
        d = decide(policy, round=rnd, candidate=v, served=served, candidate_score=score, served_score=served_score)
        if d.adopted:
            served_score = score
        served = d.served_after
        out.append(served)
    return out


def test_always_follows_every_version() -> None:
    assert follow(AdoptionPolicy.from_config("eu", {"adopt": "always"})) == VERSIONS


def test_a_pinned_region_stays_on_its_version() -> None:
    pinned = follow(AdoptionPolicy.from_config("eu", {"pin": VERSIONS[1][:8]}))
    assert pinned == [None, VERSIONS[1], VERSIONS[1], VERSIONS[1]]


def test_before_its_fork_point_a_forking_region_follows_the_federation() -> None:
    # after the fork point `federation.serving` serves the fork (tests/test_serving.py)
    assert follow(AdoptionPolicy.from_config("eu", {"fork": 2})) == VERSIONS


@pytest.mark.parametrize(("scores", "margin", "expected"), [
    ([0.30, 0.35, 0.34, 0.40], 0.0, [0, 1, 1, 3]),     # adopts improvements, keeps through a dip
    ([0.30, 0.305, 0.32, 0.33], 0.01, [0, 0, 2, 2]),   # the margin must be beaten, not met
    ([0.30, 0.30, 0.30, 0.30], 0.0, [0, 0, 0, 0]),     # a tie is not better
])
def test_if_better_adopts_only_versions_that_beat_the_served_one(scores, margin, expected) -> None:
    policy = AdoptionPolicy.from_config("eu", {"adopt": "if_better", "metric": "ndcg@20", "margin": margin})
    assert follow(policy, scores) == [VERSIONS[i] for i in expected]


def test_if_better_without_scores_is_an_error_not_a_silent_adopt() -> None:
    with pytest.raises(ValueError, match="validation scores"):
        decide(AdoptionPolicy(kind="if_better"), round=2, candidate=VERSIONS[1], served=VERSIONS[0])


@pytest.mark.parametrize(("cfg", "match"), [
    ({"adopt": "sometimes"}, "adopt='sometimes'"),
    ({"adopt": "always", "pin": "x"}, "exactly one"),
    ({}, "exactly one"),
    ({"adopt": "if_better", "metric": "auc"}, "metric='auc'"),
    ({"adopt": "if_better", "margin": -0.1}, "margin"),
    ({"fork": -1}, "fork"),
    ({"pin": ""}, "pin"),
    ({"adopt": "always", "colour": "red"}, "colour"),
])
def test_bad_policies_are_config_errors_naming_the_region(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=rf"adoption\.eu.*{match}|{match}.*"):
        AdoptionPolicy.from_config("eu", cfg)


def test_the_serving_record_keeps_the_pointer_and_every_decision(tmp_path: Path) -> None:
    record = ServingRecord(tmp_path / "eu")
    policy = AdoptionPolicy.from_config("eu", {"adopt": "if_better"})
    assert record.served() is None
    for rnd, (v, score) in enumerate(zip(VERSIONS[:3], [0.3, 0.2, 0.4], strict=True), start=1):
        served = record.served()
        served_score = max((d.evidence.get("candidate", 0.3) for d in record.decisions() if d.adopted), default=None)
        record.record(decide(policy, round=rnd, candidate=v, served=served, candidate_score=score,
                             served_score=served_score))
    assert record.served() == VERSIONS[2]
    assert [d.adopted for d in ServingRecord(tmp_path / "eu").decisions()] == [True, False, True]
    (tmp_path / "eu" / "serving.json").write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        record.served()
