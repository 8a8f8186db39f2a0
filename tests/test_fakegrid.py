"""The in-process FakeGrid (tests/fakegrid.py) runs the real apps as Flower's simulation does, without Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fakegrid import FakeGrid, run_in_process, task_identity
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from fedrec.coordinator.history import FederationHistory
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.simulation import run_simulation
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
RUN_ID = 4242


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def settings(world_dir: Path, out: Path, **kw: object) -> RunSettings:
    base: dict = dict(data_dir=str(world_dir), output_dir=str(out), num_rounds=3, min_nodes=3, dim=6, batch_size=64,
                      n_negatives=16, privacy="none")
    return RunSettings(**{**base, **kw})  # type: ignore[arg-type]


def outputs(history: FederationHistory, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The history the run returned, checked against the files it wrote in `out`, and its global model."""
    written = json.loads((out / "federated_history.json").read_text())
    assert written == history.to_json()
    arrays, _, _ = load_global_model(out / "global_model.safetensors")
    np.testing.assert_equal(arrays, history.final_arrays)
    return written, arrays


def without_timing(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "round_time_s"} for e in entries]


# --- the whole federation, in process ---------------------------------------------------------------------


def test_a_two_round_run_in_process_writes_its_history(world_dir: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    start = time.perf_counter()
    s = settings(world_dir, tmp_path / "out", num_rounds=2)
    out = tmp_path / "out"
    returned = run_in_process(s, on_round=lambda e: seen.append(e["round"]))
    wall = time.perf_counter() - start
    print(f"\n2 rounds x 3 silos in process: {wall:.2f} s")
    history, arrays = outputs(returned, out)
    assert seen == [1, 2]
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(r["participants"] == ["apac", "eu", "na"] and r["failures"] == [] for r in history["rounds"])
    assert all(sorted(r["per_region"]) == ["apac", "eu", "na"] for r in history["rounds"])
    assert history["stopped_early"] == "" and len(history["model_versions"]) == 3  # version 0 + 2 rounds
    assert arrays and all(np.isfinite(a).all() for a in arrays.values())
    # each participant's mean training loss (non-private run only), and it falls from round 1 to round 2
    losses = [e["train_loss"] for e in history["round_log"]]
    assert all(sorted(loss) == ["apac", "eu", "na"] for loss in losses)
    assert all(0 < v < 20 for loss in losses for v in loss.values())
    assert sum(losses[1].values()) < sum(losses[0].values())


def test_in_process_runs_are_reproducible(world_dir: Path, tmp_path: Path) -> None:
    h1, a1 = outputs(run_in_process(settings(world_dir, tmp_path / "a", num_rounds=2)), tmp_path / "a")
    h2, a2 = outputs(run_in_process(settings(world_dir, tmp_path / "b", num_rounds=2)), tmp_path / "b")
    assert h1["run_id"] != h2["run_id"]  # a fresh random Flower run id each time, as in simulation
    assert without_timing(h1["rounds"]) == without_timing(h2["rounds"])
    assert all(np.array_equal(a1[k], a2[k]) for k in a1)


@pytest.mark.slow
def test_in_process_and_ray_simulation_give_bit_identical_models(world_dir: Path, tmp_path: Path) -> None:
    ray_history, ray_arrays = outputs(run_simulation(settings(world_dir, tmp_path / "ray")), tmp_path / "ray")
    fake_history, fake_arrays = outputs(run_in_process(settings(world_dir, tmp_path / "fake")), tmp_path / "fake")

    assert set(ray_arrays) == set(fake_arrays)
    for k in ray_arrays:
        assert ray_arrays[k].dtype == fake_arrays[k].dtype and ray_arrays[k].shape == fake_arrays[k].shape
        assert np.array_equal(ray_arrays[k], fake_arrays[k]), k  # bit for bit, not approximately
    assert without_timing(ray_history["rounds"]) == without_timing(fake_history["rounds"])  # metrics: exact
    assert without_timing(ray_history["round_log"]) == without_timing(fake_history["round_log"])
    assert ray_history["model_versions"] == fake_history["model_versions"]  # content ids of every global model


def test_secure_aggregation_is_not_supported_in_process(world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="SecAgg"):
        run_in_process(settings(world_dir, tmp_path / "out", secure_aggregation="secaggplus"))


# --- the Grid itself ----------------------------------------------------------------------------------------


def echo_app() -> ClientApp:
    """Counts its calls in the node's state; raises when asked to."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        n = int(context.state.config_records.get("seen", ConfigRecord({"n": 0}))["n"]) + 1  # type: ignore[call-overload]
        context.state.config_records["seen"] = ConfigRecord({"n": n})
        if msg.content.config_records["config"].get("fail"):
            raise RuntimeError("asked to fail")
        return Message(RecordDict({"r": ConfigRecord({"n": n, "partition": context.node_config["partition-id"],
                                                      "num": context.node_config["num-partitions"]})}), reply_to=msg)

    return app


def queries(grid: FakeGrid, *, fail: bool = False) -> list[Message]:
    with task_identity(RUN_ID):
        return [Message(RecordDict({"config": ConfigRecord({"fail": fail})}), dst_node_id=n,
                        message_type=MessageType.QUERY, group_id="g") for n in sorted(grid.get_node_ids())]


def test_every_node_answers_with_its_own_context_kept_across_messages() -> None:
    grid = FakeGrid(echo_app(), 3, run_id=RUN_ID)
    assert grid.run.run_id == RUN_ID and len(grid.get_node_ids()) == 3
    for expected in (1, 2):
        sent = queries(grid)
        replies = grid.send_and_receive(sent, timeout=1.0)
        assert len(replies) == 3
        ids = {m.metadata.message_id for m in sent}
        assert len(ids) == 3 and "" not in ids
        for reply, ins in zip(replies, sent, strict=True):
            md = reply.metadata
            assert md.reply_to_message_id == ins.metadata.message_id and md.message_id not in ("", *ids)
            assert md.src_node_id == ins.metadata.dst_node_id and md.dst_node_id == SUPERLINK_NODE_ID
            assert md.run_id == RUN_ID and md.group_id == "g"
            assert reply.content.config_records["r"]["n"] == expected
        partitions = sorted(int(r.content.config_records["r"]["partition"]) for r in replies)  # type: ignore[call-overload]
        assert partitions == [0, 1, 2] and {r.content.config_records["r"]["num"] for r in replies} == {3}
    assert grid.pull_messages(ids) == []  # a reply is pulled once
    assert all(m.metadata.delivered_at for m in grid.delivered)


def test_a_client_app_that_raises_gives_flowers_error_reply_and_keeps_its_old_context() -> None:
    grid = FakeGrid(echo_app(), 2, run_id=RUN_ID)
    grid.send_and_receive(queries(grid))
    sent = queries(grid, fail=True)
    replies = grid.send_and_receive(sent)
    assert len(replies) == 2 and all(r.has_error() for r in replies)
    assert all(r.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION for r in replies)
    assert all("ClientAppException" in r.error.reason and "asked to fail" in r.error.reason for r in replies)
    assert [r.metadata.reply_to_message_id for r in replies] == [m.metadata.message_id for m in sent]
    after = grid.send_and_receive(queries(grid))
    assert [r.content.config_records["r"]["n"] for r in after] == [2, 2]  # the failed call's state was not kept


def test_messages_flower_would_refuse_are_refused() -> None:
    grid = FakeGrid(echo_app(), 2, run_id=RUN_ID)
    with task_identity(RUN_ID):
        unknown = Message(RecordDict(), dst_node_id=12345, message_type=MessageType.QUERY)
    with pytest.raises(ValueError, match="unknown dst_node_id"):
        grid.push_messages([unknown])
    with task_identity(RUN_ID + 1):
        other_run = Message(RecordDict(), dst_node_id=grid.node_ids[0], message_type=MessageType.QUERY)
    with pytest.raises(ValueError, match="run_id"):
        grid.push_messages([other_run])
