"""`model=ease` as a model and a config: global B, local history, no SGD, and the runs it refuses (and why)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.baselines import ItemModel, silo_matrix
from fedrec.config import experiment_from_dict
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.models import ModelSpec, build_model, global_state, local_state
from fedrec.settings import RunSettings
from fedrec.silo.round import check_received
from fedrec.statistics import solve_silos, statistics_family
from fedrec.training import TrainConfig, assemble_model, refit_users, train_epochs
from fedrec.world import prepare_world
from tests.test_config import typed

EASE = ModelSpec(name="ease", kwargs={"lam": 50.0})
WORLD = SyntheticWorldConfig(n_users=120, n_items=40, region_only_items=2, region_sizes=(2.0, 1.0),
                             mean_interactions=10.0, min_interactions=5)


@pytest.fixture(scope="module")
def silo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))
    return world.silos[world.regions[0]]


def test_the_item_item_matrix_is_global_and_the_users_histories_are_local() -> None:
    model = build_model(EASE, n_users=7, n_items=5)
    assert set(global_state(model)) == {"item_item.weight"} and global_state(model)["item_item.weight"].shape == (5, 5)
    assert set(local_state(model)) == {"user.rows"} and local_state(model)["user.rows"].shape == (7, 5)
    assert not list(model.parameters())  # solved, never trained


def test_a_silo_model_scores_its_users_histories_times_b_as_the_baseline_does(silo) -> None:  # type: ignore[no-untyped-def]
    # Prepare: B from the silo's own statistics
    glob = solve_silos(EASE, [silo], n_items=silo.n_items, seed=0)

    # Execute
    model = assemble_model(EASE, silo, glob, None, seed=0)
    users = torch.arange(silo.n_users)

    # Assert: x_u · B with x_u the user's binary training row, as the baselines' item scorer
    expected = ItemModel(glob["item_item.weight"]).scorer(silo_matrix(silo))(users)
    torch.testing.assert_close(model.score_all(users), expected, rtol=0, atol=1e-6)
    items = torch.tensor([0, 3, 7])
    torch.testing.assert_close(model.score_matrix(users[:4], items), expected[:4][:, items], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.score_pairs(users[:3], items), expected[[0, 1, 2], [0, 3, 7]], rtol=0, atol=1e-6)
    pairs = model.score_pairs(users[:2], items.expand(2, 3))
    torch.testing.assert_close(pairs, expected[:2][:, items], rtol=0, atol=1e-6)


def test_sgd_refuses_ease_and_the_user_refit_has_nothing_to_do(silo) -> None:  # type: ignore[no-untyped-def]
    model = assemble_model(EASE, silo, solve_silos(EASE, [silo], n_items=silo.n_items, seed=0), None, seed=0)
    with pytest.raises(ConfigError, match="no trainable parameters: it is solved in closed form"):
        train_epochs(model, silo.train, n_items=silo.n_items, cfg=TrainConfig(), generator=torch.Generator())
    assert refit_users(model, silo, TrainConfig(refit_epochs=3), seed=0) is model


def test_lambda_must_be_positive_and_unknown_arguments_are_refused() -> None:
    for bad in ("0", "-1.0", "abc"):
        with pytest.raises(ConfigError, match="λ must be a number > 0"):
            typed(["model=ease", f"model.kwargs.lam={bad}"])
    with pytest.raises(ConfigError, match="rejected its arguments"):
        typed(["model=ease", "+model.kwargs.hidden=3"])


@pytest.mark.parametrize(("overrides", "match"), [
    (["privacy=user_dp"], "privacy=user_dp would have to be noised and accounted; no DP variant exists for it"),
    (["strategy=fedadam"], "strategy=fedadam .a server optimizer. has no update to step"),
    (["strategy=fedavgm"], "strategy=fedavgm"),
    (["federation.weighting=examples"], "weighting=examples would only reveal each silo's size"),
    (["federation.secure_aggregation=secaggplus"], "needs the exact sum of statistics"),
    (["train.loss=mse"], "predicts no ratings"),
])
def test_runs_that_make_no_sense_for_ease_are_config_errors_saying_why(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        typed(["model=ease", *overrides])
    flat = {**RunSettings().to_run_config(), "model": "ease", "model-kwargs": '{"lam": 300}'}
    dp = {"privacy": "user_dp"} if "privacy=user_dp" in overrides else {}
    strategy = {"strategy": overrides[0].split("=")[1]} if overrides[0].startswith("strategy") else {}
    if dp or strategy:  # the flat run config a deployed coordinator sends is refused the same way
        with pytest.raises(ConfigError, match=match):
            RunSettings.from_run_config({**flat, **dp, **strategy})


def test_a_catalog_above_20000_items_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    # Prepare
    cfg = experiment_from_dict({"dataset": {"name": "synthetic", "n_users": 60, "n_items": 20_001,
                                            "region_only_items": 0, "region_sizes": [1.0, 1.0]},
                                "model": {"name": "ease"}, "federation": {"rounds": 1}})

    # Execute / Assert: the experiment stops after loading the data, before the world is written
    with pytest.raises(ConfigError, match=r"n_items=20001 > 20000"):
        run_experiment(cfg, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "world").exists()
    with pytest.raises(ConfigError, match="20001 > 20000"):
        build_model(EASE, n_users=1, n_items=20_001)
    statistics_family(EASE).check_catalog(20_000, EASE)


def test_a_silo_refuses_a_b_beyond_its_bounds_like_any_global_model() -> None:
    bad = {"item_item.weight": np.full((4, 4), 1e4, np.float32)}
    with pytest.raises(Exception, match="within ±1000"):
        check_received(bad, EASE, n_items=4)
