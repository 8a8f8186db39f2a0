"""The coordinator's ledger of each region's contribution (`fedrec.coordinator.contributions`), against the
FedAvg / FedAvgM recurrence written out by hand, and the runs it refuses to keep one for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.coordinator.contributions import ContributionLedger, contributions_problem
from fedrec.errors import ConfigError

RNG = np.random.default_rng(7)


def arrays() -> dict[str, np.ndarray]:
    return {"w": RNG.normal(size=(4, 3)).astype(np.float32), "b": RNG.normal(size=4).astype(np.float32)}


Round = tuple[dict[str, np.ndarray], dict[str, tuple[dict[str, np.ndarray], float]]]
"""(what the coordinator sent, region -> (its reply, its weight))."""


def fedavgm(start: dict[str, np.ndarray], rounds: list[Round], lr: float, beta: float) -> dict[str, np.ndarray]:
    """Flower's FedAvgM by hand over recorded updates (sent - reply): g = their weighted mean; m = beta m + g;
    w = w - lr m. On the line that was trained, w is what was sent, so this is FedAvgM itself."""
    w = {k: v.astype(np.float64) for k, v in start.items()}
    m: dict[str, np.ndarray] | None = None
    for sent, replies in rounds:
        total = sum(wt for _, wt in replies.values())
        g = {k: sum(wt * (sent[k].astype(np.float64) - x[k]) for x, wt in replies.values()) / total for k in w}
        m = g if m is None else {k: beta * m[k] + g[k] for k in w}
        w = {k: w[k] - lr * m[k] for k in w}
    return w


@pytest.mark.parametrize(("lr", "beta"), [(1.0, 0.0), (1.5, 0.0), (1.0, 0.9)])
def test_the_ledger_follows_fedavgm_with_a_late_joiner_and_a_missed_round(lr: float, beta: float) -> None:
    start = arrays()
    ledger = ContributionLedger(server_lr=lr, momentum=beta, start="v0")
    plan = [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0, "c": 1.0}, {"b": 2.0, "c": 1.0}]  # c joins, a misses round 3
    sent, rounds = start, []
    for rnd, weights in enumerate(plan, start=1):
        replies = {r: ({k: (sent[k] + RNG.normal(scale=0.1, size=sent[k].shape)).astype(np.float32)
                        for k in sent}, wt) for r, wt in weights.items()}
        rounds.append((sent, replies))
        after = fedavgm(start, rounds, lr, beta)
        ledger.record(rnd, sent, replies, head=f"v{rnd}")
        sent = {k: v.astype(np.float32) for k, v in after.items()}
    head = fedavgm(start, rounds, lr, beta)
    back = ledger.without({k: v.astype(np.float32) for k, v in head.items()}, ["a", "b", "c"])
    for k in start:  # every region's direct part, together, is the whole movement
        np.testing.assert_allclose(back[k], start[k], atol=1e-5)
    for gone in ("a", "b", "c"):  # each region's reweighted line is the recurrence over the others, averaged alone
        without = [(sent, {r: x for r, x in replies.items() if r != gone}) for sent, replies in rounds]
        want = fedavgm(start, without, lr, beta)
        got = ledger.reweighted_without(start, gone)
        for k in start:
            np.testing.assert_allclose(got[k], want[k], atol=1e-5)
    assert ledger.head == "v3" and ledger.rounds == {"a": [1, 2], "b": [1, 2, 3], "c": [2, 3]}


def test_the_ledger_survives_a_save_and_load(tmp_path: Path) -> None:
    start = arrays()
    ledger = ContributionLedger(server_lr=1.0, momentum=0.5, start="v0")
    ledger.record(1, start, {"a": (arrays(), 1.0), "b": (arrays(), 1.0)}, head="v1")
    ledger.save(tmp_path)
    again = ContributionLedger.load(tmp_path)
    assert (again.head, again.start, again.rounds, again.regions()) == ("v1", "v0", ledger.rounds, ["a", "b"])
    for k in start:
        np.testing.assert_array_equal(again.reweighted_without(start, "a")[k], ledger.reweighted_without(start, "a")[k])
    with pytest.raises(ConfigError, match="no recorded contribution"):
        again.without(start, ["zz"])
    with pytest.raises(ConfigError, match="keep_contributions"):
        ContributionLedger.load(tmp_path / "nothing")


@pytest.mark.parametrize(("kw", "why"), [
    ({"secure_aggregation": "secaggplus"}, "SecAgg"),
    ({"strategy": "fedadam"}, "not linear"),
    ({"robust": "nnm"}, "not linear"),
    ({"statistics": True}, "statistics"),
])
def test_runs_whose_contributions_cannot_be_kept_say_why(kw: dict[str, object], why: str) -> None:
    base: dict[str, object] = {"strategy": "fedavg", "robust": "none", "secure_aggregation": "none",
                               "statistics": False}
    assert contributions_problem(**base) is None  # type: ignore[arg-type]
    assert contributions_problem(**{**base, "robust": "row_clip"}) is None  # type: ignore[arg-type]
    assert why in (contributions_problem(**{**base, **kw}) or "")  # type: ignore[arg-type]
