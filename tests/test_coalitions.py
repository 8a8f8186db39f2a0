"""Coalitions: a jurisdiction federates only with the partners its law allows (issue 15, the silo's side).

A silo with `partners` (node config, or its regime entry in a simulation) declines a training message whose
declared members (`round-members`) are missing or include another region, and one whose sent version (its
`model-identity`, hashed into its id) was made with another region. A coordinator that lies about the members
cannot be stopped by the silo it lies to, but every silo's egress ledger records what it was told, and
`fedrec audit partners` finds the lie against the other silos' ledgers and the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process
from flwr.app import Context, Message, MessageType, RecordDict
from rich.console import Console

from fedrec.commands.audit import audit_main
from fedrec.config import experiment_from_dict
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.flower.client_app import make_client_app
from fedrec.messages import MODEL_IDENTITY_KEY, MODEL_LINEAGE_KEY, ROUND_MEMBERS_KEY
from fedrec.models import ModelSpec
from fedrec.settings import read_manifest
from fedrec.silo.egress_ledger import EgressLedger
from fedrec.silo.state_dir import StateDir
from fedrec.training import initial_global_arrays
from fedrec.versions import ModelRegistry, describe_version
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

REGIONS = ("eu", "na", "apac")
DATASET = {"name": "synthetic", "n_users": 300, "n_items": 100, "region_only_items": 5,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 1}
EU_LAW = {"eu": {"partners": ["na"]}}  # eu's law allows na, not apac


def experiment(out: Path, regime: dict, **engine: object) -> dict:
    cfg = experiment_from_dict({"dataset": DATASET, "federation": {"rounds": 3}, "model": {"name": "mf", "dim": 8},
                                "bounds": [], "baselines": [], "regime": regime})

    def run(settings, **kw):  # type: ignore[no-untyped-def]
        return run_in_process(settings, **kw, **engine)

    return run_experiment(cfg, out, log=lambda *_: None, engine=run)


def audit(out: Path, *args: str) -> tuple[int, str]:
    console = Console(record=True, width=200)
    code = audit_main(["partners", str(out), *args], console)
    return code, console.export_text()


def train_entries(out: Path, region: str) -> list:  # type: ignore[type-arg]
    return [e for e in EgressLedger(StateDir(out / "silo-state" / region).egress_ledger).entries() if e.kind == "train"]


# ---- a whole federation, honest and hostile ---------------------------------------------------------------


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("honest")
    return experiment(out, EU_LAW), out


def test_a_silo_declines_every_round_whose_declared_coalition_includes_a_forbidden_partner(honest) -> None:
    res, out = honest
    for entry in res["round_log"]:
        assert entry["participants"] == ["apac", "na"]
        assert "declared members include ['apac']" in entry["declined"]["eu"]
    told = train_entries(out, "eu")
    assert len(told) == 3  # what it was told, in its own ledger
    assert all(e.declined and e.members == sorted(REGIONS) for e in told)
    assert all("eu" not in v.contributors for v in ModelRegistry(out / "registry").list())
    assert res["regimes"]["eu"]["policy"]["partners"] == ["na"] and res["regimes"]["na"]["policy"]["partners"] is None
    code, text = audit(out)
    assert code == 0 and "respect every partners rule" in text


def _region_of(context: Context, data_dir: str) -> str:
    return str(read_manifest(data_dir)["regions"][int(context.node_config["partition-id"])])


@pytest.fixture(scope="module")
def lied_to(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The coordinator trains eu, na and apac, but tells eu the members are [eu, na]."""
    out = tmp_path_factory.mktemp("lie")

    def tell_eu_a_false_coalition(msg: Message, context: Context) -> None:
        if msg.metadata.message_type == MessageType.TRAIN and _region_of(context, str(out / "world")) == "eu":
            msg.content.config_records["config"][ROUND_MEMBERS_KEY] = ["eu", "na"]

    return experiment(out, EU_LAW, tamper=tell_eu_a_false_coalition), out


def test_a_lied_to_silo_never_builds_on_a_version_its_forbidden_partner_made(lied_to) -> None:
    res, out = lied_to
    registry = ModelRegistry(out / "registry")
    released = [e for e in train_entries(out, "eu") if not e.declined]
    assert released, "eu believed the lie at least once (else this test shows nothing)"
    for e in released:  # every update eu released was trained on a version without apac
        assert "apac" not in registry.get(e.version).contributors
    # the lie worked once: round 1's version mixes eu and apac; from then on eu sees apac in the lineage
    participants = {entry["round"]: entry["participants"] for entry in res["round_log"]}
    assert participants[1] == ["apac", "eu", "na"]
    for rnd in (2, 3):
        assert "eu" not in participants[rnd]
        assert "made with contributions from ['apac']" in res["round_log"][rnd - 1]["declined"]["eu"]


def test_the_audit_finds_the_lie_in_the_ledgers(lied_to) -> None:
    _, out = lied_to
    code, text = audit(out)
    assert code == 1
    assert "eu was told round 1's members were ['eu', 'na']" in text and "['apac'] undeclared" in text
    assert "declared different members to different silos" in text  # eu's ledger against na's and apac's
    assert "eu's partners (na) do not allow ['apac']" in text  # the registry's version itself


def test_the_audit_takes_partners_from_a_regime_file(honest, tmp_path) -> None:
    _, out = honest
    strict = tmp_path / "strict.yaml"
    strict.write_text("na:\n  partners: [eu]\n")  # na never allowed apac: every version breaks it
    code, text = audit(out, "--regime", str(strict))
    assert code == 1 and "na's partners (eu) do not allow ['apac']" in text


def test_a_coordinator_that_omits_the_members_is_declined_by_a_silo_with_partners(tmp_path) -> None:
    def omit(msg: Message, context: Context) -> None:
        if msg.metadata.message_type == MessageType.TRAIN:
            del msg.content.config_records["config"][ROUND_MEMBERS_KEY]

    res = experiment(tmp_path, EU_LAW, tamper=omit)
    for entry in res["round_log"]:
        assert entry["participants"] == ["apac", "na"]  # silos without partners need no declaration
        assert "declared no round members" in entry["declined"]["eu"]
    assert all(e.members is None for e in train_entries(tmp_path, "eu"))


# ---- one silo, one crafted message --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    cfg = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                               mean_interactions=12.0, min_interactions=5)
    return prepare_world(generate_world(cfg), SplitConfig(), tmp_path_factory.mktemp("world"))


def eu_node(world: PreparedWorld, tmp: Path, partners: str = "na") -> Context:
    node = {"region": "eu", "data-path": str(world.data_dir / "silo_eu.npz"), "state-dir": str(tmp / "eu"),
            "partners": partners}  # a deployed node config: partners as a comma-separated string
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                   run_config={"data-dir": str(world.data_dir), "dim": 8, "num-rounds": 3, "min-nodes": 1})


def crafted(world: PreparedWorld, *, contributors: list[str], members: list[str] | None = None,
            claimed: list[str] | None = None, other_weights: bool = False) -> Message:
    """A training message naming a version made by `contributors` (or claiming `claimed` for the same id)."""
    arrays = initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0)
    root, _ = describe_version({k: v - 1.0 for k, v in arrays.items()}, spec=ModelSpec("mf", 8), parent=None, round=0)
    version, _ = describe_version(arrays, spec=ModelSpec("mf", 8), parent=root.id, round=1,
                                  contributors=contributors)
    identity = version.identity()
    if claimed is not None:
        identity["contributors"] = claimed
    sent = {k: v + 1.0 for k, v in arrays.items()} if other_weights else arrays
    msg = instruction(MessageType.TRAIN, sent, 2, version=version.id)
    config = msg.content.config_records["config"]
    config[MODEL_IDENTITY_KEY] = json.dumps(identity)
    config[ROUND_MEMBERS_KEY] = members if members is not None else ["eu", "na"]
    config[MODEL_LINEAGE_KEY] = json.dumps([root.identity()])  # the line's root, its only ancestor
    return msg


def declined(reply: Message) -> str:
    return str(dict(reply.content.config_records["meta"]).get("declined", ""))


def test_a_version_made_with_an_allowed_partner_is_trained_on(world, tmp_path) -> None:
    reply = make_client_app()(crafted(world, contributors=["eu", "na"]), eu_node(world, tmp_path))
    assert declined(reply) == "" and "arrays" in reply.content
    msg = crafted(world, contributors=["eu", "na"])
    entry = EgressLedger(tmp_path / "eu" / "egress_ledger.jsonl").entries()[-1]
    assert entry.members == ["eu", "na"] and entry.version == msg.content.config_records["config"]["model-version"]


@pytest.mark.parametrize(("kw", "why"), [
    ({"contributors": ["na", "apac"]}, "made with contributions from ['apac']"),
    ({"contributors": ["na", "apac"], "claimed": ["na"]}, "hashes to"),  # a false identity for apac's version
    ({"contributors": ["na"], "other_weights": True}, "not the weights"),
    ({"contributors": ["na"], "members": ["eu", "na", "apac"]}, "declared members include ['apac']"),
    ({"contributors": ["na"], "members": ["na"]}, "do not include this silo"),
])
def test_a_forbidden_lineage_or_coalition_is_declined_with_the_reason(world, tmp_path, kw, why) -> None:
    reply = make_client_app()(crafted(world, **kw), eu_node(world, tmp_path))
    assert why in declined(reply) and "arrays" not in reply.content


def test_a_silo_without_partners_takes_any_coalition(world, tmp_path) -> None:
    ctx = eu_node(world, tmp_path)
    del ctx.node_config["partners"]
    reply = make_client_app()(crafted(world, contributors=["na", "apac"], members=["eu", "apac"]), ctx)
    assert declined(reply) == "" and "arrays" in reply.content


def test_partners_empty_means_no_one(world, tmp_path) -> None:
    reply = make_client_app()(crafted(world, contributors=["na"]), eu_node(world, tmp_path, partners=""))
    assert "federates only with no one" in declined(reply)


# ---- regimes are checked like node configs ------------------------------------------------------------------


@pytest.mark.parametrize(("regime", "message"), [
    ({"eu": {"epsilon_budget": 2}}, "did you mean 'epsilon-budget'"),
    ({"eu": {"partners": "na apac"}}, "is not a region name"),
    ({"eu": {"ledger-retention-days": -1}}, "whole number of days"),
    ({"eu": {"max-delta": 2}}, "must lie in (0, 1)"),
    ({"oz": {"partners": ["na"]}}, "unknown region(s) ['oz']"),
    ({"eu": {"partners": ["oz"]}}, "partners ['oz'] are not regions"),
])
def test_a_bad_regime_is_a_clear_error(tmp_path, regime, message) -> None:
    with pytest.raises(ConfigError) as err:
        experiment(tmp_path, regime)
    assert message in str(err.value)


def test_the_regime_never_travels_in_the_run_config() -> None:
    from fedrec.settings import RunSettings

    with pytest.raises(ConfigError, match="unknown run-config keys"):
        RunSettings.from_run_config({"partners": "eu"})
    assert not {"regime", "partners"} & set(RunSettings().to_run_config())
