"""The baselines in a whole experiment: results.json, the end-of-run table, chosen on validation only.

One small run on the in-process grid (the real ServerApp and ClientApps, no Ray).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakegrid import run_in_process
from rich.console import Console

from fedrec.config import experiment_from_dict
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.report import print_summary

BASE = {
    "dataset": {"name": "synthetic", "n_users": 500, "n_items": 150, "region_only_items": 8,
                "region_sizes": [2.0, 1.0, 1.0], "seed": 3},
    "federation": {"rounds": 2, "local_epochs": 1},
    "model": {"name": "mf", "dim": 8},
    "bounds": [],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("baselines")
    res = run_experiment(experiment_from_dict(BASE), out, log=lambda *_: None, engine=run_in_process)
    return res, out


def valid_score(facts: dict, name: str, region: str | None) -> float:
    choice = facts[name]["centralized"] if region is None else facts[name]["local_only"][region]
    return choice["valid_ndcg@20"][str(choice["value"])]


def test_every_baseline_is_reported_pooled_and_local_on_every_region(run) -> None:
    res, out = run
    regions = sorted(res["final"]["federated"]["per_region"])
    for name in ("ease", "itemknn", "popularity"):
        for side in ("centralized", "local_only"):
            block = res["final"]["baselines"][name][side]
            assert sorted(block["per_region"]) == regions and 0.0 < block["overall"]["ndcg@20"] <= 1.0
    assert json.loads((out / "results.json").read_text())["final"]["baselines"] == res["final"]["baselines"]


def test_local_popularity_is_the_popularity_bound(run) -> None:
    res, _ = run
    ours, bound = res["final"]["baselines"]["popularity"]["local_only"], res["final"]["popularity"]
    assert ours["overall"] == pytest.approx(bound["overall"])
    for region, metrics in bound["per_region"].items():
        assert ours["per_region"][region] == pytest.approx(metrics)


def test_each_region_s_best_local_baseline_is_picked_on_its_own_validation_users(run) -> None:
    res, _ = run
    facts, final = res["baselines"], res["final"]
    for region, name in facts["local_baseline"].items():
        scores = {n: valid_score(facts, n, region) for n in ("ease", "itemknn", "popularity")}
        assert scores[name] == max(scores.values())
        picked = final["baselines"][name]["local_only"]["per_region"][region]
        assert final["local_baseline"]["per_region"][region] == picked
    pooled = next(iter(facts["pooled_baseline"].values()))
    assert set(facts["pooled_baseline"].values()) == {pooled}
    names = ("ease", "itemknn", "popularity")
    assert valid_score(facts, pooled, None) == max(valid_score(facts, n, None) for n in names)
    assert final["pooled_baseline"] == final["baselines"][pooled]["centralized"]


def test_the_table_shows_the_baselines_and_what_was_chosen(run) -> None:
    res, _ = run
    console = Console(record=True, width=120)
    print_summary(res, console)
    text = console.export_text()
    assert "baseline" in text and "baselines chosen on validation: local " in text
    assert f"{res['final']['local_baseline']['overall']['ndcg@20']:.4f}" in text


def test_no_baselines_when_none_are_asked_for(tmp_path: Path) -> None:
    res = run_experiment(experiment_from_dict({**BASE, "baselines": [], "federation": {"rounds": 1}}), tmp_path,
                         log=lambda *_: None, engine=run_in_process)
    assert "baselines" not in res["final"] and "local_baseline" not in res["final"] and res["baselines"] == {}


def test_an_unknown_baseline_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="ease"):
        experiment_from_dict({**BASE, "baselines": ["slim"]})
