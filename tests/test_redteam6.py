"""Red team 6: train-lines, serve-coalition, divesting coalition lines, late DP plans, lines' metric sums.

Checked through the real ServerApp and ClientApps on the in-process grid (`run_in_process`) and through single
messages to one silo's ClientApp.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import generate_world
from fedrec.silo.regime import Regimes
from fedrec.versions import ModelRegistry
from fedrec.world import prepare_world
from tests.test_coalition_lines import WORLD, settings

EU_LAW = {"eu": {"partners": ["na"]}}  # eu's law allows na, not apac
# `aaa` comes first in name order; eu is declared in it, but apac trains there, so eu's law keeps it out
WITH_APAC_FIRST = {"aaa": ["eu", "na", "apac"], "atlantic": ["eu", "na"]}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def test_divesting_a_partner_a_region_refused_does_not_move_the_line_it_serves(world_dir: Path, tmp_path: Path
                                                                                ) -> None:
    """eu's law forbids apac, so eu never trains in `aaa` and serves `atlantic`. Divesting apac rebuilds `aaa`: the
    rebuild must neither make eu train in a line it never trained in nor make eu review (adopt) the rebuilt head in
    place of the atlantic line it serves ("every silo still serves the line it served")."""
    from fedrec.divestment import divest_lines

    regimes = Regimes.parse(EU_LAW)
    run = settings(world_dir, tmp_path / "run", coalitions=json.dumps(WITH_APAC_FIRST))
    run_in_process(run, regimes=regimes)
    rebuilt = divest_lines(run, ["apac"], method="exact", out_dir=tmp_path / "d", engine=run_in_process,
                           regimes=regimes)
    assert list(rebuilt) == ["aaa"]
    registry = ModelRegistry(Path(run.output_dir) / "registry", create=False)
    head = registry.get(rebuilt["aaa"].head)
    assert set(head.contributors) == {"na"}  # the line's other member, as it trained it
    decisions = (Path(run.output_dir) / "silo-state" / "eu" / "serving" / "adoption.jsonl").read_text()
    assert head.id not in decisions


def test_a_round_asked_again_under_other_train_lines_is_no_second_release(world_dir: Path, tmp_path: Path) -> None:
    """A resumed coordinator changes `train-lines` between two asks of the same round of the same line: the silo's
    line key, cached reply and ledger entry do not depend on train-lines, so it is one release, not two, and a line
    the run config no longer trains is refused."""
    import dataclasses

    import numpy as np
    from flwr.app import Context, MessageType, RecordDict

    from fedrec.flower.client_app import make_client_app
    from fedrec.messages import COALITION_KEY, read_arrays, read_decline
    from fedrec.settings import read_manifest
    from fedrec.training import initial_global_arrays
    from tests.test_client_egress import instruction

    first = settings(world_dir, tmp_path / "out", privacy="user_dp", privacy_epsilon=1.0, train_lines="pacific")
    n_items = int(read_manifest(first.data_dir)["n_items"])
    start = initial_global_arrays(first.model_spec, n_items=n_items, seed=first.seed)

    def ask(s: object, line: str) -> RecordDict:
        msg = instruction(MessageType.TRAIN, start, 1)
        msg.content.config_records["config"][COALITION_KEY] = line
        ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id,
                      node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(), run_config={})
        return make_client_app(s)(msg, ctx).content  # type: ignore[arg-type]

    once = ask(first, "pacific")
    assert read_decline(ask(first, "atlantic")) is not None  # not trained in this run config
    again = ask(dataclasses.replace(first, train_lines=""), "pacific")
    assert read_decline(once) is None and read_decline(again) is None
    assert all(np.array_equal(read_arrays(again)[k], v) for k, v in read_arrays(once).items())  # the same bytes
    ledger = json.loads((tmp_path / "out" / "silo-state" / "na" / "privacy_ledger.json").read_text())
    assert [r["run_id"] for r in ledger["releases"]] == ["1@pacific"]
