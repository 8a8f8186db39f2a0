"""A hostile coordinator (and a hostile co-silo) against `adopt: adapt`, through the real ClientApp and its hooks.

The coordinator controls every message (the arrays of each version, its name, the round numbers, the run
name) and, when the jurisdiction's node config sets no adoption policy, the run config's `adoption` entry. The
region's promise: it serves its own local-only line unless another model beats that line on its validation
users, and nothing of the review leaves the silo. Each test plays one attack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType

from fedrec.config import AdoptionPolicy
from fedrec.errors import ConfigError, FedrecError
from fedrec.flower.client_app import make_client_app
from fedrec.models import ModelSpec
from fedrec.settings import RunSettings
from fedrec.silo.adaptation import advance_own_line
from fedrec.silo.error_replies import FIXED_REASONS
from fedrec.silo.serving import OWN_FILE, RegionServing
from fedrec.training import TrainConfig, initial_global_arrays
from fedrec.world import PreparedWorld
from tests.test_client_egress import instruction
from tests.test_hostile_coordinator import ctx, deployed, meta, run_config
from tests.test_hostile_coordinator import world as world

ADAPT = AdoptionPolicy.from_config("eu", {"adopt": "adapt"})
MF = ModelSpec("mf", 8)


def own_line(state_dir: Path):  # type: ignore[no-untyped-def]
    line = RegionServing(state_dir, ADAPT).line(OWN_FILE)
    assert line is not None
    return line


# ---- 1. the own line seeded with the coordinator's arrays -----------------------------------------------------


def test_the_coordinators_first_version_does_not_seed_the_regions_own_line(world: PreparedWorld,
                                                                           tmp_path: Path) -> None:
    # The own line is the region's local-only fallback: what it serves unless something beats it. It started
    # from whatever arrays the first training message of the run carried, so a coordinator sending a crafted
    # "version 0" (every parameter at +1000: two-tower's own line then scored ndcg@20 0.168 on validation
    # instead of 0.435) made the fallback bad, and the region served the coordinator's model instead.
    cfg = run_config(world, tmp_path, privacy="none")
    s = RunSettings.from_run_config(cfg)
    honest = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=s.seed)
    crafted = {k: np.full_like(v, 1e3) for k, v in honest.items()}
    app = make_client_app()
    for name, arrays in (("honest", honest), ("crafted", crafted)):
        node = deployed(world, tmp_path / name, budget=None, adopt="adapt")
        reply = app(instruction(MessageType.TRAIN, arrays, 1), ctx(node, cfg))
        assert "declined" not in meta(reply)

    # Assert: the same own line whatever the coordinator sent as its first version
    a, b = own_line(tmp_path / "honest" / "eu-own-state"), own_line(tmp_path / "crafted" / "eu-own-state")
    assert a.rounds == b.rounds == 1
    assert set(a.global_arrays) == set(b.global_arrays)
    for k in a.global_arrays:
        np.testing.assert_array_equal(a.global_arrays[k], b.global_arrays[k])


def test_an_honest_run_gets_the_same_own_line_and_random_state_as_before(world: PreparedWorld,
                                                                         tmp_path: Path) -> None:
    # Replies of `adopt: adapt` must stay byte-identical to `adopt: always`: building the line's start in the
    # silo must not reseed the process's torch generator, and with an honest version 0 the line is as before.
    import torch

    silo, cfg = world.silos["eu"], TrainConfig(batch_size=64, n_negatives=16)
    v0 = initial_global_arrays(MF, n_items=silo.n_items, seed=7)
    after = {}
    for run_seed in (None, 7):
        torch.manual_seed(123)
        line = advance_own_line(RegionServing(tmp_path / str(run_seed), ADAPT), silo, MF, cfg, server_round=1,
                                received_version="v0", received_arrays=v0, seed=1, run_id="r", run_seed=run_seed)
        after[run_seed] = (torch.rand(3), line.global_arrays)
    assert torch.equal(after[None][0], after[7][0])
    for k in after[None][1]:
        np.testing.assert_array_equal(after[None][1][k], after[7][1][k])


# ---- 2. a run config asking for an unbounded number of adapted models ----------------------------------------


def test_a_run_config_cannot_make_each_evaluation_build_thousands_of_adapted_models() -> None:
    # A jurisdiction that sets no adoption policy of its own takes the run config's. `mu` had no length limit:
    # 10⁵ prior strengths meant 10⁵ item solves, refits and full rankings per evaluation message, every
    # variant's factors held in memory at once (n_items × dim float32 each).
    with pytest.raises(ConfigError, match="mu"):
        AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": list(range(100_000))})
    with pytest.raises(ConfigError, match="mu"):
        AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": ",".join(str(i) for i in range(1000))})
    assert len(AdoptionPolicy.from_config("eu", {"adopt": "adapt", "mu": list(range(16))}).mu) == 16


# ---- 3. a version named like a model of the region's own ------------------------------------------------------


@pytest.mark.parametrize("name", ["own:" + "5e" * 32, "adapted:mu=1:" + "5e" * 32, "fork:" + "5e" * 32])
def test_a_version_named_like_the_regions_own_model_is_refused(world: PreparedWorld, tmp_path: Path,
                                                               name: str) -> None:
    # A served global version is recorded under its name, and the region's report reads the kind of model it
    # serves from the label's prefix. A coordinator naming its version "own:<id>" made a region that adopted
    # the coordinator's model record (and report) that it serves its own line; "adapted:x" broke the report.
    arrays = initial_global_arrays(MF, n_items=world.n_items, seed=0)
    for kind, policy in ((MessageType.EVALUATE, "always"), (MessageType.TRAIN, "adapt")):
        node = deployed(world, tmp_path / kind, budget=3.0, adopt=policy)
        reply = make_client_app()(instruction(kind, arrays, 1, version=name), ctx(node, run_config(world, tmp_path)))
        assert reply.has_error() and reply.error.reason == FIXED_REASONS[FedrecError]
        serving = RegionServing(tmp_path / kind / "eu-own-state", ADAPT)
        assert serving.record.decisions() == [] and serving.line(OWN_FILE) is None


# ---- 4. a round number from the far future -------------------------------------------------------------------


def test_one_training_message_from_a_far_round_does_not_freeze_the_own_line(world: PreparedWorld,
                                                                            tmp_path: Path) -> None:
    # The own line treated every training message at or before the last round it trained for as a replay. One
    # message numbered 10¹² froze it for the rest of the run, while the silo went on training the federation's
    # model: the region's fallback stayed where it was and the federation's model overtook it.
    silo, cfg = world.silos["eu"], TrainConfig(batch_size=64, n_negatives=16)
    v0 = initial_global_arrays(MF, n_items=silo.n_items, seed=0)
    serving = RegionServing(tmp_path, ADAPT)

    def advance(rnd: int):  # type: ignore[no-untyped-def]
        return advance_own_line(serving, silo, MF, cfg, server_round=rnd, received_version="v0", received_arrays=v0,
                                seed=rnd, run_id="run-a", run_seed=0)

    advance(1)
    advance(10**12)
    for rnd in (2, 3, 4):
        advance(rnd)
    # replays of any round it trained for still train nothing
    for rnd in (1, 3, 10**12):
        assert advance(rnd).rounds == 5
    assert own_line(tmp_path).rounds == 5
