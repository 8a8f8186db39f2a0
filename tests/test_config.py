"""Hydra composition of every experiment and group option into the typed config, and the Flower run config."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedrec.config import ExperimentConfig, experiment_from_dict
from fedrec.data.registry import load_dataset
from fedrec.data.synthetic import DEFAULT_REGION_NAMES, SyntheticWorldConfig
from fedrec.errors import ConfigError
from fedrec.settings import RunSettings
from fedrec.silo.regime import Regimes

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def composed(overrides: list[str]) -> dict[str, Any]:
    """Hydra's composed config as a plain dict, without the keys the CLI drops before typing it."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return {k: v for k, v in resolved.items() if k not in ("progress", "experiment", "hydra")}


def typed(overrides: list[str]) -> ExperimentConfig:
    return experiment_from_dict(composed(overrides))


# --- experiments ----------------------------------------------------------------------------------------------

EXPERIMENT_FILES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def check_quick(exp: ExperimentConfig) -> None:
    assert exp.federation.rounds == 8
    assert exp.dataset.name == "synthetic"
    assert exp.dataset.params["region_sizes"] == [5.0, 2.0, 1.0]
    assert (exp.dataset.params["n_users"], exp.dataset.params["n_items"]) == (1200, 300)
    assert exp.model.dim == 16
    assert exp.total_epochs == 8


def check_ml100k(exp: ExperimentConfig) -> None:
    assert exp.dataset.name == "movielens"
    assert exp.dataset.params["variant"] == "100k"
    assert exp.federation.rounds == 45
    train = (exp.train.loss, exp.train.batch_size, exp.train.weight_decay, exp.model.dim)
    assert train == ("full_softmax", 64, 0.03, 64)


def check_compare_strategies(exp: ExperimentConfig) -> None:
    assert exp.strategy.name == "fedavgm"
    assert exp.strategy.server_momentum == 0.9
    assert exp.federation.rounds == 20


def check_synthetic_large(exp: ExperimentConfig) -> None:
    assert exp.dataset.name == "synthetic"
    assert exp.dataset.params["n_users"] == 40000
    assert exp.dataset.params["n_items"] == 4000
    assert exp.dataset.params["region_only_items"] == 200
    assert len(exp.dataset.params["region_sizes"]) == 5


def check_synthetic_dp(exp: ExperimentConfig) -> None:
    assert (exp.dataset.params["n_users"], tuple(exp.dataset.params["region_sizes"])) == (30000, (1.0, 1.0, 1.0))
    assert (exp.federation.rounds, exp.train.weight_decay) == (10, 0.001)


def check_ease(exp: ExperimentConfig) -> None:
    assert (exp.model.name, exp.model.kwargs, exp.federation.rounds) == ("ease", {"lam": 300}, 1)
    assert exp.dataset.name == "synthetic"


def check_distinct_region(exp: ExperimentConfig) -> None:
    assert tuple(exp.dataset.params["region_shift_scale"]) == (1.0, 1.0, 1.0, 4.0)
    assert (exp.dataset.params["n_users"], exp.federation.rounds, exp.adoption) == (8000, 10, {})


def check_sovereign_dp(exp: ExperimentConfig) -> None:
    d = exp.dataset.params
    assert (exp.dataset.name, d["n_users"], d["n_items"], d["region_only_items"]) == ("synthetic", 79000, 5000, 100)
    assert tuple(d["region_sizes"]) == (50.0, 14.0, 6.0, 4.0, 3.0, 2.0)
    assert (d["mean_interactions"], d["min_interactions"], d["item_features"]) == (15.0, 5, 32)
    assert (d["dim"], d["region_shift"], d["taste_temperature"]) == (32, 0.2, 3.0)
    assert exp.federation.eval_every == 5


def check_sovereign_dp_ials(exp: ExperimentConfig) -> None:
    assert exp.dataset.params["n_users"] == 79000 and exp.dataset.params["item_features"] == 32  # the same world
    assert (exp.model.name, exp.model.dim, exp.model.kwargs) == (
        "ials", 32, {"alpha0": 0.01, "lam": 0.01, "nu": 1.0, "init": "features"})
    assert (exp.federation.rounds, exp.federation.eval_every) == (3, 3)
    assert exp.adoption == {"default": {"adopt": "adapt", "adapt_rounds": 8}}


def check_study(exp: ExperimentConfig) -> None:
    """A study changes only its baselines; its sweep is in hydra.sweeper.params (`test_studies.py`)."""
    assert exp.baselines == ("ease", "popularity") and exp.dataset.name == "synthetic"
    assert (exp.strategy.name, exp.model.name, exp.federation.rounds) == ("fedavg", "mf", 20)


def check_study_tune(exp: ExperimentConfig) -> None:
    """The quick world, tuned by the Optuna sweeper (its search space: `test_tuning.py`)."""
    check_quick(exp)
    assert (exp.bounds, exp.baselines) == (("local_only",), ("popularity",))


def check_coalitions(exp: ExperimentConfig) -> None:
    """The quick world, as two coalition lines."""
    check_quick(dataclasses.replace(exp, federation=dataclasses.replace(exp.federation, coalitions={})))
    assert exp.federation.coalitions == {"atlantic": ["eu", "na"], "pacific": ["na", "apac"]}


EXPERIMENT_CHECKS = {"quick": check_quick, "coalitions": check_coalitions, "ml100k": check_ml100k,
                     "compare_strategies": check_compare_strategies,
                     "synthetic_large": check_synthetic_large, "synthetic_dp": check_synthetic_dp,
                     "sovereign_dp": check_sovereign_dp, "sovereign_dp_ials": check_sovereign_dp_ials,
                     "distinct_region": check_distinct_region, "ease": check_ease,
                     "study_heterogeneity": check_study, "study_silo_size": check_study,
                     "study_strategies": check_study, "study_tune": check_study_tune}


def test_adoption_policies_compose_per_region_into_the_run_config() -> None:
    # Execute
    exp = typed(["+adoption.eu.fork=3", "+adoption.eu.contribute=false", "+adoption.default.adopt=if_better"])
    s = RunSettings.from_experiment(exp, data_dir="d", output_dir="o", n_regions=3)

    # Assert: eu forks, every other region falls back to `default`
    assert exp.adoption == {"eu": {"fork": 3, "contribute": False}, "default": {"adopt": "if_better"}}
    assert (s.policy_for("eu").kind, s.policy_for("eu").from_round, s.policy_for("eu").contribute) == ("fork", 3, False)
    assert s.policy_for("na").kind == "if_better"
    assert RunSettings().policy_for("na").kind == "always"


def test_adapt_for_every_region_at_once_with_its_defaults_from_one_place() -> None:
    from fedrec.adoption_policy import AdoptionPolicy

    exp = typed(["+adoption.default.adopt=adapt", "+adoption.eu.adopt=adapt", "+adoption.eu.mu=[10,0,1]",
                 "+adoption.eu.adapt_rounds=3"])
    s = RunSettings.from_experiment(exp, data_dir="d", output_dir="o", n_regions=3)
    na, eu = s.policy_for("na"), s.policy_for("eu")
    assert (na.kind, na.metric, na.margin) == ("adapt", "ndcg@20", 0.0)
    assert (na.adapt_rounds, na.mu, na.confidence) == (1, (0.0, 1.0, 10.0, 100.0), 0.95)
    assert (na.adapt_rounds, na.mu, na.confidence) == (AdoptionPolicy.adapt_rounds, AdoptionPolicy.mu,
                                                       AdoptionPolicy.confidence)
    assert (eu.kind, eu.adapt_rounds, eu.mu) == ("adapt", 3, (0.0, 1.0, 10.0))
    plain = typed(["+adoption.default.adopt=adapt", "+adoption.default.confidence=0"])
    plain_s = RunSettings.from_experiment(plain, data_dir="d", output_dir="o", n_regions=3)
    assert plain_s.policy_for("eu").confidence == 0


@pytest.mark.parametrize(("overrides", "match"), [
    (["+adoption.eu.adopt=sometimes"], "adoption.eu.adopt='sometimes'"),
    (["+adoption.eu.pin=abc", "+adoption.eu.fork=2"], "exactly one"),
    (["+adoption.eu=always"], "adoption.eu must be a policy"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.mu=[0,-1]"], r"adoption\.eu\.mu=\[0, -1\] is invalid \(-1\): give a"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.mu=[]"], r"adoption\.eu\.mu=\[\] is invalid: give a list"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.mu=[inf]"], r"mu=\[inf\] is invalid \(inf\).*μ=∞, is always"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.adapt_rounds=0"], r"adoption\.eu\.adapt_rounds=0 is invalid: a whole"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.adapt_rounds=1.5"], r"adoption\.eu\.adapt_rounds=1\.5 is invalid"),
    (["+adoption.eu.adopt=if_better", "+adoption.eu.mu=[1]"],
     r"\['mu'\] apply to adopt: adapt only; remove them or set adoption\.eu\.adopt=adapt"),
    (["+adoption.eu.fork=2", "+adoption.eu.adapt_rounds=2"], r"\['adapt_rounds'\] apply to adopt: adapt only"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.contribute=false"], r"use adoption\.eu\.fork=0 with contribute: false"),
    (["+adoption.eu.adopt=always", "+adoption.eu.contribute=false"],
     r"adopt: always with contribute: false is not a policy.*use adoption\.eu\.fork=0 with contribute: false"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.confidence=1"], r"adoption\.eu\.confidence=1 is invalid: a probab"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.confidence=0.3"], r"confidence=0\.3 is invalid.*or 0 for the plain"),
    (["+adoption.eu.adopt=adapt", "+adoption.eu.confidence=sure"], r"confidence='sure' is invalid"),
    (["+adoption.eu.adopt=always", "+adoption.eu.confidence=0.9"], r"\['confidence'\] apply to adopt: adapt only"),
    (["+adoption.eu.adopt=adopt"], r"adoption\.eu\.adopt='adopt': choose always, if_better or adapt"),
])
def test_bad_adoption_policies_fail_at_config_time_naming_the_region(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        typed(overrides)


def test_per_region_settings_must_name_regions_of_the_world() -> None:
    exp = typed(["+adoption.atlantis.fork=1"])
    with pytest.raises(ConfigError, match=r"adoption names unknown region\(s\) \['atlantis'\]"):
        exp.check_regions(("eu", "na"))
    with pytest.raises(ConfigError, match=r"privacy\.region_epsilon names unknown"):
        typed(["privacy=user_dp", "+privacy.region_epsilon.mars=2"]).check_regions(("eu", "na"))


def test_every_experiment_file_has_expectations() -> None:
    assert sorted(EXPERIMENT_CHECKS) == EXPERIMENT_FILES


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_composes_into_the_typed_config(name: str) -> None:
    # Execute
    exp = typed([f"experiment={name}"])

    # Assert: the experiment's own values, and everything it does not override left at the defaults
    EXPERIMENT_CHECKS[name](exp)
    assert exp.privacy.name == "none"
    assert exp.train.epochs == exp.federation.local_epochs
    assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
    if exp.dataset.name == "synthetic":  # the world's parameters are valid (checked without generating it)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in exp.dataset.params.items()}
        assert len(SyntheticWorldConfig(**params).names) == len(params["region_sizes"])


# --- every option of every group ------------------------------------------------------------------------------

GROUP_OPTIONS: dict[tuple[str, str], Any] = {
    ("dataset", "synthetic"): lambda e: (e.dataset.name, e.dataset.params["n_users"]) == ("synthetic", 6000),
    ("dataset", "movielens100k"): lambda e: (e.dataset.name, e.dataset.params["variant"]) == ("movielens", "100k"),
    ("dataset", "movielens1m"): lambda e: (e.dataset.name, e.dataset.params["variant"]) == ("movielens", "1m"),
    ("dataset", "file"): lambda e: e.dataset.name == "file" and e.dataset.params["path"] is None,
    ("model", "mf"): lambda e: (e.model.name, e.model.dim, e.model.kwargs) == ("mf", 32, {}),
    ("model", "twotower"): lambda e: (e.model.name, e.model.kwargs) == ("twotower", {"hidden": 64}),
    ("model", "ease"): lambda e: (e.model.name, e.model.kwargs, e.federation.rounds) == ("ease", {"lam": 300}, 20),
    ("model", "ials"): lambda e: (e.model.name, e.model.dim, sorted(e.model.kwargs)) == (
        "ials", 64, ["alpha0", "init", "lam", "nu"]),
    ("strategy", "fedavg"): lambda e: (e.strategy.name, e.strategy.server_momentum) == ("fedavg", 0.0),
    ("strategy", "fedavgm"): lambda e: (e.strategy.name, e.strategy.server_momentum) == ("fedavgm", 0.9),
    ("strategy", "fedadam"): lambda e: (e.strategy.name, e.strategy.server_lr) == ("fedadam", 0.01),
    ("split", "temporal"): lambda e: e.split.method == "temporal_ratio",
    ("split", "leave_last_out"): lambda e: e.split.method == "leave_last_out",
    ("privacy", "none"): lambda e: e.privacy.name == "none",
    ("privacy", "user_dp"): lambda e: (e.privacy.name, e.privacy.epsilon, e.privacy.delta) == ("user_dp", 8.0, 1e-6),
    ("train", "default"): lambda e: (e.train.loss, e.train.batch_size) == ("softmax", 512),
    ("federation", "default"): lambda e: (e.federation.rounds, e.federation.weighting) == (20, "uniform"),
    ("regime", "none"): lambda e: e.regime == {},
    ("regime", "sovereign"): lambda e: _sovereign_holds(Regimes.parse(e.regime)),
}


def _sovereign_holds(regimes: Regimes) -> bool:
    """conf/regime/sovereign.yaml is a valid regime for the default synthetic world, every region with a policy."""
    regimes.check_regions(DEFAULT_REGION_NAMES[:5])
    return all(regimes.entry_for(r).get("partners") is not None for r in DEFAULT_REGION_NAMES[:5])


def test_every_group_option_on_disk_is_covered() -> None:
    on_disk = {(p.parent.name, p.stem) for p in CONF.glob("*/*.yaml") if p.parent.name != "experiment"}
    assert on_disk == set(GROUP_OPTIONS)


@pytest.mark.parametrize(("group", "option"), sorted(GROUP_OPTIONS))
def test_group_option_composes_into_the_typed_config(group: str, option: str) -> None:
    # Execute
    exp = typed([f"{group}={option}"])

    # Assert
    assert GROUP_OPTIONS[(group, option)](exp)


def test_run_settings_carry_the_experiment() -> None:
    # Prepare
    exp = typed(["experiment=compare_strategies", "model=twotower", "federation.local_epochs=3"])

    # Execute
    s = RunSettings.from_experiment(exp, data_dir="/d", output_dir="/o", n_regions=5)

    # Assert
    assert (s.data_dir, s.output_dir, s.min_nodes) == ("/d", "/o", 5)
    assert (s.strategy, s.server_momentum, s.model) == ("fedavgm", 0.9, "twotower")
    assert json.loads(s.model_kwargs) == {"hidden": 64}
    assert s.local_epochs == exp.train.epochs == 3
    assert s.model_spec == exp.model


# --- mistakes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["split", "model", "train", "federation", "strategy", "privacy"])
def test_unknown_key_in_a_group_is_a_config_error_naming_both(group: str) -> None:
    # Prepare
    cfg = composed([f"+{group}.bogus_key=1"])

    # Execute / Assert
    with pytest.raises(ConfigError, match=rf"'bogus_key'.*group '{group}'"):
        experiment_from_dict(cfg)


def test_unknown_synthetic_dataset_key_is_a_config_error_naming_it() -> None:
    # Prepare
    exp = typed(["+dataset.bogus_key=1"])

    # Execute / Assert: rejected by the loader before any world is generated
    with pytest.raises(ConfigError, match=r"dataset=synthetic.*bogus_key"):
        load_dataset(exp.dataset.name, exp.dataset.params)


@pytest.mark.parametrize(("option", "extra"), [
    ("movielens100k", ["dataset.path=/nonexistent", "+dataset.pathh=/data/ml-100k"]),
    ("file", ["dataset.path=/nonexistent.csv", "+dataset.item_public=true"]),
])
def test_unknown_dataset_key_is_a_config_error_for_every_loader(option: str, extra: list[str]) -> None:
    # Prepare (paths that do not exist, so nothing is downloaded or read)
    exp = typed([f"dataset={option}", *extra])
    key = extra[1].split("=")[0].removeprefix("+dataset.")

    # Execute / Assert
    with pytest.raises(ConfigError, match=key):
        load_dataset(exp.dataset.name, exp.dataset.params)


@pytest.mark.parametrize("override", ["federation.rounds=0", "federation.weighting=nope", "strategy.name=nope",
                                      "model.name=nope"])
def test_bad_values_fail_when_the_config_is_typed(override: str) -> None:
    # Prepare
    cfg = composed([override])

    # Execute / Assert
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        experiment_from_dict(cfg)


@pytest.mark.parametrize(("overrides", "match"), [
    (["privacy.epsilon=0"], r"privacy\.epsilon=0"),
    (["privacy.sample_rate=2"], r"privacy\.sample_rate=2"),
    (["privacy.accountant=moments"], r"privacy\.accountant='moments'"),
    (["privacy.delta=0"], r"privacy\.delta=0"),
    (["+privacy.region_epsilon.eu=-1"], r"region_epsilon\.eu"),
])
def test_bad_privacy_values_fail_naming_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        typed(["privacy=user_dp", *overrides])


def test_dp_runs_refuse_side_channels_in_the_run_settings() -> None:
    # Example-count weights would send each silo's size un-noised
    exp = typed(["privacy=user_dp", "federation.weighting=examples"])
    with pytest.raises(ConfigError, match="weighting='examples'"):
        RunSettings.from_experiment(exp, data_dir="/d", output_dir="/o", n_regions=5)


def test_dp_refuses_a_loss_it_does_not_implement_before_training() -> None:
    # experiment=ml100k trains with the full softmax; the DP step implements sampled softmax only
    exp = typed(["experiment=ml100k", "privacy=user_dp"])
    with pytest.raises(ConfigError, match=r"train\.loss='full_softmax' is not supported under privacy=user_dp.*"
                                          r"implements softmax only"):
        RunSettings.from_experiment(exp, data_dir="/d", output_dir="/o", n_regions=11)
    ok = typed(["experiment=ml100k", "privacy=user_dp", "train.loss=softmax"])
    assert RunSettings.from_experiment(ok, data_dir="/d", output_dir="/o", n_regions=11).loss == "softmax"


def test_dp_settings_reach_the_flower_run_config() -> None:
    # Prepare
    exp = typed(["privacy=user_dp", "privacy.epsilon=4", "+privacy.region_epsilon.eu=2", "privacy.clip_norm=0.5"])

    # Execute
    s = RunSettings.from_experiment(exp, data_dir="/d", output_dir="/o", n_regions=5)
    back = RunSettings.from_run_config(s.to_run_config())

    # Assert: per-region budgets, the model unchanged on every party, everything survives Flower's config
    p = back.privacy_settings()
    assert (p.enabled, p.budget_for("eu"), p.budget_for("na"), p.clip_norm) == (True, 2.0, 4.0, 0.5)
    assert p.budget_for("na", node_budget=1.0) == 1.0  # a jurisdiction can only lower its budget
    assert back.model_spec == exp.model  # silo-wide parameters (private item bias) stay, trained under DP
    assert back == s


def test_bad_split_value_fails_when_the_config_is_typed() -> None:
    with pytest.raises(ConfigError, match=r"split\.test_fraction=2"):
        typed(["split.test_fraction=2"])


# --- the Flower run config ------------------------------------------------------------------------------------


def test_run_settings_roundtrip_through_the_run_config() -> None:
    # Prepare
    default = RunSettings()
    custom = RunSettings(data_dir="/w", num_rounds=3, model="twotower", model_kwargs='{"hidden": 8}', lr=0.5,
                         weighting="examples", strategy="fedadam", seed=7)

    # Execute / Assert
    assert RunSettings.from_run_config(default.to_run_config()) == default
    assert RunSettings.from_run_config(custom.to_run_config()) == custom
    assert set(default.to_run_config()) == {f.name.replace("_", "-") for f in fields(RunSettings)}


def test_pyproject_run_config_is_accepted_and_complete() -> None:
    # Prepare
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    # Execute
    s = RunSettings.from_run_config(table)

    # Assert: exactly the dataclass' keys, and every value read as given
    assert set(table) == set(RunSettings().to_run_config())
    assert s.to_run_config() == table


@pytest.mark.parametrize(("run_config", "key"), [
    ({"num-round": 3}, "num-round"),
    ({"num-rounds": "abc"}, "num-rounds"),
    ({"lr": "fast"}, "lr"),
    ({"dim": None}, "dim"),
    ({"strategy": "fedsgd"}, "strategy"),
    ({"weighting": "by-size"}, "weighting"),
    ({"fraction-train": 0.0}, "fraction_train"),
    ({"model-kwargs": "[1, 2]"}, "model-kwargs"),
    ({"model-kwargs": "{"}, "model-kwargs"),
    ({"loss": "hinge"}, "loss"),
])
def test_bad_run_config_is_a_config_error_naming_the_key(run_config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RunSettings.from_run_config(run_config)


@pytest.mark.parametrize(("run_config", "key"), [
    ({"resume": "maybe"}, "resume"),
    ({"num-rounds": 2.5}, "num-rounds"),
    ({"model": "nope"}, "model"),
])
def test_run_config_values_of_the_wrong_type_are_rejected(run_config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RunSettings.from_run_config(run_config)


def test_run_config_boolean_strings_mean_what_they_say() -> None:
    # A TOML string "false" (e.g. from --run-config 'resume="false"') must not become True.
    assert RunSettings.from_run_config({"resume": "false"}).resume is False
    assert RunSettings.from_run_config({"resume": "true", "run-name": "r"}).resume is True
    with pytest.raises(ConfigError, match="it did nothing"):
        RunSettings.from_run_config({"quiet": True})


def test_a_jurisdictions_node_config_policy_overrides_the_run_config(tmp_path: Path) -> None:
    from fedrec.silo.policy import SiloIdentity

    # Prepare: a silo file where the node config says; the run config would have eu follow `always`
    (tmp_path / "eu.npz").write_bytes(b"")
    s = RunSettings(adoption=json.dumps({"default": {"adopt": "always"}}))
    base = {"region": "eu", "data-path": str(tmp_path / "eu.npz")}

    # Execute / Assert
    own = SiloIdentity.from_node_config({**base, "fork": 2, "contribute": False}, s)
    assert (own.policy.kind, own.policy.from_round, own.policy.contribute) == ("fork", 2, False)
    assert SiloIdentity.from_node_config(base, s).policy.kind == "always"
    with pytest.raises(ConfigError, match=r"node config: adoption\.eu\.contribute=.false."):
        SiloIdentity.from_node_config({**base, "adopt": "always", "contribute": "false"}, s)
    adapt = SiloIdentity.from_node_config({**base, "adopt": "adapt", "adapt-mu": "0, 5", "adapt-rounds": 2}, s)
    assert (adapt.policy.kind, adapt.policy.mu, adapt.policy.adapt_rounds) == ("adapt", (0.0, 5.0), 2)
    sure = SiloIdentity.from_node_config({**base, "adopt": "adapt", "adapt-confidence": "0.99"}, s)
    assert sure.policy.confidence == 0.99
    with pytest.raises(ConfigError, match=r"node config: adoption\.eu\.mu='0,x' is invalid \('x'\)"):
        SiloIdentity.from_node_config({**base, "adopt": "adapt", "adapt-mu": "0,x"}, s)


@pytest.mark.parametrize(("override", "reason"), [
    ("+split.strategy=leave_last_out", "split.strategy is now split.method"),
    ("+privacy.noise=seeded", "privacy.noise is gone"),
])
def test_a_retired_key_is_refused_with_what_replaced_it(override: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        experiment_from_dict(composed([override]))
