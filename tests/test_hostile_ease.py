"""A hostile coordinator and a hostile co-silo against `model=ease` (sufficient statistics), through the real apps.

Coordinator side: whatever the run config or the messages say, a silo sends `stat.*` arrays only in a
non-private run, never when its own node config requires DP, only of its training split, and the same bytes
however often it is asked. Co-silo side: a Gram matrix the screen accepts must never crash the coordinator's
solve nor make it publish a version that every silo refuses (which would stop the federation for good).
Steering B with well-formed statistics of invented users is a known open limit (README, trust model), not
tested here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from fedrec.baselines.ease import gram
from fedrec.baselines.matrix import silo_matrix
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.flower.client_app import make_client_app
from fedrec.messages import MAX_ABS_RECEIVED
from fedrec.models import ModelSpec
from fedrec.settings import RunSettings
from fedrec.silo.error_replies import FIXED_REASONS
from fedrec.silo.secure_aggregation import AGGREGATION_KEY
from fedrec.statistics import solve_replies
from fedrec.statistics.ease import EaseStatistics
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
EASE_RUN = {"model": "ease", "model-kwargs": json.dumps({"lam": 100.0}), "num-rounds": 2, "min-nodes": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def run_config(world: PreparedWorld, tmp: Path, **kw: object) -> dict:
    return {"data-dir": str(world.data_dir), "output-dir": str(tmp / "coordinator-out"), **EASE_RUN, **kw}


def node(world: PreparedWorld, tmp: Path, region: str = "eu", **kw: object) -> dict:
    return {"region": region, "data-path": str(world.data_dir / f"silo_{region}.npz"),
            "state-dir": str(tmp / f"{region}-own-state"), **kw}


def ctx(node_config: dict, run_cfg: dict, run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_cfg)


def ease_arrays(world: PreparedWorld) -> dict[str, np.ndarray]:
    return initial_global_arrays(ModelSpec("ease", kwargs={"lam": 100.0}), n_items=world.n_items, seed=0)


def send(context: Context, arrays: dict[str, np.ndarray], rnd: int = 1, version: str = "v0",
         kind: str = MessageType.TRAIN, **config: object) -> Message:
    msg = instruction(kind, arrays, rnd, version)
    msg.content.config_records["config"].update(config)
    return make_client_app()(msg, context)


def stats_of(reply: Message) -> list[str]:
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return []
    return [k for k in reply.content.array_records["arrays"] if k.startswith("stat.")]


# ---- hostile coordinator ------------------------------------------------------------------------------------


@pytest.mark.parametrize("private", [{"privacy": "user_dp"}, {"privacy": "user_dp", "privacy-epsilon": 1e9},
                                     {"privacy": "user_dp", "weighting": "examples"}])
def test_no_run_config_gets_statistics_out_of_a_private_run(world, tmp_path, private) -> None:
    reply = send(ctx(node(world, tmp_path), run_config(world, tmp_path, **private)), ease_arrays(world))
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[ConfigError]
    assert stats_of(reply) == []


@pytest.mark.parametrize("policy", [{"epsilon-budget": 1.0}, {"max-delta": 1e-6}])
def test_a_silo_whose_node_config_requires_dp_sends_no_statistics(world, tmp_path, policy) -> None:
    c = ctx(node(world, tmp_path, **policy), run_config(world, tmp_path))
    reply = send(c, ease_arrays(world))
    assert "requires user-level DP" in reply.content.config_records["meta"]["declined"]
    assert stats_of(reply) == []
    ev = send(c, ease_arrays(world), kind=MessageType.EVALUATE)  # evaluation: "kept in silo", no metric sums
    assert "metrics" not in ev.content.metric_records and ev.content.config_records["meta"]["kept-in-silo"]


def test_a_silo_that_requires_secure_aggregation_sends_no_gram_in_the_clear(world, tmp_path) -> None:
    reply = send(ctx(node(world, tmp_path, **{"require-secure-aggregation": True}), run_config(world, tmp_path)),
                 ease_arrays(world))
    assert "requires secure aggregation" in reply.content.config_records["meta"]["declined"]
    assert stats_of(reply) == []


def test_the_gram_is_of_the_training_split_only_whatever_the_message_holds(world, tmp_path) -> None:
    # crafted B (a permutation, any value in range) and crafted round/version change nothing: XᵀX of train, or a
    # decline for a round already answered under another version (a silo trains once per round, in order)
    arrays = ease_arrays(world)
    arrays["item_item.weight"] = np.eye(world.n_items, k=1, dtype=np.float32) * MAX_ABS_RECEIVED
    c = ctx(node(world, tmp_path), run_config(world, tmp_path))
    replies = [send(c, arrays, rnd=r, version=v) for r, v in [(1, "v0"), (1, "other"), (2, "v0")]]
    got = [r.content.array_records["arrays"]["stat.gram"].numpy() for r in replies
           if "arrays" in r.content.array_records]
    expected = gram(silo_matrix(world.silos["eu"])).numpy()
    assert len(got) == 2 and "out of order" in str(replies[1].content.config_records["meta"])
    assert all(np.array_equal(g, expected) for g in got)  # the same bytes each time: nothing new to learn


def test_a_cached_gram_is_never_resent_into_a_private_run(world, tmp_path) -> None:
    # run 1 (privacy=none, run-name r) gets the Gram by contract; run 2 reuses the run-name with privacy=user_dp
    # and model=mf and asks the same round and version again: the cache must not answer with the Gram
    n = node(world, tmp_path)
    send(ctx(n, run_config(world, tmp_path, **{"run-name": "r"})), ease_arrays(world))
    dp = {"privacy": "user_dp", "model": "mf", "model-kwargs": "{}", "dim": 8, "run-name": "r"}
    mf = initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0)
    reply = send(ctx(n, run_config(world, tmp_path, **dp), run_id=2), mf)
    assert stats_of(reply) == []
    assert reply.has_error() or "declined" in reply.content.config_records["meta"]


def test_a_secaggplus_message_in_an_ease_run_is_not_answered_in_the_clear(world, tmp_path) -> None:
    # the message claims SecAgg+ although the run config says none (the masking mod is not set up): the silo
    # refuses it rather than answer a plain Gram to a coordinator that says it cannot see single replies
    c = ctx(node(world, tmp_path, **{"require-secure-aggregation": True}), run_config(world, tmp_path))
    with pytest.raises(ValueError, match="claiming secure aggregation is refused"):
        send(c, ease_arrays(world), **{AGGREGATION_KEY: "secaggplus:abc"})


# ---- hostile co-silo ----------------------------------------------------------------------------------------


def gram_attack(kind: str):  # type: ignore[no-untyped-def]
    """apac replaces its Gram after its ClientApp built it, with one the current screen accepts."""

    def mod(msg: Message, context: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        meta = reply.content.config_records.get("meta")
        if msg.metadata.message_type != "train" or meta is None or meta["region"] != "apac":
            return reply
        g = reply.content.array_records["arrays"]["stat.gram"].numpy().copy()
        if kind == "not-psd":  # symmetric, non-negative, counts, off-diagonal <= the diagonal: and indefinite
            d = 1e6
            g[:3, :3] = np.array([[d, d, 0], [d, d, d], [0, d, d]], dtype=np.float32)
        elif kind == "huge-b":  # positive definite, but B[0, 1] ~ 1e5: every silo refuses such a version
            g[:] = 0
            g[1, 1], g[0, 1], g[1, 0] = 1e12, 9.9e6, 9.9e6
        elif kind == "beyond-counts":  # finite, but no silo's count reaches 2^24 (it refuses itself)
            g[0, 0] = 3e38
        reply.content["arrays"] = ArrayRecord({"stat.gram": Array(g)})
        return reply

    return mod


@pytest.mark.parametrize("kind", ["not-psd", "huge-b", "beyond-counts"])
def test_a_gram_that_breaks_the_solve_is_rejected_and_the_federation_goes_on(world, tmp_path, kind) -> None:
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=2, min_nodes=3,
                    model="ease", model_kwargs=json.dumps({"lam": 100.0}))
    history = run_in_process(s, client_mods=[gram_attack(kind)])
    log = json.loads((tmp_path / "out" / "federated_history.json").read_text())["round_log"]
    assert all(e["participants"] == ["eu", "na"] and "apac" in e["rejected"] for e in log), log
    b = history.final_arrays["item_item.weight"]
    assert np.isfinite(b).all() and np.abs(b).max() <= MAX_ABS_RECEIVED


def test_the_screen_refuses_grams_no_binary_matrix_has() -> None:
    def check(stats: dict[str, np.ndarray]) -> str | None:
        return EaseStatistics().check(stats, ModelSpec("ease", kwargs={"lam": 100.0}))

    ok = np.array([[3, 1], [1, 2]], dtype=np.float32)
    assert check({"stat.gram": ok}) is None
    assert "count" in str(check({"stat.gram": np.array([[0, 5], [5, 2]], dtype=np.float32)}))
    assert "whole" in str(check({"stat.gram": np.array([[1.5, 0], [0, 2]], dtype=np.float32)}))
    assert check({"stat.gram": np.array([[-0.0, 0], [0, 2]], dtype=np.float32)}) is None  # -0.0 is a zero


def test_a_part_that_solves_to_a_b_every_silo_refuses_is_left_out_of_the_solve(world) -> None:
    # Prepare: two honest Grams and one that, summed in, makes B[0, 1] ~ 1e5 (positive definite: it solves)
    family, spec = EaseStatistics(), ModelSpec("ease", kwargs={"lam": 100.0})
    honest = [(r, {"stat.gram": gram(silo_matrix(world.silos[r])).numpy()}) for r in ("eu", "na")]
    bad = np.zeros((world.n_items, world.n_items), dtype=np.float32)
    bad[1, 1], bad[0, 1], bad[1, 0] = 1e12, 5e6, 5e6

    # Execute
    solved, left_out = solve_replies(family, [*honest, ("apac", {"stat.gram": bad})], ease_arrays(world), spec,
                                     world.n_items)

    # Assert: apac is left out, saying why, and B is EASE of eu and na alone
    assert list(left_out) == ["apac"] and "beyond ±1000" in left_out["apac"]
    alone, none_left = solve_replies(family, honest, ease_arrays(world), spec, world.n_items)
    assert solved is not None and alone is not None and not none_left
    assert np.array_equal(solved["item_item.weight"], alone["item_item.weight"])
