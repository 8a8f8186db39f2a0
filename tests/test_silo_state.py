"""A silo's per-run state survives its node: on disk under the state dir, keyed by the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, MessageType, RecordDict

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.client_app import make_client_app
from fedrec.settings import RunSettings
from fedrec.silo.egress import train_reply
from fedrec.silo.state import SiloState
from fedrec.training import initial_global_arrays
from fedrec.world import prepare_world
from tests.test_client_egress import instruction


def ctx(run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def test_state_round_trips_on_disk_and_in_memory(tmp_path: Path) -> None:
    local = {"user.emb.weight": torch.randn(5, 3)}
    for state_dir in (tmp_path, None):
        st = SiloState(ctx(), state_dir, "run-a")
        assert st.local() is None and st.optimizer() is None
        st.save_local(local)
        st.save_optimizer({"0.exp_avg": np.ones(3, np.float32)})
        again = SiloState(st.context, state_dir, "run-a")  # same node memory, or the same disk
        assert torch.equal(again.local()["user.emb.weight"], local["user.emb.weight"])  # type: ignore[index]
        assert np.array_equal(again.optimizer()["0.exp_avg"], np.ones(3))  # type: ignore[index]
    assert SiloState(ctx(), tmp_path, "run-b").local() is None  # another run starts fresh
    assert (tmp_path / "runs" / "run-a" / "fedrec-user-state.safetensors").exists()


def test_a_cached_reply_is_returned_only_for_its_round_and_version(tmp_path: Path) -> None:
    st = SiloState(ctx(), tmp_path, "r")
    content = train_reply({"item_emb.weight": np.ones((2, 2), np.float32)}, region="eu", server_round=3, weight=1.0,
                          model_version="ab" * 32)
    st.cache_reply(3, "ab" * 32, content, "secaggplus:1234")
    got = SiloState(ctx(), tmp_path, "r").cached_reply(3, "ab" * 32)
    assert got is not None and got[0] == "secaggplus:1234"
    assert np.array_equal(got[1]["arrays"]["item_emb.weight"].numpy(), np.ones((2, 2)))
    assert st.cached_reply(4, "ab" * 32) is None and st.cached_reply(3, "cd" * 32) is None
    assert SiloState(ctx(), None, "r").cached_reply(3, "ab" * 32) is None


def test_a_restarted_node_continues_its_users_from_the_state_dir(tmp_path: Path) -> None:
    world = prepare_world(generate_world(SyntheticWorldConfig(n_users=90, n_items=30, region_only_items=2,
                                                              region_sizes=(1.0, 1.0), min_interactions=5)),
                          SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), state_dir=str(tmp_path / "state"), min_nodes=2, dim=4,
                    batch_size=32, n_negatives=8, run_name="resumable")
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)
    make_client_app(s)(instruction(MessageType.TRAIN, arrays, 1), ctx(run_id=11))
    saved = SiloState(ctx(), tmp_path / "state" / world.regions[0], "resumable").local()
    # a new node process (fresh memory) under a new Flower run id of the same named run
    restarted = SiloState(ctx(run_id=12), tmp_path / "state" / world.regions[0], s.run_key(12))
    assert saved is not None and restarted.local() is not None
    assert all(torch.equal(saved[k], restarted.local()[k]) for k in saved)  # type: ignore[index]
