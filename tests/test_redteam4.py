"""Red team 4: a hostile coordinator and co-silos against users_from, divestment, contributions, partners and leave.

Each test plays one attack through the real silo code (the ClientApp, or the in-process grid) and checks what the
jurisdiction's policy promises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process
from flwr.app import Context, Message, MessageType, RecordDict

from fedrec.coalition_audit import audit_coalitions
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.divestment import divest
from fedrec.flower.client_app import make_client_app
from fedrec.messages import MODEL_IDENTITY_KEY, MODEL_LINEAGE_KEY, ROUND_MEMBERS_KEY
from fedrec.models import ModelSpec
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import EgressLedger
from fedrec.silo.regime import Regimes
from fedrec.silo.state_dir import StateDir
from fedrec.training import initial_global_arrays
from fedrec.versions import ModelRegistry, ModelVersion, describe_version
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

EU_LAW = {"eu": {"partners": ["na"]}}  # eu's law allows na, not apac
SPEC = ModelSpec("mf", 8)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    cfg = SyntheticWorldConfig(n_users=240, n_items=60, region_only_items=3, region_sizes=(2.0, 1.0, 1.0),
                               mean_interactions=12.0, min_interactions=5)
    return prepare_world(generate_world(cfg), SplitConfig(), tmp_path_factory.mktemp("world"))


def declined(reply: Message) -> str:
    return str(dict(reply.content.config_records["meta"]).get("declined", ""))


# ---- partners: a line laundered through an intermediate version -------------------------------------------------


def eu_node(world: PreparedWorld, tmp: Path) -> Context:
    node = {"region": "eu", "data-path": str(world.data_dir / "silo_eu.npz"), "state-dir": str(tmp / "eu"),
            "partners": "na"}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                   run_config={"data-dir": str(world.data_dir), "dim": 8, "num-rounds": 3, "min-nodes": 1})


def laundered_line(world: PreparedWorld) -> tuple[list[ModelVersion], dict]:  # type: ignore[type-arg]
    """v0 (the root) -> v1 made by apac and na -> v2 made by na alone from v1 (what eu is sent)."""
    arrays = initial_global_arrays(SPEC, n_items=world.n_items, seed=0)
    v0, _ = describe_version(arrays, spec=SPEC, parent=None, round=0)
    v1, _ = describe_version({k: v + 0.01 for k, v in arrays.items()}, spec=SPEC, parent=v0.id, round=1,
                             contributors=["apac", "na"])
    sent = {k: v + 0.02 for k, v in arrays.items()}
    v2, _ = describe_version(sent, spec=SPEC, parent=v1.id, round=2, contributors=["na"])
    return [v2, v1, v0], sent


def message(sent: dict, line: list[ModelVersion], lineage: list[dict] | None) -> Message:  # type: ignore[type-arg]
    msg = instruction(MessageType.TRAIN, sent, 3, version=line[0].id)
    config = msg.content.config_records["config"]
    config[MODEL_IDENTITY_KEY] = json.dumps(line[0].identity())
    config[ROUND_MEMBERS_KEY] = ["eu", "na"]
    if lineage is not None:
        config[MODEL_LINEAGE_KEY] = json.dumps(lineage)
    return msg


def test_partners_hold_for_the_whole_line_not_only_its_last_round(world, tmp_path) -> None:
    """v2 was made by na alone, but from v1, which apac made: eu (partners na) must not build on it."""
    line, sent = laundered_line(world)
    reply = make_client_app()(message(sent, line, [v.identity() for v in line[1:]]), eu_node(world, tmp_path))
    assert "descends from a version made with contributions from ['apac']" in declined(reply)
    assert "arrays" not in reply.content


@pytest.mark.parametrize(("how", "why"), [
    ("undeclared", "did not declare the lineage"),
    ("apac_erased", "not the chain of its parents"),  # v1's identity rewritten without apac: no longer v2's parent
    ("cut_short", "stops before the line's root"),  # only v1's parent omitted
])
def test_a_lineage_a_silo_cannot_check_is_declined(world, tmp_path, how, why) -> None:
    line, sent = laundered_line(world)
    ancestors = [v.identity() for v in line[1:]]
    if how == "apac_erased":
        ancestors[0]["contributors"] = ["na"]
    lineage = {"undeclared": None, "apac_erased": ancestors, "cut_short": ancestors[:1]}[how]
    reply = make_client_app()(message(sent, line, lineage), eu_node(world, tmp_path))
    assert why in declined(reply) and "arrays" not in reply.content


def test_a_line_of_allowed_partners_is_trained_on(world, tmp_path) -> None:
    arrays = initial_global_arrays(SPEC, n_items=world.n_items, seed=0)
    v0, _ = describe_version(arrays, spec=SPEC, parent=None, round=0)
    v1, _ = describe_version(arrays, spec=SPEC, parent=v0.id, round=1, contributors=["eu", "na"])
    reply = make_client_app()(message(arrays, [v1, v0], [v0.identity()]), eu_node(world, tmp_path))
    assert declined(reply) == "" and "arrays" in reply.content


# ---- the same, with an honest coordinator: fast divestment's subtracted version -----------------------------


def small_world(tmp: Path) -> Path:
    cfg = SyntheticWorldConfig(n_users=300, n_items=60, region_only_items=3, region_sizes=(2.0, 1.0, 1.0),
                               mean_interactions=12.0, min_interactions=5)
    return prepare_world(generate_world(cfg), SplitConfig(), tmp / "world").data_dir


def test_fast_divestment_does_not_launder_a_forbidden_partners_line(tmp_path) -> None:
    """eu (partners na) declines the whole line apac took part in; fast divestment of apac subtracts its direct part
    into a version with no contributors whose parent is apac's head: eu must not train on the rebuilt line."""
    regimes = Regimes.parse(EU_LAW)
    s = RunSettings(data_dir=str(small_world(tmp_path)), output_dir=str(tmp_path / "run"), num_rounds=3,
                    min_nodes=3, dim=6, batch_size=64, n_negatives=16, seed=3, keep_contributions=True)
    h = run_in_process(s, regimes=regimes)
    assert all("eu" not in e["participants"] for e in h.round_log)
    out = divest(s, ["apac"], method="fast", out_dir=tmp_path / "fast", engine=run_in_process, recovery_rounds=1,
                 regimes=regimes)
    registry = ModelRegistry(tmp_path / "run" / "registry")
    assert "apac" in {c for v in registry.lineage(out.head) for c in v.contributors}  # the line apac shaped
    trained = [e for e in EgressLedger(StateDir(tmp_path / "run" / "silo-state" / "eu").egress_ledger).entries()
               if e.kind == "train" and not e.declined]
    assert trained == [], "eu built on a line apac shaped"
    assert "descends from a version made with contributions from ['apac']" in out.history.round_log[0]["declined"]["eu"]


def test_the_audit_finds_an_update_released_on_a_forbidden_line(world, tmp_path) -> None:
    """A silo that (before this fix, or lied to) trained on v2 leaves evidence: v2's registry line holds apac."""
    line, sent = laundered_line(world)
    registry = ModelRegistry(tmp_path / "registry")
    arrays = initial_global_arrays(SPEC, n_items=world.n_items, seed=0)
    for v, a in ((line[2], arrays), (line[1], {k: x + 0.01 for k, x in arrays.items()}), (line[0], sent)):
        got = registry.add(a, spec=SPEC, parent=v.parent, round=v.round, contributors=v.contributors)
        assert got.id == v.id
    ledger = EgressLedger(tmp_path / "eu.jsonl")
    for run, version in (("r", line[0].id), ("r", "f" * 64), ("other", "e" * 64)):  # "other": another federation's
        ledger.append(run_id=run, server_round=3, kind="train", region="eu", content=RecordDict(), version=version,
                      members=["eu", "na"])
    report = audit_coalitions(tmp_path / "registry", {"eu": tmp_path / "eu.jsonl"}, {"eu": ("na",)})
    text = "\n".join(report.violations)
    assert "whose line ['apac'] contributed to" in text
    assert "which the registry does not hold" in text and "e" * 16 not in text
    assert len(report.violations) == 2


# ---- leave: the coordinator keeps sending to a region that left ----------------------------------------------


def test_a_region_that_left_neither_adopts_nor_releases_what_the_coordinator_sends_after(tmp_path) -> None:
    """After `fedrec leave` the region serves its own line; its node still answers the federation's messages (the
    SuperNode runs on): an evaluation message must not move its pointer back to a federation version, and a
    training message must not make it release (spend ε, contribute to a line it left)."""
    from fedrec.divestment.leave import leave
    from fedrec.silo.served_now import served_now
    from fedrec.silo.serving import FORK_PREFIX

    s = RunSettings(data_dir=str(small_world(tmp_path)), output_dir=str(tmp_path / "run"), num_rounds=2,
                    min_nodes=3, dim=6, batch_size=64, n_negatives=16, seed=5)
    run_in_process(s)
    state = tmp_path / "run" / "silo-state" / "na"
    leave(s, "na", rounds=1)
    assert str(served_now(state).label).startswith(FORK_PREFIX)
    egress_before = len(EgressLedger(StateDir(state).egress_ledger).entries())
    registry = ModelRegistry(tmp_path / "run" / "registry")
    head, _ = registry.load(registry.list()[-1].id)
    crafted = {k: v + 0.05 for k, v in head.items()}  # a version the coordinator made after na left
    vid = describe_version(crafted, spec=s.model_spec, parent=None, round=3)[0].id
    app = make_client_app(s)
    node = Context(run_id=99, node_id=2, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                   run_config={})
    reply = app(instruction(MessageType.EVALUATE, crafted, 3, version=vid), node)
    assert str(served_now(state).label).startswith(FORK_PREFIX), "the coordinator moved a departed region's pointer"
    assert not reply.content.metric_records.get("metrics"), "a departed region released evaluation metrics"
    reply = app(instruction(MessageType.TRAIN, crafted, 3, version=vid), node)
    assert "arrays" not in reply.content and "left the federation" in declined(reply)
    assert str(served_now(state).label).startswith(FORK_PREFIX)
    entries = EgressLedger(StateDir(state).egress_ledger).entries()[egress_before:]
    assert all(e.declined or e.kind != "train" for e in entries)


# ---- a co-silo that answers training under another region's name --------------------------------------------


def test_a_co_silo_cannot_silence_or_impersonate_another_region(tmp_path) -> None:
    """apac answered preflight as apac, then signs its training replies "na": the coordinator used to reject both
    replies claiming na (na silenced every round, by a co-silo) or, with na absent, credit apac's update to na (a
    version whose contributors omit apac: what a silo with partners trusts)."""
    from collections.abc import Callable

    def claim_na(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, ctx)
        if msg.metadata.message_type == MessageType.TRAIN and reply.has_content() \
                and reply.content.config_records["meta"]["region"] == "apac":
            reply.content.config_records["meta"]["region"] = "na"
        return reply

    s = RunSettings(data_dir=str(small_world(tmp_path)), output_dir=str(tmp_path / "run"), num_rounds=2,
                    min_nodes=3, dim=6, batch_size=64, n_negatives=16, seed=5)
    h = run_in_process(s, client_mods=[claim_na])
    for entry in h.round_log:
        assert entry["participants"] == ["eu", "na"], entry  # na's own update counts; apac's false one does not
        assert "claims region 'na'" in entry["rejected"]["apac"]
