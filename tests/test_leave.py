"""A region leaves the federation (`fedrec.divestment.leave`, `fedrec leave`): its own line, then switched to.

- from an adopted global version: the line starts from its arrays and the silo's current users, trains locally,
  and the pointer moves to it with the reason recorded; nothing is sent;
- a region that already serves a fork continues it; one under `adopt: adapt` leaves with what it serves;
- bad requests are clear errors (unknown region, nothing served yet, wrong data, bad rounds), and the command
  prints one line and returns 2 for each.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fakegrid import run_in_process

from fedrec.commands.leave import leave_main
from fedrec.config import AdoptionPolicy, experiment_from_dict
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.divestment import line_head
from fedrec.divestment.leave import leave
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.settings import RunSettings, silo_state_root
from fedrec.silo.served_now import served_now
from fedrec.silo.serving import FORK_PREFIX, RegionServing
from fedrec.silo.state_dir import StateDir
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=240, n_items=60, region_only_items=3, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=10.0, min_interactions=5)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def trained(world_dir: Path, out: Path, **kw: object) -> RunSettings:
    s = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=2, min_nodes=3, dim=6, batch_size=64,
                    n_negatives=16, seed=5)
    s = dataclasses.replace(s, **kw)  # type: ignore[arg-type]
    run_in_process(s)
    return s


def _state(s: RunSettings, region: str) -> Path:
    root = silo_state_root(s)
    assert root is not None
    return root / region


def test_a_region_leaves_with_its_own_line_from_the_version_it_serves(world_dir: Path, tmp_path: Path) -> None:
    s = trained(world_dir, tmp_path / "run")
    head, state = line_head(s), _state(s, "na")
    egress = StateDir(state).egress_ledger.read_bytes()
    out = leave(s, "na", rounds=2)
    assert (out.served_before, out.served_after, out.base) == (head, FORK_PREFIX + head, head)
    assert (out.rounds, out.line_rounds, out.users) == (2, 2, "silo")
    now = served_now(state)
    assert now.ok and now.label == FORK_PREFIX + head and now.rounds == 2
    serving = RegionServing(state, AdoptionPolicy())
    last = serving.record.decisions()[-1]
    assert last.reason.startswith("left the federation") and last.served_before == head and not last.adopted
    assert last.evidence["valid_ndcg@20_before"] == out.valid_before
    fork = serving.fork()
    assert fork is not None and fork.base == head and fork.rounds == 2 and fork.local  # the silo's users came along
    assert StateDir(state).egress_ledger.read_bytes() == egress  # nothing left the silo
    # leaving again continues the same line
    again = leave(s, "na", rounds=1)
    assert (again.served_before, again.served_after, again.line_rounds, again.users) == (
        FORK_PREFIX + head, FORK_PREFIX + head, 3, "line")
    # rounds=0: the fork at the version itself, no adaptation
    assert leave(s, "apac", rounds=0).line_rounds == 0


def test_a_forked_or_adapting_region_leaves_with_what_it_serves(world_dir: Path, tmp_path: Path) -> None:
    s = trained(world_dir, tmp_path / "run", adoption=json.dumps({"eu": {"fork": 1}, "na": {"adopt": "adapt"}}))
    fork = RegionServing(_state(s, "eu"), AdoptionPolicy()).fork()
    assert fork is not None
    out = leave(s, "eu", rounds=1)
    assert out.served_before == out.served_after == FORK_PREFIX + fork.base
    assert out.line_rounds == fork.rounds + 1 and out.users == "line"
    before = served_now(_state(s, "na")).label
    out = leave(s, "na", rounds=1)
    assert out.served_before == before and out.served_after.startswith(FORK_PREFIX)
    assert served_now(_state(s, "na")).label == out.served_after


def test_leaving_refuses_what_it_cannot_do(world_dir: Path, tmp_path: Path) -> None:
    s = trained(world_dir, tmp_path / "run", exclude_regions="apac", min_nodes=2)
    with pytest.raises(ConfigError, match="unknown region"):
        leave(s, "atlantis")
    with pytest.raises(ConfigError, match="no state dir"):
        leave(s, "apac")  # never took part
    (_state(s, "apac") / "serving").mkdir(parents=True)
    with pytest.raises(ConfigError, match="serves nothing yet"):
        leave(s, "apac")
    with pytest.raises(ConfigError, match="rounds"):
        leave(s, "eu", rounds=-1)
    with pytest.raises(ConfigError, match="its own data"):
        leave(s, "eu", data_path=Path(s.data_dir) / "silo_na.npz")  # another region's users
    with pytest.raises(ConfigError, match="not a mf model"):
        leave(dataclasses.replace(s, dim=4), "eu")
    assert served_now(_state(s, "eu")).label == line_head(s)  # nothing changed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    cfg = experiment_from_dict({
        "dataset": {"name": "synthetic", "n_users": 240, "n_items": 60, "region_only_items": 3,
                    "region_sizes": [2.0, 1.0, 1.0], "seed": 1},
        "federation": {"rounds": 2}, "model": {"name": "mf", "dim": 6}, "baselines": []})
    run_experiment(cfg, out, log=lambda *_: None, engine=run_in_process)
    return out


def test_the_command_leaves_and_says_what_it_serves(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert leave_main([str(run_dir), "--region", "eu", "--rounds", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("eu left the federation: serves fork:")
    assert json.loads(printed[1])["line_rounds"] == 1
    state = run_dir / "silo-state" / "eu"
    assert served_now(state).label == json.loads(printed[1])["served_after"]
    # a deployed silo names its own state dir and data
    assert leave_main([str(run_dir), "--region", "na", "--state-dir", str(run_dir / "silo-state" / "na"),
                       "--data-path", str(run_dir / "world" / "silo_na.npz")]) == 0


@pytest.mark.parametrize(("argv", "says"), [
    (["--region", "eu"], "results.json not found"),
    (["RUN", "--region", "atlantis"], "unknown region"),
    (["RUN", "--region", "eu", "--rounds", "-2"], "rounds"),
    (["RUN", "--region", "eu", "--state-dir", "/nonexistent/state"], "no state dir"),
    (["RUN"], "--region"),
])
def test_the_command_s_errors_are_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str], says: str) -> None:
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    if argv[0] == "--region":
        argv = [str(tmp_path), *argv]
    assert leave_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrec leave: error:") and says in err and len(err.strip().splitlines()) == 1
