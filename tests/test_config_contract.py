"""One source of truth for every default: the typed config classes; `conf/` and pyproject.toml state the same.

`fedrec privacy=user_dp`, the notebook and `flwr run .` must run the same mechanism with the same
settings, so the YAML groups, the dataclasses and `[tool.flwr.app.config]` are held equal here, and the
flat run config is derived from the typed one (never maintained beside it).
"""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedrec.config import ExperimentConfig, FederationConfig, PrivacyConfig, StrategyConfig
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig
from fedrec.models import ModelSpec
from fedrec.models.registry import model_factory
from fedrec.settings import RunSettings
from fedrec.training import TrainConfig
from tests.test_config import typed

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# group, the option `conf/config.yaml` picks by default (or the one that states the class's values), the class,
# and fields the YAML may leave out (derived elsewhere)
GROUPS = [
    ("split", "temporal", SplitConfig, set()),
    ("model", "mf", ModelSpec, set()),
    ("train", "default", TrainConfig, {"epochs"}),  # epochs comes from federation.local_epochs
    ("federation", "default", FederationConfig, set()),
    ("strategy", "fedavg", StrategyConfig, set()),
    ("privacy", "user_dp", PrivacyConfig, set()),
]


def _yaml(group: str, option: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CONF / group / f"{option}.yaml").read_text()))


@pytest.mark.parametrize(("group", "option", "cls", "derived"), GROUPS, ids=[g[0] for g in GROUPS])
def test_each_config_group_states_exactly_the_dataclass_defaults(group: str, option: str, cls: type,
                                                                  derived: set[str]) -> None:
    stated = _yaml(group, option)
    defaults = asdict(cls())
    if group == "privacy":  # the option names the mechanism; every other value is the class's
        assert stated.pop("name") == "user_dp"
        defaults.pop("name")
    assert set(stated) == set(defaults) - derived, f"conf/{group}/{option}.yaml and {cls.__name__} list other keys"
    for key, value in stated.items():
        assert value == defaults[key], (f"conf/{group}/{option}.yaml says {key}={value!r}, "
                                        f"{cls.__name__} says {defaults[key]!r}")


def test_the_synthetic_dataset_group_states_exactly_the_world_defaults() -> None:
    stated = _yaml("dataset", "synthetic")
    assert stated.pop("name") == "synthetic"
    assert stated.pop("seed") == "${seed}"  # the experiment's seed; the class's default is 0
    defaults = {f.name: getattr(SyntheticWorldConfig(), f.name) for f in fields(SyntheticWorldConfig)
                if f.init and f.name != "seed"}
    assert set(stated) == set(defaults), "conf/dataset/synthetic.yaml and SyntheticWorldConfig list other keys"
    for key, value in stated.items():
        want = defaults[key]
        got = (tuple(value) if isinstance(value, list) else value) if value is not None else ()
        assert got == want, f"conf/dataset/synthetic.yaml says {key}={value!r}, SyntheticWorldConfig says {want!r}"


def test_the_default_composition_is_the_default_experiment() -> None:
    composed, default = typed([]), ExperimentConfig()
    for f in fields(ExperimentConfig):
        if f.name != "dataset":  # the dataset group carries its loader's own parameters
            assert getattr(composed, f.name) == getattr(default, f.name), f.name


def test_the_flower_app_config_in_pyproject_is_the_run_settings_defaults() -> None:
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert app == RunSettings().to_run_config()


def test_the_run_settings_defaults_derive_from_the_typed_defaults() -> None:
    assert RunSettings.from_experiment(ExperimentConfig(), data_dir="", output_dir="", n_regions=2) == RunSettings()


def test_user_dp_from_hydra_and_from_the_flat_run_config_are_one_mechanism() -> None:
    hydra = RunSettings.from_experiment(typed(["privacy=user_dp"]), data_dir="", output_dir="", n_regions=2)
    flat = RunSettings.from_run_config({**RunSettings().to_run_config(), "privacy": "user_dp"})
    assert hydra.privacy_settings() == flat.privacy_settings()


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_each_model_preset_states_its_class_s_defaults(option: str) -> None:
    stated = _yaml("model", option)
    params = inspect.signature(model_factory(stated["name"])).parameters
    for key, value in {**stated.get("kwargs", {}), **({"dim": stated["dim"]} if "dim" in stated else {})}.items():
        assert key in params, f"conf/model/{option}.yaml sets {key}, which {stated['name']} does not take"
        assert value == params[key].default, (f"conf/model/{option}.yaml says {key}={value!r}, the class's "
                                              f"default is {params[key].default!r}")
