"""A coordinator that dies mid-run resumes from its checkpoint: no round lost, repeated or paid for twice.

A federation of the real ServerApp and ClientApps under user-level DP (in process on tests/fakegrid.py's
FakeGrid, no Ray) crashes right after round 2's replies were received and before its checkpoint (the
progress callback raises). The coordinator is started again, under a new Flower run id as a restarted one
would be, with `resume=true` and the same `run-name` on the same output and silo state: round 2 is sent
again, the silos answer with the reply they already sent (no second release in their ledgers), and the run
ends bit-identical to one that never crashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakegrid import run_in_process

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.model_io import load_global_model
from fedrec.privacy.ledger import BudgetLedger
from fedrec.privacy.plan import PrivacySettings
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE as EGRESS_LEDGER
from fedrec.silo.egress_ledger import verify
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.versions import ModelRegistry
from fedrec.world import PreparedWorld, prepare_world

pytestmark = pytest.mark.slow  # the module's three DP runs take ~6-7 s together, even without Ray
WORLD = SyntheticWorldConfig(n_users=300, n_items=60, region_only_items=3, region_sizes=(1.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


# Flower run ids: the crashed coordinator, its restart, and the uninterrupted run each get their own
CRASHED_RUN_ID, RESUMED_RUN_ID, STRAIGHT_RUN_ID = 0x5EED_0001, 0x5EED_0002, 0x5EED_0003


class Crash(RuntimeError):
    pass


def settings(world: PreparedWorld, root: Path, **kw: Any) -> RunSettings:
    return RunSettings(data_dir=str(world.data_dir), output_dir=str(root / "out"), state_dir=str(root / "state"),
                       num_rounds=3, min_nodes=3, dim=6, batch_size=64, n_negatives=16, privacy="user_dp",
                       privacy_epsilon=4.0, privacy_sample_rate=0.2, privacy_steps_per_round=3,
                       privacy_max_per_user=8, run_name="resumable", **kw)


def crash_after(rnd: int):  # type: ignore[no-untyped-def]
    def on_round(entry: dict) -> None:
        if entry["round"] == rnd:
            raise Crash(f"coordinator killed after round {rnd}'s replies")
    return on_round


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedWorld, Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    world = prepare_world(generate_world(WORLD), SplitConfig(), root / "world")
    # seeded noise (a Python-only research option) so the two runs can be compared bit for bit
    with pytest.raises(Crash):  # in process, the ServerApp's error reaches the caller
        run_in_process(settings(world, root / "crashed"), on_round=crash_after(2), reproducible_noise=True,
                       run_id=CRASHED_RUN_ID)
    assert json.loads((root / "crashed" / "out" / "coordinator" / "checkpoint.json").read_text())["round"] == 1
    # a restarted coordinator: a new Flower run id, the same run-name (what silo state and checkpoint are keyed by)
    run_in_process(settings(world, root / "crashed", resume=True), reproducible_noise=True, run_id=RESUMED_RUN_ID)
    run_in_process(settings(world, root / "straight"), reproducible_noise=True, run_id=STRAIGHT_RUN_ID)
    return world, root / "crashed", root / "straight"


def history(run: Path) -> dict:
    return json.loads((run / "out" / "federated_history.json").read_text())


def test_the_resumed_run_continues_after_the_last_checkpointed_round(runs) -> None:
    _, crashed, _ = runs
    h = history(crashed)
    assert h["resumed_at"] == [2]
    assert [e["round"] for e in h["round_log"]] == [1, 2, 3]
    assert all(e["participants"] == ["apac", "eu", "na"] for e in h["round_log"])
    registry = ModelRegistry(crashed / "out" / "registry", create=False)
    lineage = registry.lineage(h["model_versions"][-1]["id"])
    assert [v.round for v in lineage] == [3, 2, 1, 0]


def test_no_silo_paid_twice_for_the_round_that_was_in_flight(runs) -> None:
    world, crashed, straight = runs
    for region in world.regions:
        led = [BudgetLedger(run / "state" / region / PRIVACY_LEDGER_FILE, budget_epsilon=4.0,
                            delta=PrivacySettings().delta) for run in (crashed, straight)]
        assert [r.server_round for r in led[0].releases] == [1, 2, 3]
        assert led[0].epsilon_spent() == pytest.approx(led[1].epsilon_spent())
        # the egress ledger shows round 2 sent twice, byte-identical, and still adds up
        sent = [json.loads(line) for line in (crashed / "state" / region / EGRESS_LEDGER).read_text().splitlines()]
        r2 = [e["sha256"] for e in sent if e["kind"] == "train" and e["server_round"] == 2]
        assert len(r2) == 2 and r2[0] == r2[1]
        assert verify(crashed / "state" / region / EGRESS_LEDGER).ok


def test_the_resumed_run_ends_exactly_where_an_uninterrupted_run_does(runs) -> None:
    _, crashed, straight = runs
    a, _, _ = load_global_model(crashed / "out" / "global_model.safetensors")
    b, _, _ = load_global_model(straight / "out" / "global_model.safetensors")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    ids = [[v["id"] for v in history(run)["model_versions"]] for run in (crashed, straight)]
    assert ids[0] == ids[1]
