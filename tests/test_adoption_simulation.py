"""Adoption policies in a whole federated run (in process: the real ServerApp and ClientApps on the fake grid).

Each region decides inside its silo what it serves.

Run A: eu follows every version (`always`, its guard off: `fedrec.silo.guard` is tested in `test_defences.py`), na
adopts only what beats its served version on its own validation users (`if_better`, guarded), apac forks from
round 1 and stops contributing. Run B shares A's registry: eu pins one of A's versions it never received in B
and serves it throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process

from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, EgressLedger
from fedrec.silo.serving import FORK_PREFIX
from fedrec.versions import ModelRegistry

ROUNDS = 3


def config(adoption: dict, registry_dir: str | None = None):  # type: ignore[no-untyped-def]
    return experiment_from_dict({
        "dataset": {"name": "synthetic", "n_users": 600, "n_items": 200, "region_only_items": 10,
                    "region_sizes": [2.0, 1.0, 1.0], "seed": 1},
        "federation": {"rounds": ROUNDS, "local_epochs": 2},
        "train": {"lr": 0.02},
        "model": {"name": "mf", "dim": 8},
        "bounds": ["local_only"],
        "adoption": adoption,
        "registry_dir": registry_dir,
    })


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("adopt")
    res = run_experiment(config({"eu": {"adopt": "always", "guard": False}, "na": {"adopt": "if_better", "margin": 0.0},
                                 "apac": {"fork": 1, "contribute": False}}), out, log=lambda *_: None,
                         engine=run_in_process)
    return res, out


def served_round(res: dict, region: str) -> list[dict]:
    return [r["served"][region] for r in res["rounds"]]


def test_always_serves_every_global_version_with_its_global_metrics(run_a) -> None:
    res, _ = run_a
    versions = {v["round"]: v["id"] for v in res["model_versions"]}
    for entry, served in zip(res["rounds"], served_round(res, "eu"), strict=True):
        assert served["version"] == versions[entry["round"]] and served["adopted"]
        assert served["ndcg@20"] == pytest.approx(entry["per_region"]["eu"]["ndcg@20"])
    assert res["adoption"]["eu"]["policy"]["kind"] == "always"


def test_if_better_decides_by_its_own_validation_evidence(run_a) -> None:
    res, _ = run_a
    versions = [v["id"] for v in res["model_versions"]]
    decisions = [d for d in res["adoption"]["na"]["decisions"]]
    assert [d["round"] for d in decisions] == list(range(1, ROUNDS + 1))
    assert decisions[0]["adopted"] and decisions[0]["reason"].startswith("nothing served yet")
    for d in decisions[1:]:
        assert d["adopted"] == (d["evidence"]["candidate"] > d["evidence"]["served"])
        assert d["served_after"] == (d["candidate"] if d["adopted"] else d["served_before"])
    assert all(d["served_after"] in versions for d in decisions)


def test_a_forked_region_stops_following_and_stops_contributing(run_a) -> None:
    res, out = run_a
    v1 = next(v["id"] for v in res["model_versions"] if v["round"] == 1)
    served = served_round(res, "apac")
    assert served[0]["version"] == v1
    assert [s["version"] for s in served[1:]] == [FORK_PREFIX + v1] * (ROUNDS - 1)
    # its fork is its own model: its metrics are not the global model's
    assert all(s["ndcg@20"] != e["per_region"]["apac"]["ndcg@20"] for s, e in zip(served[1:], res["rounds"][1:],
                                                                                 strict=True))
    # after the fork apac sends nothing but a decline; later versions are made without it
    assert all("apac" not in e["participants"] for e in res["rounds"][1:])
    registry = ModelRegistry(out / "registry", create=False)
    assert all("apac" not in registry.get(v["id"]).contributors for v in res["model_versions"] if v["round"] >= 2)
    sent = EgressLedger(out / "silo-state" / "apac" / EGRESS_LEDGER_FILE).entries()
    train = [e for e in sent if e.kind == "train"]
    assert [e.declined for e in train] == [False] + [True] * (ROUNDS - 1)


def test_results_hold_global_served_and_local_only_side_by_side(run_a) -> None:
    res, out = run_a
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["adoption"] == json.loads(json.dumps(res["adoption"]))
    for entry in res["rounds"]:
        assert set(entry["served"]) == set(entry["per_region"]) == set(entry["local_only"]) == {"apac", "eu", "na"}
    assert set(res["final"]["served"]["per_region"]) == {"apac", "eu", "na"}
    # the last local-only point is the local-only bound
    assert res["rounds"][-1]["local_only"]["na"] == res["final"]["local_only"]["per_region"]["na"]


def test_a_pinned_region_stays_on_a_version_from_the_shared_registry(run_a, tmp_path: Path) -> None:
    res_a, out_a = run_a
    pinned = next(v["id"] for v in res_a["model_versions"] if v["round"] == 1)
    res = run_experiment(config({"eu": {"pin": pinned[:12]}}, registry_dir=str(out_a / "registry")), tmp_path,
                         log=lambda *_: None, engine=run_in_process)
    assert [s["version"] for s in served_round(res, "eu")] == [pinned] * ROUNDS
    assert "registry" in res["adoption"]["eu"]["decisions"][0]["reason"]
    # the others follow run B's own versions, which are new
    b_versions = {v["round"]: v["id"] for v in res["model_versions"]}
    assert [s["version"] for s in served_round(res, "na")] == [b_versions[r] for r in range(1, ROUNDS + 1)]
    assert pinned not in b_versions.values()
