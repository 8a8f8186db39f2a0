"""`fedrec collect`: a sweep's runs in one tidy table, averaged over seeds, from real `results.json` files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fakegrid import run_in_process
from scipy import stats

from fedrec.collect import collect_sweep, summarize, write_collected
from fedrec.commands.collect import collect_main
from fedrec.config import experiment_from_dict
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment

DATASET = {"name": "synthetic", "n_users": 150, "n_items": 40, "region_only_items": 2, "region_sizes": [2.0, 1.0]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 x 2 sweep (model=mf,ease x seed=0,1) in Hydra's multirun layout, run on the in-process grid."""
    root = tmp_path_factory.mktemp("multirun")
    for job, (model, seed) in enumerate([(m, s) for m in ("mf", "ease") for s in (0, 1)]):
        out = root / str(job)
        cfg = experiment_from_dict({"dataset": {**DATASET, "seed": seed}, "seed": seed, "model": {"name": model},
                                    "federation": {"rounds": 1 if model == "ease" else 2},
                                    "baselines": ["popularity"]})
        run_experiment(cfg, out, log=lambda *_: None, engine=run_in_process)
        (out / ".hydra").mkdir()
        (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}"]))
    return root


def test_every_run_method_region_and_metric_is_a_row_with_its_overrides(sweep: Path) -> None:
    table = collect_sweep(sweep)
    assert list(table.columns) == ["run", "model", "seed", "method", "region", "metric", "value"]
    assert sorted(table["run"].unique()) == ["0", "1", "2", "3"]
    one = table[(table["run"] == "2") & (table["method"] == "federated") & (table["region"] == "overall")]
    assert set(one["model"]) == {"ease"} and set(one["seed"]) == {"0"}
    assert {"federated", "centralized", "local_only", "popularity", "baseline:popularity:pooled",
            "baseline:popularity:local_only"} <= set(table["method"])
    assert {"overall", "eu", "na"} == set(table["region"])
    assert {"ndcg@20", "recall@20", "hr@10", "ndcg@10"} <= set(table["metric"])
    # the federated model on validation users (what a tuning study selects on), each run's own numbers
    for run in ("0", "3"):
        want = json.loads((sweep / run / "results.json").read_text())["validation"]["federated"]["per_region"]
        got = table[(table["run"] == run) & (table["method"] == "valid:federated") & (table["region"] == "na")]
        assert dict(zip(got["metric"], got["value"], strict=True)) == want["na"]


def test_the_summary_is_the_mean_and_t_interval_over_seeds(sweep: Path) -> None:
    table = collect_sweep(sweep)
    summary = summarize(table)
    pick = (table["model"] == "mf") & (table["method"] == "federated") & (table["region"] == "overall") & (
        table["metric"] == "ndcg@20")
    values = table[pick]["value"].to_list()
    row = summary[(summary["model"] == "mf") & (summary["method"] == "federated") & (summary["region"] == "overall")
                  & (summary["metric"] == "ndcg@20")].iloc[0]
    mean, sd = sum(values) / 2, pd.Series(values).std()
    assert (row["seeds"], row["mean"]) == (2, pytest.approx(mean))
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * sd / math.sqrt(2))
    assert "seed" not in summary.columns and "run" not in summary.columns


def test_the_command_writes_the_tables_and_a_figure(sweep: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_main([str(sweep), "--out", str(tmp_path)]) == 0
    for name in ("collected.csv", "collected.parquet", "summary.csv", "sweep_ndcg_at_20_overall.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert pd.read_parquet(tmp_path / "collected.parquet").equals(pd.read_csv(tmp_path / "collected.csv",
                                                                             dtype={"seed": str, "run": str}))
    assert collect_main([str(sweep), "--out", str(tmp_path), "--metric", "auc"]) == 2
    assert "no auc for region 'overall'" in capsys.readouterr().err


def test_a_directory_without_runs_or_with_a_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        write_collected(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    with pytest.raises(ConfigError, match=r"no results\.json under"):
        collect_sweep(tmp_path)
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "results.json").write_text('{"final": ')
    with pytest.raises(ConfigError, match=r"7/results.json is not valid JSON"):
        write_collected(tmp_path)
