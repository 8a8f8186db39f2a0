"""Red team 7: what a silo continues when the coordinator names an earlier run (`users-from`) or reuses a run name.

`users-from` (now also for coalition lines: line L of this run continues `USERS_FROM@L`) makes a silo start from the
per-user parameters and optimizer moments it kept for an earlier run. Those were shaped by every version the silo
trained on there, and by how it trained (with DP or without). A hostile coordinator must not use that to make a
silo build on a line its partners law now forbids, or to release under DP from users trained without DP; nor by
reusing a run name with a fresh, clean lineage. Checked through one silo's ClientApp and crafted messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.client_app import make_client_app
from fedrec.messages import COALITION_KEY, MODEL_IDENTITY_KEY, MODEL_LINEAGE_KEY, ROUND_MEMBERS_KEY, read_decline
from fedrec.models import ModelSpec
from fedrec.silo.egress_ledger import EgressLedger, wire_bytes
from fedrec.silo.state import LOCAL_STATE_KEY
from fedrec.silo.state_dir import StateDir
from fedrec.training import initial_global_arrays
from fedrec.versions import describe_version
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

SPEC = ModelSpec("mf", 8)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    cfg = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                               mean_interactions=12.0, min_interactions=5)
    return prepare_world(generate_world(cfg), SplitConfig(), tmp_path_factory.mktemp("world"))


def eu(world: PreparedWorld, state: Path, *, run_name: str, line: list[str], users_from: str = "",
       partners: str | None = None, privacy: bool = False) -> Context:
    """eu's deployed node (its law: `partners`; with `privacy` an ε budget of its own) and a run of line `a`."""
    node: dict[str, Any] = {"region": "eu", "data-path": str(world.data_dir / "silo_eu.npz"), "state-dir": str(state)}
    if partners is not None:
        node["partners"] = partners
    run: dict[str, Any] = {"data-dir": str(world.data_dir), "dim": 8, "num-rounds": 4, "min-nodes": 1,
                           "run-name": run_name, "coalitions": json.dumps({"a": line})}
    if users_from:
        run["users-from"] = users_from
    if privacy:
        node["epsilon-budget"] = 50.0
        run |= {"privacy": "user_dp", "privacy-epsilon": 5.0, "privacy-sample-rate": 0.5,
                "privacy-steps-per-round": 2}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run)


def train(world: PreparedWorld, members: list[str], rnd: int, *, seed: int = 0, kind: str = MessageType.TRAIN
          ) -> Message:
    """A training (or `kind`) message of line `a`: a version `members` made from a root of the line (lineage
    declared)."""
    arrays = initial_global_arrays(SPEC, n_items=world.n_items, seed=seed)
    root, _ = describe_version({k: v - 1.0 for k, v in arrays.items()}, spec=SPEC, parent=None, round=0)
    version, _ = describe_version(arrays, spec=SPEC, parent=root.id, round=rnd - 1, contributors=members)
    msg = instruction(kind, arrays, rnd, version=version.id)
    config = msg.content.config_records["config"]
    config[MODEL_IDENTITY_KEY] = json.dumps(version.identity())
    config[MODEL_LINEAGE_KEY] = json.dumps([root.identity()])
    config[ROUND_MEMBERS_KEY] = members
    config[COALITION_KEY] = "a"
    return msg


def ask(msg: Message, ctx: Context) -> str | None:
    """The silo's decline reason (None: it trained and sent an update)."""
    reply = make_client_app()(msg, ctx)
    why = read_decline(reply.content)
    assert why is not None or "arrays" in reply.content
    return why


def trained_with_na(world: PreparedWorld, state: Path, **node: Any) -> None:
    """Run r1: eu trains round 1 of line a with na (its law then allowed na); its users are kept under r1@a."""
    assert ask(train(world, ["eu", "na"], 1), eu(world, state, run_name="r1", line=["eu", "na"], **node)) is None
    assert (StateDir(state).run("r1@a") / f"{LOCAL_STATE_KEY}.safetensors").is_file()


# ---- partners: a law tightened since ------------------------------------------------------------------------


def test_users_from_cannot_make_a_silo_continue_users_a_partner_its_law_now_forbids_shaped(
        world: PreparedWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """eu trained line a with na; its law now allows only apac. The coordinator proposes a clean line a with apac
    (root, contributors and members all lawful) and `users-from=r1`: eu would continue users and Adam moments
    trained on na's versions, and build on them what it sends apac. It declines; who shaped them is said in its own
    log only (users-from may name another federation's run)."""
    state = tmp_path / "eu"
    trained_with_na(world, state, partners="na")
    why = ask(train(world, ["eu", "apac"], 1), eu(world, state, run_name="r2", line=["eu", "apac"], users_from="r1",
                                            partners="apac"))
    assert why is not None and "does not continue" in why and "users-from" in why and "'na'" not in why
    assert "made with contributions from ['na']" in caplog.text
    # the same message without users-from is lawful: the decline is about what it would continue, nothing else
    lawful = eu(world, state, run_name="r3", line=["eu", "apac"], partners="apac")
    assert ask(train(world, ["eu", "apac"], 1), lawful) is None


def test_reusing_a_run_name_with_a_fresh_lineage_cannot_either(world: PreparedWorld, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The same without users-from: the coordinator reuses run name r1 and sends round 2 of a 'new' line a with apac,
    from a fresh root. The lineage is clean, but eu's own state of r1@a is na's work."""
    state = tmp_path / "eu"
    trained_with_na(world, state, partners="na")
    why = ask(train(world, ["eu", "apac"], 2, seed=1), eu(world, state, run_name="r1", line=["eu", "apac"],
                                                   partners="apac"))
    assert why is not None and "does not continue" in why and "made with contributions from ['na']" in caplog.text


def test_a_silo_whose_law_still_allows_every_maker_continues_them(world: PreparedWorld, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Fast divestment's own use: the law allows who shaped r1@a, so eu continues its users (and declines nothing);
    and a silo that kept no record of who shaped them (trained before it had partners) cannot check, so declines."""
    state = tmp_path / "eu"
    trained_with_na(world, state, partners="na,apac")
    assert ask(train(world, ["eu", "apac"], 1), eu(world, state, run_name="r2", line=["eu", "apac"], users_from="r1",
                                            partners="na,apac")) is None
    unchecked = tmp_path / "unchecked"
    trained_with_na(world, unchecked)  # no partners then: nothing checked, nothing recorded
    why = ask(train(world, ["eu", "apac"], 1), eu(world, unchecked, run_name="r2", line=["eu", "apac"], users_from="r1",
                                           partners="na,apac"))
    assert why is not None and "does not continue" in why and "cannot check who shaped them" in caplog.text


# ---- DP: a policy tightened since ---------------------------------------------------------------------------


def test_a_dp_round_never_continues_users_trained_without_dp(world: PreparedWorld, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """eu trained r1 without DP (its policy did not require it then); it now sets an ε budget. A DP run with
    `users-from=r1` would start from users trained on every other user's data without noise: each user's hidden
    state then depends on the others', and no per-user clip bounds what one user changes in the release."""
    state = tmp_path / "eu"
    trained_with_na(world, state)
    dp = eu(world, state, run_name="r2", line=["eu", "na"], users_from="r1", privacy=True)
    why = ask(train(world, ["eu", "na"], 1), dp)
    assert why is not None and "does not continue" in why and "trained without DP" in caplog.text
    caplog.clear()
    ledger = json.loads(StateDir(state).privacy_ledger.read_text()) if StateDir(state).privacy_ledger.exists() else {}
    assert not ledger.get("releases")  # declined before the ledger: nothing spent
    # reusing the name r1 under DP continues the same users: declined too
    why = ask(train(world, ["eu", "na"], 2), eu(world, state, run_name="r1", line=["eu", "na"], privacy=True))
    assert why is not None and "'r1@a'" in why and "trained without DP" in caplog.text
    # a DP run of its own (nothing continued) trains
    assert ask(train(world, ["eu", "na"], 1), eu(world, state, run_name="r4", line=["eu", "na"], privacy=True)) is None
    # and a DP run continuing a DP run does too (fast divestment under DP)
    assert ask(train(world, ["eu", "na"], 1), eu(world, state, run_name="r5", line=["eu", "na"], users_from="r4",
                                          privacy=True)) is None
    # ... as a release of its own (r4's cached reply for the same round and version is not re-sent as r5's)
    releases = json.loads(StateDir(state).privacy_ledger.read_text())["releases"]
    assert [r["run_id"] for r in releases] == ["r4@a", "r5@a"]


# ---- the last round's validation metrics (what a tuning study selects on) ----------------------------------


@pytest.mark.parametrize("privacy", [False, True])
def test_the_last_rounds_validation_metrics_never_leave_the_silo(world: PreparedWorld, tmp_path: Path,
                                                                 privacy: bool) -> None:
    """At the run's last round a silo also evaluates its validation users and logs them. Its reply (and so its egress
    ledger's record of it) is the very reply of a round that computes none: byte for byte without DP, no metrics
    under DP. Only its own log differs."""
    msg = train(world, ["eu", "na"], 2, kind=MessageType.EVALUATE)
    replies, logs = [], []
    for rounds in (2, 3):  # round 2 is the last of 2 (validation computed), not of 3
        state = tmp_path / f"of-{rounds}"
        ctx = eu(world, state, run_name="r", line=["eu", "na"], privacy=privacy)
        ctx.run_config["num-rounds"] = rounds
        replies.append(wire_bytes(make_client_app()(msg, ctx).content))
        logs.append([json.loads(line) for line in StateDir(state).evaluations("r").read_text().splitlines()])
        assert EgressLedger(StateDir(state).egress_ledger).entries()[-1].sha256 == hashlib.sha256(
            replies[-1]).hexdigest()
    assert replies[0] == replies[1]
    assert [("valid" in e) for log in logs for e in log] == [True, False]
