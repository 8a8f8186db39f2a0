"""The synthetic sovereign world: determinism, sizes, regional structure, popularity, and config validation."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.schema import Interactions
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError

SMALL = SyntheticWorldConfig(n_users=600, n_items=300, region_only_items=10, region_sizes=(5, 2, 1))
COLUMNS = ("user", "item", "rating", "timestamp", "region")


@pytest.fixture(scope="module")
def small_world() -> Interactions:
    return generate_world(SMALL)


@pytest.fixture(scope="module")
def default_world() -> Interactions:
    return generate_world(SyntheticWorldConfig())


def test_same_seed_gives_identical_worlds(small_world: Interactions) -> None:
    # Execute
    again = generate_world(SMALL)

    # Assert
    for col in COLUMNS:
        np.testing.assert_array_equal(getattr(again, col), getattr(small_world, col), err_msg=col)
    assert again.regions == small_world.regions
    assert again.catalog == small_world.catalog


def test_different_seed_gives_a_different_world(small_world: Interactions) -> None:
    # Execute
    other = generate_world(SyntheticWorldConfig(n_users=600, n_items=300, region_only_items=10,
                                                region_sizes=(5, 2, 1), seed=1))

    # Assert: the items chosen differ (sizes may coincide)
    a = set(zip(small_world.user.tolist(), small_world.item.tolist(), strict=True))
    b = set(zip(other.user.tolist(), other.item.tolist(), strict=True))
    assert len(a ^ b) > len(a) // 2


def test_sizes_follow_the_config(small_world: Interactions) -> None:
    # Assert: 600 users split 5:2:1 -> 375, 150, 75; catalog = 300 global + 3 x 10 region-only items
    assert small_world.regions == ("eu", "na", "apac")
    assert small_world.users_per_region() == {"eu": 375, "na": 150, "apac": 75}
    assert small_world.catalog.n_items == 330
    per_user = np.bincount(small_world.user)
    assert len(per_user) == 600
    assert per_user.min() >= SMALL.min_interactions
    assert per_user.max() <= SMALL.max_interactions
    assert per_user.mean() == pytest.approx(SMALL.mean_interactions, rel=0.25)


def test_default_shares_make_the_smallest_region_ten_times_smaller(default_world: Interactions) -> None:
    # Prepare: shares 10 : 6 : 3 : 1.5 : 1 of 6000 users -> 6000 * share / 21.5 = 2791, 1674, 837, 419, 279
    expected = {"eu": 2791, "na": 1674, "apac": 837, "latam": 419, "mena": 279}

    # Execute
    users = default_world.users_per_region()

    # Assert: each within 2 users of its share (floors; the remainder goes to the largest); ratio about 10
    assert sum(users.values()) == 6000
    for region, n in expected.items():
        assert abs(users[region] - n) <= 2, region
    assert 9.5 <= max(users.values()) / min(users.values()) <= 10.5


def test_region_only_items_are_used_only_by_their_region(small_world: Interactions) -> None:
    # Prepare: items 300..309 belong to eu (region 0), 310..319 to na, 320..329 to apac
    is_region_item = small_world.item >= SMALL.n_items
    owner = (small_world.item[is_region_item] - SMALL.n_items) // SMALL.region_only_items

    # Execute
    users_region = small_world.region[is_region_item]

    # Assert: never used by another region, and every region does use its own items
    np.testing.assert_array_equal(owner, users_region)
    assert set(owner.tolist()) == {0, 1, 2}


def test_item_popularity_is_heavy_tailed(default_world: Interactions) -> None:
    # Prepare
    counts = np.sort(np.bincount(default_world.item, minlength=default_world.catalog.n_items))[::-1]

    # Execute
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()

    # Assert: the top 10% of items hold well over their 10% share of interactions
    assert top_decile_share > 0.3


def test_no_duplicate_user_item_pairs(default_world: Interactions) -> None:
    # Execute
    pairs = default_world.user * default_world.catalog.n_items + default_world.item

    # Assert
    assert len(np.unique(pairs)) == len(pairs)


def test_world_does_not_depend_on_the_block_size(small_world: Interactions) -> None:
    # Execute
    one_by_one = generate_world(SMALL, block=1)

    # Assert: the same (user, item) pairs
    a = set(zip(small_world.user.tolist(), small_world.item.tolist(), strict=True))
    b = set(zip(one_by_one.user.tolist(), one_by_one.item.tolist(), strict=True))
    assert a == b


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"n_users": 5}, "n_users"),  # 5 regions need at least 10 users
    ({"n_items": 0}, "n_items"),
    ({"region_only_items": -1}, "region_only_items"),
    ({"region_sizes": ()}, "region_sizes"),
    ({"region_sizes": (1.0, 0.0)}, "region_sizes"),
    ({"dim": 0}, "dim"),
    ({"min_interactions": 0}, "min_interactions"),
    ({"mean_interactions": 5.0}, "min_interactions"),  # mean below the minimum of 8
    ({"max_interactions": 4}, "max_interactions"),
    ({"region_names": ("a", "b")}, "region_names"),  # 2 names for 5 regions
])
def test_invalid_config_is_a_config_error_naming_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"dataset\.{key}"):
        SyntheticWorldConfig(**kwargs)  # type: ignore[arg-type]


def test_duplicate_region_names_are_a_config_error() -> None:
    try:
        SyntheticWorldConfig(n_users=100, region_sizes=(1.0, 1.0), region_names=("eu", "eu"))
    except ConfigError as exc:
        assert "dataset.region_names" in str(exc)
    else:
        raise AssertionError("duplicate region names were accepted")


@pytest.mark.slow
def test_a_million_interaction_world_generates() -> None:
    # Prepare: 25,000 users x 40 interactions on average
    cfg = SyntheticWorldConfig(n_users=25_000, n_items=4000, region_only_items=100)

    # Execute
    world = generate_world(cfg)

    # Assert
    assert len(world) >= 1_000_000
    assert len(np.unique(world.user)) == 25_000
