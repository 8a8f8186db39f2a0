"""A silo's egress ledger: written through the real ClientApp, it hashes what Flower ships, chains every
entry, adds up to the ε the silo reported, and any tampering is caught by `fedrec audit verify`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from flwr.app import Context, MessageType, RecordDict

from fedrec.commands.audit import audit_main
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.client_app import make_client_app
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, EgressLedger, _entry_hash, verify, wire_bytes
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


@pytest.fixture
def silo_run(world: PreparedWorld, tmp_path: Path) -> tuple[Path, list]:
    """Three DP training rounds and one evaluation of the eu silo, through the real ClientApp."""
    s = RunSettings(data_dir=str(world.data_dir), num_rounds=3, dim=8, batch_size=64, n_negatives=16,
                    privacy="user_dp", privacy_epsilon=3.0, privacy_sample_rate=0.2, privacy_steps_per_round=3,
                    privacy_max_per_user=8, state_dir=str(tmp_path))
    app = make_client_app(s)
    arrays = initial_global_arrays(s.model_spec, n_items=world.n_items, seed=0)
    replies = []
    for rnd in (1, 2, 3):
        ctx = Context(run_id=7, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
        replies.append(app(instruction(MessageType.TRAIN, arrays, rnd), ctx))
    replies.append(app(instruction(MessageType.EVALUATE, arrays, 3), ctx))
    return tmp_path / "eu" / EGRESS_LEDGER_FILE, replies


def test_every_reply_is_recorded_with_the_hash_of_its_wire_bytes(silo_run) -> None:
    path, replies = silo_run
    entries = EgressLedger(path).entries()
    assert [(e.kind, e.server_round) for e in entries] == [("train", 1), ("train", 2), ("train", 3), ("evaluate", 3)]
    for e, reply in zip(entries, replies, strict=True):
        payload = wire_bytes(reply.content)
        assert (e.n_bytes, e.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
        assert e.region == "eu" and e.run_id == "7"
    assert entries[2].dp["epsilon"] == replies[2].content["meta"]["dp-epsilon"]
    assert entries[3].dp == {}  # evaluation under DP: nothing but "kept in silo"


def test_an_untouched_ledger_verifies_and_its_releases_add_up(silo_run, capsys) -> None:
    path, replies = silo_run
    report = verify(path)
    assert report.ok, report.problems
    assert (report.entries, report.releases) == (4, 3)
    assert report.epsilon_recomputed == pytest.approx(replies[2].content["meta"]["dp-epsilon"], rel=1e-9)
    assert audit_main(["verify", str(path.parent)]) == 0
    assert "OK" in capsys.readouterr().out


def _rewrite(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines = edit(lines)
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


@pytest.mark.parametrize(("name", "edit", "problem"), [
    ("edited size", lambda ls: [ls[0] | {"n_bytes": ls[0]["n_bytes"] - 1}, *ls[1:]], "does not match its hash"),
    ("dropped entry", lambda ls: [ls[0], *ls[2:]], "sequence number"),
    ("swapped entries", lambda ls: [ls[1], ls[0], *ls[2:]], "does not chain"),
])
def test_tampering_with_any_entry_is_detected(silo_run, name: str, edit, problem: str, capsys) -> None:
    path, _ = silo_run
    _rewrite(path, edit)
    report = verify(path)
    assert not report.ok and any(problem in p for p in report.problems), report.problems
    assert audit_main(["verify", str(path)]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_a_forged_last_entry_with_a_valid_hash_is_caught_by_the_privacy_totals(silo_run) -> None:
    # A forger lowers the reported ε of the last release and recomputes that entry's hash: the chain still
    # holds (nothing follows it) but the releases no longer add up to what it claims.
    path, _ = silo_run

    def forge(ls: list[dict]) -> list[dict]:
        last = ls[2] | {"dp": ls[2]["dp"] | {"epsilon": ls[2]["dp"]["epsilon"] / 2}}
        last["hash"] = _entry_hash({k: v for k, v in last.items() if k != "hash"})
        ls[3]["prev"] = last["hash"]
        ls[3]["hash"] = _entry_hash({k: v for k, v in ls[3].items() if k != "hash"})
        return [ls[0], ls[1], last, ls[3]]

    _rewrite(path, forge)
    report = verify(path)
    assert [p for p in report.problems if "add up to" in p], report.problems
    assert not [p for p in report.problems if "chain" in p or "hash" in p]


def test_audit_of_a_missing_ledger_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert audit_main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrec audit: error: no egress ledger") and err.count("\n") == 1, err
