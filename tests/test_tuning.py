"""What a tuning study selects on: the federated model's VALIDATION metric, kept in each silo's own log.

- every silo evaluates the run's last version on its validation users too and logs it (never sent); results.json
  pools the logs into a `validation` block, which is exactly the validation split's evaluation of the final model
  (checked against a direct evaluation) and not the test split's;
- `fedrec` returns that block's `objective` metric to a Hydra sweeper (the Optuna sweeper optimizes it), checks the
  metric before running, and a run without the block returns NaN (a failed trial, not a test-set number);
- under DP nothing of it is sent either: the silos' replies carry no metrics, the validation block still exists.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fakegrid import run_in_process
from omegaconf import OmegaConf

from fedrec.commands.run import compose_experiment, conf_dir, objective, objective_metric
from fedrec.config import experiment_from_dict
from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.evaluation import pool
from fedrec.experiment import run_experiment
from fedrec.model_io import load_global_model
from fedrec.silo.evaluation_log import read_evaluations
from fedrec.silo.round import evaluate_round

DATASET = {"name": "synthetic", "n_users": 150, "n_items": 40, "region_only_items": 2, "region_sizes": [2.0, 1.0]}


def experiment(tmp: Path, **over: object) -> dict:
    raw = {"dataset": DATASET, "federation": {"rounds": 2}, "bounds": [], "baselines": [], **over}
    return run_experiment(experiment_from_dict(raw), tmp, log=lambda *_: None, engine=run_in_process)


def test_the_validation_block_is_the_final_models_evaluation_on_validation_users(tmp_path: Path) -> None:
    results = experiment(tmp_path, model={"name": "ease"}, federation={"rounds": 1})
    valid = results["validation"]["federated"]
    assert results["validation"]["round"] == results["rounds"][-1]["round"] == 1
    assert sorted(valid["per_region"]) == sorted(results["final"]["federated"]["per_region"])
    assert valid["overall"] != results["final"]["federated"]["overall"]  # not the test split's numbers

    # EASE's users hold no state: the final global model alone scores a silo's validation users
    arrays, spec, _ = load_global_model(tmp_path / "global_model.safetensors")
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "ease"}})
    direct = {}
    for region in valid["per_region"]:
        silo = SiloData.load(tmp_path / "world" / f"silo_{region}.npz")
        direct[region] = evaluate_round(silo, spec, arrays, None, cfg.train, seed=0, split="valid")
    per_region, overall = pool(direct)
    assert all(per_region[r] == pytest.approx(valid["per_region"][r]) for r in per_region)
    assert overall == pytest.approx(valid["overall"])
    assert objective(results, "ndcg@20") == valid["overall"]["ndcg@20"]


def test_every_silo_logs_the_last_rounds_validation_metrics_and_no_earlier_round_without_a_review(
        tmp_path: Path) -> None:
    results = experiment(tmp_path)
    root = tmp_path / "silo-state"
    run_id = next(p.stem.removeprefix("run-") for p in (root / "eu" / "evaluations").glob("run-*.jsonl"))
    logs = {r: read_evaluations(root / r, run_id) for r in ("eu", "na")}
    assert all([e.round for e in log] == [1, 2] for log in logs.values())
    assert all(log[0].valid is None and log[1].valid is not None for log in logs.values())  # adopt: always
    per_region, overall = pool({r: log[1].valid for r, log in logs.items()})  # type: ignore[misc]
    assert results["validation"]["federated"] == {"overall": overall, "per_region": per_region}


def test_under_dp_the_replies_carry_no_metrics_and_the_validation_block_still_comes_from_the_silos(
        tmp_path: Path) -> None:
    results = experiment(tmp_path, privacy={"name": "user_dp", "epsilon": 8.0})
    assert results["rounds"][-1]["metrics_source"] == "silo logs"
    assert 0 < objective(results, "recall@20") <= 1


def test_a_run_without_a_validation_block_is_a_failed_trial_not_a_number(tmp_path: Path) -> None:
    assert math.isnan(objective({"final": {"federated": {"overall": {"ndcg@20": 0.5}}}}, "ndcg@20"))


def test_the_objective_metric_is_checked_before_anything_runs() -> None:
    assert objective_metric(OmegaConf.create({"objective": "recall@20"})) == "recall@20"
    with pytest.raises(ConfigError, match="objective='auc' is not a metric fedrec computes"):
        objective_metric(OmegaConf.create({"objective": "auc"}))
    # the shipped default, from conf/config.yaml (its one source of truth)
    assert OmegaConf.load(Path(conf_dir()) / "config.yaml").objective == "ndcg@20"
    assert compose_experiment(["objective=hr@10"]).seed == 0  # a top-level key the experiment itself ignores


def test_the_tuning_studys_search_space_is_optunas_and_every_sampled_trial_composes() -> None:
    optuna = pytest.importorskip("optuna")
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=["experiment=study_tune"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert (sweeper.direction, sweeper.n_jobs, sweeper.sampler.seed) == ("maximize", 1, 0)
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert fixed == {} and sorted(distributions) == ["federation.local_epochs", "strategy.server_lr", "train.lr",
                                                     "train.weight_decay"]
    for key, (low, high) in {"train.lr": (0.002, 0.1), "train.weight_decay": (1e-6, 1e-2)}.items():
        d = distributions[key]  # sampled on a log scale (optuna 2: LogUniformDistribution)
        assert (d.low, d.high) == (low, high) and (getattr(d, "log", False) or "LogUniform" in type(d).__name__)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(4):  # what the sweeper does for each trial: sample, then run `fedrec` with the overrides
        trial = study.ask(distributions)
        exp = compose_experiment(["experiment=study_tune", *(f"{k}={v}" for k, v in trial.params.items())])
        assert exp.train.lr == pytest.approx(trial.params["train.lr"])
        assert exp.train.weight_decay == pytest.approx(trial.params["train.weight_decay"])
        assert exp.strategy.server_lr == pytest.approx(trial.params["strategy.server_lr"])
        assert exp.federation.local_epochs == trial.params["federation.local_epochs"] in (1, 2, 3)
        study.tell(trial, 0.0)


@pytest.mark.slow
def test_the_tuning_notebook_runs_a_real_optuna_sweep_that_picks_the_best_validation_trial(
        this_interpreter_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FEDREC_TINY=1: the notebook runs `fedrec -m experiment=study_tune` (Hydra's Optuna sweeper, Flower's
    simulation engine) with 3 trials; the sweeper's pick is the trial with the best VALIDATION objective, and the
    notebook shows every trial's own numbers."""
    import json

    import nbformat
    import yaml

    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("FEDREC_TINY", "1")
    monkeypatch.setenv("FEDREC_SWEEP", str(sweep))
    notebooks = Path(conf_dir()).resolve().parent / "notebooks"
    nb = nbformat.read(notebooks / "study_tune.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name=this_interpreter_kernel,
                            resources={"metadata": {"path": str(notebooks)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 3
    trials = []
    for run in runs:
        record = yaml.safe_load((run.parent / ".hydra" / "overrides.yaml").read_text())  # Hydra's own record
        overrides = dict(o.split("=", 1) for o in record)
        params = {k: float(v) if "." in v or "e" in v else int(v) for k, v in overrides.items()
                  if k in ("train.lr", "strategy.server_lr", "federation.local_epochs", "train.weight_decay")}
        results = json.loads(run.read_text())
        assert results["config"]["train"]["lr"] == pytest.approx(params["train.lr"])  # the trial ran its sample
        trials.append((objective(results, "ndcg@20"), params, results["final"]["federated"]["overall"]["ndcg@20"]))
    assert len({json.dumps(p, sort_keys=True) for _, p, _ in trials}) == 3  # the sampler proposed 3 settings
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    value, params, _ = max(trials, key=lambda t: t[0])
    assert best["best_value"] == pytest.approx(value)  # chosen on validation...
    assert {k: pytest.approx(v) for k, v in params.items()} == best["best_params"]
    shown = "".join(o.data.get("text/html", "") for o in outputs if o.output_type in ("display_data", "execute_result"))
    for valid, _, test in trials:  # ...and every trial's validation and test figures are in the notebook's table
        assert f"{valid:.4f}".rstrip("0") in shown and f"{test:.4f}".rstrip("0") in shown
    assert sum("image/png" in o.data for o in outputs if o.output_type == "display_data") == 1


def test_a_tuning_study_without_the_optuna_plugin_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import sys

    from fedrec.commands import main as entry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == entry.OPTUNA_PLUGIN
                        else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["fedrec", "-m", "experiment=study_tune"])
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 2
    assert 'pip install -e ".[tune]"' in capsys.readouterr().err
    assert entry.missing_tuning_plugin(["experiment=quick"]) is None  # other runs never need it
