"""End to end on Flower's deployment engine, 127.0.0.1 only: a SuperLink and three SuperNodes as processes,
TLS on every connection and SuperNode authentication on, the same ClientApp/ServerApp under `flwr run`.

1. Two rounds: results, every silo's ledgers, and what a SuperNode with an unregistered key gets (nothing).
2. Faults, under user-level DP: apac's SuperNode is killed (SIGKILL) during round 2, the round completes with
   the others; the coordinator is then stopped after round 2 and started again with `resume=true`: apac,
   restarted, rejoins, and round 3 runs with everyone. apac's ledger holds no release for round 2.
Every process is tracked by PID and stopped even when a test fails (`LocalFederation.close`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.deploy.certs import make_node_key
from fedrec.deploy.local import LocalFederation
from fedrec.deploy.processes import Process, free_port
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE as EGRESS_LEDGER
from fedrec.silo.egress_ledger import verify
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.world import PreparedWorld, prepare_world

pytestmark = pytest.mark.slow
WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
SMALL = {"dim": 6, "batch-size": 64, "n-negatives": 16}
DP = {"privacy": "user_dp", "privacy-epsilon": 4.0, "privacy-sample-rate": 0.2, "privacy-steps-per-round": 3,
      "privacy-max-per-user": 8}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, PreparedWorld, Path]]:
    root = tmp_path_factory.mktemp("deploy")
    world = prepare_world(generate_world(WORLD), SplitConfig(), root / "world")
    # each jurisdiction's own policy: its data, its state dir, its ε budget (so it trains only under DP)
    nodes = {r: {"data-path": str(world.data_dir / f"silo_{r}.npz"), "state-dir": str(root / "state" / r),
                 "epsilon-budget": 8.0} for r in world.regions}
    fed = LocalFederation(root / "federation", nodes, secure=True)
    try:
        fed.start()
        yield fed, world, root
    finally:
        fed.close()


def history(out: Path) -> dict[str, Any]:
    return json.loads((out / "federated_history.json").read_text())


def wait_for_round(out: Path, rnd: int, run: Process, timeout: float = 300.0) -> None:
    """Until the coordinator's checkpoint says round `rnd` finished."""
    path = out / "coordinator" / "checkpoint.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and json.loads(path.read_text())["round"] >= rnd:
            return
        assert run.alive(), run.text()[-3000:]
        time.sleep(0.2)
    pytest.fail(f"round {rnd} did not finish within {timeout} s:\n{run.text()[-3000:]}")


def test_two_rounds_over_tls_with_authenticated_supernodes(deployed) -> None:
    fed, world, root = deployed
    out = root / "run-plain"

    done = fed.run({"data-dir": str(world.data_dir), "output-dir": str(out), "num-rounds": 2, "min-nodes": 3,
                    **DP, **SMALL})

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    h = history(out)
    assert [e["round"] for e in h["round_log"]] == [1, 2]
    assert all(e["participants"] == ["apac", "eu", "na"] for e in h["round_log"])
    # each silo's own budget and the run's δ, reported by every silo; evaluations stayed in the silos
    assert all(sorted(e["per_region"]) == ["apac", "eu", "na"] for e in h["privacy_rounds"])
    assert {(v["budget_epsilon"], v["delta"]) for e in h["privacy_rounds"] for v in e["per_region"].values()} == {
        (4.0, 1e-6)}
    for region in world.regions:
        report = verify(root / "state" / region / EGRESS_LEDGER)
        assert report.ok and report.entries >= 5, report.problems  # preflight + 2 x (train, evaluate)
    # the connection really is TLS: the SuperLink's log says so, and the CLI config names the CA
    assert "root-certificates" in (fed.home / "config.toml").read_text()


def test_a_supernode_with_an_unregistered_key_is_refused(deployed, tmp_path: Path) -> None:
    fed, world, _ = deployed
    private, _ = make_node_key(tmp_path, "rogue")
    cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{fed.port}", "--port", str(free_port()),
           "--root-certificates", str(fed.certs / "ca.crt"), "--auth-supernode-private-key", str(private),
           "--node-config", f'region="rogue" data-path="{world.data_dir / "silo_eu.npz"}"']
    rogue = fed.start_process("rogue", cmd)  # tracked: the fixture cleans it up
    time.sleep(8)
    rogue.stop()
    assert "SuperNode ID" not in rogue.text()
    nodes = fed.cli("supernode", "list", fed.name, "--format", "json")
    assert nodes.returncode == 0 and len(re.findall(r'"node-id"', nodes.stdout)) == 3, nodes.stdout


def test_a_dead_supernode_and_a_restarted_coordinator(deployed) -> None:
    fed, world, root = deployed
    out = root / "run-faults"
    cfg = {"data-dir": str(world.data_dir), "output-dir": str(out), "num-rounds": 3, "min-nodes": 2,
           "round-timeout": 25.0, "run-name": "faults", **DP, **SMALL}

    # Execute: round 1 with everyone; apac dies (SIGKILL) before round 2; the coordinator is stopped after it
    run = fed.start_run(cfg)
    wait_for_round(out, 1, run)
    fed.kill_node("apac")
    wait_for_round(out, 2, run)
    run_id = re.search(r"run (\d+)", run.text())
    assert run_id is not None, run.text()[-2000:]
    fed.cli("stop", run_id.group(1), fed.name)
    run.stop()
    fed.start_node("apac")  # apac comes back
    resumed = fed.run({**cfg, "min-nodes": 3, "resume": True})

    # Assert: round 2 went on without apac, round 3 (after the restart) had everyone, nothing was repeated
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    h = history(out)
    assert h["resumed_at"] == [3]
    assert [e["round"] for e in h["round_log"]] == [1, 2, 3]
    assert [e["participants"] for e in h["round_log"]] == [["apac", "eu", "na"], ["eu", "na"],
                                                           ["apac", "eu", "na"]]
    # apac's own ledger: released rounds 1 and 3, nothing for the round it never answered
    ledger = json.loads((root / "state" / "apac" / PRIVACY_LEDGER_FILE).read_text())
    released = sorted(r["server_round"] for r in ledger["releases"] if r["run_id"] == "faults")
    assert released == [1, 3]
    for region in world.regions:
        assert verify(root / "state" / region / EGRESS_LEDGER).ok
