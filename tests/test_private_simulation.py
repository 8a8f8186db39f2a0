"""A real Flower simulation under privacy=user_dp, with every message each silo sends captured at the boundary.

The capture is a Flower client mod (`egress_recorder`) around the real ClientApp in the real Ray engine, so
the assertions are about what actually left each silo: only the global parameters of a DP round (noised by
each silo's own CSPRNG: nothing the coordinator knows predicts them), public metadata, uniform weights; no
metric, count or per-user tensor. One silo's budget is already spent by an earlier run: it declines every
round and the coordinator carries on with the others and reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.egress_recorder import RecordedReply, egress_recorder, read_recorded
from fedrec.flower.simulation import run_simulation
from fedrec.messages import DP_KEYS, META_KEYS
from fedrec.privacy.accountant import GaussianSteps
from fedrec.privacy.dp_round import DpTrainConfig, train_round_dp
from fedrec.privacy.ledger import BudgetLedger
from fedrec.privacy.noise import NoiseSource
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE as EGRESS_LEDGER
from fedrec.silo.egress_ledger import EgressLedger, verify
from fedrec.silo.evaluation_log import read_evaluations
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.silo.round import silo_seed
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world

pytestmark = pytest.mark.slow

# Silos of 150, 100 and 50 users; 61 + 3 x 3 = 70 items; dim 6: no silo size equals a parameter dimension.
WORLD = SyntheticWorldConfig(n_users=300, n_items=61, region_only_items=3, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=15.0, min_interactions=5)
ROUNDS = 2
SPENT_REGION = "apac"  # its ledger is exhausted before the run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedWorld, RunSettings, Path, dict]:
    root = tmp_path_factory.mktemp("private")
    world = prepare_world(generate_world(WORLD), SplitConfig(), root / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(root / "out"), num_rounds=ROUNDS, min_nodes=3,
                    dim=6, batch_size=64, n_negatives=16, privacy="user_dp", privacy_epsilon=4.0,
                    privacy_region_epsilon=json.dumps({"eu": 2.0}), privacy_sample_rate=0.2,
                    privacy_steps_per_round=4, privacy_max_per_user=8, state_dir=str(root / "state"))
    # An earlier run, under a larger budget, spent more than this run's budget (same δ and accountant)
    p = s.privacy_settings()
    spent = BudgetLedger(root / "state" / SPENT_REGION / PRIVACY_LEDGER_FILE, budget_epsilon=100.0, delta=p.delta)
    spent.authorize(run_id="earlier", server_round=1, event=GaussianSteps(0.5, 0.8, 100))
    assert spent.epsilon_spent() > p.budget_for(SPENT_REGION)
    # Execute: the real simulation engine, with the recorder around every silo's ClientApp
    run_simulation(s, client_mods=[egress_recorder(root / "egress")])
    history = json.loads((root / "out" / "federated_history.json").read_text())
    return world, s, root, history


def replies(root: Path, kind: str) -> list[RecordedReply]:
    return [r for r in read_recorded(root / "egress") if r.message_type == kind]


def test_every_silo_answered_every_message_without_error(run) -> None:
    world, _, root, history = run
    train, evaluate = replies(root, "train"), replies(root, "evaluate")
    assert len(train) == ROUNDS * len(world.regions)
    assert len(evaluate) == ROUNDS * len(world.regions)
    assert not any(r.has_error for r in train + evaluate)
    assert [r["round"] for r in history["rounds"]] == list(range(1, ROUNDS + 1))
    # the preflight answers (before round 1) name the region and nothing else
    preflight = replies(root, "query")
    assert sorted(r.records["meta"]["region"] for r in preflight) == sorted(world.regions)
    assert all(r.arrays == {} and list(r.records) == ["meta"] and set(r.records["meta"]) == {"region", "server-round"}
               for r in preflight)


def test_train_replies_hold_only_global_parameters_with_uniform_weight_and_public_metadata(run) -> None:
    world, s, root, _ = run
    expected = {k: v.shape for k, v in initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0).items()}
    private_numbers = {float(x) for silo in world.silos.values()
                       for x in (silo.n_users, len(silo.train[0]), len(silo.test[0]), len(silo.valid[0]))}
    for r in replies(root, "train"):
        assert set(r.records) <= {"meta", "metrics"}
        assert set(r.records["meta"]) <= META_KEYS
        if "declined" in r.records["meta"]:
            assert r.arrays == {} and "metrics" not in r.records
            continue
        assert set(r.arrays) == {"arrays"}
        assert {k: v.shape for k, v in r.arrays["arrays"].items()} == expected
        assert r.records["metrics"] == {"weight": 1.0}
        assert set(DP_KEYS) <= set(r.records["meta"])
        # no silo size or interaction count travels, in metadata or as a dimension
        numbers = {float(v) for v in r.records["meta"].values() if isinstance(v, int | float)}
        assert not (numbers - {float(r.records["meta"]["server-round"])}) & private_numbers
        assert not any(d in {s.n_users for s in world.silos.values()} for v in r.arrays["arrays"].values()
                       for d in v.shape)


def test_evaluation_results_stay_in_the_silo(run) -> None:
    world, _, root, history = run
    for r in replies(root, "evaluate"):
        assert r.arrays == {} and set(r.records) == {"meta"}
        assert r.records["meta"]["kept-in-silo"] is True
    # ... where the silo keeps them, in its own log
    for region in world.regions:
        logged = read_evaluations(root / "state" / region, history["run_id"])
        assert [e.round for e in logged] == list(range(1, ROUNDS + 1))


def test_no_public_value_predicts_the_released_update(run) -> None:
    # A coordinator that knows the run config (seed included) and every silo's public metadata recomputes the
    # DP round with the noise the run's seed would give: what the silo sent is not that, in any coordinator.
    # Every silo published the same δ, whatever its size (δ is policy, not a function of the data).
    world, s, root, _ = run
    init = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=s.seed)
    round1 = [r for r in replies(root, "train")
              if r.records["meta"]["server-round"] == 1 and "declined" not in r.records["meta"]]
    assert sorted(r.records["meta"]["region"] for r in round1) == ["eu", "na"]
    assert {r.records["meta"]["dp-delta"] for r in replies(root, "train")} == {s.privacy_delta}
    for r in round1:
        region, meta = r.records["meta"]["region"], r.records["meta"]
        seed = silo_seed(s.seed, region, 1)
        dp = DpTrainConfig(clip_norm=meta["dp-clip-norm"], noise_multiplier=meta["dp-noise-multiplier"],
                           sample_rate=meta["dp-sample-rate"], steps_per_round=s.privacy_steps_per_round,
                           max_per_user=s.privacy_max_per_user)
        guess = train_round_dp(world.silos[region], s.model_spec, init, None, s.train_config(), dp, seed=seed,
                               noise=NoiseSource("seeded", seed=seed)).global_after
        sent = r.arrays["arrays"]
        assert set(sent) == set(guess)
        assert not np.allclose(sent["item_emb.weight"], guess["item_emb.weight"])


def test_budgets_hold_and_the_coordinator_reports_what_silos_spent(run) -> None:
    _, s, root, history = run
    p = s.privacy_settings()
    final = {}
    for entry in history["privacy_rounds"]:
        final.update(entry["per_region"])
    for region in ("eu", "na"):
        ledger = BudgetLedger(root / "state" / region / PRIVACY_LEDGER_FILE, budget_epsilon=p.budget_for(region),
                              delta=p.delta)
        # one release per round, recorded before it left, and the reported ε is the ledger's
        assert [(r.server_round) for r in ledger.releases] == list(range(1, ROUNDS + 1))
        assert final[region]["epsilon"] == pytest.approx(ledger.epsilon_spent())
        assert final[region]["epsilon"] <= final[region]["budget_epsilon"] == p.budget_for(region)
        assert final[region]["steps"] == ROUNDS * s.privacy_steps_per_round
    assert final["eu"]["budget_epsilon"] == 2.0 and final["na"]["budget_epsilon"] == 4.0
    # the exhausted silo declined every round, said why, and the others carried on
    for entry in history["privacy_rounds"]:
        assert "budget exhausted" in entry["declined"][SPENT_REGION]
    assert all(e["participants"] == ["eu", "na"] for e in history["rounds"])
    assert history["stopped_early"] == ""


def test_when_every_silo_has_spent_its_budget_the_run_stops_and_says_why(tmp_path: Path) -> None:
    # Prepare: every silo's ledger already holds more than this run's budget
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=3, min_nodes=3, dim=6,
                    privacy="user_dp", privacy_epsilon=1.0, state_dir=str(tmp_path / "state"))
    for region in world.silos:
        BudgetLedger(tmp_path / "state" / region / PRIVACY_LEDGER_FILE, budget_epsilon=100.0,
                     delta=s.privacy_settings().delta).authorize(run_id="earlier", server_round=1,
                                                              event=GaussianSteps(0.5, 0.8, 100))

    # Execute
    run_simulation(s, client_mods=[egress_recorder(tmp_path / "egress")])
    history = json.loads((tmp_path / "out" / "federated_history.json").read_text())

    # Assert: one round of declines, nothing aggregated or evaluated, the reason recorded; nothing but
    # declines left the silos
    assert history["stopped_early"].startswith("round 1: every silo declined (budget exhausted")
    assert history["rounds"] == []
    assert [e["round"] for e in history["privacy_rounds"]] == [1]
    sent = [r for r in read_recorded(tmp_path / "egress") if r.message_type != "query"]  # preflight: config only
    assert len(sent) == 3 and all(r.arrays == {} and "declined" in r.records["meta"] for r in sent)


def test_each_silo_egress_ledger_holds_every_reply_and_verifies(run) -> None:
    world, _, root, _ = run
    for region in world.regions:
        entries = EgressLedger(root / "state" / region / EGRESS_LEDGER).entries()
        assert sorted((e.kind, e.server_round) for e in entries) == sorted(
            [("query", 0)] + [(kind, rnd) for kind in ("train", "evaluate") for rnd in range(1, ROUNDS + 1)])
        report = verify(root / "state" / region / EGRESS_LEDGER)
        assert report.ok, (region, report.problems)
        assert report.releases == (0 if region == SPENT_REGION else ROUNDS)
