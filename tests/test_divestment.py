"""Divest a region from a trained line (`fedrec.divestment`), through the public API on the in-process grid.

- exact divestment without DP equals, array for array, a run in which the region never took part from the same
  start, and its versions record what was removed, how and from which version;
- fast divestment subtracts the region's kept contributions, then recovers with the remaining regions; the
  contributions it subtracts add up to the line's whole movement;
- bad requests are refused with errors that name the fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakegrid import run_in_process

from fedrec.coordinator.contributions import ContributionLedger
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.divestment import divest, line_head
from fedrec.errors import ConfigError
from fedrec.run_lines import divestment_record, excluded_regions
from fedrec.settings import RunSettings
from fedrec.versions import ModelRegistry
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=360, n_items=90, region_only_items=5, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
ROUNDS = 4


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def settings(world_dir: Path, out: Path, **kw: object) -> RunSettings:
    base = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=ROUNDS, min_nodes=3, dim=6,
                       batch_size=64, n_negatives=16, seed=3, keep_contributions=True)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunSettings:
    s = settings(world_dir, tmp_path_factory.mktemp("run"))
    run_in_process(s)
    return s


def test_exact_divestment_equals_a_run_the_region_never_took_part_in(world_dir: Path, trained: RunSettings,
                                                                      tmp_path: Path) -> None:
    out = divest(trained, ["eu"], method="exact", out_dir=tmp_path / "exact", engine=run_in_process)
    never = run_in_process(settings(world_dir, tmp_path / "never", exclude_regions="eu", min_nodes=2))
    registry = ModelRegistry(trained.registry_root())  # type: ignore[arg-type]
    rebuilt, _ = registry.load(out.head)
    assert set(rebuilt) == set(never.final_arrays)
    for k, v in never.final_arrays.items():
        np.testing.assert_array_equal(rebuilt[k], v)
    assert out.rounds == ROUNDS and out.silo_rounds == 2 * ROUNDS  # na and apac, every round
    assert set(out.per_region) == {"na", "apac"}
    # provenance: every version of the rebuilt line names what was removed, how, from where and what it replaces
    line = registry.lineage(out.head)
    assert [v.round for v in line] == list(range(ROUNDS, -1, -1))
    assert line[-1].id == out.rebuilt_from and line[-1].parent is None  # eu took part from round 1: version 0
    for v in line[:-1]:
        assert v.divestment == {"removed": ["eu"], "method": "exact", "from_version": out.rebuilt_from,
                                "replaces": out.replaces}
        assert "eu" not in v.contributors
    # and the line it replaces is still there, with eu among its contributors
    assert "eu" in registry.get(out.replaces).contributors
    assert not np.array_equal(registry.load(out.replaces)[0]["item_emb.weight"], rebuilt["item_emb.weight"])


def test_the_kept_contributions_add_up_to_the_lines_whole_movement(trained: RunSettings) -> None:
    ledger = ContributionLedger.load(Path(trained.output_dir))
    registry = ModelRegistry(trained.registry_root())  # type: ignore[arg-type]
    head, head_v = registry.load(ledger.head)
    start, _ = registry.load(ledger.start)
    assert head_v.round == ROUNDS and sorted(ledger.rounds) == ["apac", "eu", "na"]
    back = ledger.without(head, ["apac", "eu", "na"])
    for k in head:  # float32 model, float64 bookkeeping: equal to float32 rounding over the rounds
        np.testing.assert_allclose(back[k], start[k], rtol=0, atol=1e-5)
        assert not np.allclose(head[k], start[k], atol=1e-3) or k.endswith("bias")


def test_fast_divestment_subtracts_then_recovers_at_a_fraction_of_the_cost(trained: RunSettings,
                                                                           tmp_path: Path) -> None:
    exact = divest(trained, ["eu"], method="exact", out_dir=tmp_path / "exact", engine=run_in_process)
    fast = divest(trained, ["eu"], method="fast", out_dir=tmp_path / "fast", engine=run_in_process,
                  recovery_rounds=1)
    registry = ModelRegistry(trained.registry_root())  # type: ignore[arg-type]
    subtracted = registry.get(fast.rebuilt_from)
    assert subtracted.parent == fast.replaces and subtracted.contributors == ()
    assert subtracted.divestment["step"] == "subtract (reweighted)" and subtracted.divestment["removed"] == ["eu"]
    head = registry.get(fast.head)
    assert head.parent == subtracted.id and head.round == ROUNDS + 1
    assert head.divestment["method"] == "fast" and head.divestment["from_version"] == subtracted.id
    assert fast.silo_rounds == 2 and exact.silo_rounds == 8
    assert set(fast.per_region) == {"na", "apac"}


def test_divestment_refuses_what_it_cannot_do(trained: RunSettings, world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown region"):
        divest(trained, ["atlantis"], method="exact", out_dir=tmp_path / "a", engine=run_in_process)
    with pytest.raises(ConfigError, match="choose one of"):
        divest(trained, ["eu"], method="magic", out_dir=tmp_path / "b", engine=run_in_process)
    with pytest.raises(ConfigError, match="leaves no region"):
        divest(trained, ["eu", "na", "apac"], method="exact", out_dir=tmp_path / "c", engine=run_in_process)
    never = settings(world_dir, tmp_path / "never", exclude_regions="eu", keep_contributions=False, min_nodes=2)
    run_in_process(never)
    with pytest.raises(ConfigError, match="never contributed"):
        divest(never, ["eu"], method="exact", out_dir=tmp_path / "d", engine=run_in_process)
    with pytest.raises(ConfigError, match="keep_contributions"):
        divest(never, ["na"], method="fast", out_dir=tmp_path / "e", engine=run_in_process)


def test_a_run_cannot_start_from_a_version_an_excluded_region_shaped(trained: RunSettings, tmp_path: Path) -> None:
    registry = ModelRegistry(trained.registry_root())  # type: ignore[arg-type]
    head = registry.get(line_head(trained))  # the trained line's head: eu contributed to it
    s = dataclasses.replace(trained, output_dir=str(tmp_path / "x"), registry_dir=str(registry.root),
                            start_version=head.id[:12], exclude_regions="eu", num_rounds=ROUNDS + 2, min_nodes=2)
    with pytest.raises(ConfigError, match="this run excludes"):
        run_in_process(s)
    with pytest.raises(ConfigError, match="only 2 region"):
        run_in_process(dataclasses.replace(s, start_version="", min_nodes=3))


def test_after_one_round_the_reweighted_line_is_the_exact_line(world_dir: Path, tmp_path: Path) -> None:
    """The others trained round 1 from the same start with the same seeds in both lines: reweighting their recorded
    updates without eu gives the exact line's round-1 model (float32 rounding apart)."""
    one = settings(world_dir, tmp_path / "one", num_rounds=1)
    run_in_process(one)
    registry = ModelRegistry(one.registry_root())  # type: ignore[arg-type]
    ledger = ContributionLedger.load(Path(one.output_dir))
    replayed = ledger.reweighted_without(registry.load(ledger.start)[0], "eu")
    exact = divest(one, ["eu"], method="exact", out_dir=tmp_path / "exact", engine=run_in_process)
    rebuilt = registry.load(exact.head)[0]
    direct = ledger.without(registry.load(ledger.head)[0], ["eu"])
    for k, v in rebuilt.items():
        np.testing.assert_allclose(replayed[k], v, rtol=0, atol=1e-6)
    assert max(np.abs(direct[k] - rebuilt[k]).max() for k in rebuilt) > 1e-4  # subtracting alone is not the same


def test_the_divest_command_rebuilds_reports_and_runs_the_removal_test(trained: RunSettings, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from fedrec.commands.divest import divest_main
    from fedrec.flower import simulation

    monkeypatch.setattr(simulation, "run_simulation", run_in_process)  # the same apps, without Ray
    assert divest_main(["eu", "--run", trained.output_dir, "--method", "fast", "--out", str(tmp_path / "d")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    report = json.loads((tmp_path / "d" / "divestment.json").read_text())
    assert report["method"] == "fast" and report["removed"] == ["eu"] and report["rounds"] == 1  # 30% of 4, >= 1
    test = report["removal_test"]["eu"]
    assert test["own_items"] > 0 and test["users"] > 0
    assert test["signal"]["before"] > test["signal"]["after"]  # what only eu taught the model is (mostly) gone
    assert set(report["before"]["per_region"]) == {"eu", "na", "apac"} and set(report["per_region"]) == {"na", "apac"}
    assert "removal test eu" in printed and report["head"][:16] in printed


@pytest.mark.parametrize(("args", "message"), [
    (["atlantis"], "unknown region"),
    (["eu", "--method", "fast", "--recovery-rounds", "0"], "recovery rounds must be >= 1"),
])
def test_the_divest_command_refuses_mistakes_in_one_line(trained: RunSettings, args: list[str], message: str,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedrec.commands.divest import divest_main

    assert divest_main([*args, "--run", trained.output_dir, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_divest_command_names_a_directory_that_is_not_a_run(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from fedrec.commands.divest import divest_main

    assert divest_main(["eu", "--run", str(tmp_path)]) == 2
    assert "run_config.json is missing" in capsys.readouterr().err


def test_the_deployment_plan_is_a_run_config_flower_reads_and_it_rebuilds_the_exact_line(
        trained: RunSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flwr.common.config import parse_config_args

    from fedrec.commands.divest import DEPLOYMENT_FILE, divest_main

    assert divest_main(["eu", "--run", trained.output_dir, "--deployment", "--out", str(tmp_path / "p")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    path = tmp_path / "p" / DEPLOYMENT_FILE
    assert f"--run-config {path}" in printed and "exclude-regions = \"eu\"" in printed
    assert not (tmp_path / "p" / "federated_history.json").exists()  # nothing trained
    run = RunSettings.from_run_config(parse_config_args([str(path)]))  # as `flwr run --run-config FILE` reads it
    assert excluded_regions(run) == ["eu"] and divestment_record(run)["method"] == "exact"
    started = run_in_process(run)
    exact = divest(trained, ["eu"], method="exact", out_dir=tmp_path / "exact", engine=run_in_process)
    assert started.versions[-1]["id"] == exact.head  # the operators' run is the exact line, version for version


def test_the_canary_auc_is_one_for_separated_scores_and_a_half_for_scores_that_carry_nothing() -> None:
    from fedrec.divestment.evidence import canary_auc

    included = np.arange(200) % 2 == 0
    separated = canary_auc(np.where(included, 1.0, 0.0) + np.linspace(0, 0.1, 200), included)
    assert separated.auc == 1.0 and (separated.included, separated.excluded) == (100, 100)
    noise = canary_auc(np.random.default_rng(3).normal(size=200), included)
    assert noise.low < 0.5 < noise.high and noise.high - noise.low < 0.35
    with pytest.raises(ValueError, match="both included and excluded"):
        canary_auc(np.zeros(4), np.ones(4, bool))


def test_canaries_planted_in_the_region_are_known_before_and_gone_after_exact_divestment(tmp_path: Path) -> None:
    from fedrec.config import experiment_from_dict
    from fedrec.divestment.evidence import canary_test
    from fedrec.experiment import run_experiment
    from fedrec.privacy_audit import CanaryPlan, plant_canaries
    from fedrec.settings import load_run_config

    planted: dict[str, Any] = {}

    def plant(data: Any) -> Any:
        data, planted["c"] = plant_canaries(data, CanaryPlan(region="eu", canaries=80, seed=1))
        return data

    cfg = experiment_from_dict({"dataset": {"name": "synthetic", "n_users": 300, "n_items": 60, "region_only_items": 3,
                                            "region_sizes": [2.0, 1.0, 1.0]}, "model": {"dim": 6},
                                "federation": {"rounds": 3}, "bounds": [], "baselines": []})
    results = run_experiment(cfg, tmp_path / "run", log=lambda *_: None, engine=run_in_process, transform=plant)
    settings = load_run_config(tmp_path / "run")
    exact = divest(settings, ["eu"], method="exact", out_dir=tmp_path / "exact", engine=run_in_process)
    registry = ModelRegistry(tmp_path / "run" / "registry", create=False)
    c = planted["c"]
    test = canary_test({"before": registry.load(line_head(settings))[0], "exact": registry.load(exact.head)[0]},
                       c.items, c.included, results["dataset"]["n_items"])
    before, after = test["auc"]["before"], test["auc"]["exact"]
    assert before["low"] > 0.7 or before["high"] < 0.3  # the trained model tells planted canaries from the others
    assert after["low"] < 0.5 < after["high"]  # the rebuilt line cannot: they look like items it never trained on
