"""The egress contract, checked on what the real Flower ClientApp replies to real Messages.

Each test drives the ClientApp in-process: `app(message, context)` with a `flwr.app.Context` whose node config
names the silo (partition-id, as in simulation) and a train/evaluate `Message` as the SuperNode delivers it
(its metadata, including the message id the SuperLink assigns, given explicitly: a Message built with only
`dst_node_id` needs Flower's process-wide TaskIdentity, which only a running ServerApp sets).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.flower import client_app as client_app_module
from fedrec.flower.client_app import make_client_app
from fedrec.metrics import METRICS
from fedrec.models import build_model, global_state, local_state
from fedrec.models.base import PER_USER_KEYS
from fedrec.settings import RunSettings
from fedrec.silo.egress import EgressViolation, check_reply, statistics_reply, train_reply
from fedrec.silo.state import LOCAL_STATE_KEY, OPTIMIZER_STATE_KEY
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world

# 150 users in shares 3:2:1 -> silos of 75, 50 and 25 users; catalog 40 + 3 x 2 = 46 items; dim 8; towers of
# 64 hidden units. No silo size equals a parameter dimension, so a dimension equal to n_users means user data.
WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
DIM = 8
SERVER_NODE = 0
SILO_NODE = 1



@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def test_silo_sizes_differ_from_every_parameter_dimension(world: PreparedWorld) -> None:
    # The premise of the dimension checks below
    assert [s.n_users for s in world.silos.values()] == [75, 50, 25]
    assert world.n_items == 46
    assert not {75, 50, 25} & {world.n_items, DIM, 64, 1}


def settings(world: PreparedWorld, *, model: str = "mf", weighting: str = "uniform") -> RunSettings:
    return RunSettings(data_dir=str(world.data_dir), num_rounds=5, min_nodes=3, model=model, dim=DIM,
                       weighting=weighting, batch_size=64)


def node_context(partition: int = 0, run_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=SILO_NODE, node_config={"partition-id": partition, "num-partitions": 3},
                   state=RecordDict(), run_config=run_config or {})


INSTRUCTED_VERSION = "5e" * 32


def instruction(message_type: str, arrays: dict[str, np.ndarray], server_round: int,
                version: str = INSTRUCTED_VERSION) -> Message:
    """A train/evaluate message from the coordinator to the silo's node, as delivered."""
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "config": ConfigRecord({"server-round": server_round, "model-version": version})})
    metadata = Metadata(run_id=1, message_id=f"{message_type}-{server_round}", src_node_id=SERVER_NODE,
                        dst_node_id=SILO_NODE, reply_to_message_id="", group_id=str(server_round),
                        created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=metadata)


def initial_arrays(s: RunSettings, world: PreparedWorld) -> dict[str, np.ndarray]:
    return initial_global_arrays(s.model_spec, n_items=world.n_items, seed=s.seed)


def reply_arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content["arrays"].items()}


def stored_state(context: Context) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in context.state.array_records[LOCAL_STATE_KEY].items()}


# --- train replies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", [0, 1, 2])
@pytest.mark.parametrize("model", ["mf", "twotower"])
def test_train_reply_holds_only_global_parameters_and_public_metadata(world: PreparedWorld, model: str,
                                                                      partition: int) -> None:
    # Prepare
    s = settings(world, model=model)
    region = world.regions[partition]
    n_users = world.silos[region].n_users
    sent = initial_arrays(s, world)
    global_keys = set(global_state(build_model(s.model_spec, n_users=n_users, n_items=world.n_items)))

    # Execute
    reply = make_client_app(s)(instruction(MessageType.TRAIN, sent, 1), node_context(partition))

    # Assert: addressed back to the coordinator, as a reply to the instruction
    assert reply.metadata.reply_to_message_id == "train-1"
    assert reply.metadata.dst_node_id == SERVER_NODE
    assert not reply.has_error()
    # Parameters: exactly the model's global ones, same shapes as sent, none sized by the silo's users
    got = reply_arrays(reply)
    assert set(reply.content.array_records) == {"arrays"}
    assert set(got) == global_keys == set(sent)
    assert not any(k.startswith("user.") for k in got)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in sent.items()}
    assert not any(n_users in v.shape for v in got.values())
    assert any(not np.array_equal(got[k], sent[k]) for k in got)  # trained, not an echo
    # Records: round metadata, the aggregation weight and (non-private run) the round's mean training loss,
    # nothing else (no user ids, no silo size)
    assert {k: dict(v) for k, v in reply.content.config_records.items()} == {
        "meta": {"region": region, "server-round": 1, "model-version": INSTRUCTED_VERSION}}
    metrics = {k: dict(v) for k, v in reply.content.metric_records.items()}
    assert set(metrics) == {"metrics"} and set(metrics["metrics"]) == {"weight", "train-loss"}
    assert metrics["metrics"]["weight"] == 1.0 and 0 < metrics["metrics"]["train-loss"] < 20


def test_examples_weighting_sends_the_number_of_training_interactions(world: PreparedWorld) -> None:
    # Prepare
    s = settings(world, weighting="examples")

    # Execute
    reply = make_client_app(s)(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), node_context(1))

    # Assert: na's training interactions (FedAvg's n_k; this setting deliberately reveals the silo's size)
    assert reply.content["metrics"]["weight"] == float(len(world.silos["na"].train[0]))
    assert reply.content["meta"]["region"] == "na"


def test_per_user_parameters_stay_in_the_node_state(world: PreparedWorld) -> None:
    # Prepare
    s = settings(world)
    context = node_context(0)
    local_keys = set(local_state(build_model(s.model_spec, n_users=75, n_items=world.n_items)))

    # Execute
    reply = make_client_app(s)(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context)

    # Assert: the node state holds the local parameters (per-user rows of eu's 75 users, plus the silo's
    # private item bias) and the silo's optimizer moments; the reply holds none of them
    assert set(context.state.array_records) == {LOCAL_STATE_KEY, OPTIMIZER_STATE_KEY}
    state = stored_state(context)
    assert set(state) == local_keys
    assert all(state[k].shape[0] == 75 for k in PER_USER_KEYS)
    assert state["user.item_bias.weight"].shape[0] == world.n_items
    assert set(state).isdisjoint(reply_arrays(reply))


def test_round_two_continues_from_the_stored_user_state(world: PreparedWorld) -> None:
    # Prepare: node A trains round 1 then round 2; node B (same silo) sees only round 2 (no stored state)
    s = settings(world)
    app = make_client_app(s)
    node_a, node_b = node_context(0), node_context(0)
    round1 = app(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), node_a)
    after_round1 = stored_state(node_a)
    round2_msg = instruction(MessageType.TRAIN, reply_arrays(round1), 2)

    # Execute
    reply_a = app(round2_msg, node_a)
    reply_b = app(round2_msg, node_b)

    # Assert: A's state was trained further under the same key; B, starting without it, ends elsewhere
    assert set(node_a.state.array_records) == {LOCAL_STATE_KEY, OPTIMIZER_STATE_KEY}
    after_round2 = stored_state(node_a)
    assert set(after_round2) == set(after_round1)
    assert all(after_round2[k].shape == after_round1[k].shape for k in after_round1)
    assert not np.array_equal(after_round2["user.emb.weight"], after_round1["user.emb.weight"])
    assert not np.array_equal(after_round2["user.emb.weight"], stored_state(node_b)["user.emb.weight"])
    assert not np.array_equal(reply_arrays(reply_a)["item_emb.weight"], reply_arrays(reply_b)["item_emb.weight"])


# --- evaluate replies -----------------------------------------------------------------------------------------


def test_evaluate_reply_holds_only_metric_sums_user_count_and_metadata(world: PreparedWorld) -> None:
    # Prepare: one training round so the node has its users' state
    s = settings(world)
    app = make_client_app(s)
    context = node_context(2)
    trained = reply_arrays(app(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context))

    # Execute
    reply = app(instruction(MessageType.EVALUATE, trained, 1), context)

    # Assert
    assert reply.metadata.reply_to_message_id == "evaluate-1"
    assert not reply.content.array_records
    metrics = dict(reply.content["metrics"])
    assert set(reply.content.metric_records) == {"metrics"}
    assert set(metrics) == {f"sum-{m}" for m in METRICS} | {"n-users"}
    n_test_users = len(np.unique(world.silos["apac"].test[0]))
    assert metrics["n-users"] == n_test_users
    assert all(0.0 <= metrics[f"sum-{m}"] <= n_test_users for m in METRICS)
    assert {k: dict(v) for k, v in reply.content.config_records.items()} == {
        "meta": {"region": "apac", "server-round": 1}}


def test_evaluation_uses_the_stored_user_state(world: PreparedWorld) -> None:
    # Prepare: node A trained a round, node B never did
    s = settings(world)
    app = make_client_app(s)
    node_a, node_b = node_context(0), node_context(0)
    trained = reply_arrays(app(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), node_a))

    # Execute
    eval_a = dict(app(instruction(MessageType.EVALUATE, trained, 1), node_a).content["metrics"])
    eval_b = dict(app(instruction(MessageType.EVALUATE, trained, 1), node_b).content["metrics"])

    # Assert: same global parameters, different user state -> different rankings
    assert eval_a["n-users"] == eval_b["n-users"]
    assert eval_a["sum-ndcg@20"] != eval_b["sum-ndcg@20"]


# --- the deployed app and the egress function -----------------------------------------------------------------


def test_module_app_reads_the_run_config(world: PreparedWorld) -> None:
    # Prepare: `flwr run` gives the module-level app its settings through context.run_config
    s = settings(world, weighting="examples")
    context = node_context(1, run_config=s.to_run_config())

    # Execute
    reply = client_app_module.app(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context)

    # Assert
    assert set(reply_arrays(reply)) == set(initial_arrays(s, world))
    assert reply.content["metrics"]["weight"] == float(len(world.silos["na"].train[0]))


def test_train_reply_refuses_per_user_parameters() -> None:
    # Prepare
    arrays = {"item_emb.weight": np.zeros((4, 2), np.float32), "user.emb.weight": np.zeros((3, 2), np.float32)}

    # Execute / Assert
    with pytest.raises(EgressViolation, match=r"user\.emb\.weight"):
        train_reply(arrays, region="eu", server_round=1, weight=1.0)


def test_train_reply_builds_the_allowed_content() -> None:
    # Execute
    content = train_reply({"item_emb.weight": np.ones((4, 2), np.float32)}, region="eu", server_round=3, weight=2.0)

    # Assert
    assert list(content["arrays"]) == ["item_emb.weight"]
    np.testing.assert_array_equal(content["arrays"]["item_emb.weight"].numpy(), np.ones((4, 2)))
    assert dict(content["meta"]) == {"region": "eu", "server-round": 3}
    assert dict(content["metrics"]) == {"weight": 2.0}
    with pytest.raises(EgressViolation, match="training loss is a release"):
        train_reply({"item_emb.weight": np.zeros((2, 2), np.float32)}, region="eu", server_round=1, weight=1.0,
                     privacy={k: 1.0 for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
                                               "release_steps", "clip_norm", "budget_epsilon")}, loss=0.5)


def test_a_node_without_its_silo_file_gets_a_config_error(tmp_path: Path, world: PreparedWorld) -> None:
    # Prepare: a region-named (deployed) node whose node config names no data file; the run config's
    # data-dir does hold one, but a deployed silo never reads data from where the coordinator says
    s = RunSettings(data_dir=str(world.data_dir), min_nodes=3, dim=DIM)
    context = Context(run_id=1, node_id=SILO_NODE, node_config={"region": "eu"}, state=RecordDict(), run_config={})

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"silo 'eu': node config has no data-path"):
        make_client_app(s)(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context)


# --- statistics replies (model=ease) ---------------------------------------------------------------------------


def test_a_statistics_round_sends_only_the_silo_s_gram_matrix_weight_and_metadata(world: PreparedWorld) -> None:
    # Prepare
    s = settings(world, model="ease")
    silo = world.silos["na"]
    x = np.zeros((silo.n_users, world.n_items))
    x[silo.train[0], silo.train[1]] = 1.0

    # Execute
    context = node_context(1)
    reply = make_client_app(s)(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context)

    # Assert: XᵀX of na's binary training matrix (its users' co-occurrence counts), n_items × n_items: no
    # per-user row, no parameter, no loss, no size; and nothing kept in the node (EASE keeps no user state)
    assert set(reply.content.array_records) == {"arrays"} and set(reply_arrays(reply)) == {"stat.gram"}
    gram = reply_arrays(reply)["stat.gram"]
    assert gram.dtype == np.float32 and gram.shape == (world.n_items, world.n_items)
    np.testing.assert_array_equal(gram, x.T @ x)
    assert {k: dict(v) for k, v in reply.content.metric_records.items()} == {"metrics": {"weight": 1.0}}
    assert {k: dict(v) for k, v in reply.content.config_records.items()} == {
        "meta": {"region": "na", "server-round": 1, "model-version": INSTRUCTED_VERSION}}
    assert not context.state.array_records


def test_statistics_may_not_leave_a_private_run_and_never_with_per_user_names() -> None:
    # Prepare
    gram = {"stat.gram": np.eye(3, dtype=np.float32)}
    content = statistics_reply(gram, region="eu", server_round=1)

    # Execute / Assert: the same content passes only when the run is not private
    assert check_reply(content, private=False) is content
    with pytest.raises(EgressViolation, match=r"statistics \['stat\.gram'\] may not leave a silo under privacy"):
        check_reply(content, private=True)
    with pytest.raises(EgressViolation, match=r"only stat\.\* arrays, not \['user\.rows'\]"):
        statistics_reply({**gram, "user.rows": np.ones((2, 3), np.float32)}, region="eu", server_round=1)
    with pytest.raises(EgressViolation, match=r"not \['item_item\.weight'\]"):
        statistics_reply({"item_item.weight": np.eye(3, dtype=np.float32)}, region="eu", server_round=1)
    content["arrays"]["user.rows"] = Array(np.ones((2, 3), np.float32))
    with pytest.raises(EgressViolation, match="per-user parameters must never leave"):
        check_reply(content, private=False)


def test_a_jurisdiction_that_requires_dp_sends_no_statistics(world: PreparedWorld, tmp_path: Path) -> None:
    # Prepare: the run proposes model=ease without DP; na's own policy requires DP (an ε budget)
    s = settings(world, model="ease")
    node = {"region": "na", "data-path": str(world.data_dir / "silo_na.npz"), "state-dir": str(tmp_path / "na"),
            "epsilon-budget": 1.0}
    context = Context(run_id=1, node_id=SILO_NODE, node_config=node, state=RecordDict(), run_config={})

    # Execute
    reply = make_client_app(s)(instruction(MessageType.TRAIN, initial_arrays(s, world), 1), context)

    # Assert
    assert not reply.content.array_records and "requires user-level DP" in str(reply.content["meta"]["declined"])
