"""Preflight: a silo with a bad configuration stops the run before anything is trained, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import FedrecError
from fedrec.settings import RunSettings
from fedrec.silo.preflight import check_silo
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.world import PreparedWorld, prepare_world

WORLD = SyntheticWorldConfig(n_users=120, n_items=30, region_only_items=2, region_sizes=(1.0, 1.0, 1.0),
                             min_interactions=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def node(world: PreparedWorld, tmp: Path, region: str = "eu", **kw: object) -> dict[str, object]:
    return {"region": region, "data-path": str(world.data_dir / f"silo_{region}.npz"),
            "state-dir": str(tmp / region), "epsilon-budget": 4.0, **kw}


def test_a_well_configured_silo_passes(world, tmp_path) -> None:
    s = RunSettings(data_dir=str(world.data_dir), privacy="user_dp")
    assert check_silo(s, node(world, tmp_path)) == ("eu", None)


@pytest.mark.parametrize(("change", "expected"), [
    ({"data-path": "/nonexistent/silo.npz"}, "not found at /nonexistent/silo.npz"),
    ({"region": "atlantis"}, "silo 'atlantis': node config has no data-path"),
    ({"epsilon-budget": -1}, "epsilon-budget=-1 must be a number > 0"),
    ({"fork": "yes", "adopt": "always"}, "give exactly one of adopt / pin / fork"),
])
def test_bad_node_config_is_named(world, tmp_path, change: dict, expected: str) -> None:
    s = RunSettings(data_dir=str(world.data_dir))
    cfg = {**node(world, tmp_path), **change}
    if change.get("region") == "atlantis":
        cfg.pop("data-path")
    _, problem = check_silo(s, cfg)
    assert problem is not None and expected in problem, problem


def test_a_proposal_the_jurisdiction_refuses_is_a_problem_before_round_one(world, tmp_path) -> None:
    # a δ above the node's maximum; a non-private run for a node that requires DP; DP without its own state dir
    loose = check_silo(RunSettings(data_dir=str(world.data_dir), privacy="user_dp", privacy_delta=1e-3),
                       node(world, tmp_path))[1]
    assert loose is not None and "accepts at most δ=1e-05" in loose
    plain = check_silo(RunSettings(data_dir=str(world.data_dir)), node(world, tmp_path, **{"max-delta": 1e-6}))[1]
    assert plain is not None and "requires user-level DP" in plain
    cfg = node(world, tmp_path)
    cfg.pop("state-dir")
    no_state = check_silo(RunSettings(data_dir=str(world.data_dir), privacy="user_dp", state_dir=str(tmp_path)),
                          cfg)[1]
    assert no_state is not None and "set node config state-dir" in no_state


def test_an_unreadable_ledger_or_state_dir_is_a_problem(world, tmp_path) -> None:
    s = RunSettings(data_dir=str(world.data_dir), privacy="user_dp")
    (tmp_path / "eu").mkdir()
    (tmp_path / "eu" / PRIVACY_LEDGER_FILE).write_text("{not json")
    assert "ledger" in str(check_silo(s, node(world, tmp_path))[1]).lower()
    (tmp_path / "na").write_text("a file where the state dir should be")
    assert check_silo(s, node(world, tmp_path, region="na"))[1] is not None


def test_a_federation_with_a_bad_silo_stops_before_training(world, tmp_path) -> None:
    # Prepare: every silo's state dir is under a path that is a file
    (tmp_path / "blocked").write_text("not a directory")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), min_nodes=3, num_rounds=2,
                    dim=4, state_dir=str(tmp_path / "blocked" / "state"))

    # Execute: the real ServerApp and ClientApps in process (tests/fakegrid.py), where its error reaches us
    with pytest.raises(FedrecError, match="preflight failed"):
        run_in_process(s)

    # Assert: the reason is on record for each silo, and nothing was trained or registered
    history = json.loads((tmp_path / "out" / "federated_history.json").read_text())
    assert history["stopped_early"].startswith("preflight failed")
    assert all(f"(region {r})" in history["stopped_early"] for r in world.regions)
    assert history["round_log"] == [] and history["model_versions"] == []
    assert not (tmp_path / "out" / "global_model.safetensors").exists()


def test_a_budget_no_noise_can_meet_is_named_before_round_one(world, tmp_path) -> None:
    # ε=1000 for this silo: even the smallest noise multiplier spends less, so σ cannot be calibrated. The
    # preflight says so in words (it used to surface as dp-accounting's NoBracketIntervalFoundError inside
    # round 1, reported as "no silo replied")
    s = RunSettings(data_dir=str(world.data_dir), privacy="user_dp", privacy_epsilon=1000.0, num_rounds=2)
    _, problem = check_silo(s, node(world, tmp_path, **{"epsilon-budget": 1000.0}))
    assert problem is not None and "the ε budget is more than 100 steps" in problem and "protects nothing" in problem
    assert "1000" not in problem  # the silo's budget is not echoed
    spent = RunSettings(data_dir=str(world.data_dir), privacy="user_dp", privacy_epsilon=4.0)
    assert check_silo(spent, node(world, tmp_path)) == ("eu", None)
