"""Red team 5: coalition lines against a hostile coordinator and a hostile co-silo.

Checked through the real ServerApp and ClientApps on the in-process grid (`run_in_process`, its `tamper` hook
plays the coordinator) and through single messages to one silo's ClientApp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakegrid import Tamper, run_in_process
from flwr.app import Context, Message, MessageType, RecordDict
from redteam_kit import send_line_head

from fedrec.config import FederationConfig, experiment_from_dict
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import generate_world
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.flower.client_app import make_client_app
from fedrec.messages import (
    COALITION_KEY,
    ROUND_MEMBERS_KEY,
    read_arrays,
    read_decline,
)
from fedrec.settings import RunSettings, read_manifest
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.state_dir import StateDir
from fedrec.training import initial_global_arrays
from fedrec.versions import ModelRegistry, ModelVersion
from fedrec.world import prepare_world
from tests.test_client_egress import instruction
from tests.test_coalition_lines import WORLD
from tests.test_coalitions import train_entries

EU_LAW = {"eu": {"partners": ["na"]}}  # eu's law allows na, not apac
# `aaa` comes first in name order, so it would be eu's serving line; its run-config members include apac
WITH_APAC_FIRST = {"aaa": ["eu", "na", "apac"], "atlantic": ["eu", "na"]}


def experiment(out: Path, coalitions: dict[str, list[str]], tamper: Tamper | None = None, rounds: int = 2,
               **extra: object) -> dict:  # type: ignore[type-arg]
    cfg = experiment_from_dict({"dataset": {"name": "synthetic", "n_users": 300, "n_items": 80,
                                            "region_only_items": 5, "region_sizes": [2.0, 1.0, 1.0], "seed": 2},
                                "federation": {"rounds": rounds, "coalitions": coalitions},
                                "model": {"name": "mf", "dim": 6}, "bounds": [], "baselines": [], **extra})
    return run_experiment(cfg, out, log=lambda *_: None,
                          engine=lambda s, **kw: run_in_process(s, **kw, tamper=tamper))


def test_a_region_never_serves_a_line_whose_declared_coalition_its_law_forbids(tmp_path: Path) -> None:
    """The coordinator names coalitions so that eu's first (serving) line is one apac trains in: eu declines to
    train there, but must not review, adopt and serve that line's versions (apac shaped them) either."""
    experiment(tmp_path, WITH_APAC_FIRST, regime=EU_LAW)
    registry = ModelRegistry(tmp_path / "registry", create=False)
    served = [d.served_after for d in ServingRecord(StateDir(tmp_path / "silo-state" / "eu").serving).decisions()]
    assert served, "eu reviews the line it lawfully trains in"
    for label in served:
        if label is not None and ":" not in label:
            version = registry.get(label)
            assert version.coalition == "atlantic", f"eu serves a version of line {version.coalition}"
            assert "apac" not in version.contributors


def test_a_coordinator_cannot_hide_a_forbidden_partner_of_a_line_by_declaring_fewer_members(tmp_path: Path) -> None:
    """The run config says line `aaa` is [eu, na, apac]; the coordinator tells eu that aaa's round members are
    [eu, na]. eu holds the run config: it must not release an update into a line declared to include apac."""
    def tell_eu_aaa_is_eu_and_na(msg: Message, context: Context) -> None:
        config = msg.content.config_records["config"]
        if (msg.metadata.message_type == MessageType.TRAIN and context.node_config["partition-id"] == 0
                and config.get(COALITION_KEY) == "aaa"):
            config[ROUND_MEMBERS_KEY] = ["eu", "na"]

    experiment(tmp_path, WITH_APAC_FIRST, tamper=tell_eu_aaa_is_eu_and_na, regime=EU_LAW)
    released = [e for e in train_entries(tmp_path, "eu") if not e.declined]
    assert released and all(e.coalition == "atlantic" for e in released), \
        [(e.coalition, e.server_round) for e in released]
    for v in ModelRegistry(tmp_path / "registry", create=False).list():
        assert not {"eu", "apac"} <= set(v.contributors), (v.coalition, v.round, v.contributors)


LINES = {"atlantic": ["eu", "na"], "pacific": ["na", "apac"]}  # na serves atlantic, trains pacific too


def test_a_region_that_forked_and_does_not_contribute_sends_nothing_on_any_line(tmp_path: Path) -> None:
    """na's policy: fork from version 0 and contribute nothing. Its fork follows its serving line (atlantic); its
    other line (pacific) must not go on receiving its updates."""
    res = experiment(tmp_path, LINES, adoption={"na": {"fork": 0, "contribute": False}})
    released = [(e.coalition, e.server_round) for e in train_entries(tmp_path, "na") if not e.declined]
    assert released == []
    assert all("na" not in e["participants"] for e in res["round_log"])


def test_a_non_contributing_fork_holds_on_another_line_asked_first(tmp_path: Path) -> None:
    """The coordinator asks na's non-serving line (pacific) before its serving line ever reaches it."""
    def no_atlantic_for_na(msg: Message, context: Context) -> None:
        config = msg.content.config_records["config"]
        if context.node_config["partition-id"] == 1 and config.get(COALITION_KEY) == "atlantic":
            config[COALITION_KEY] = "pacific"  # na never gets a message of its serving line

    experiment(tmp_path, LINES, tamper=no_atlantic_for_na, adoption={"na": {"fork": 0, "contribute": False}})
    assert [e for e in train_entries(tmp_path, "na") if not e.declined] == []


def served_versions(out: Path, region: str) -> list[ModelVersion]:
    """Every registered global version a region's serving decisions name (whatever the label's prefix)."""
    registry = ModelRegistry(out / "registry", create=False)
    ids = {v.id: v for v in registry.list()}
    labels = [d.served_after for d in ServingRecord(StateDir(out / "silo-state" / region).serving).decisions()]
    return [ids[label.rsplit(":", 1)[-1]] for label in labels if label and label.rsplit(":", 1)[-1] in ids]


def test_a_coordinator_cannot_get_a_region_to_serve_another_lines_version_its_law_forbids(tmp_path: Path) -> None:
    """From round 2 the coordinator asks eu to evaluate (and so review for serving), as atlantic's new version,
    the head of pacific, which apac shaped; eu's law forbids apac. It may evaluate it, never adopt it."""
    def offer_pacific(msg: Message, context: Context) -> None:
        config = msg.content.config_records["config"]
        if msg.metadata.message_type != MessageType.EVALUATE or int(config["server-round"]) < 2 \
                or context.node_config["partition-id"] != 0:  # eu
            return
        send_line_head(msg, tmp_path / "registry", "pacific", lineage=True)

    experiment(tmp_path, LINES, tamper=offer_pacific, rounds=3, regime=EU_LAW)
    served = served_versions(tmp_path, "eu")
    assert served
    assert all("apac" not in v.contributors and v.coalition == "atlantic" for v in served), \
        [(v.coalition, v.round, v.contributors) for v in served]


def test_two_lines_whose_names_differ_only_by_case_are_refused() -> None:
    """A line keeps its silo state in `runs/RUN@NAME`: `A` and `a` would be one directory on a case-insensitive file
    system (macOS, Windows), so two lines would read and overwrite each other's users, optimizer and cached reply."""
    with pytest.raises(ConfigError, match="differ other than by case"):
        RunSettings(coalitions=json.dumps({"A": ["eu", "na"], "a": ["na", "apac"]}))
    with pytest.raises(ConfigError, match="differ other than by case"):
        FederationConfig(coalitions={"Pacific": ["eu"], "pacific": ["na"]})


def test_one_round_on_two_lines_is_two_recorded_releases_with_their_own_noise(tmp_path: Path) -> None:
    """na trains in both lines: the same round and arrays under each line name are two releases, each in the ledger
    under its line key and within the budget, and even reproducible (seeded) noise differs between them."""
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world").data_dir
    s = RunSettings(data_dir=str(world), output_dir=str(tmp_path / "out"), num_rounds=2, min_nodes=3, dim=6,
                    batch_size=64, n_negatives=16, seed=5, coalitions=json.dumps(LINES), privacy="user_dp",
                    privacy_epsilon=1.0)
    app = make_client_app(s, reproducible_noise=True)
    n_items = int(read_manifest(s.data_dir)["n_items"])
    start = initial_global_arrays(s.model_spec, n_items=n_items, seed=s.seed)
    replies = {}
    for line in ("atlantic", "pacific", "atlantic", "arctic"):
        msg = instruction(MessageType.TRAIN, start, 1)
        msg.content.config_records["config"][COALITION_KEY] = line
        ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={"partition-id": 1, "num-partitions": 3},
                      state=RecordDict(), run_config={})
        replies.setdefault(line, []).append(app(msg, ctx).content)
    assert read_decline(replies["arctic"][0]) is not None  # a line the run config does not list
    (a, again), (p,) = replies["atlantic"], replies["pacific"]
    assert read_decline(a) is None and read_decline(p) is None
    assert all(np.array_equal(read_arrays(again)[k], v) for k, v in read_arrays(a).items())  # asked again: re-sent
    assert not all(np.array_equal(read_arrays(p)[k], v) for k, v in read_arrays(a).items())
    ledger = json.loads((tmp_path / "out" / "silo-state" / "na" / "privacy_ledger.json").read_text())
    assert sorted(r["run_id"] for r in ledger["releases"]) == ["1@atlantic", "1@pacific"]
    assert max(r["epsilon_after"] for r in ledger["releases"]) <= 1.0
