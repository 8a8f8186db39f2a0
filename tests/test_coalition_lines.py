"""Coalitions (issue 15.3): one global line per coalition in one run; a region in two trains and spends for both.

Checked through the public entry points (a run on the in-process grid, `run_experiment`): each line is the run
its members would make alone; a region in two lines keeps their users apart and spends one budget for both; a
silo declines a line it is not in, and one its law forbids; `fedrec audit partners` finds nothing to blame.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from fakegrid import Tamper, run_in_process
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from redteam_kit import send_line_head

from fedrec.config import experiment_from_dict
from fedrec.coordinator.coalition_lines import LineGrid
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError, FedrecError
from fedrec.experiment import run_experiment
from fedrec.flower.client_app import make_client_app
from fedrec.messages import COALITION_KEY, read_decline
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings, read_manifest
from fedrec.silo.state_dir import StateDir
from fedrec.training import initial_global_arrays
from fedrec.versions import ModelRegistry
from fedrec.world import prepare_world
from tests.test_client_egress import instruction
from tests.test_coalitions import audit, train_entries

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=5, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
LINES = {"atlantic": ["eu", "na"], "pacific": ["na", "apac"]}
ROUNDS = 3


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def settings(world_dir: Path, out: Path, **kw: object) -> RunSettings:
    base = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=ROUNDS, min_nodes=3, dim=6,
                       batch_size=64, n_negatives=16, seed=5, coalitions=json.dumps(LINES))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def two_lines(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunSettings:
    s = settings(world_dir, tmp_path_factory.mktemp("lines"))
    run_in_process(s)
    return s


def head_arrays(out: Path, line: str) -> dict[str, np.ndarray]:
    return load_global_model(out / "coalitions" / line / "global_model.safetensors")[0]


def test_each_line_trains_only_its_members_and_records_its_coalition(two_lines: RunSettings) -> None:
    out = Path(two_lines.output_dir)
    history = json.loads((out / "federated_history.json").read_text())
    trained = [(e["round"], e["coalition"], e["participants"]) for e in history["round_log"]]
    assert trained == [(r, c, sorted(LINES[c])) for r in range(1, ROUNDS + 1) for c in sorted(LINES)]
    registry = ModelRegistry(out / "registry", create=False)
    for line, members in LINES.items():
        ids = [v["id"] for v in history["model_versions"] if v["coalition"] == line]
        assert len(ids) == ROUNDS + 1  # version 0 and one per round
        for vid in ids:
            version = registry.get(vid)
            assert version.coalition == line and set(version.contributors) <= set(members)
    zeros = {v["id"] for v in history["model_versions"] if v["round"] == 0}
    assert len(zeros) == 2  # the same initial weights, but each line's version 0 is its own


def test_a_line_is_the_run_its_members_would_make_alone(two_lines: RunSettings, world_dir: Path,
                                                          tmp_path: Path) -> None:
    # eu and na both serve `atlantic` (their first coalition), so it trains exactly as a run of eu and na alone
    alone = settings(world_dir, tmp_path, coalitions="{}", exclude_regions="apac", min_nodes=2)
    h = run_in_process(alone)
    line = head_arrays(Path(two_lines.output_dir), "atlantic")
    assert set(line) == set(h.final_arrays)
    for k in line:
        np.testing.assert_array_equal(line[k], h.final_arrays[k])
    # na's other line is trained with its own draws and its own users: the two lines' heads differ
    pacific = head_arrays(Path(two_lines.output_dir), "pacific")
    assert any(not np.array_equal(pacific[k], line[k]) for k in line)


def test_a_region_in_two_lines_keeps_each_lines_users_apart(two_lines: RunSettings) -> None:
    runs = StateDir(Path(two_lines.output_dir) / "silo-state" / "na").root / "runs"
    keys = sorted(p.name for p in runs.iterdir())
    assert [k.split("@")[1] for k in keys] == ["atlantic", "pacific"]
    users = [(runs / k / "fedrec-user-state.safetensors").read_bytes() for k in keys]
    assert users[0] != users[1]
    assert [p.name for p in (Path(two_lines.output_dir) / "silo-state" / "eu" / "runs").iterdir()] == [
        keys[0].split("@")[0] + "@atlantic"]


def experiment(out: Path, tamper: Tamper | None = None, rounds: int = 2, **extra: object) -> dict:  # type: ignore[type-arg]
    cfg = experiment_from_dict({"dataset": {"name": "synthetic", "n_users": 300, "n_items": 80,
                                            "region_only_items": 5, "region_sizes": [2.0, 1.0, 1.0], "seed": 2},
                                "federation": {"rounds": rounds, "coalitions": LINES},
                                "model": {"name": "mf", "dim": 6}, "bounds": [], "baselines": [], **extra})
    return run_experiment(cfg, out, log=lambda *_: None,
                          engine=lambda s, **kw: run_in_process(s, **kw, tamper=tamper))


def test_results_show_each_region_its_serving_line_and_every_line_apart(tmp_path: Path) -> None:
    res = experiment(tmp_path)
    lines = res["coalitions"]
    assert {n: b["regions"] for n, b in lines.items()} == {n: sorted(m) for n, m in LINES.items()}
    fed = res["final"]["federated"]["per_region"]
    serves = {"eu": "atlantic", "na": "atlantic", "apac": "pacific"}  # the first coalition in name order
    for region, line in serves.items():
        assert fed[region] == lines[line]["per_region"][region]
        assert region in lines[line]["served_by"]
    assert lines["pacific"]["per_region"]["na"] != lines["atlantic"]["per_region"]["na"]
    for name, block in lines.items():
        assert block["rounds_trained"] == 2 and block["head"]
        assert (tmp_path / res["artifacts"]["global_model"][name]).exists()


def test_under_dp_a_region_in_two_lines_spends_one_budget_for_both(tmp_path: Path) -> None:
    res = experiment(tmp_path, privacy={"name": "user_dp", "epsilon": 3.0})
    ledger = json.loads((tmp_path / "silo-state" / "na" / "privacy_ledger.json").read_text())
    released = sorted((r["run_id"].split("@")[1], r["server_round"]) for r in ledger["releases"])
    assert released == [(c, r) for c in ("atlantic", "pacific") for r in (1, 2)]
    assert len(ledger["plans"]) == 1  # one plan for the run, over both lines
    na, eu = res["privacy"]["na"], res["privacy"]["eu"]
    assert max(r["epsilon_after"] for r in ledger["releases"]) <= 3.0
    assert eu["epsilon"] <= 3.0 and na["epsilon"] <= 3.0
    assert na["noise_multiplier"] > eu["noise_multiplier"]  # twice the releases on one budget: more noise each
    assert na["steps"] == 2 * eu["steps"]  # the run's steps over both lines
    # under DP the lines' metrics come from the silos' own logs, and are there for every line
    assert all(res["coalitions"][n]["per_region"].keys() == set(m) for n, m in LINES.items())


def send(app: ClientApp, s: RunSettings, line: str, rnd: int = 1) -> RecordDict:
    """A training message of coalition `line` to eu's node (partition 0)."""
    n_items = int(read_manifest(s.data_dir)["n_items"])
    msg = instruction(MessageType.TRAIN, initial_global_arrays(s.model_spec, n_items=n_items, seed=s.seed), rnd)
    msg.content.config_records["config"][COALITION_KEY] = line
    ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={"partition-id": 0, "num-partitions": 3},
                  state=RecordDict(), run_config={})
    return app(msg, ctx).content


def test_a_silo_declines_a_line_it_is_not_in(world_dir: Path, tmp_path: Path) -> None:
    s = settings(world_dir, tmp_path, coalitions=json.dumps({"atlantic": ["eu", "na"], "pacific": ["na", "apac"]}))
    app = make_client_app(s)
    reply = send(app, s, "pacific")  # partition 0 is eu: not in pacific
    assert "trains in ['atlantic']" in str(read_decline(reply))
    reply = send(app, s, "arctic")
    assert "arctic" in str(read_decline(reply))
    plain = settings(world_dir, tmp_path, coalitions="{}")
    reply = send(make_client_app(plain), plain, "atlantic")
    assert "this run has one line" in str(read_decline(reply))


def test_a_hostile_coordinator_sending_extra_lines_meets_the_budget(world_dir: Path, tmp_path: Path) -> None:
    # the run config declares eu in one line, so its plan covers ROUNDS releases; asking for the same rounds again
    # under other line keys (here: a second run config naming a second line) only meets the ledger's budget
    one = settings(world_dir, tmp_path, privacy="user_dp", privacy_epsilon=1.0,
                   coalitions=json.dumps({"atlantic": ["eu", "na", "apac"]}))
    app = make_client_app(one, reproducible_noise=True)
    for rnd in range(1, ROUNDS + 1):
        assert read_decline(send(app, one, "atlantic", rnd)) is None
    spent = json.loads((tmp_path / "silo-state" / "eu" / "privacy_ledger.json").read_text())
    assert max(r["epsilon_after"] for r in spent["releases"]) <= 1.0
    two = dataclasses.replace(one, coalitions=json.dumps({"atlantic": ["eu", "na", "apac"], "b": ["eu", "na"]}))
    app2 = make_client_app(two, reproducible_noise=True)
    replies = [send(app2, two, "b", rnd) for rnd in range(1, ROUNDS + 1)]
    assert any("budget" in str(read_decline(r)) for r in replies)
    after = json.loads((tmp_path / "silo-state" / "eu" / "privacy_ledger.json").read_text())
    assert max(r["epsilon_after"] for r in after["releases"]) <= 1.0


@pytest.mark.parametrize(("coalitions", "extra", "message"), [
    ({"x": ["eu", "mars"]}, {}, "do not take part"),
    ({"x": ["eu", "na"]}, {}, "in no coalition"),
    ({"x": ["eu", "na", "apac"]}, {"train_lines": "y"}, "train-lines names"),
    ({"x": ["eu", "na"], "y": ["apac", "na"]}, {"start_version": "ab" * 32}, "with start-version when more than one"),
    ({"x": []}, {}, "non-empty list"),
    ({"../x": ["eu"]}, {}, "names of letters"),
])
def test_bad_coalitions_are_refused_before_anything_runs(world_dir: Path, tmp_path: Path, coalitions: dict,  # type: ignore[type-arg]
                                                         extra: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        run_in_process(settings(world_dir, tmp_path, coalitions=json.dumps(coalitions), **extra))


def test_a_line_grid_shows_only_its_coalitions_nodes() -> None:
    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3]

        pull_interval = 0.5

    view = LineGrid(Grid(), {1, 3, 9})  # type: ignore[arg-type]
    assert list(view.get_node_ids()) == [1, 3]
    assert view.pull_interval == 0.5


EU_LAW = {"eu": {"partners": ["na"]}}  # eu's law allows na, not apac: atlantic is lawful for it, pacific is not


def test_a_region_trains_in_the_coalition_its_law_allows_and_the_audit_agrees(tmp_path: Path) -> None:
    res = experiment(tmp_path, regime=EU_LAW)
    atlantic = [e for e in res["round_log"] if e["coalition"] == "atlantic"]
    assert [e["participants"] for e in atlantic] == [["eu", "na"]] * 2 and not any(e["declined"] for e in atlantic)
    code, text = audit(tmp_path)
    assert code == 0 and "respect every partners rule" in text


def test_a_coordinator_cannot_pass_another_lines_version_to_a_silo_whose_law_forbids_its_makers(
        tmp_path: Path) -> None:
    """From round 2 the coordinator sends eu, as atlantic's, the head of pacific (which apac shaped)."""
    def swap_in_pacific(msg: Message, context: Context) -> None:
        config = msg.content.config_records["config"]
        if msg.metadata.message_type != MessageType.TRAIN or int(config["server-round"]) < 2 \
                or context.node_config["partition-id"] != 0:  # eu
            return
        send_line_head(msg, tmp_path / "registry", "pacific")

    res = experiment(tmp_path, tamper=swap_in_pacific, rounds=3, regime=EU_LAW)
    for entry in res["round_log"]:
        if entry["coalition"] == "atlantic" and entry["round"] >= 2:
            assert "eu" not in entry["participants"]
            assert "made with contributions from ['apac']" in entry["declined"]["eu"]
    registry = ModelRegistry(tmp_path / "registry", create=False)
    for e in train_entries(tmp_path, "eu"):  # every update eu released built on a version without apac
        if not e.declined:
            assert "apac" not in registry.get(e.version).contributors


@pytest.mark.slow
def test_two_lines_on_flowers_simulation_engine(tmp_path: Path) -> None:
    """The real engine (Ray): both lines train, the region in two keeps both, the run reports every line."""
    cfg = experiment_from_dict({"dataset": {"name": "synthetic", "n_users": 300, "n_items": 80,
                                            "region_only_items": 5, "region_sizes": [2.0, 1.0, 1.0], "seed": 2},
                                "federation": {"rounds": 2, "coalitions": LINES},
                                "model": {"name": "mf", "dim": 6}, "bounds": [], "baselines": []})
    res = run_experiment(cfg, tmp_path, log=lambda *_: None)
    assert [(e["round"], e["coalition"], e["participants"]) for e in res["round_log"]] == [
        (r, c, sorted(LINES[c])) for r in (1, 2) for c in sorted(LINES)]
    assert set(res["coalitions"]) == set(LINES)
    assert sorted(p.name.split("@")[1] for p in (tmp_path / "silo-state" / "na" / "runs").iterdir()) == [
        "atlantic", "pacific"]


def test_results_follow_the_line_a_region_serves_when_its_law_skips_its_first(tmp_path: Path) -> None:
    # eu's law forbids apac: of aaa (eu, na, apac) and atlantic (eu, na) it trains in, and serves, atlantic only
    res = experiment(tmp_path, regime=EU_LAW, federation={"rounds": 2, "coalitions": {
        "aaa": ["eu", "na", "apac"], "atlantic": ["eu", "na"]}})
    lines = res["coalitions"]
    assert "eu" in lines["atlantic"]["served_by"] and "eu" not in lines["aaa"]["served_by"]
    assert res["final"]["federated"]["per_region"]["eu"] == lines["atlantic"]["per_region"]["eu"]
    assert all("eu" not in e["participants"] for e in res["round_log"] if e["coalition"] == "aaa")


def test_a_region_serves_the_line_its_own_policy_names(tmp_path: Path) -> None:
    res = experiment(tmp_path, regime={"na": {"serve-coalition": "pacific"}})
    lines = res["coalitions"]
    assert lines["pacific"]["served_by"] == ["apac", "na"] and lines["atlantic"]["served_by"] == ["eu"]
    assert res["final"]["federated"]["per_region"]["na"] == lines["pacific"]["per_region"]["na"]
    assert res["regimes"]["na"]["policy"]["serve_coalition"] == "pacific"


def test_a_serve_coalition_the_region_does_not_train_in_stops_the_run_at_preflight(tmp_path: Path) -> None:
    with pytest.raises(FedrecError, match="serve-coalition='atlantic' is not a line region 'apac' trains in"):
        experiment(tmp_path, regime={"apac": {"serve-coalition": "atlantic"}})


class Crash(RuntimeError):
    pass


def test_a_coordinator_that_dies_mid_round_resumes_every_line_where_it_stopped(world_dir: Path, tmp_path: Path) -> None:
    """Killed after atlantic's round 2 (before its checkpoint, pacific's round 2 not yet run): the restarted
    coordinator (a new Flower run id, the same run-name) ends every line exactly where a run that never died does."""
    def crash(entry: dict) -> None:  # type: ignore[type-arg]
        if (entry["round"], entry["coalition"]) == (2, "atlantic"):
            raise Crash("coordinator killed")

    crashed = settings(world_dir, tmp_path / "crashed", run_name="lines", state_dir=str(tmp_path / "crashed-state"))
    with pytest.raises(Crash):
        run_in_process(crashed, on_round=crash, run_id=1)
    run_in_process(dataclasses.replace(crashed, resume=True), run_id=2)
    straight = settings(world_dir, tmp_path / "straight", run_name="lines", state_dir=str(tmp_path / "s-state"))
    run_in_process(straight, run_id=3)
    for line in LINES:
        a, b = head_arrays(tmp_path / "crashed", line), head_arrays(tmp_path / "straight", line)
        assert all(np.array_equal(a[k], b[k]) for k in a), line
    resumed = json.loads((tmp_path / "crashed" / "federated_history.json").read_text())
    assert [(e["round"], e["coalition"]) for e in resumed["round_log"]] == [
        (r, c) for r in (1, 2, 3) for c in sorted(LINES)]
    whole = json.loads((tmp_path / "straight" / "federated_history.json").read_text())
    assert [(e["round"], e["per_region"]) for e in resumed["rounds"]] == [
        (e["round"], e["per_region"]) for e in whole["rounds"]]  # the rounds before the crash too


def test_divesting_a_coalition_run_rebuilds_only_the_lines_the_region_shaped(two_lines: RunSettings, world_dir: Path,
                                                                              tmp_path: Path) -> None:
    from fedrec.divestment import divest_lines

    rebuilt = divest_lines(two_lines, ["apac"], method="exact", out_dir=tmp_path / "d", engine=run_in_process)
    assert list(rebuilt) == ["pacific"]  # atlantic never saw apac: left as it is
    registry = ModelRegistry(Path(two_lines.output_dir) / "registry", create=False)
    head = registry.get(rebuilt["pacific"].head)
    assert head.divestment["removed"] == ["apac"] and head.divestment["line"] == "pacific"
    assert set(head.contributors) == {"na"}
    # without DP the rebuilt line is the line a run without apac would have made from the same start
    never = settings(world_dir, tmp_path / "never", exclude_regions="apac", min_nodes=2,
                     coalitions=json.dumps({"atlantic": ["eu", "na"], "pacific": ["na"]}))
    run_in_process(never)
    arrays, expected = registry.load(head.id)[0], head_arrays(tmp_path / "never", "pacific")
    assert all(np.array_equal(arrays[k], expected[k]) for k in arrays)
    # na serves atlantic: the rebuilt pacific head was evaluated in its silo, not offered to it for serving
    decisions = (Path(two_lines.output_dir) / "silo-state" / "na" / "serving" / "adoption.jsonl").read_text()
    atlantic_head = json.loads((Path(two_lines.output_dir) / "coalitions" / "atlantic" / "federated_history.json"
                                ).read_text())["model_versions"][-1]["id"]
    assert atlantic_head in decisions and head.id not in decisions
    with pytest.raises(ConfigError, match="did not keep its contributions"):  # this run kept none
        divest_lines(two_lines, ["apac"], method="fast", out_dir=tmp_path / "f", engine=run_in_process)


def test_fast_divestment_of_a_coalition_line_subtracts_its_kept_contributions_and_continues_its_users(
        world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.divestment import divest_lines
    from fedrec.silo.state import SiloState

    run = settings(world_dir, tmp_path / "run", keep_contributions=True, num_rounds=4, run_name="kept")
    run_in_process(run)
    for line in LINES:  # each line keeps its own contributions, from its own start
        assert (tmp_path / "run" / "coalitions" / line / "contributions.safetensors").is_file()
    opened: list[tuple[str, str]] = []
    for_run = SiloState.for_run

    def spy(self: SiloState, run_key: str, *, users_from: str | None = None) -> SiloState:
        other = for_run(self, run_key, users_from=users_from)
        opened.append((run_key, other.users_from))
        return other

    monkeypatch.setattr(SiloState, "for_run", spy)
    rebuilt = divest_lines(run, ["apac"], method="fast", out_dir=tmp_path / "f", engine=run_in_process,
                           recovery_rounds=1)
    assert list(rebuilt) == ["pacific"]
    fast = rebuilt["pacific"]
    registry = ModelRegistry(tmp_path / "run" / "registry", create=False)
    head = registry.get(fast.head)
    subtracted = registry.get(head.parent or "")
    assert subtracted.strategy == "divest:subtract(apac)" and subtracted.divestment["line"] == "pacific"
    assert subtracted.parent == line_head_of(tmp_path / "run", "pacific")  # from the line's own head
    assert (head.divestment["method"], head.divestment["removed"], head.divestment["line"]) == (
        "fast", ["apac"], "pacific")
    assert set(head.contributors) == {"na"} and (fast.rounds, fast.silo_rounds) == (1, 1)
    # na's recovery round continued the users it trained in pacific (kept under its line key), not fresh ones
    earlier = [users_from for key, users_from in opened if key.endswith("@pacific") and users_from]
    assert earlier and set(earlier) == {"kept@pacific"}
    assert (Path(run.output_dir) / "silo-state" / "na" / "runs" / "kept@pacific").is_dir()
    # in deployment: the rebuilt line's run config names the earlier run whose line users each silo continues
    import tomllib

    from fedrec.commands.divest import DEPLOYMENT_FILE, divest_main

    assert divest_main(["apac", "--run", run.output_dir, "--method", "fast", "--recovery-rounds", "1",
                        "--deployment", "--out", str(tmp_path / "p")]) == 0
    config = tomllib.loads((tmp_path / "p" / "pacific" / DEPLOYMENT_FILE).read_text())
    assert (config["users-from"], config["train-lines"], config["exclude-regions"]) == ("kept", "pacific", "apac")
    assert registry.get(config["start-version"]).strategy == "divest:subtract(apac)"
    assert not (tmp_path / "p" / "atlantic").exists()  # atlantic never saw apac


def line_head_of(out: Path, line: str) -> str:
    history = json.loads((out / "coalitions" / line / "federated_history.json").read_text())
    return str(history["model_versions"][-1]["id"])


def test_the_divest_command_on_a_coalition_run_reports_each_rebuilt_line(two_lines: RunSettings, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from fedrec.commands.divest import DEPLOYMENT_FILE, divest_main
    from fedrec.flower import simulation

    monkeypatch.setattr(simulation, "run_simulation", run_in_process)  # the same apps, without Ray
    assert divest_main(["na", "--run", two_lines.output_dir, "--out", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "divestment.json").read_text())
    assert set(report["lines"]) == {"atlantic", "pacific"}  # na shaped both
    assert set(report["lines"]["atlantic"]["per_region"]) == {"eu"}
    assert set(report["lines"]["pacific"]["per_region"]) == {"apac"}
    assert report["lines"]["atlantic"]["removal_test"]["na"]["own_items"] > 0
    printed = capsys.readouterr().out
    assert "coalition line atlantic" in printed and "coalition line pacific" in printed
    assert divest_main(["eu", "--run", two_lines.output_dir, "--deployment", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "atlantic" / DEPLOYMENT_FILE).is_file()
    assert not (tmp_path / "p" / "pacific").exists()
