"""A silo under privacy=user_dp, driven through the real ClientApp with real Messages and Contexts.

Budgets that hold: the ledger is written before the reply, survives a restarted silo (same plan, same σ),
refuses a repeated round from a restarted coordinator, and a jurisdiction's own node config can demand DP
and lower its budget. Plus the secure noise source's statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.flower.client_app import make_client_app
from fedrec.privacy.ledger import BudgetLedger
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import PrivacySettings
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import wire_bytes
from fedrec.silo.error_replies import FIXED_REASONS
from fedrec.silo.evaluation_log import read_evaluations
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def settings(world: PreparedWorld, state: Path, **kw: object) -> RunSettings:
    base = {"data_dir": str(world.data_dir), "num_rounds": 3, "min_nodes": 3, "dim": 8, "batch_size": 64,
            "n_negatives": 16, "privacy": "user_dp", "privacy_epsilon": 3.0, "privacy_sample_rate": 0.2,
            "privacy_steps_per_round": 3, "privacy_max_per_user": 8, "state_dir": str(state)}
    return RunSettings(**{**base, **kw})  # type: ignore[arg-type]


def context(node_config: dict | None = None, run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=1, node_config=node_config or {"partition-id": 0}, state=RecordDict(),
                   run_config={})


def train(app, s: RunSettings, world: PreparedWorld, ctx: Context, rnd: int) -> Message:  # type: ignore[no-untyped-def]
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)
    return app(instruction(MessageType.TRAIN, arrays, rnd), ctx)


def ledger(s: RunSettings, world: PreparedWorld, state: Path, region: str = "eu") -> BudgetLedger:
    p = s.privacy_settings()
    return BudgetLedger(state / region / PRIVACY_LEDGER_FILE, budget_epsilon=p.budget_for(region), delta=p.delta)


def test_a_release_is_in_the_ledger_before_the_reply_and_a_repeated_round_is_never_a_second_release(
        world, tmp_path) -> None:
    # Prepare
    s = settings(world, tmp_path)
    app, ctx = make_client_app(s), context()
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)

    # Execute: round 1; the same round again (a restarted coordinator re-sending it), on a restarted node;
    # then round 1 once more but naming another global version (a replaying or confused coordinator)
    first = train(app, s, world, ctx, 1)
    on_disk = ledger(s, world, tmp_path)
    again = make_client_app(s)(instruction(MessageType.TRAIN, arrays, 1), context())
    other = app(instruction(MessageType.TRAIN, arrays, 1, version="77" * 32), ctx)

    # Assert: one release in the ledger; the repeat is the very same reply; another version is declined
    meta = first.content["meta"]
    assert "arrays" in first.content and meta["dp-epsilon"] == pytest.approx(on_disk.epsilon_spent())
    assert [r.server_round for r in on_disk.releases] == [1]
    assert 0 < meta["dp-epsilon"] < meta["dp-budget-epsilon"] == 3.0
    assert wire_bytes(again.content) == wire_bytes(first.content)
    assert "already released" in other.content["meta"]["declined"]
    assert "arrays" not in other.content and "metrics" not in other.content
    assert len(ledger(s, world, tmp_path).releases) == 1  # neither the repeat nor the decline spent anything


def test_a_restarted_silo_keeps_its_plan_and_its_spending(world, tmp_path) -> None:
    # Prepare: round 1 on one node process ...
    s = settings(world, tmp_path)
    r1 = train(make_client_app(s), s, world, context(), 1)

    # Execute: ... rounds 2 and 3 after a restart (fresh app, fresh node state), then a round past the plan
    r2 = train(make_client_app(s), s, world, context(), 2)
    r3 = train(make_client_app(s), s, world, context(), 3)
    r4 = train(make_client_app(s), s, world, context(), 4)

    # Assert: same σ, ε grows to (at most) the budget, and the round past the plan is declined
    sigmas = {r.content["meta"]["dp-noise-multiplier"] for r in (r1, r2, r3)}
    eps = [r.content["meta"]["dp-epsilon"] for r in (r1, r2, r3)]
    assert len(sigmas) == 1
    assert eps[0] < eps[1] < eps[2] <= 3.0
    assert eps[2] > 0.95 * 3.0  # the plan spends the budget it was calibrated for
    assert "budget exhausted" in r4.content["meta"]["declined"]
    assert [r.server_round for r in ledger(s, world, tmp_path).releases] == [1, 2, 3]


def test_a_new_run_calibrates_against_what_the_ledger_already_spent(world, tmp_path) -> None:
    s = settings(world, tmp_path)
    first = train(make_client_app(s), s, world, context(run_id=1), 1)
    second = train(make_client_app(s), s, world, context(run_id=2), 1)
    # run 2 has less budget left for as many planned steps: more noise
    assert second.content["meta"]["dp-noise-multiplier"] > first.content["meta"]["dp-noise-multiplier"]


def test_a_run_that_starts_late_plans_only_the_rounds_left(world, tmp_path) -> None:
    # a run continuing a registered line (start_version at round 2 of 3) first asks this silo for round 3
    s_late, s_whole = settings(world, tmp_path / "late"), settings(world, tmp_path / "whole")
    late = train(make_client_app(s_late), s_late, world, context(), 3)
    whole = [train(make_client_app(s_whole), s_whole, world, context(), rnd) for rnd in (1, 2, 3)]
    sigma = [r.content["meta"]["dp-noise-multiplier"] for r in (late, whole[0])]
    assert sigma[0] < sigma[1]  # one release planned instead of three: less noise on it
    assert late.content["meta"]["dp-epsilon"] > 0.95 * 3.0  # ... and it is the whole budget
    # the ledger caps every run whatever its first round: a second run's releases stay within the budget
    after = [train(make_client_app(s_late), s_late, world, context(run_id=2), rnd) for rnd in (1, 2)]
    assert ledger(s_late, world, tmp_path / "late").epsilon_spent() <= 3.0
    assert all("arrays" not in r.content or r.content["meta"]["dp-epsilon"] <= 3.0 for r in after)


def test_per_region_budgets_and_a_jurisdiction_that_lowers_its_own(world, tmp_path) -> None:
    s = settings(world, tmp_path, privacy_region_epsilon=json.dumps({"eu": 1.0}))
    node = {"region": "na", "data-path": str(world.data_dir / "silo_na.npz"), "state-dir": str(tmp_path / "na"),
            "epsilon-budget": 0.5}
    eu = train(make_client_app(s), s, world, context(), 1)
    na = train(make_client_app(s), s, world, context(node), 1)
    assert eu.content["meta"]["dp-budget-epsilon"] == 1.0
    assert na.content["meta"]["dp-budget-epsilon"] == 0.5  # run config said 3.0; the jurisdiction said 0.5
    assert (tmp_path / "na" / PRIVACY_LEDGER_FILE).exists()


def test_a_jurisdiction_that_demands_dp_declines_a_non_private_run(world, tmp_path) -> None:
    s = settings(world, tmp_path, privacy="none")
    node = {"region": "eu", "data-path": str(world.data_dir / "silo_eu.npz"), "epsilon-budget": 2.0}
    reply = train(make_client_app(s), s, world, context(node), 1)
    assert "requires user-level DP" in reply.content["meta"]["declined"]
    assert "arrays" not in reply.content


def test_private_evaluation_is_logged_in_the_silo_not_sent(world, tmp_path) -> None:
    s = settings(world, tmp_path)
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)
    reply = make_client_app(s)(instruction(MessageType.EVALUATE, arrays, 1), context())
    assert dict(reply.content["meta"]) == {"region": "eu", "server-round": 1, "kept-in-silo": True}
    assert "metrics" not in reply.content
    logged = read_evaluations(tmp_path / "eu", "1")
    assert [e.round for e in logged] == [1] and logged[0].evaluation.n_users == world.silos["eu"].n_users


def test_a_silo_without_a_state_dir_replies_a_fixed_error_and_logs_the_reason(world, caplog) -> None:
    s = settings(world, Path("."), state_dir="", output_dir="")
    with caplog.at_level("ERROR", logger="fedrec.silo"):
        reply = train(make_client_app(s), s, world, context(), 1)
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[ConfigError]
    assert "set run-config state-dir or output-dir" in caplog.text  # the details stay in the silo's log


def test_bad_privacy_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.sample_rate"):
        PrivacySettings(mode="user_dp", sample_rate=0.0)
    with pytest.raises(ConfigError, match=r"region_epsilon\.eu"):
        PrivacySettings(mode="user_dp", region_epsilon={"eu": 0.0})


def test_secure_noise_is_gaussian_and_unpredictable_seeded_noise_is_reproducible() -> None:
    secure = NoiseSource("secure").normal((200_000,), 2.0)
    assert abs(float(secure.mean())) < 0.03 and abs(float(secure.std()) - 2.0) < 0.02
    # the tails of a normal, not of a uniform or a clipped sampler: P(|z| > 3) = 0.0027
    assert 0.0020 < float((secure.abs() > 6.0).float().mean()) < 0.0034
    assert not torch.equal(NoiseSource("secure").normal((8,), 1.0), NoiseSource("secure").normal((8,), 1.0))
    assert torch.equal(NoiseSource("seeded", seed=3).normal((8,), 1.0), NoiseSource("seeded", seed=3).normal((8,), 1.0))
    u = NoiseSource("secure").uniform(100_000).numpy()
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(np.mean(u) - 0.5) < 0.01
