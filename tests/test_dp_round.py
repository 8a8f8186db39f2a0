"""A silo's DP round (groundwork): what it returns, what it costs, and that it is reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.split import SplitConfig, split_silos
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec
from fedrec.privacy.dp_round import DpTrainConfig, train_round_dp
from fedrec.privacy.noise import NoiseSource
from fedrec.training import TrainConfig, initial_global_arrays

SPEC = ModelSpec("mf", 8, {"private_item_bias": False})
DP = DpTrainConfig(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.1, steps_per_round=5, max_per_user=10)


@pytest.fixture(scope="module")
def silo():
    world = generate_world(SyntheticWorldConfig(n_users=200, n_items=60, region_only_items=0, region_sizes=(1.0,)))
    return split_silos(world, SplitConfig())["eu"]


def test_a_dp_round_releases_only_global_parameters_and_reports_its_cost(silo) -> None:
    g = initial_global_arrays(SPEC, n_items=silo.n_items, seed=0)
    out = train_round_dp(silo, SPEC, g, None, TrainConfig(), DP, seed=1)
    assert set(out.global_after) == set(g)
    assert not any(k.startswith("user.") for k in out.global_after)
    assert out.event == DP.event()
    assert out.interactions_over_cap > 0  # users with more than 10 training interactions were capped
    assert not np.array_equal(out.global_after["item_emb.weight"], g["item_emb.weight"])
    np.testing.assert_array_equal(out.global_after["global_bias"], g["global_bias"])  # no gradient, no noise


def test_secure_noise_by_default_seeded_noise_only_when_asked_and_state_continues(silo) -> None:
    g = initial_global_arrays(SPEC, n_items=silo.n_items, seed=0)
    a = train_round_dp(silo, SPEC, g, None, TrainConfig(), DP, seed=3)
    b = train_round_dp(silo, SPEC, g, None, TrainConfig(), DP, seed=3)
    assert not np.allclose(a.global_after["item_emb.weight"], b.global_after["item_emb.weight"])  # same seed
    c, d = (train_round_dp(silo, SPEC, g, None, TrainConfig(), DP, seed=3, noise=NoiseSource("seeded", seed=3))
            for _ in range(2))
    np.testing.assert_array_equal(c.global_after["item_emb.weight"], d.global_after["item_emb.weight"])
    nxt = train_round_dp(silo, SPEC, a.global_after, a.local_after, TrainConfig(), DP, seed=4,
                         optimizer_state=a.optimizer_after)
    assert {k[:2] for k in nxt.optimizer_after} == {"l.", "g."}


def test_an_mf_silo_keeps_a_dp_trained_private_item_bias(silo) -> None:
    spec = ModelSpec("mf", 8)  # private_item_bias defaults to True
    g = initial_global_arrays(spec, n_items=silo.n_items, seed=0)
    out = train_round_dp(silo, spec, g, None, TrainConfig(), DP, seed=1)
    assert "user.item_bias.weight" in out.local_after and "user.item_bias.weight" not in out.global_after
    assert float(out.local_after["user.item_bias.weight"].abs().sum()) > 0  # it trained (from zeros)


@pytest.mark.parametrize("private_bias", [False, True])
def test_a_two_tower_dp_round_keeps_its_user_tower_and_releases_the_item_side(silo, private_bias: bool) -> None:
    spec = ModelSpec("twotower", 8, {"private_item_bias": private_bias})
    g = initial_global_arrays(spec, n_items=silo.n_items, seed=0)
    out = train_round_dp(silo, spec, g, None, TrainConfig(), DP, seed=1)
    assert set(out.global_after) == set(g) and not any(k.startswith("user.") for k in out.global_after)
    assert any(k.startswith("user.tower.") for k in out.local_after)  # silo-wide but never released
    assert not np.array_equal(out.global_after["item_tower.0.weight"], g["item_tower.0.weight"])


def test_dp_for_other_models_and_bad_parameters_are_clear_errors(silo) -> None:
    with pytest.raises(ConfigError, match="clip_norm=0"):
        DpTrainConfig(clip_norm=0, noise_multiplier=1.0, sample_rate=0.1, steps_per_round=1)
    with pytest.raises(ConfigError, match="privacy=none"):
        DpTrainConfig(clip_norm=1.0, noise_multiplier=0.0, sample_rate=0.1, steps_per_round=1)
